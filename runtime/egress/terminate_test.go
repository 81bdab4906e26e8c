package egress

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// l7TestPolicy gives api.example.com (93.184.216.34 in the test resolver)
// read-only access on 443: its TLS is terminated.
const l7TestPolicy = `version: 1
network_policies:
  api:
    endpoints:
      - {host: api.example.com, port: 443, protocol: rest, access: read-only}
`

// fakeAddrConn reports a public address as its peer: the test's server
// is on loopback, which the gateway would never dial.
type fakeAddrConn struct{ net.Conn }

func (c fakeAddrConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (c fakeAddrConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(93, 184, 216, 34), Port: 443}
}

// terminatedSetup is a gateway with a sandbox CA, a TLS server for
// api.example.com that it dials whatever the address, and a function
// that opens a client connection through its proxy (CONNECT, then TLS
// trusting the sandbox CA).
func terminatedSetup(tb testing.TB, handler http.Handler) (*Gateway, string, func() *tls.Conn) {
	return terminatedSetupPolicy(tb, l7TestPolicy, handler)
}

func terminatedSetupPolicy(tb testing.TB, policyYAML string, handler http.Handler) (*Gateway, string, func() *tls.Conn) {
	tb.Helper()
	g, _, audit := newTestGateway(tb, policyYAML)
	dir := tb.TempDir()
	// The upstream's certificate comes from a CA of its own, the roots
	// the gateway verifies against.
	upPEM, err := WriteCAFile(filepath.Join(dir, "up.pem"), "upstream")
	if err != nil {
		tb.Fatal(err)
	}
	upCA, err := LoadCA(filepath.Join(dir, "up.pem"))
	if err != nil {
		tb.Fatal(err)
	}
	g.roots = x509.NewCertPool()
	g.roots.AppendCertsFromPEM(upPEM)
	leaf, err := upCA.Certificate("api.example.com")
	if err != nil {
		tb.Fatal(err)
	}
	caPEM, err := WriteCAFile(filepath.Join(dir, "sandbox.pem"), "sb1")
	if err != nil {
		tb.Fatal(err)
	}
	if g.ca, err = LoadCA(filepath.Join(dir, "sandbox.pem")); err != nil {
		tb.Fatal(err)
	}
	trust := x509.NewCertPool()
	trust.AppendCertsFromPEM(caPEM)
	ul, err := tls.Listen("tcp4", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*leaf}})
	if err != nil {
		tb.Fatal(err)
	}
	proxy := serveProxy(tb, g, ul, handler)
	open := func() *tls.Conn {
		c, err := net.Dial("tcp4", proxy)
		if err != nil {
			tb.Fatal(err)
		}
		fmt.Fprintf(c, "CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			tb.Fatalf("CONNECT: %v %v", resp, err)
		}
		tc := tls.Client(c, &tls.Config{ServerName: "api.example.com", RootCAs: trust})
		if err := tc.Handshake(); err != nil {
			tb.Fatalf("TLS through the gateway: %v", err)
		}
		return tc
	}
	return g, audit, open
}

// plainProxySetup is the plain-HTTP counterpart of terminatedSetup: a
// gateway allowing api.example.com on port 80, an upstream serving
// handler that it dials whatever the address, and a client connection
// to its proxy, ready for absolute-URL requests.
func plainProxySetup(tb testing.TB, handler http.Handler) net.Conn {
	tb.Helper()
	g, _, _ := newTestGateway(tb, "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - {host: api.example.com, port: 80}\n")
	ul, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	c, err := net.Dial("tcp4", serveProxy(tb, g, ul, handler))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// serveProxy serves handler on ul as the upstream, which g dials for
// every destination (a test's servers are on loopback, which g would
// never dial), and g's proxy on a port of its own, whose address it
// returns.
func serveProxy(tb testing.TB, g *Gateway, ul net.Listener, handler http.Handler) string {
	tb.Helper()
	usrv := &http.Server{Handler: handler}
	go usrv.Serve(ul)
	tb.Cleanup(func() { usrv.Close() })
	g.dialTCP = func(ctx context.Context, network, _ string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, ul.Addr().String())
		if err != nil {
			return nil, err
		}
		return fakeAddrConn{c}, nil
	}
	g.isLocal = func(netip.Addr) bool { return false }
	pl, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	psrv := g.httpServer(false)
	go psrv.Serve(g.limit(pl))
	tb.Cleanup(func() { psrv.Close() })
	return pl.Addr().String()
}

func bytesHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if n == 0 {
			fmt.Fprintf(w, "%s %s\n", r.Method, r.URL.RequestURI())
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		buf := make([]byte, 256<<10)
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	})
}

// TestTerminateDecidesEachRequest: through a terminated CONNECT tunnel,
// each request on one keep-alive connection is decided on its own, the
// server is sent the path that was checked, and a request for another
// host is refused.
func TestTerminateDecidesEachRequest(t *testing.T) {
	_, audit, open := terminatedSetup(t, bytesHandler())
	tc := open()
	defer tc.Close()
	br := bufio.NewReader(tc)
	for _, tc2 := range []struct {
		req        string
		code       int
		body, deny string
	}{
		{"GET /a/../b?q=1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n", 200, "GET /b?q=1", ""},
		{"HEAD /x HTTP/1.1\r\nHost: api.example.com\r\n\r\n", 200, "", ""},
		{"POST /x HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 1\r\n\r\nx", 403, "", "POST"},
	} {
		io.WriteString(tc, tc2.req)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		method := strings.Fields(tc2.req)[0]
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("%q: %v", tc2.req, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != tc2.code || !strings.Contains(string(body), tc2.body) || !strings.Contains(string(body), tc2.deny) {
			t.Errorf("%q: %d %q, want %d with %q%q", tc2.req, resp.StatusCode, body, tc2.code, tc2.body, tc2.deny)
		}
	}
	// A denial closes the connection; another host on a new one is refused.
	tc = open()
	defer tc.Close()
	io.WriteString(tc, "GET / HTTP/1.1\r\nHost: other.example.com\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil || resp.StatusCode != 403 {
		t.Fatalf("another host: %v %v", resp, err)
	}
	var https int
	for _, ev := range readEvents(t, audit) {
		if ev.Kind == "https" {
			https++
		}
		t.Logf("%s %s %s %s %d %s %s", ev.Kind, ev.Method, ev.Path, ev.Decision, ev.Status, ev.Grant, ev.Reason)
	}
	if https != 4 {
		t.Errorf("%d https audit lines for 4 requests", https)
	}
}

// TestTerminateAuditMode: an endpoint in enforcement: audit lets a
// request its rules would refuse through, and its line says it would
// have been denied and why.
func TestTerminateAuditMode(t *testing.T) {
	_, audit, open := terminatedSetupPolicy(t, strings.Replace(l7TestPolicy, "access: read-only}", "access: read-only, enforcement: audit}", 1), bytesHandler())
	tc := open()
	defer tc.Close()
	io.WriteString(tc, "DELETE /repo HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "DELETE /repo") {
		t.Fatalf("audit mode: %d %q, want the server's answer", resp.StatusCode, body)
	}
	var saw bool
	for _, ev := range readEvents(t, audit) {
		if ev.Kind == "https" && ev.Method == "DELETE" && ev.Decision == Audit && strings.Contains(ev.Reason, "would deny") {
			saw = true
		}
	}
	if !saw {
		t.Errorf("no audit line says the DELETE would have been denied: %+v", readEvents(t, audit))
	}
}

// BenchmarkTerminatedRequest is one small request on a keep-alive
// connection through a terminated tunnel: the gateway's own cost per
// request (decision, its TLS both ways, the forward), without runsc.
func BenchmarkTerminatedRequest(b *testing.B) {
	_, _, open := terminatedSetup(b, bytesHandler())
	tc := open()
	defer tc.Close()
	br := bufio.NewReader(tc)
	req := []byte("GET /x HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
	b.ResetTimer()
	for range b.N {
		if _, err := tc.Write(req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// BenchmarkTerminatedDownload is a 64 MiB response through a terminated
// tunnel: the gateway decrypts the server's TLS and encrypts its own.
func BenchmarkTerminatedDownload(b *testing.B) {
	_, _, open := terminatedSetup(b, bytesHandler())
	tc := open()
	defer tc.Close()
	br := bufio.NewReaderSize(tc, 256<<10)
	const n = 64 << 20
	req := []byte(fmt.Sprintf("GET /bytes?n=%d HTTP/1.1\r\nHost: api.example.com\r\n\r\n", n))
	b.SetBytes(n)
	b.ResetTimer()
	for range b.N {
		if _, err := tc.Write(req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		if got, _ := io.Copy(io.Discard, resp.Body); got != n {
			b.Fatalf("got %d bytes", got)
		}
		resp.Body.Close()
	}
}
