package egress

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/openshell/openshell/policyhook/policy"
)

func network() policy.Network {
	return policy.Network{
		BlockMetadata: true, BlockPrivateRanges: true, DNSFiltering: true,
		Egress: []policy.EgressRule{
			{Field: "r0", Host: "api.example.com", Ports: []int{443}},
			{Field: "r1", Host: "*.example.org", Ports: []int{80, 443}},
			{Field: "r2", Host: "internal.corp.test", Ports: []int{8080}, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}},
			{Field: "r3", Host: "api.example.com", Ports: []int{8443}},
			{Field: "r4", Host: "**.example.net", Ports: []int{443}},
			{Field: "r5", Host: "xn--bcher-kva.example", Ports: []int{443}},
		},
	}
}

func TestMatch(t *testing.T) {
	m := New(network())
	for _, tc := range []struct {
		name string
		port int
		want string
	}{
		{"api.example.com", 443, "r0"},
		{"API.Example.COM.", 443, "r0"},
		{"api.example.com", 8443, "r3"},
		{"api.example.com", 80, ""},
		{"example.com", 443, ""},
		{"evil-api.example.com", 443, ""},
		{"a.example.org", 80, "r1"},
		// "*." is one label, as in NVIDIA OpenShell; "**." any depth.
		{"a.b.example.org", 443, ""},
		{"a.example.net", 443, "r4"},
		{"a.b.c.example.net", 443, "r4"},
		{"example.net", 443, ""},
		{"Bücher.example", 443, "r5"},
		{"XN--BCHER-KVA.example.", 443, "r5"},
		{"api.example.com\x00", 443, ""},
		{"api.example.com..", 443, ""},
		{"*.example.org", 443, ""},
		{"example.org", 443, ""},
		{"exampleXorg", 443, ""},
		{"data.evil.example", 443, ""},
		{"", 443, ""},
		{"internal.corp.test", 8080, "r2"},
	} {
		got := ""
		if r := m.Match(tc.name, tc.port); r != nil {
			got = r.Field
		}
		if got != tc.want {
			t.Errorf("Match(%q, %d) = %q, want %q", tc.name, tc.port, got, tc.want)
		}
	}
	if len(m.Name("api.example.com")) != 2 {
		t.Errorf("Name(api.example.com) should list both rules")
	}
}

// TestMatchAgreesWithPolicy checks the matcher's hash tables against the
// definition in policy.HostMatches, for every pattern form and depth.
func TestMatchAgreesWithPolicy(t *testing.T) {
	patterns := []string{"example.com", "*.example.com", "**.example.com", "*.a.example.com", "**.b.example.com",
		"*-api.example.com", "api-*.example.com", "a*.example.com", "x.*.example.com", "*.x.*.example.com", "**.*.b.example.com"}
	names := []string{"example.com", "a.example.com", "b.example.com", "x.a.example.com", "x.y.a.example.com",
		"x.b.example.com", "x.y.b.example.com", "aexample.com", "a.example.comm", "com",
		"eu-api.example.com", "api-eu.example.com", "x.eu-api.example.com", "api.example.com", "x.q.example.com",
		"y.x.q.example.com", "x.q.r.example.com", "p.q.x.b.example.com"}
	for _, pat := range patterns {
		m := New(policy.Network{Egress: []policy.EgressRule{{Field: pat, Host: pat, Ports: []int{443}}}})
		for _, name := range names {
			got := m.Match(name, 443) != nil
			if want := policy.HostMatches(pat, name); got != want {
				t.Errorf("pattern %q, name %q: Match = %v, policy.HostMatches = %v", pat, name, got, want)
			}
		}
	}
}

// TestNormalizeIdempotent: a normalised name normalises to itself, and
// a name that is no host name is never matched by a rule.
func TestNormalizeIdempotent(t *testing.T) {
	for _, in := range []string{"API.Example.COM.", "Bücher.example", "xn--bcher-kva.example", "a\x00b.com", "a b.com", "-a.com"} {
		once := Normalize(in)
		if twice := Normalize(once); twice != once {
			t.Errorf("Normalize(%q) = %q, Normalize of that = %q", in, once, twice)
		}
	}
}

