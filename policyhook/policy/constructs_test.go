package policy_test

import (
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openshell/openshell/policyhook/egress"
	"github.com/openshell/openshell/policyhook/policy"
)

// finding is one error or warning expected of a fixture: the field it
// names and a part of its message.
type finding struct{ field, msg string }

// nameCheck is one egress decision by name: the rule's Field, or "" for none.
type nameCheck struct {
	name string
	port int
	rule string
}

// ipCheck is one decision by address: the rule MatchIP finds ("" for
// none) and what CheckIP then says ("" for allowed).
type ipCheck struct {
	addr string
	port int
	rule string
	why  string
}

// TestOpenShellConstructs loads one fixture per construct found in NVIDIA
// OpenShell's, OpenShell-Community's and NemoClaw's policy files (written
// in our own words and hosts): each is accepted, and then enforced as the
// egress matcher's decisions show, or refused, naming the field and why.
// docs/policy.md lists the same constructs.
func TestOpenShellConstructs(t *testing.T) {
	for _, tc := range []struct {
		file    string
		refused []finding
		warns   []finding
		names   []nameCheck
		ips     []ipCheck
	}{
		{file: "filesystem-process.yaml", warns: []finding{{"landlock.compatibility", "Landlock does not exist inside gVisor"}}},
		{
			file: "wildcards.yaml",
			names: []nameCheck{
				{"docs.example.com", 443, "network_policies.hosts.endpoints[0]"},
				{"DOCS.EXAMPLE.COM.", 443, "network_policies.hosts.endpoints[0]"},
				{"img.cdn.example.com", 443, "network_policies.hosts.endpoints[1]"},
				{"a.img.cdn.example.com", 443, ""},
				{"a.b.mirror.example.org", 443, "network_policies.hosts.endpoints[2]"},
				{"mirror.example.org", 443, ""},
				{"eu-west-gpu.compute.example.net", 443, "network_policies.hosts.endpoints[3]"},
				{"x.eu-gpu.compute.example.net", 443, ""},
				{"gpu.compute.example.net", 443, ""},
				{"api-v2.example.org", 8443, "network_policies.hosts.endpoints[4]"},
				{"api-v2.example.org", 80, ""},
				{"v2-api.example.org", 443, ""},
				{"blob.eu.storage.example.com", 443, "network_policies.hosts.endpoints[5]"},
				{"blob.storage.example.com", 443, ""},
				{"c1.blob.eu.storage.example.com", 443, "network_policies.hosts.endpoints[6]"},
				{"c1.blob.eu.west.storage.example.com", 443, ""},
			},
		},
		{
			file: "rest.yaml",
			names: []nameCheck{
				{"models.example.com", 443, "network_policies.models.endpoints[0]"},
				{"uploads.example.com", 8443, "network_policies.models.endpoints[1]"},
				{"hooks.example.com", 443, "network_policies.models.endpoints[2]"},
			},
		},
		{
			file: "no-protocol.yaml",
			names: []nameCheck{
				{"git.example.com", 443, "network_policies.plain.endpoints[0]"},
				{"tracker.example.com", 443, "network_policies.plain.endpoints[1]"},
			},
		},
		{
			file:  "tcp.yaml",
			names: []nameCheck{{"cache.internal.example.com", 6379, "network_policies.cache.endpoints[0]"}},
			ips:   []ipCheck{{"10.20.3.4", 6379, "network_policies.cache.endpoints[0]", ""}},
		},
		{
			file:  "address-rule.yaml",
			warns: []finding{{"network_policies.warehouse.endpoints[0]", "has no host: the sandbox may connect to 10.30.1.0/24, fd12:3456::/48 on port 5432 by address only"}},
			names: []nameCheck{{"db.example.com", 5432, ""}},
			ips: []ipCheck{
				{"10.30.1.9", 5432, "network_policies.warehouse.endpoints[0]", ""},
				{"10.30.1.9", 5433, "", ""},
				{"10.30.2.9", 5432, "", ""},
				{"fd12:3456::7", 5432, "network_policies.warehouse.endpoints[0]", ""},
			},
		},
		{
			file: "private-v6.yaml",
			ips: []ipCheck{
				{"fd99::1", 443, "network_policies.lab.endpoints[0]", ""},
				{"fd00:ec2::254", 443, "network_policies.lab.endpoints[0]", "cloud metadata service"},
				{"192.168.40.2", 443, "network_policies.lab.endpoints[0]", ""},
			},
		},
		{
			file:  "binaries.yaml",
			names: []nameCheck{{"registry.example.com", 443, "network_policies.tools.endpoints[0]"}},
		},
		{file: "query.yaml", refused: []finding{{"network_policies.search.endpoints[0].rules[0].allow.query", "query parameter matchers are not enforced yet"}}},
		{file: "credential-binding.yaml", refused: []finding{{"network_policies.storage.endpoints[0].credential_binding", "binding a provider's credentials to an endpoint is not supported yet"}}},
		{file: "credential-signing.yaml", refused: []finding{
			{"network_policies.objects.endpoints[0].credential_signing", "SigV4 credential signing is not supported yet"},
			{"network_policies.objects.endpoints[0].signing_service", "SigV4 credential signing is not supported yet"},
			{"network_policies.objects.endpoints[0].signing_region", "SigV4 credential signing is not supported yet"},
		}},
		{file: "credential-rewrite.yaml", refused: []finding{
			{"network_policies.chat.endpoints[0].request_body_credential_rewrite", "credential rewriting is not supported yet"},
			{"network_policies.chat.endpoints[0].websocket_credential_rewrite", "credential rewriting is not supported yet"},
			{"network_policies.chat.endpoints[0].allow_uninspected_credentials", "credential rewriting is not supported yet"},
		}},
		{file: "l7-protocols.yaml", refused: []finding{
			{"network_policies.graph.endpoints[0].protocol", "graphql is not supported yet"},
			{"network_policies.graph.endpoints[0].persisted_queries", "not enforced by openshell's egress gateway yet"},
			{"network_policies.graph.endpoints[0].graphql_max_body_bytes", "not enforced"},
			{"network_policies.graph.endpoints[0].rules[0].allow.operation_type", "not enforced"},
			{"network_policies.graph.endpoints[0].rules[0].allow.operation_name", "not enforced"},
			{"network_policies.graph.endpoints[0].rules[0].allow.fields", "not enforced"},
			{"network_policies.tools.endpoints[0].protocol", "mcp is not supported yet"},
			{"network_policies.tools.endpoints[0].mcp", "not enforced"},
			{"network_policies.tools.endpoints[0].rules[0].allow.tool", "not enforced"},
			{"network_policies.tools.endpoints[0].rules[0].allow.params", "not enforced"},
			{"network_policies.stream.endpoints[0].protocol", "websocket is not supported yet"},
		}},
		{file: "endpoint-extras.yaml", refused: []finding{
			{"network_policies.code.endpoints[0].path", "endpoint path prefixes are not enforced"},
			{"network_policies.code.endpoints[0].allow_encoded_slash", "not enforced"},
			{"network_policies.code.endpoints[0].deny_rules", "deny rules are not enforced"},
			{"network_policies.code.endpoints[0].json_rpc", "not enforced"},
			{"network_policies.code.endpoints[0].graphql_persisted_queries", "not enforced"},
			{"network_policies.code.endpoints[0].rules[0].allow.command", "not enforced"},
		}},
		{file: "middlewares.yaml", refused: []finding{{"network_middlewares", "network middlewares are not implemented"}}},
		{file: "rules-no-protocol.yaml", refused: []finding{{"network_policies.partial.endpoints[0].protocol", "must be rest when rules or access are set"}}},
		{file: "hostless-refused.yaml", refused: []finding{
			{"network_policies.raw.endpoints[0].host", "is required with protocol: tcp"},
			{"network_policies.raw.endpoints[1].host", "is required for protocol, access and rules"},
			{"network_policies.raw.endpoints[2].host", "is required (or, for a rule by address, allowed_ips)"},
		}},
		{file: "wildcards-refused.yaml", refused: []finding{
			{"network_policies.broad.endpoints[0].host", `"*" matches every host`},
			{"network_policies.broad.endpoints[1].host", "a wildcard must sit above a registered domain"},
			{"network_policies.broad.endpoints[2].host", "co.uk is a public suffix"},
			{"network_policies.broad.endpoints[3].host", `a label holds at most one "*"`},
			{"network_policies.broad.endpoints[4].host", "below the first label a wildcard must be a whole label"},
		}},
		{file: "forbidden-ips.yaml", refused: []finding{
			{"network_policies.meta.endpoints[0].allowed_ips[0]", "covers cloud metadata"},
			{"network_policies.meta.endpoints[0].allowed_ips[1]", "covers link-local"},
			{"network_policies.meta.endpoints[0].allowed_ips[2]", "covers loopback"},
			{"network_policies.meta.endpoints[0].allowed_ips[3]", "covers loopback"},
			{"network_policies.meta.endpoints[0].allowed_ips[4]", "covers loopback"},
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			p, err := policy.Load(filepath.Join("testdata", "openshell-constructs", tc.file))
			if len(tc.refused) > 0 {
				var list policy.ErrorList
				if !errors.As(err, &list) {
					t.Fatalf("loaded (%v), want refused", err)
				}
				expectFindings(t, "error", list, tc.refused)
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			expectFindings(t, "warning", p.Warnings, tc.warns)
			m := egress.New(p.Network)
			for _, c := range tc.names {
				got := ""
				if r := m.Match(c.name, c.port); r != nil {
					got = r.Field
				}
				if got != c.rule {
					t.Errorf("Match(%q, %d) = %q, want %q", c.name, c.port, got, c.rule)
				}
			}
			for _, c := range tc.ips {
				addr := netip.MustParseAddr(c.addr)
				r := m.MatchIP(addr, c.port)
				got := ""
				if r != nil {
					got = r.Field
				}
				if got != c.rule {
					t.Errorf("MatchIP(%s, %d) = %q, want %q", c.addr, c.port, got, c.rule)
				}
				if r != nil {
					if why := m.CheckIP(addr, r); why != c.why {
						t.Errorf("CheckIP(%s) = %q, want %q", c.addr, why, c.why)
					}
				}
			}
		})
	}
}

// expectFindings checks that list holds exactly the findings wanted, in
// any order: no "unknown field", and nothing else.
func expectFindings(t *testing.T, kind string, list policy.ErrorList, want []finding) {
	t.Helper()
	for _, e := range list {
		if strings.Contains(e.Msg, "unknown field") {
			t.Errorf("%s %v: an upstream field must be supported or refused with a reason", kind, e)
		}
	}
	if len(list) != len(want) {
		t.Errorf("%d %ss, want %d:\n%v", len(list), kind, len(want), list)
	}
	for _, w := range want {
		found := false
		for _, e := range list {
			found = found || (e.Field == w.field && strings.Contains(e.Msg, w.msg) && e.Pos.Line > 0)
		}
		if !found {
			t.Errorf("no %s on %s containing %q in:\n%v", kind, w.field, w.msg, list)
		}
	}
}
