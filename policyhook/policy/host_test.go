package policy

import (
	"errors"
	"strings"
	"testing"
)

// parseErrors parses yaml as p.yaml and returns its errors, failing the
// test if it parses.
func parseErrors(t *testing.T, yaml string) ErrorList {
	t.Helper()
	p, err := Parse("p.yaml", []byte(yaml))
	if err == nil {
		t.Fatalf("Parse succeeded (%+v), want an error", p)
	}
	var list ErrorList
	if !errors.As(err, &list) || len(list) == 0 {
		t.Fatalf("error %v (%T) is not an ErrorList", err, err)
	}
	return list
}

type rejection struct{ name, yaml, want string }

// runRejections checks the first error of each case, exactly: file, line,
// column, field and message.
func runRejections(t *testing.T, cases []rejection) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			list := parseErrors(t, tc.yaml)
			if got := list[0].Error(); got != tc.want {
				t.Errorf("first error:\n got %s\nwant %s\n(all: %v)", got, tc.want, list)
			}
		})
	}
}

func seedHost(host string) string {
	return "version: \"1.0\"\nsandbox:\n  network: {allowed_egress: [{host: " + host + ", port: 443}]}\n"
}

func v1Endpoint(host string) string {
	return "version: 1\nnetwork_policies:\n  k: {endpoints: [{host: " + host + ", port: 443}]}\n"
}

