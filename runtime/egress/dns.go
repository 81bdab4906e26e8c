package egress

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/openshell/openshell/policyhook/egress"
)

// maxTTL caps the TTL the sandbox is given, so that a reload that removes
// a name takes effect in its resolver soon.
const maxTTL = 60

// resolver asks the upstream DNS server for A records. It sends only the
// one question it was given: never anything the sandbox wrote.
type resolver struct {
	upstream string
	timeout  time.Duration

	mu    sync.Mutex
	cache map[string]cached
}

// cached is an upstream answer kept for its TTL (at most maxTTL), so a
// connection the proxy resolves right after the sandbox's own lookup
// costs no second trip upstream.
type cached struct {
	ans   *answer
	until time.Time
}

func (r *resolver) lookupA(ctx context.Context, name string) (*answer, error) {
	r.mu.Lock()
	c, ok := r.cache[name]
	r.mu.Unlock()
	if ok && time.Now().Before(c.until) {
		return c.ans, nil
	}
	ans, err := r.query(ctx, name)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cache == nil || len(r.cache) > 4096 {
		r.cache = map[string]cached{} // crude, and bounded: a sandbox that asks for this many names starts over
	}
	r.cache[name] = cached{ans: ans, until: time.Now().Add(ans.ttl)}
	return ans, nil
}

type answer struct {
	addrs []netip.Addr
	ttl   time.Duration
}

// errNXDomain is the upstream's answer that a name does not exist.
var errNXDomain = errors.New("no such host")

// SystemResolver is the first nameserver (IP:53) a resolv.conf names.
func SystemResolver(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("find upstream DNS: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			return net.JoinHostPort(fields[1], "53"), nil
		}
	}
	return "", fmt.Errorf("find upstream DNS: %s names no nameserver; set egress.dns_upstream", path)
}

func (r *resolver) query(ctx context.Context, name string) (*answer, error) {
	q, err := dnsmessage.NewName(name + ".")
	if err != nil {
		return nil, fmt.Errorf("%q: %w", name, err)
	}
	var idb [2]byte
	_, _ = rand.Read(idb[:])
	id := binary.BigEndian.Uint16(idb[:])
	msg := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: q, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
	}
	packed, err := msg.Pack()
	if err != nil {
		return nil, fmt.Errorf("dns query %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", r.upstream)
	if err != nil {
		return nil, fmt.Errorf("dns upstream %s: %w", r.upstream, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := c.Write(packed); err != nil {
		return nil, fmt.Errorf("dns upstream %s: %w", r.upstream, err)
	}
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, fmt.Errorf("dns upstream %s: %w", r.upstream, err)
		}
		var p dnsmessage.Parser
		h, err := p.Start(buf[:n])
		if err != nil || h.ID != id || !h.Response {
			continue // not the answer to our question: keep waiting
		}
		return readAnswer(&p, h)
	}
}

func readAnswer(p *dnsmessage.Parser, h dnsmessage.Header) (*answer, error) {
	switch h.RCode {
	case dnsmessage.RCodeSuccess:
	case dnsmessage.RCodeNameError:
		return nil, errNXDomain
	default:
		return nil, fmt.Errorf("upstream answered %s", h.RCode)
	}
	if err := p.SkipAllQuestions(); err != nil {
		return nil, fmt.Errorf("dns answer: %w", err)
	}
	a := &answer{ttl: maxTTL * time.Second}
	for {
		rh, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("dns answer: %w", err)
		}
		// The answer section holds the CNAME chain of our one question
		// and its addresses; the addresses are all we hand on.
		if rh.Type != dnsmessage.TypeA {
			if err := p.SkipAnswer(); err != nil {
				return nil, fmt.Errorf("dns answer: %w", err)
			}
			continue
		}
		r, err := p.AResource()
		if err != nil {
			return nil, fmt.Errorf("dns answer: %w", err)
		}
		a.addrs = append(a.addrs, netip.AddrFrom4(r.A))
		if ttl := time.Duration(rh.TTL) * time.Second; ttl < a.ttl {
			a.ttl = ttl
		}
	}
	return a, nil
}

// serveDNSUDP answers the sandbox's DNS questions over UDP.
func (g *Gateway) serveDNSUDP(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		// A bounded number answered at once (each may wait on
		// upstream): a flood of questions cannot grow the gateway. The
		// rest are dropped, as a busy resolver would; clients ask again.
		select {
		case g.dnsSlots <- struct{}{}:
		default:
			continue
		}
		q := append([]byte(nil), buf[:n]...)
		go func() {
			defer func() { <-g.dnsSlots }()
			if out := g.answerDNS(q, 512); out != nil {
				_, _ = pc.WriteTo(out, from)
			}
		}()
	}
}

