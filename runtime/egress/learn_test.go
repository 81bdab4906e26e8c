package egress

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// newLearningGateway is newTestGateway's gateway in learning mode, with
// names outside the policy in its upstream's zone.
func newLearningGateway(t *testing.T) (*Gateway, string) {
	t.Helper()
	g, up, audit := newTestGateway(t, testPolicy)
	up.add("new.example.org", "93.184.216.40")
	up.add("meta.example.org", "169.254.169.254")
	up.add("loop.example.org", "127.0.0.1")
	cfg := g.cfg
	cfg.Learn = true
	cfg.AuditFile = audit + ".learn"
	lg, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lg.audit.Close() })
	return lg, cfg.AuditFile
}

func TestLearnDNS(t *testing.T) {
	g, audit := newLearningGateway(t)
	for _, tc := range []struct {
		name  string
		rcode dnsmessage.RCode
		addrs string
	}{
		{"api.example.com", dnsmessage.RCodeSuccess, "93.184.216.34"}, // a rule's
		{"new.example.org", dnsmessage.RCodeSuccess, "93.184.216.40"}, // learning's
		{"meta.example.org", dnsmessage.RCodeSuccess, ""},             // never: dropped from the answer
		{"loop.example.org", dnsmessage.RCodeSuccess, ""},
		{"nosuch.example.org", dnsmessage.RCodeNameError, ""}, // upstream's NXDOMAIN
	} {
		rcode, addrs := query(t, g, tc.name, dnsmessage.TypeA)
		if rcode != tc.rcode || strings.Join(addrs, ",") != tc.addrs {
			t.Errorf("%s: %s %v, want %s %q", tc.name, rcode, addrs, tc.rcode, tc.addrs)
		}
	}
	got := map[string]string{}
	for _, e := range readEvents(t, audit) {
		got[e.Host] = e.Decision + " " + e.Rule + " " + e.Reason
	}
	for host, want := range map[string]string{
		"api.example.com":  "allow sandbox.network.allowed_egress[0] ",
		"new.example.org":  "audit learning learning",
		"meta.example.org": "deny learning dropped 169.254.169.254 (cloud metadata service)",
		"loop.example.org": "deny learning dropped 127.0.0.1 (loopback",
	} {
		if !strings.HasPrefix(got[host], want) {
			t.Errorf("%s: audit %q, want %q…", host, got[host], want)
		}
	}
}

func TestLearnAuthorize(t *testing.T) {
	g, _ := newLearningGateway(t)
	rs := g.current()
	ctx := context.Background()
	for _, tc := range []struct {
		host  string
		port  int
		learn bool   // allowed by the learning rule
		deny  string // substring of the reason; "" when allowed
	}{
		{"api.example.com", 443, false, ""},
		{"api.example.com", 80, true, ""}, // the rule's name, another port
		{"new.example.org", 8443, true, ""},
		{"93.184.216.34", 443, true, ""},
		{"meta.example.org", 80, false, "cloud metadata service"},
		{"169.254.169.254", 80, false, "cloud metadata service"},
		{"2852039166", 80, false, "cloud metadata service"},
		{"[::ffff:127.0.0.1]", 80, false, "loopback"},
		{"169.254.1.1", 80, false, "link-local"},
		{"10.2.9.9", 80, false, "private range"}, // block_private_ranges still holds
	} {
		host := strings.TrimSuffix(strings.TrimPrefix(tc.host, "["), "]")
		tg, d := g.authorizeHost(ctx, rs, host, tc.port)
		switch {
		case tc.deny == "" && d != nil:
			t.Errorf("%s:%d denied: %s", tc.host, tc.port, d.reason)
		case tc.deny != "" && (d == nil || !strings.Contains(d.reason, tc.deny)):
			t.Errorf("%s:%d: %v, want a denial with %q", tc.host, tc.port, d, tc.deny)
		case d == nil && (tg.rule == rs.learn) != tc.learn:
			t.Errorf("%s:%d: allowed by %s, learning rule %v", tc.host, tc.port, ruleName(tg.rule), tc.learn)
		}
	}
	// The host's own addresses stay refused, whatever learning allows.
	g.isLocal = func(a netip.Addr) bool { return a == netip.MustParseAddr("93.184.216.40") }
	if _, d := g.authorizeHost(ctx, rs, "new.example.org", 80); d == nil || !strings.Contains(d.reason, "an address of the host") {
		t.Errorf("an address of the host: %v", d)
	}
	// A captured connection still needs its name to resolve to where it goes.
	if _, d := g.authorizeDst(ctx, rs, "new.example.org", netip.MustParseAddrPort("93.184.216.99:443")); d == nil || !strings.Contains(d.reason, "does not resolve to") {
		t.Errorf("forged SNI in learning mode: %v", d)
	}
	// Every policy rule is in audit mode; the file's rules are unchanged.
	for _, r := range rs.policy.Network.Egress {
		if r.Enforcement != "audit" {
			t.Errorf("%s: enforcement %q in learning mode", r.Field, r.Enforcement)
		}
	}
}

func TestLearnedEvent(t *testing.T) {
	for _, tc := range []struct{ in, want Event }{
		{Event{Rule: learnField, Decision: Allow}, Event{Rule: learnField, Decision: Audit, Reason: "learning"}},
		{Event{Rule: learnField, Decision: Allow, Reason: "dial: x"}, Event{Rule: learnField, Decision: Audit, Reason: "learning: dial: x"}},
		{Event{Rule: learnField, Decision: Deny, Reason: "loopback"}, Event{Rule: learnField, Decision: Deny, Reason: "loopback"}},
		{Event{Rule: "sandbox.network.allowed_egress[0]", Decision: Allow}, Event{Rule: "sandbox.network.allowed_egress[0]", Decision: Allow}},
	} {
		e := tc.in
		learned(&e)
		if e.Rule != tc.want.Rule || e.Decision != tc.want.Decision || e.Reason != tc.want.Reason {
			t.Errorf("learned(%+v) = %+v, want %+v", tc.in, e, tc.want)
		}
	}
}
