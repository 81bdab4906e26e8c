package cli

import (
	"net/netip"
	"slices"
	"time"

	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/runtime/monitor"
)

// Pairing window: the gateway decides a connection after the sandbox's
// connect (a non-blocking connect returns first); the two clocks are the
// host's.
const (
	auditBefore = 500 * time.Millisecond
	auditAfter  = 5 * time.Second
)

// readAudit reads sandbox id's audit log in dir (the rotated file
// first); a log that is not there is none.
func readAudit(dir, id string) []*egress.Event {
	var out []*egress.Event
	for _, f := range auditLogFiles(dir, id) {
		// Lines the reader skips are the audit command's to report.
		_ = egress.ReadAuditLog(f, func(e *egress.Event) error {
			if e.Sandbox == id {
				out = append(out, e)
			}
			return nil
		})
	}
	slices.SortStableFunc(out, func(a, b *egress.Event) int { return a.Time.Compare(b.Time) })
	return out
}

// joinAudit pairs inet connects in events (in time order) with the
// gateway's audit lines for those connections: each line (in time order)
// goes to the latest unpaired connect before it, within the window, that
// it can be about: a request line (kinds connect, http, https) to a
// connect to the egress proxy, a line with the connect's address and
// port to a direct one (the gateway captured it). A connection the
// gateway logged nothing for (closed before it sent a byte) stays
// unpaired. It matches by destination and time only: under concurrency
// a line may be paired with another process's connect. DNS goes by name,
// not by connection, and is not paired.
func joinAudit(events []*monitor.Event, audit []*egress.Event) map[*monitor.Event]*egress.Event {
	out := map[*monitor.Event]*egress.Event{}
	type conn struct {
		e       *monitor.Event
		dst     netip.AddrPort
		proxied bool
	}
	gw := egress.GatewayAddr.Addr()
	var conns []conn
	for _, e := range events {
		if e.Kind != monitor.KindConnect || (e.Family != "inet" && e.Family != "inet6") {
			continue
		}
		dst, err := netip.ParseAddrPort(e.Dest)
		if err != nil || (dst.Addr().Unmap() == gw && dst.Port() == 53) {
			continue
		}
		conns = append(conns, conn{e, dst, dst.Addr().Unmap() == gw && dst.Port() == egress.ProxyPort})
	}
	for _, a := range audit {
		ip, ipErr := netip.ParseAddr(a.IP)
		for i := len(conns) - 1; i >= 0; i-- {
			c := conns[i]
			if c.e.Time.After(a.Time.Add(auditBefore)) || out[c.e] != nil {
				continue
			}
			if c.e.Time.Before(a.Time.Add(-auditAfter)) {
				break
			}
			var ok bool
			if c.proxied {
				ok = a.Kind == "connect" || a.Kind == "http" || a.Kind == "https"
			} else {
				ok = ipErr == nil && ip.Unmap() == c.dst.Addr().Unmap() && a.Port == int(c.dst.Port()) && a.Kind != "dns"
			}
			if ok {
				out[c.e] = a
				break
			}
		}
	}
	return out
}

// auditNote is how the replay shows the gateway's decision.
func auditNote(a *egress.Event) string {
	s := " → " + shown(a.Decision)
	if a.Host != "" {
		s += " " + shown(a.Host)
	}
	if a.Rule != "" {
		s += " (rule " + shown(a.Rule) + ")"
	}
	if a.Reason != "" {
		s += ": " + shown(a.Reason)
	}
	return s
}