// handleDNSTCP answers DNS over one TCP connection: two-byte length,
// then the message, as many as the client sends.
func (g *Gateway) handleDNSTCP(c net.Conn) {
	defer c.Close()
	for {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		var n uint16
		if err := binary.Read(c, binary.BigEndian, &n); err != nil {
			return
		}
		q := make([]byte, n)
		if _, err := io.ReadFull(c, q); err != nil {
			return
		}
		out := g.answerDNS(q, 65535)
		if out == nil {
			return
		}
		if err := binary.Write(c, binary.BigEndian, uint16(len(out))); err != nil {
			return
		}
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// answerDNS answers one query. Names the policy does not allow get
// NXDOMAIN and are never sent upstream, so DNS carries nothing out.
// Allowed names get their A records from upstream, less any address the
// policy blocks; every other type gets an empty answer: the sandbox has
// IPv4 only, and TXT and the rest are what tunnels use.
func (g *Gateway) answerDNS(q []byte, maxSize int) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil || h.Response {
		return nil
	}
	resp := dnsmessage.Message{Header: dnsmessage.Header{ID: h.ID, Response: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 || h.OpCode != 0 {
		resp.RCode = dnsmessage.RCodeFormatError
		return pack(resp, maxSize)
	}
	question := qs[0]
	resp.Questions = qs
	name := egress.Normalize(question.Name.String())
	rs := g.current()
	ev := Event{Kind: "dns", Host: name, Reason: question.Type.String()}

	if name == InferenceHost && rs.policy.Inference != nil {
		return g.answerInference(resp, question, maxSize)
	}
	allowed := rs.name(name)
	if len(allowed) == 0 && rs.m.DNSFiltering() {
		resp.RCode = dnsmessage.RCodeNameError
		ev.Decision, ev.Reason = Deny, "no rule allows "+name+" ("+question.Type.String()+")"
		g.event(rs, ev)
		return pack(resp, maxSize)
	}
	if len(allowed) > 0 {
		ev.Rule = ruleName(allowed[0])
	}
	if question.Type != dnsmessage.TypeA || question.Class != dnsmessage.ClassINET {
		ev.Decision, ev.Reason = Allow, "empty answer for "+question.Type.String()+": only A records are served"
		g.event(rs, ev)
		return pack(resp, maxSize)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ans, err := g.dns.lookupA(ctx, name)
	switch {
	case errors.Is(err, errNXDomain):
		resp.RCode = dnsmessage.RCodeNameError
		ev.Decision, ev.Reason = Allow, "upstream: no such host"
		g.event(rs, ev)
		return pack(resp, maxSize)
	case err != nil:
		resp.RCode = dnsmessage.RCodeServerFailure
		ev.Decision, ev.Reason = Deny, err.Error()
		g.event(rs, ev)
		return pack(resp, maxSize)
	}
	var kept, dropped []string
	var keptAddrs []netip.Addr
	for _, a := range ans.addrs {
		// A rule must allow the address on some port; rules for one
		// name differ only in ports and allowed_ips.
		why := ""
		for _, r := range allowed {
			if why = g.checkIP(rs, a, r); why == "" {
				break
			}
		}
		if len(allowed) == 0 {
			why = g.checkIP(rs, a, nil)
		}
		if why != "" {
			dropped = append(dropped, a.String()+" ("+why+")")
			continue
		}
		kept = append(kept, a.String())
		keptAddrs = append(keptAddrs, a)
		resp.Answers = append(resp.Answers, dnsmessage.Resource{
			Header: dnsmessage.ResourceHeader{Name: question.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: uint32(ans.ttl / time.Second)},
			Body:   &dnsmessage.AResource{A: a.As4()},
		})
	}
	g.names.add(name, keptAddrs, ans.ttl)
	ev.IP = strings.Join(kept, ",")
	ev.Decision, ev.Reason = Allow, ""
	if len(dropped) > 0 {
		ev.Reason = "dropped " + strings.Join(dropped, ", ")
		if len(kept) == 0 {
			ev.Decision = Deny
		}
	}
	g.event(rs, ev)
	return pack(resp, maxSize)
}

func pack(m dnsmessage.Message, maxSize int) []byte {
	out, err := m.Pack()
	if err != nil {
		return nil
	}
	if len(out) > maxSize {
		m.Answers = nil
		m.Truncated = true
		if out, err = m.Pack(); err != nil {
			return nil
		}
	}
	return out
}
