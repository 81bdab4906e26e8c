package egress

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

const testPolicy = `version: "1.0"
name: unit
sandbox:
  filesystem:
    allowed_writes: [/tmp]
  network:
    allowed_egress:
      - {host: api.example.com, port: 443}
      - {host: "*.cdn.example.net", ports: [80, 443]}
      - {host: rebind.example.com, port: 80}
      - {host: lan.example.com, port: 80, allowed_ips: [10.1.0.0/16]}
`

// upstream is a DNS server on loopback that logs every question.
type upstream struct {
	mu   sync.Mutex
	seen []string
	zone map[string]string
	pc   net.PacketConn
}

// add puts name in the zone while the upstream serves it.
func (u *upstream) add(name, addr string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.zone[name] = addr
}

func startUpstream(t testing.TB, zone map[string]string) *upstream {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{zone: zone, pc: pc}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			name := strings.TrimSuffix(q.Name.String(), ".")
			u.mu.Lock()
			u.seen = append(u.seen, name+" "+q.Type.String())
			u.mu.Unlock()
			resp := dnsmessage.Message{Header: dnsmessage.Header{ID: h.ID, Response: true}, Questions: []dnsmessage.Question{q}}
			u.mu.Lock()
			a, ok := zone[name]
			u.mu.Unlock()
			if ok {
				resp.Answers = []dnsmessage.Resource{{
					Header: dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 3600},
					Body:   &dnsmessage.AResource{A: netip.MustParseAddr(a).As4()},
				}}
			} else {
				resp.RCode = dnsmessage.RCodeNameError
			}
			out, _ := resp.Pack()
			_, _ = pc.WriteTo(out, from)
		}
	}()
	return u
}

func (u *upstream) questions() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.seen...)
}

func newTestGateway(t testing.TB, policyYAML string) (*Gateway, *upstream, string) {
	t.Helper()
	dir := t.TempDir()
	pf := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pf, []byte(policyYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	up := startUpstream(t, map[string]string{
		"api.example.com":    "93.184.216.34",
		"a.cdn.example.net":  "93.184.216.35",
		"rebind.example.com": "169.254.169.254",
		"lan.example.com":    "10.1.2.3",
	})
	audit := filepath.Join(dir, "audit.jsonl")
	g, err := New(Config{Sandbox: "sb1", PolicyFile: pf, AuditFile: audit, DNSUpstream: up.pc.LocalAddr().String()}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.audit.Close() })
	return g, up, audit
}

func query(t *testing.T, g *Gateway, name string, typ dnsmessage.Type) (dnsmessage.RCode, []string) {
	t.Helper()
	q := dnsmessage.Message{Header: dnsmessage.Header{ID: 7, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(name + "."), Type: typ, Class: dnsmessage.ClassINET}}}
	packed, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	var m dnsmessage.Message
	if err := m.Unpack(g.answerDNS(packed, 512)); err != nil {
		t.Fatal(err)
	}
	if m.ID != 7 || !m.Response {
		t.Fatalf("answer header %+v", m.Header)
	}
	var addrs []string
	for _, a := range m.Answers {
		if r, ok := a.Body.(*dnsmessage.AResource); ok {
			addrs = append(addrs, netip.AddrFrom4(r.A).String())
		}
	}
	return m.RCode, addrs
}

