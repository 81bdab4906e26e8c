package egress

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// dropLog writes the audit lines for traffic the gateway never relays (UDP
// other than DNS, ICMP), at most a steady trickle of them: a flood must
// not fill the disk. What is left out is counted in the next line.
type dropLog struct {
	mu         sync.Mutex
	lim        *rate.Limiter
	suppressed int
}

func newDropLog() *dropLog { return &dropLog{lim: rate.NewLimiter(20, 50)} }

func (g *Gateway) dropped(kind string, dst netip.AddrPort, why string) {
	d := g.drops
	d.mu.Lock()
	if !d.lim.Allow() {
		d.suppressed++
		d.mu.Unlock()
		return
	}
	if d.suppressed > 0 {
		why = fmt.Sprintf("%s (%d more like it not logged)", why, d.suppressed)
		d.suppressed = 0
	}
	d.mu.Unlock()
	rs := g.current()
	g.event(rs, Event{Kind: kind, Host: dst.Addr().String(), Port: int(dst.Port()), IP: dst.Addr().String(), Decision: Deny, Reason: why})
}

// auditUDP reads what TPROXY hands over and audits it; nothing is sent
// anywhere.
func (g *Gateway) auditUDP(c *net.UDPConn) {
	buf := make([]byte, 2048)
	oob := make([]byte, 256)
	for {
		_, oobn, _, _, err := c.ReadMsgUDP(buf, oob)
		if err != nil {
			return
		}
		dst, ok := origDst(oob[:oobn])
		if !ok {
			continue
		}
		g.dropped("udp", dst, "UDP other than DNS goes nowhere")
	}
}

// origDst reads IP_ORIGDSTADDR from a datagram's control messages.
func origDst(oob []byte) (netip.AddrPort, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= 8 {
			port := binary.BigEndian.Uint16(m.Data[2:4])
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[4:8])), port), true
		}
	}
	return netip.AddrPort{}, false
}

// auditICMP reads the sandbox's ICMP off the raw socket (IP header
// included) and audits it.
func (g *Gateway) auditICMP(f *os.File) {
	buf := make([]byte, 2048)
	for {
		n, err := f.Read(buf)
		if err != nil {
			return
		}
		if n < 20 || buf[0]>>4 != 4 {
			continue
		}
		ihl := int(buf[0]&0x0f) * 4
		dst := netip.AddrFrom4([4]byte(buf[16:20]))
		what := "ICMP goes nowhere"
		if n > ihl {
			what = fmt.Sprintf("ICMP type %d goes nowhere", buf[ihl])
		}
		g.dropped("icmp", netip.AddrPortFrom(dst, 0), what)
	}
}