// TestHostRejections: every host is put through NormalizeHostPattern, in
// both formats; each case is one way a host was accepted before.
func TestHostRejections(t *testing.T) {
	long := strings.Repeat("a", 64)
	runRejections(t, []rejection{
		// "*.com." passed the two-label check and became "*.com".
		{"wildcard-tld-trailing-dot", seedHost(`"*.com."`), `p.yaml:3:37: sandbox.network.allowed_egress[0].host: "*.com.": a wildcard must sit above a registered domain, e.g. *.example.com`},
		{"wildcard-tld-trailing-dot-v1", v1Endpoint(`"*.com."`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "*.com.": a wildcard must sit above a registered domain, e.g. *.example.com`},
		{"any-depth-tld", v1Endpoint(`"**.com"`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "**.com": a wildcard must sit above a registered domain, e.g. **.example.com`},
		{"wildcard-public-suffix", seedHost(`"*.co.uk"`), `p.yaml:3:37: sandbox.network.allowed_egress[0].host: "*.co.uk": co.uk is a public suffix; a wildcard must sit above a registered domain, e.g. *.example.co.uk`},
		{"any-depth-public-suffix-upper", v1Endpoint(`"**.CO.UK."`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "**.CO.UK.": co.uk is a public suffix; a wildcard must sit above a registered domain, e.g. **.example.co.uk`},
		{"triple-star", v1Endpoint(`"***.example.com"`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "***.example.com": "**" must be the whole first label ("**.example.com", any depth)`},
		{"empty-label", seedHost(`"a..example.com"`), `p.yaml:3:37: sandbox.network.allowed_egress[0].host: "a..example.com" is not a valid host name (empty label)`},
		{"two-trailing-dots", seedHost(`"example.com.."`), `p.yaml:3:37: sandbox.network.allowed_egress[0].host: "example.com.." is not a valid host name (empty label)`},
		{"leading-dot", seedHost(`".example.com"`), `p.yaml:3:37: sandbox.network.allowed_egress[0].host: ".example.com" is not a valid host name (empty label)`},
		{"label-too-long", seedHost(long + ".com"), `p.yaml:3:37: sandbox.network.allowed_egress[0].host: "` + long + `.com" is not a valid host name (a label is longer than 63 characters)`},
		{"name-too-long", seedHost(strings.Repeat("abcdefghi.", 26)), `p.yaml:3:37: sandbox.network.allowed_egress[0].host: "abcdefghi.abcdefghi.abcdefghi.abcdefghi.abcdefghi.abcdefghi.abcd"... is longer than 253 characters`},
		{"nul", seedHost(`"api.example.com\0"`), `p.yaml:3:37: sandbox.network.allowed_egress[0].host: "api.example.com\x00" contains a control character`},
		{"newline", v1Endpoint(`"api.example.com\nevil.com"`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "api.example.com\nevil.com" contains a control character`},
		{"escape-sequence", seedHost(`"\e[2Japi.example.com"`), `p.yaml:3:37: sandbox.network.allowed_egress[0].host: "\x1b[2Japi.example.com" contains a control character`},
		{"space", seedHost(`"api .example.com"`), `p.yaml:3:37: sandbox.network.allowed_egress[0].host: "api .example.com" contains a space`},
		{"no-break-space", seedHost(`"api\u00a0.example.com"`), `p.yaml:3:37: sandbox.network.allowed_egress[0].host: "api\u00a0.example.com" contains a space`},
		{"bad-punycode", seedHost(`xn--a.example.com`), `p.yaml:3:37: sandbox.network.allowed_egress[0].host: "xn--a.example.com" is not a valid internationalised domain name (IDNA)`},
		// Wildcards that are too broad or not NVIDIA OpenShell's.
		{"star-alone", v1Endpoint(`"*"`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "*" matches every host; name a domain, e.g. *.example.com`},
		{"double-star-alone", v1Endpoint(`"**"`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "**" matches every host; name a domain, e.g. *.example.com`},
		{"intra-label-tld", v1Endpoint(`"*-api.com"`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "*-api.com": a wildcard must sit above a registered domain, e.g. *-api.example.com`},
		{"intra-label-public-suffix", v1Endpoint(`"api-*.co.uk"`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "api-*.co.uk": co.uk is a public suffix; a wildcard must sit above a registered domain, e.g. api-*.example.co.uk`},
		{"wildcard-in-tld", v1Endpoint(`"example.c*"`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "example.c*": a wildcard in the last label (the top-level domain) spans every domain; name a domain, e.g. *.example.com`},
		{"two-stars-one-label", v1Endpoint(`"*api*.example.com"`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "*api*.example.com": a label holds at most one "*"`},
		{"partial-lower-label", v1Endpoint(`"a.us-*.example.com"`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "a.us-*.example.com": below the first label a wildcard must be a whole label ("s3.*.example.com"); only the first label may hold "*" with other characters ("api-*.example.com")`},
		{"double-star-lower", v1Endpoint(`"a.**.example.com"`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "a.**.example.com": "**" must be the whole first label ("**.example.com", any depth)`},
		{"glob-question-mark", v1Endpoint(`"api?.example.com"`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "api?.example.com": the only wildcard is "*" (no ?, [...] or {...}); list each host separately`},
		{"glob-braces", v1Endpoint(`"{a,b}.example.com"`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "{a,b}.example.com": the only wildcard is "*" (no ?, [...] or {...}); list each host separately`},
		{"wild-label-hyphen", v1Endpoint(`"-*.example.com"`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "-*.example.com" is not a valid host pattern (label "-*": a label cannot start or end with "-")`},
		{"wild-label-non-ascii", v1Endpoint(`"bü*.example.com"`), `p.yaml:3:26: network_policies.k.endpoints[0].host: "bü*.example.com" is not a valid host pattern (label "bü*": a label with a wildcard must be ASCII; write an internationalised name in its xn-- form)`},
		{"underscore-ok-slash-not", seedHost(`"_a/b.example.com"`), `p.yaml:3:37: sandbox.network.allowed_egress[0].host: "_a/b.example.com" is not a host name`},
		// One form for duplicates: a trailing dot, case and IDNA are the same host.
		{"duplicate-trailing-dot", "version: \"1.0\"\nsandbox:\n  network: {allowed_egress: [{host: a.example.com, port: 1}, {host: A.Example.COM., port: 1}]}\n", "p.yaml:3:62: sandbox.network.allowed_egress[1]: a.example.com:1 duplicates sandbox.network.allowed_egress[0]"},
		{"duplicate-idna", "version: \"1.0\"\nsandbox:\n  network: {allowed_egress: [{host: bücher.example, port: 1}, {host: xn--bcher-kva.example, port: 1}]}\n", "p.yaml:3:63: sandbox.network.allowed_egress[1]: xn--bcher-kva.example:1 duplicates sandbox.network.allowed_egress[0]"},
	})
}

// TestHostNormalForm: what is accepted is stored in the one form the
// matcher compares.
func TestHostNormalForm(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"API.Example.COM.", "api.example.com"},
		{"*.Example.COM.", "*.example.com"},
		{"**.example.com", "**.example.com"},
		{"Bücher.example", "xn--bcher-kva.example"},
		{"*.ＥＸＡＭＰＬＥ。com", "*.example.com"},
		{"r3---sn-abc.googlevideo.com", "r3---sn-abc.googlevideo.com"},
		{"_dmarc.example.com", "_dmarc.example.com"},
		{"*.github.io", "*.github.io"}, // a private suffix: allowed
		{"API.GitHub.com", "api.github.com"},
		{"*-AIPlatform.googleapis.com", "*-aiplatform.googleapis.com"},
		{"api-*.Example.com.", "api-*.example.com"},
		{"s3.*.amazonaws.com", "s3.*.amazonaws.com"},
		{"*.s3.*.amazonaws.com", "*.s3.*.amazonaws.com"},
		{"**.*.example.com", "**.*.example.com"},
		{"a*b.example.com", "a*b.example.com"},
	} {
		for _, doc := range []string{seedHost(`"` + tc.in + `"`), v1Endpoint(`"` + tc.in + `"`)} {
			p, err := Parse("p.yaml", []byte(doc))
			if err != nil {
				t.Errorf("%q: %v", tc.in, err)
				continue
			}
			if got := p.Network.Egress[0].Host; got != tc.want {
				t.Errorf("%q (%s) stored as %q, want %q", tc.in, p.Format, got, tc.want)
			}
			if again, err := NormalizeHostPattern(tc.want); err != nil || again != tc.want {
				t.Errorf("NormalizeHostPattern(%q) = %q, %v: not idempotent", tc.want, again, err)
			}
		}
	}
}

// TestHostMatches is NVIDIA OpenShell's wildcard semantics: "*." is one
// label, "**." any depth, neither the domain itself.
func TestHostMatches(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"example.com", "example.com", true},
		{"example.com", "a.example.com", false},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "a.b.example.com", false},
		{"*.example.com", "example.com", false},
		{"*.example.com", "aexample.com", false},
		{"**.example.com", "a.example.com", true},
		{"**.example.com", "a.b.c.example.com", true},
		{"**.example.com", "example.com", false},
		{"**.example.com", "a.example.com.evil", false},
		// A "*" inside the first label: zero or more characters, never a dot.
		{"*-aiplatform.googleapis.com", "us-central1-aiplatform.googleapis.com", true},
		{"*-aiplatform.googleapis.com", "a.us-aiplatform.googleapis.com", false},
		{"*-aiplatform.googleapis.com", "aiplatform.googleapis.com", false},
		{"*-aiplatform.googleapis.com", "us-aiplatform.googleapis.com.evil", false},
		{"api-*.example.com", "api-eu.example.com", true},
		{"api-*.example.com", "api.example.com", false},
		{"api*.example.com", "api.example.com", true},
		{"api-*.example.com", "eu.api-x.example.com", false},
		{"a*b.example.com", "ab.example.com", true},
		{"a*b.example.com", "axyb.example.com", true},
		{"a*b.example.com", "ba.example.com", false},
		// A whole "*" label below the first: exactly one label.
		{"s3.*.amazonaws.com", "s3.eu-west-1.amazonaws.com", true},
		{"s3.*.amazonaws.com", "s3.amazonaws.com", false},
		{"s3.*.amazonaws.com", "s3.a.b.amazonaws.com", false},
		{"*.s3.*.amazonaws.com", "bucket.s3.us-east-2.amazonaws.com", true},
		{"*.s3.*.amazonaws.com", "s3.us-east-2.amazonaws.com", false},
		{"**.*.example.com", "a.b.c.example.com", true},
		{"**.*.example.com", "b.example.com", false},
	} {
		if got := HostMatches(tc.pattern, tc.name); got != tc.want {
			t.Errorf("HostMatches(%q, %q) = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}