func readEvents(t *testing.T, path string) []Event {
	t.Helper()
	var out []Event
	if err := ReadAuditLog(path, func(e *Event) error { out = append(out, *e); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDNS(t *testing.T) {
	g, up, audit := newTestGateway(t, testPolicy)
	for _, tc := range []struct {
		name  string
		typ   dnsmessage.Type
		rcode dnsmessage.RCode
		addrs string
	}{
		{"api.example.com", dnsmessage.TypeA, dnsmessage.RCodeSuccess, "93.184.216.34"},
		{"API.Example.com", dnsmessage.TypeA, dnsmessage.RCodeSuccess, "93.184.216.34"},
		{"a.cdn.example.net", dnsmessage.TypeA, dnsmessage.RCodeSuccess, "93.184.216.35"},
		{"missing.cdn.example.net", dnsmessage.TypeA, dnsmessage.RCodeNameError, ""},
		{"api.example.com", dnsmessage.TypeAAAA, dnsmessage.RCodeSuccess, ""},
		{"api.example.com", dnsmessage.TypeTXT, dnsmessage.RCodeSuccess, ""},
		{"rebind.example.com", dnsmessage.TypeA, dnsmessage.RCodeSuccess, ""},
		{"lan.example.com", dnsmessage.TypeA, dnsmessage.RCodeSuccess, "10.1.2.3"},
		{"c2VjcmV0.evil.example", dnsmessage.TypeA, dnsmessage.RCodeNameError, ""},
		{"exfil.evil.example", dnsmessage.TypeTXT, dnsmessage.RCodeNameError, ""},
		{"example.com", dnsmessage.TypeA, dnsmessage.RCodeNameError, ""},
	} {
		rcode, addrs := query(t, g, tc.name, tc.typ)
		if rcode != tc.rcode || strings.Join(addrs, ",") != tc.addrs {
			t.Errorf("%s %s: %s %v, want %s %q", tc.name, tc.typ, rcode, addrs, tc.rcode, tc.addrs)
		}
	}
	for _, q := range up.questions() {
		if strings.Contains(q, "evil") || !strings.HasSuffix(q, " TypeA") || q == "example.com TypeA" {
			t.Errorf("upstream was asked %q", q)
		}
	}
	var denied []string
	for _, e := range readEvents(t, audit) {
		if e.Kind != "dns" || e.Sandbox != "sb1" || e.Policy != "unit" || len(e.PolicyHash) != 64 {
			t.Errorf("event %+v", e)
		}
		if e.Decision == Deny {
			denied = append(denied, e.Host)
		}
	}
	// missing.cdn.example.net is allowed by the wildcard: upstream's
	// NXDOMAIN is an answer, not a denial.
	if got := strings.Join(denied, ","); got != "rebind.example.com,c2vjcmv0.evil.example,exfil.evil.example,example.com" {
		t.Errorf("denials in the audit log: %s", got)
	}
}

func TestAuthorize(t *testing.T) {
	g, _, _ := newTestGateway(t, testPolicy)
	rs := g.current()
	ctx := context.Background()
	for _, tc := range []struct {
		host string
		port int
		deny string // substring of the reason; "" when allowed
	}{
		{"api.example.com", 443, ""},
		{"api.example.com", 80, "no rule allows api.example.com:80"},
		{"evil.example", 443, "no rule allows"},
		{"rebind.example.com", 80, "cloud metadata service"},
		{"lan.example.com", 80, ""},
		{"93.184.216.34", 443, "raw address"},
		{"2852039166", 80, "cloud metadata service"},
		{"0xa9fea9fe", 80, "cloud metadata service"},
		{"[fd00:ec2::254]", 80, "cloud metadata service"},
		{"[::ffff:127.0.0.1]", 80, "loopback"},
		{"10.1.9.9", 80, ""}, // lan.example.com's allowed_ips
		{"10.2.9.9", 80, "private range"},
	} {
		host := strings.TrimSuffix(strings.TrimPrefix(tc.host, "["), "]")
		_, d := g.authorizeHost(ctx, rs, host, tc.port)
		switch {
		case tc.deny == "" && d != nil:
			t.Errorf("%s:%d denied: %s", tc.host, tc.port, d.reason)
		case tc.deny != "" && (d == nil || !strings.Contains(d.reason, tc.deny)):
			t.Errorf("%s:%d: %v, want a denial with %q", tc.host, tc.port, d, tc.deny)
		}
	}
	// Transparent capture: the name must resolve to where the connection goes.
	if _, d := g.authorizeDst(ctx, rs, "api.example.com", netip.MustParseAddrPort("93.184.216.34:443")); d != nil {
		t.Errorf("api.example.com to its own address: %s", d.reason)
	}
	if _, d := g.authorizeDst(ctx, rs, "api.example.com", netip.MustParseAddrPort("93.184.216.99:443")); d == nil || !strings.Contains(d.reason, "does not resolve to") {
		t.Errorf("forged SNI: %v", d)
	}
	if _, d := g.authorizeDst(ctx, rs, "", netip.MustParseAddrPort("93.184.216.34:443")); d == nil {
		t.Errorf("no SNI to a raw address was allowed")
	}
}

func TestProxyDenies(t *testing.T) {
	g, _, audit := newTestGateway(t, testPolicy)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := g.httpServer(false)
	go srv.Serve(l)
	defer srv.Close()
	for _, tc := range []struct{ req, want string }{
		{"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", "no rule allows evil.example:443"},
		{"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n", "cloud metadata service"},
		{"GET http://inference.local/v1/models HTTP/1.1\r\nHost: inference.local\r\n\r\n", "inference routing"},
		{"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n", "bad request"},
	} {
		c, err := net.Dial("tcp4", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, tc.req)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%q: %v", tc.req, err)
		}
		var body denyBody
		err = json.NewDecoder(resp.Body).Decode(&body)
		c.Close()
		if resp.StatusCode != http.StatusForbidden || err != nil || !strings.Contains(body.Reason, tc.want) {
			t.Errorf("%q: %d %+v (%v), want 403 with %q", strings.Fields(tc.req)[1], resp.StatusCode, body, err, tc.want)
		}
	}
	if n := len(readEvents(t, audit)); n != 4 {
		t.Errorf("%d audit events for 4 denials", n)
	}
}

func TestReload(t *testing.T) {
	g, _, audit := newTestGateway(t, testPolicy)
	if g.current().m.Match("new.example.org", 443) != nil {
		t.Fatal("new.example.org allowed before the reload")
	}
	added := strings.Replace(testPolicy, "      - {host: api.example.com, port: 443}", "      - {host: api.example.com, port: 443}\n      - {host: new.example.org, port: 443}", 1)
	if err := os.WriteFile(g.cfg.PolicyFile, []byte(added), 0o644); err != nil {
		t.Fatal(err)
	}
	forgot := 0
	g.inference.forget = func() { forgot++ }
	if err := g.Reload(); err != nil {
		t.Fatal(err)
	}
	if g.current().m.Match("new.example.org", 443) == nil {
		t.Fatal("new.example.org not allowed after the reload")
	}
	if forgot != 1 {
		t.Errorf("the reload forgot the held keys %d times, want 1", forgot)
	}
	fsChange := strings.Replace(added, "allowed_writes: [/tmp]", "allowed_writes: [/tmp, /var]", 1)
	if err := os.WriteFile(g.cfg.PolicyFile, []byte(fsChange), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := g.Reload(); err == nil || !strings.Contains(err.Error(), "[filesystem]") {
		t.Fatalf("a filesystem change was not refused: %v", err)
	}
	if g.current().m.Match("new.example.org", 443) == nil {
		t.Fatal("a refused reload dropped the running rules")
	}
	if err := os.WriteFile(g.cfg.PolicyFile, []byte("version: \"1.0\"\nsandbox: {network: {allowed_egress: [{host: x}]}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := g.Reload(); err == nil || !strings.Contains(err.Error(), "port") {
		t.Fatalf("an invalid policy was not refused: %v", err)
	}
	// Binaries need the attribution this sandbox was started without.
	scoped := strings.Replace(added, "{host: new.example.org, port: 443}", "{host: new.example.org, port: 443, binaries: [/usr/bin/git]}", 1)
	if err := os.WriteFile(g.cfg.PolicyFile, []byte(scoped), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := g.Reload(); err == nil || !strings.Contains(err.Error(), "without connection attribution") {
		t.Fatalf("binaries without attribution were not refused: %v", err)
	}
	var decisions []string
	for _, e := range readEvents(t, audit) {
		decisions = append(decisions, e.Kind+"/"+e.Decision)
	}
	if got := strings.Join(decisions, " "); got != "reload/allow reload/deny reload/deny reload/deny" {
		t.Errorf("reload events: %s", got)
	}
}