// TestMatchLabelWildcards: NVIDIA OpenShell's "*" inside a label, next to
// the other forms, decided for the gateway's DNS and proxy alike.
func TestMatchLabelWildcards(t *testing.T) {
	m := New(policy.Network{Egress: []policy.EgressRule{
		{Field: "vertex", Host: "*-aiplatform.googleapis.com", Ports: []int{443}},
		{Field: "any", Host: "*.googleapis.com", Ports: []int{443}},
		{Field: "api", Host: "api-*.example.com", Ports: []int{443, 8443}},
		{Field: "s3", Host: "s3.*.amazonaws.com", Ports: []int{443}},
	}})
	for _, tc := range []struct {
		name string
		port int
		want string
	}{
		{"us-central1-aiplatform.googleapis.com", 443, "vertex"}, // the more specific first
		{"US-CENTRAL1-AIPlatform.googleapis.com.", 443, "vertex"},
		{"storage.googleapis.com", 443, "any"},
		{"a.b-aiplatform.googleapis.com", 443, ""},
		{"api-eu.example.com", 8443, "api"},
		{"api-eu.example.com", 80, ""},
		{"eu.api-eu.example.com", 443, ""},
		{"apieu.example.com", 443, ""},
		{"s3.eu-west-1.amazonaws.com", 443, "s3"},
		{"s3.amazonaws.com", 443, ""},
		{"x.s3.eu-west-1.amazonaws.com", 443, ""},
	} {
		got := ""
		if r := m.Match(tc.name, tc.port); r != nil {
			got = r.Field
		}
		if got != tc.want {
			t.Errorf("Match(%q, %d) = %q, want %q", tc.name, tc.port, got, tc.want)
		}
	}
	if got := len(m.Name("us-central1-aiplatform.googleapis.com")); got != 2 {
		t.Errorf("Name lists %d rules, want both", got)
	}
}

