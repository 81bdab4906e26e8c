package egress

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// handleCatch takes TCP to ports the gateway does not otherwise serve. The
// connection carries no name, so the address decides: it must be one the
// gateway's DNS gave the sandbox for a name a rule allows on this port
// (so "names, not IPs" holds for any TCP protocol: ssh, databases), or
// be in a rule's allowed_ips. Anything else is reset at once.
func (g *Gateway) handleCatch(c net.Conn) {
	defer c.Close()
	rs := g.current()
	dst, err := originalDst(rawConn(c))
	if err != nil {
		g.log.Warn("catch-all: no original destination", "err", err)
		return
	}
	ip, port := dst.Addr(), int(dst.Port())
	ev := Event{Kind: "tcp", Host: ip.String(), Port: port, IP: ip.String()}
	ctx, cancel := context.WithTimeout(withPeer(context.Background(), g.peerOf(c, dst)), 15*time.Second)
	defer cancel()
	t, d := g.authorizeAddr(ctx, rs, ip, port)
	g.who(ctx, rs, &ev, t, d)
	if d == nil {
		if ev.Host = t.name; ev.Host == "" {
			ev.Host = ip.String()
		}
		d = t.limit(rs)
	}
	if d != nil {
		ev.Rule, ev.Decision, ev.Reason = ruleName(d.rule), Deny, d.reason
		g.event(rs, ev)
		if tc, ok := rawConn(c).(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset, not a wait
		}
		return
	}
	var hello, head []byte
	if t.rule.TLSRequired {
		// The rule wants TLS: a well-formed ClientHello before anything
		// is dialled, and TLS records after it.
		_ = c.SetReadDeadline(time.Now().Add(headerTimeout))
		raw, err := readClientHello(c)
		_ = c.SetReadDeadline(time.Time{})
		if err == nil {
			hello = raw
		} else {
			if d := t.violate(deny(t.rule, "%s", err)); d != nil {
				ev.Rule, ev.Decision, ev.Reason = ruleName(d.rule), Deny, d.reason
				g.event(rs, ev)
				return
			}
			head = raw // audit mode: what was read goes on, unchecked
		}
	}
	defer tracked(c).hold()()
	g.dialAndRelay(ctx, rs, ev, t, hello, head, c)
}

// authorizeAddr decides a connection known only by its address: a name
// the gateway resolved to it, with a rule for that name on port, or a
// rule's allowed_ips.
func (g *Gateway) authorizeAddr(ctx context.Context, rs *rules, ip netip.Addr, port int) (*target, *denial) {
	names := g.names.namesOf(ip)
	var refused *denial
	for _, name := range names {
		t, d := choose(ctx, rs.match(name, port), func() string { return fmt.Sprintf("%s (%s) on port %d", ip, name, port) })
		if d != nil {
			refused = cmp.Or(refused, d)
			continue
		}
		if t != nil {
			if reason := g.checkIP(rs, ip, t.rule); reason != "" {
				return nil, deny(t.rule, "%s: %s", ip, reason)
			}
			t.addrs, t.port, t.name = []netip.Addr{ip}, port, name
			return t, nil
		}
	}
	if refused != nil {
		return nil, refused
	}
	if len(names) > 0 {
		return nil, deny(nil, "%s (%s) on port %d: no rule allows that port", ip, names[0], port)
	}
	return g.authorizeIP(ctx, rs, ip, port)
}

// originalDst is where the sandbox sent a connection the firewall
// redirected: conntrack keeps it (SO_ORIGINAL_DST).
func originalDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("not a TCP connection")
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var out netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		// The kernel writes a sockaddr_in; GetsockoptIPv6Mreq is the
		// x/sys call that reads 16 raw bytes back.
		m, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if err != nil {
			serr = err
			return
		}
		b := m.Multiaddr
		port := binary.BigEndian.Uint16(b[2:4])
		out = netip.AddrPortFrom(netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}), port)
	})
	if err != nil {
		return out, err
	}
	return out, serr
}
