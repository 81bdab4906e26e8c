// Package egress decides, for the egress gateway, whether a sandbox may
// reach a host name or an address on a port. It is the policy's network
// section turned into lookup tables: pure, safe for concurrent use, and
// fast enough to run on every DNS question and every connection.
package egress

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/openshell/openshell/policyhook/policy"
)

// Matcher answers egress questions for one policy. Build a new one to
// change the rules; a Matcher is never modified.
type Matcher struct {
	exact    map[string][]*policy.EgressRule
	oneLabel map[string][]*policy.EgressRule // "*.example.com" under "example.com"
	anyDepth map[string][]*policy.EgressRule // "**.example.com" under "example.com"
	// labels holds the other wildcards ("*-api.example.com",
	// "s3.*.amazonaws.com") under the name after their last wildcard
	// label; a name is tested against the few under each of its parents.
	labels       map[string][]labelRule
	withIPs      []*policy.EgressRule // rules that list allowed_ips, hostless ones too
	blockPrivate bool
	dnsFiltering bool
}

type labelRule struct {
	pattern string // normalised
	rule    *policy.EgressRule
}

// New builds the Matcher for a validated network policy.
func New(n policy.Network) *Matcher {
	m := &Matcher{
		exact:        map[string][]*policy.EgressRule{},
		oneLabel:     map[string][]*policy.EgressRule{},
		anyDepth:     map[string][]*policy.EgressRule{},
		labels:       map[string][]labelRule{},
		blockPrivate: n.BlockPrivateRanges,
		dnsFiltering: n.DNSFiltering,
	}
	for i := range n.Egress {
		r := &n.Egress[i]
		if r.Host == "" {
			// A rule by address (NVIDIA OpenShell's hostless endpoint):
			// its allowed_ips alone, never a name.
			if len(r.AllowedIPs) > 0 {
				m.withIPs = append(m.withIPs, r)
			}
			continue
		}
		// Validation stored r.Host normalised; a pattern that does not
		// normalise (a Network built by hand) allows nothing.
		pattern, err := policy.NormalizeHostPattern(r.Host)
		if err != nil {
			continue
		}
		switch base, w := policy.SplitHostPattern(pattern); w {
		case policy.OneLabel:
			m.oneLabel[base] = append(m.oneLabel[base], r)
		case policy.AnyDepth:
			m.anyDepth[base] = append(m.anyDepth[base], r)
		case policy.Labels:
			m.labels[base] = append(m.labels[base], labelRule{pattern, r})
		default:
			m.exact[base] = append(m.exact[base], r)
		}
		if len(r.AllowedIPs) > 0 {
			m.withIPs = append(m.withIPs, r)
		}
	}
	return m
}

// Empty reports whether no rule allows anything.
func (m *Matcher) Empty() bool {
	return len(m.exact) == 0 && len(m.oneLabel) == 0 && len(m.anyDepth) == 0 && len(m.labels) == 0 && len(m.withIPs) == 0
}

// DNSFiltering reports whether the gateway's DNS answers only allowed names.
func (m *Matcher) DNSFiltering() bool { return m.dnsFiltering }

// Normalize returns name in the form rules are matched in
// (policy.NormalizeHost: ASCII, lower case, no trailing dot). A name that
// is not a valid host name comes back lower-cased and without its
// trailing dot, for messages only: Name and Match never match it.
func Normalize(name string) string {
	if n, err := policy.NormalizeHost(name); err == nil {
		return n
	}
	return strings.TrimSuffix(strings.ToLower(name), ".")
}

// Name returns the rules whose host pattern covers name, on any port: the
// DNS server answers a name when this is not empty. Exact rules come
// first, then wildcards from the most specific suffix up (at each, the
// patterns with a "*" inside a label, then "*." only one label above its
// domain, then "**." at any depth), as policy.HostMatches defines them. A
// name that does not normalise matches nothing. Rules by address (no
// host) never match a name.
func (m *Matcher) Name(name string) []*policy.EgressRule {
	name, err := policy.NormalizeHost(name)
	if err != nil {
		return nil
	}
	out := m.exact[name]
	add := func(rs []*policy.EgressRule) {
		if len(rs) == 0 {
			return
		}
		if out == nil {
			out = rs
		} else {
			out = append(out[:len(out):len(out)], rs...)
		}
	}
	for rest, first := name, true; ; first = false {
		i := strings.IndexByte(rest, '.')
		if i < 0 {
			break
		}
		rest = rest[i+1:]
		for _, lr := range m.labels[rest] {
			if policy.HostMatches(lr.pattern, name) {
				out = append(out[:len(out):len(out)], lr.rule)
			}
		}
		if first {
			add(m.oneLabel[rest])
		}
		add(m.anyDepth[rest])
	}
	return out
}