// TestAddressRule: a rule without a host (NVIDIA OpenShell's hostless
// endpoint) opens its allowed_ips by address on its ports, never a name.
func TestAddressRule(t *testing.T) {
	m := New(policy.Network{BlockPrivateRanges: true, Egress: []policy.EgressRule{
		{Field: "db", Ports: []int{5432}, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.5.0/24"), netip.MustParsePrefix("fc00::/7")}},
	}})
	if m.Empty() {
		t.Error("a Matcher with a rule by address is not empty")
	}
	if m.Name("db.internal.example.com") != nil || m.Match("", 5432) != nil {
		t.Error("a rule by address matched a name")
	}
	for _, tc := range []struct {
		addr string
		port int
		rule bool
		why  string
	}{
		{"10.0.5.20", 5432, true, ""},
		{"10.0.5.20", 443, false, ""},
		{"10.0.6.1", 5432, false, ""},
		{"fd12::1", 5432, true, ""},
		// fc00::/7 holds the AWS IPv6 metadata address; it stays refused.
		{"fd00:ec2::254", 5432, true, "cloud metadata service"},
	} {
		r := m.MatchIP(netip.MustParseAddr(tc.addr), tc.port)
		if (r != nil) != tc.rule {
			t.Errorf("MatchIP(%s, %d) = %v, want a rule: %v", tc.addr, tc.port, r, tc.rule)
		}
		if r == nil {
			continue
		}
		if why := m.CheckIP(netip.MustParseAddr(tc.addr), r); why != tc.why {
			t.Errorf("CheckIP(%s) = %q, want %q", tc.addr, why, tc.why)
		}
	}
}

func TestCheckIP(t *testing.T) {
	m := New(network())
	r2 := m.Match("internal.corp.test", 8080)
	for _, tc := range []struct {
		addr string
		rule *policy.EgressRule
		ok   bool
	}{
		{"93.184.216.34", nil, true},
		{"2606:2800:220:1::1", nil, true},
		{"169.254.169.254", nil, false},
		{"::ffff:169.254.169.254", nil, false},
		{"fd00:ec2::254", nil, false},
		{"64:ff9b::a9fe:a9fe", nil, false},
		{"2002:a9fe:a9fe::1", nil, false},
		{"127.0.0.1", nil, false},
		{"::1", nil, false},
		{"0.0.0.0", nil, false},
		{"10.1.2.3", nil, false},
		{"10.1.2.3", r2, true},
		{"10.2.2.3", r2, false},
		{"192.168.1.1", nil, false},
		{"172.20.0.1", nil, false},
		{"100.64.0.1", nil, false},
		{"fd12::1", nil, false},
		{"224.0.0.1", nil, false},
		{"255.255.255.255", nil, false},
	} {
		reason := m.CheckIP(netip.MustParseAddr(tc.addr), tc.rule)
		if (reason == "") != tc.ok {
			t.Errorf("CheckIP(%s) = %q, want ok=%v", tc.addr, reason, tc.ok)
		}
	}
	open := network()
	open.BlockPrivateRanges = false
	if reason := New(open).CheckIP(netip.MustParseAddr("10.9.9.9"), nil); reason != "" {
		t.Errorf("block_private_ranges=false still blocks 10.9.9.9: %s", reason)
	}
	if reason := New(open).CheckIP(netip.MustParseAddr("169.254.169.254"), nil); reason == "" {
		t.Errorf("block_private_ranges=false opened the metadata service")
	}
}

func TestMatchIP(t *testing.T) {
	m := New(network())
	if r := m.MatchIP(netip.MustParseAddr("10.1.0.9"), 8080); r == nil || r.Field != "r2" {
		t.Errorf("MatchIP(10.1.0.9:8080) = %v, want r2", r)
	}
	if r := m.MatchIP(netip.MustParseAddr("::ffff:10.1.0.9"), 8080); r == nil {
		t.Errorf("MatchIP of the IPv4-mapped form missed")
	}
	if r := m.MatchIP(netip.MustParseAddr("10.1.0.9"), 80); r != nil {
		t.Errorf("MatchIP on another port = %v", r.Field)
	}
}

func TestHostIP(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "" when it is a name
	}{
		{"169.254.169.254", "169.254.169.254"},
		{"2852039166", "169.254.169.254"},
		{"0xa9fea9fe", "169.254.169.254"},
		{"0xA9FEA9FE", "169.254.169.254"},
		{"0251.0376.0251.0376", "169.254.169.254"},
		{"0xa9.0xfe.0xa9.0xfe", "169.254.169.254"},
		{"169.254.43518", "169.254.169.254"},
		{"169.16689662", "169.254.169.254"},
		{"[fd00:ec2::254]", "fd00:ec2::254"},
		{"[::ffff:a9fe:a9fe]", "::ffff:169.254.169.254"},
		{"127.1", "127.0.0.1"},
		{"api.example.com", ""},
		{"1.2.3.4.5", ""},
		{"256.1.1.1", ""},
		{"4294967296", ""},
		{"08.1.1.1", ""},
		{"", ""},
	} {
		a, ok := HostIP(tc.in)
		got := ""
		if ok {
			got = a.String()
		}
		if got != tc.want {
			t.Errorf("HostIP(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzHostIP(f *testing.F) {
	for _, s := range []string{"2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "[::1]", "a.b",
		"Bücher.example.", "xn--bcher-kva.example", "a\u3002b", "ｅｘａｍｐｌｅ.com", "a..b", "a\x00.b", "0.0.0.10", "0\u2137"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, ok := HostIP(s)
		if ok && !a.IsValid() {
			t.Fatalf("HostIP(%q) returned an invalid address", s)
		}
		// The name side of the same input: normalisation is idempotent,
		// its result is a plain ASCII host name, and an IP never
		// normalises into a name a rule could match.
		n, err := policy.NormalizeHost(s)
		if err != nil {
			return
		}
		if again, err := policy.NormalizeHost(n); err != nil || again != n {
			t.Fatalf("NormalizeHost(%q) = %q, but NormalizeHost(%q) = %q, %v", s, n, n, again, err)
		}
		for i := 0; i < len(n); i++ {
			if c := n[i]; c >= 0x80 || c <= ' ' || c == 0x7f || 'A' <= c && c <= 'Z' {
				t.Fatalf("NormalizeHost(%q) = %q holds byte %#x", s, n, c)
			}
		}
		if len(n) > 253 {
			t.Fatalf("NormalizeHost(%q) is %d bytes long", s, len(n))
		}
		// An address is never a name: validation refuses it as a rule's
		// host and the matcher never matches it by name.
		if _, isIP := HostIP(n); ok || isIP {
			return
		}
		// A rule for the name matches the name, in every spelling that
		// normalises to it, and one label above it "*." matches too.
		m := New(policy.Network{Egress: []policy.EgressRule{{Host: n, Ports: []int{443}}}})
		if m.Match(s, 443) == nil || m.Match(n, 443) == nil {
			t.Fatalf("a rule for %q does not match %q", n, s)
		}
		if _, parent, ok := strings.Cut(n, "."); ok && strings.Contains(parent, ".") {
			if p, err := policy.NormalizeHostPattern("*." + parent); err == nil {
				m := New(policy.Network{Egress: []policy.EgressRule{{Host: p, Ports: []int{443}}}})
				if m.Match(s, 443) == nil || !policy.HostMatches(p, n) {
					t.Fatalf("%q does not match %q", p, s)
				}
			}
		}
	})
}

// BenchmarkMatch1000 is the gateway's per-decision cost with 1,000 rules
// (half exact, half wildcards): the goal is under 10 µs.
func BenchmarkMatch1000(b *testing.B) {
	n := policy.Network{BlockPrivateRanges: true, DNSFiltering: true}
	for i := range 1000 {
		host := fmt.Sprintf("api%d.service%d.example.com", i, i%37)
		if i%2 == 1 {
			host = fmt.Sprintf("*.tenant%d.example.net", i)
		}
		n.Egress = append(n.Egress, policy.EgressRule{Field: fmt.Sprint(i), Host: host, Ports: []int{443}})
	}
	m := New(n)
	names := []string{"api998.service36.example.com", "x.y.tenant999.example.net", "data0123456789.evil.example", "api1.example.com"}
	ip := netip.MustParseAddr("93.184.216.34")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		r := m.Match(names[i%len(names)], 443)
		_ = m.CheckIP(ip, r)
	}
}
