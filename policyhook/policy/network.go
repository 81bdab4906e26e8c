package policy

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// ForbiddenRange is a range no sandbox may reach, whatever a rule says.
type ForbiddenRange struct {
	Prefix netip.Prefix
	What   string
	// Point marks a single address inside ranges a policy may
	// legitimately open (the AWS IPv6 metadata address inside fc00::/7):
	// allowed_ips may hold a wider prefix around it, never the address
	// itself, and the egress gateway refuses the address whatever
	// allowed_ips say. Any overlap with a range that is not a Point is
	// refused.
	Point bool
}

// ForbiddenRanges may never be opened by allowed_ips, and the egress
// gateway refuses them whatever DNS answers: the host's loopback,
// link-local (which holds the cloud metadata service), "this network",
// and the AWS IPv6 metadata address.
var ForbiddenRanges = []ForbiddenRange{
	{Prefix: netip.MustParsePrefix("127.0.0.0/8"), What: "loopback"},
	{Prefix: netip.MustParsePrefix("::1/128"), What: "loopback"},
	{Prefix: netip.MustParsePrefix("169.254.0.0/16"), What: "link-local (cloud metadata)"},
	{Prefix: netip.MustParsePrefix("fe80::/10"), What: "link-local"},
	{Prefix: netip.MustParsePrefix("0.0.0.0/8"), What: "0.0.0.0/8"},
	{Prefix: netip.MustParsePrefix("::/128"), What: "the unspecified address"},
	{Prefix: netip.MustParsePrefix("fd00:ec2::254/128"), What: "cloud metadata", Point: true},
}

// ports reads the port/ports pair of an endpoint: exactly one must be set.
func ports(port int64, list []int64, field string, s *errSink) []int {
	switch {
	case port != 0 && len(list) > 0:
		s.addf(field+".ports", "cannot be set together with port")
		return nil
	case port == 0 && len(list) == 0:
		s.addf(field+".port", "is required (or ports)")
		return nil
	case port != 0:
		if !validPort(port) {
			s.addf(field+".port", "%d is not a port (1-65535)", port)
			return nil
		}
		return []int{int(port)}
	}
	var out []int
	seen := map[int64]bool{}
	for i, p := range list {
		f := fmt.Sprintf("%s.ports[%d]", field, i)
		switch {
		case !validPort(p):
			s.addf(f, "%d is not a port (1-65535)", p)
		case seen[p]:
			s.addf(f, "port %d is listed twice", p)
		default:
			seen[p] = true
			out = append(out, int(p))
		}
	}
	return out
}

func validPort(p int64) bool { return p >= 1 && p <= 65535 }

// prefixes parses allowed_ips: addresses or CIDR ranges, none of which may
// reach the host or the metadata service.
func prefixes(list []string, field string, s *errSink) []netip.Prefix {
	var out []netip.Prefix
	for i, raw := range list {
		f := fmt.Sprintf("%s[%d]", field, i)
		pfx, err := parsePrefix(raw)
		if err != nil {
			s.addf(f, "%q is not an IP address or CIDR range", raw)
			continue
		}
		if what := forbiddenOverlap(pfx); what != "" {
			s.addf(f, "%s covers %s, which a sandbox may never reach", raw, what)
			continue
		}
		out = append(out, pfx)
	}
	return out
}

func parsePrefix(raw string) (netip.Prefix, error) {
	if strings.Contains(raw, "/") {
		p, err := netip.ParsePrefix(raw)
		if err != nil {
			return netip.Prefix{}, err
		}
		if p.Addr().Is4In6() {
			bits := p.Bits() - 96
			if bits < 0 {
				bits = 0
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), bits)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(raw)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// forbiddenOverlap names the forbidden range p would open, or "". A
// prefix wider than a Point is not refused for it: the point stays
// unreachable at the gateway (egress.Matcher.CheckIP refuses every
// ForbiddenRange before it looks at allowed_ips).
func forbiddenOverlap(p netip.Prefix) string {
	for _, f := range ForbiddenRanges {
		if f.Prefix.Overlaps(p) && !(f.Point && p.Bits() < f.Prefix.Bits()) {
			return f.What
		}
	}
	return ""
}

var rateRE = regexp.MustCompile(`^([0-9]+)\s*/\s*(second|minute|hour|s|m|h)$`)

func rateLimit(raw, field string, s *errSink) *RateLimit {
	m := rateRE.FindStringSubmatch(strings.TrimSpace(raw))
	if m == nil {
		s.addf(field, "%q is not a rate: write COUNT/second, COUNT/minute or COUNT/hour, e.g. \"5/minute\"", raw)
		return nil
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil || n <= 0 {
		s.addf(field, "%q: the count must be a positive integer", raw)
		return nil
	}
	per := map[string]time.Duration{"second": time.Second, "s": time.Second, "minute": time.Minute, "m": time.Minute, "hour": time.Hour, "h": time.Hour}[m[2]]
	return &RateLimit{Count: n, Per: per}
}