// Match returns the first rule that allows name on port, or nil.
func (m *Matcher) Match(name string, port int) *policy.EgressRule {
	for _, r := range m.Name(name) {
		if hasPort(r, port) {
			return r
		}
	}
	return nil
}

// MatchAll returns every rule that allows name on port, in Match's order:
// a rule scoped to some binaries may give way to a later one.
func (m *Matcher) MatchAll(name string, port int) []*policy.EgressRule {
	var out []*policy.EgressRule
	for _, r := range m.Name(name) {
		if hasPort(r, port) {
			out = append(out, r)
		}
	}
	return out
}

// MatchIPAll returns every rule whose allowed_ips hold addr on port, in
// MatchIP's order.
func (m *Matcher) MatchIPAll(addr netip.Addr, port int) []*policy.EgressRule {
	addr = addr.Unmap()
	var out []*policy.EgressRule
	for _, r := range m.withIPs {
		if hasPort(r, port) && inAllowed(r, addr) {
			out = append(out, r)
		}
	}
	return out
}

// MatchIP returns the first rule whose allowed_ips hold addr on port, or
// nil: a raw address is reachable only through such a rule.
func (m *Matcher) MatchIP(addr netip.Addr, port int) *policy.EgressRule {
	addr = addr.Unmap()
	for _, r := range m.withIPs {
		if hasPort(r, port) && inAllowed(r, addr) {
			return r
		}
	}
	return nil
}

func hasPort(r *policy.EgressRule, port int) bool {
	for _, p := range r.Ports {
		if p == port {
			return true
		}
	}
	return false
}

func inAllowed(r *policy.EgressRule, addr netip.Addr) bool {
	for _, p := range r.AllowedIPs {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// never are unreachable whatever a rule says: the ranges validation
// refuses in allowed_ips (so a DNS answer cannot smuggle them in either),
// with the metadata addresses named first for a clear reason, and what
// is never a unicast destination.
var never = slices.Concat(
	[]policy.ForbiddenRange{
		{Prefix: netip.MustParsePrefix("169.254.169.254/32"), What: "cloud metadata service"},
		{Prefix: netip.MustParsePrefix("fd00:ec2::254/128"), What: "cloud metadata service"},
		{Prefix: netip.MustParsePrefix("100.100.100.200/32"), What: "cloud metadata service"},
	},
	policy.ForbiddenRanges,
	[]policy.ForbiddenRange{
		{Prefix: netip.MustParsePrefix("224.0.0.0/4"), What: "multicast"},
		{Prefix: netip.MustParsePrefix("ff00::/8"), What: "multicast"},
		{Prefix: netip.MustParsePrefix("240.0.0.0/4"), What: "reserved (240.0.0.0/4)"},
	},
)

// private are unreachable unless block_private_ranges is false or a
// rule's allowed_ips lists them.
var private = []policy.ForbiddenRange{
	{Prefix: netip.MustParsePrefix("10.0.0.0/8"), What: "private range 10.0.0.0/8"},
	{Prefix: netip.MustParsePrefix("172.16.0.0/12"), What: "private range 172.16.0.0/12"},
	{Prefix: netip.MustParsePrefix("192.168.0.0/16"), What: "private range 192.168.0.0/16"},
	{Prefix: netip.MustParsePrefix("100.64.0.0/10"), What: "shared address space 100.64.0.0/10"},
	{Prefix: netip.MustParsePrefix("fc00::/7"), What: "private range fc00::/7"},
}

var (
	nat64  = netip.MustParsePrefix("64:ff9b::/96")
	sixTo4 = netip.MustParsePrefix("2002::/16")
)

// embedded returns the IPv4 address an IPv6 address carries (IPv4-mapped,
// NAT64, 6to4), so that none of them reaches what its IPv4 form may not.
func embedded(a netip.Addr) (netip.Addr, bool) {
	if a.Is4In6() {
		return a.Unmap(), true
	}
	b := a.As16()
	switch {
	case nat64.Contains(a):
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}), true
	case sixTo4.Contains(a):
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}), true
	}
	return netip.Addr{}, false
}

// CheckIP says whether the sandbox may connect to addr under rule r (nil
// for a connection no rule named): "" when it may, else why not.
func (m *Matcher) CheckIP(addr netip.Addr, r *policy.EgressRule) string {
	if !addr.IsValid() {
		return "no address"
	}
	addrs := []netip.Addr{addr}
	if v4, ok := embedded(addr); ok {
		addrs = append(addrs, v4)
	}
	for _, a := range addrs {
		if a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			return "broadcast"
		}
		for _, b := range never {
			if b.Prefix.Contains(a) {
				return b.What
			}
		}
	}
	if !m.blockPrivate {
		return ""
	}
	for _, a := range addrs {
		for _, b := range private {
			if b.Prefix.Contains(a) && (r == nil || !inAllowed(r, a)) {
				return b.What + " (block_private_ranges)"
			}
		}
	}
	return ""
}
