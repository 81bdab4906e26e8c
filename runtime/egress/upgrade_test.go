package egress

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// sandboxKey is the Sec-WebSocket-Key the tests' sandbox sends.
const sandboxKey = "dGhlIHNhbXBsZSBub25jZQ=="

// upgradeServer answers every request with 101, switching to what it
// asked for, with the Sec-WebSocket-Accept accept makes of the key it was
// sent (websocketAccept: a WebSocket server's), then sends down bytes
// and counts what the client sends until the client is gone (got, from
// -1, for the first stream only).
func upgradeServer(down int, got *atomic.Int64, accept func(key string) string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", r.Header.Get("Upgrade"), accept(r.Header.Get("Sec-WebSocket-Key")))
		_ = brw.Flush()
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			chunk := bytes.Repeat([]byte("d"), 32<<10)
			for left := down; left > 0; left -= len(chunk) {
				if _, err := c.Write(chunk[:min(left, len(chunk))]); err != nil {
					return
				}
			}
		}()
		n, _ := io.Copy(io.Discard, brw)
		got.CompareAndSwap(-1, n) // the first stream's
		<-sent
	})
}

// upgradeClient sends an upgrade request on c (the proxy's or a tunnel's
// connection; target is the request line's target), checks the 101, then
// sends up bytes and reads until the gateway or the server ends the
// stream. It returns what it read after the 101.
func upgradeClient(t *testing.T, c net.Conn, target string, up int) int64 {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: api.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("upgrade: %s %s", resp.Status, b)
	}
	if a := resp.Header.Get("Sec-WebSocket-Accept"); a != websocketAccept(sandboxKey) {
		t.Fatalf("the sandbox got the accept %q, not the one its key asks for", a)
	}
	go func() {
		chunk := bytes.Repeat([]byte("u"), 4<<10)
		for left := up; left > 0; left -= len(chunk) {
			if _, err := c.Write(chunk[:min(left, len(chunk))]); err != nil {
				return
			}
		}
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}()
	n, _ := io.Copy(io.Discard, br)
	return n
}

// apiProxy is a gateway whose policy allows api.example.com:80, with
// extra in its rule (", max_response_size_mb: 4"), and the address of its
// proxy, whose every dial reaches handler.
func apiProxy(t *testing.T, extra string, handler http.Handler) (g *Gateway, up *upstream, audit, addr string) {
	t.Helper()
	g, up, audit = newTestGateway(t, "version: \"1.0\"\nname: unit\nsandbox:\n  network:\n    allowed_egress:\n      - {host: api.example.com, port: 80"+extra+"}\n")
	ul, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return g, up, audit, serveProxy(t, g, ul, handler)
}

// dialProxy connects to the proxy at addr, closed when the test ends.
func dialProxy(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// upgradeEvent is the audit line of the upgrade request (kind http, path
// /ws), waiting for the gateway to write it.
func upgradeEvent(t *testing.T, audit string) Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, e := range readEvents(t, audit) {
			if e.Kind == "http" && e.Path == "/ws" {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no audit line for the request")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestUpgradeHeldToLimits: after the server switches protocols, the
// stream is held to the rule's size limits both ways, quiet both ways it
// ends at the idle timeout, and the audit line counts its bytes; the same
// through the proxy and inside a CONNECT tunnel to port 80 (which is
// served request by request, and used to close an upgrade at once).
func TestUpgradeHeldToLimits(t *testing.T) {
	const mb = 1 << 20
	for _, tc := range []struct {
		name      string
		limits    string
		down, up  int
		connect   bool
		wantDown  int64 // what the client reads after the 101, at most
		wantUp    int64 // what the server receives, at most
		wantDeny  string
		wantBytes bool // the line counts every byte
	}{
		{name: "no limits", down: 2 * mb, up: 100 << 10, wantDown: 2 * mb, wantUp: 100 << 10, wantBytes: true},
		{name: "response limit", limits: ", max_response_size_mb: 1", down: 3 * mb, wantDown: mb, wantDeny: "max_response_size_mb 1 exceeded"},
		{name: "request limit", limits: ", max_request_size_kb: 8", up: 64 << 10, down: 0, wantUp: 8 << 10, wantDeny: "max_request_size_kb 8 exceeded"},
		{name: "tunnel, under the limits", limits: ", max_response_size_mb: 4", connect: true, down: 2 * mb, up: 100 << 10, wantDown: 2 * mb, wantUp: 100 << 10, wantBytes: true},
		{name: "tunnel, response limit", limits: ", max_response_size_mb: 1", connect: true, down: 3 * mb, wantDown: mb, wantDeny: "max_response_size_mb 1 exceeded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got atomic.Int64
			got.Store(-1)
			_, _, audit, addr := apiProxy(t, tc.limits, upgradeServer(tc.down, &got, websocketAccept))
			c := dialProxy(t, addr)
			target := "http://api.example.com/ws"
			if tc.connect {
				fmt.Fprintf(c, "CONNECT api.example.com:80 HTTP/1.1\r\nHost: api.example.com:80\r\n\r\n")
				buf := make([]byte, 39)
				if _, err := io.ReadFull(c, buf); err != nil || !strings.Contains(string(buf), " 200 ") {
					t.Fatalf("CONNECT: %v %q", err, buf)
				}
				target = "/ws"
			}
			read := upgradeClient(t, c, target, tc.up)
			ev := upgradeEvent(t, audit)
			if read > tc.wantDown || tc.wantBytes && read != tc.wantDown {
				t.Errorf("the client read %d bytes after the 101, want %d", read, tc.wantDown)
			}
			deadline := time.Now().Add(5 * time.Second)
			for got.Load() < 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n := got.Load(); n > tc.wantUp || tc.wantBytes && n != tc.wantUp {
				t.Errorf("the server received %d bytes after the 101, want %d", n, tc.wantUp)
			}
			if tc.wantDeny != "" && (ev.Decision != Deny || ev.Reason != tc.wantDeny) {
				t.Errorf("audit: %s %q, want deny %q", ev.Decision, ev.Reason, tc.wantDeny)
			}
			if tc.wantBytes && (ev.Decision != Allow || ev.BytesDown < tc.wantDown || ev.BytesUp < tc.wantUp) {
				t.Errorf("audit: %s %q, %d bytes down and %d up, want allow with at least %d and %d", ev.Decision, ev.Reason, ev.BytesDown, ev.BytesUp, tc.wantDown, tc.wantUp)
			}
			if ev.Status != http.StatusSwitchingProtocols {
				t.Errorf("audit status %d, want 101", ev.Status)
			}
		})
	}
}

// TestUpgradeIdle: an upgraded stream quiet both ways ends at the idle
// timeout; one that trickles either way does not.
func TestUpgradeIdle(t *testing.T) {
	saved := idleTimeout
	idleTimeout = 300 * time.Millisecond
	t.Cleanup(func() { idleTimeout = saved })
	var got atomic.Int64
	_, _, audit, addr := apiProxy(t, "", upgradeServer(0, &got, websocketAccept))
	c := dialProxy(t, addr)
	fmt.Fprintf(c, "GET http://api.example.com/ws HTTP/1.1\r\nHost: api.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", err, resp)
	}
	// Trickling up for three timeouts keeps it open.
	for range 6 {
		time.Sleep(idleTimeout / 2)
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatalf("the stream ended while the sandbox was still sending: %v", err)
		}
	}
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("read after going quiet: %v, want EOF", err)
	}
	if d := time.Since(start); d > 5*idleTimeout {
		t.Errorf("the quiet stream ended after %s, idle timeout %s", d, idleTimeout)
	}
	if ev := upgradeEvent(t, audit); ev.BytesUp != 6 {
		t.Errorf("audit: %d bytes up, want 6", ev.BytesUp)
	}
}

// TestPoolHost: a kept-alive connection is shared only by requests for
// the same name, port and allowed addresses.
func TestPoolHost(t *testing.T) {
	a, b := netip.MustParseAddr("93.184.216.34"), netip.MustParseAddr("10.1.2.3")
	t1 := &target{port: 80, addrs: []netip.Addr{a, b}}
	same := &target{port: 80, addrs: []netip.Addr{b, a}}
	fewer := &target{port: 80, addrs: []netip.Addr{a}}
	other := &target{port: 8080, addrs: []netip.Addr{a, b}}
	h := poolHost("api.example.com", t1)
	if poolHost("api.example.com", same) != h {
		t.Error("the same addresses in another order pool apart")
	}
	for name, got := range map[string]string{
		"fewer addresses": poolHost("api.example.com", fewer),
		"another port":    poolHost("api.example.com", other),
		"another name":    poolHost("cdn.example.com", t1),
	} {
		if got == h {
			t.Errorf("%s pools with the first", name)
		}
	}
	if !strings.HasSuffix(h, ".pool.invalid:80") {
		t.Errorf("poolHost %q", h)
	}
}

// TestUpgradeOnlyWebSocket: a switch to anything but a completed
// WebSocket handshake is answered 502 and nothing after it is relayed:
// h2c (whose requests the gateway would never decide), a server that
// answers 101 without the accept its key asks for, a request without a
// key.
func TestUpgradeOnlyWebSocket(t *testing.T) {
	wrong := func(string) string { return "bm90IGEgd2Vic29ja2V0IHNlcnZlcg==" }
	// A server that lets its caller choose the headers it answers with
	// (a mock, an echo API) "accepts" the key the sandbox chose.
	echoed := func(string) string { return websocketAccept(sandboxKey) }
	for _, tc := range []struct {
		name, headers string
		accept        func(string) string
	}{
		{"h2c", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nSec-WebSocket-Key: " + sandboxKey + "\r\n", websocketAccept},
		{"wrong accept", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: " + sandboxKey + "\r\n", wrong},
		{"the sandbox's own accept", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: " + sandboxKey + "\r\n", echoed},
		{"no key", "Connection: Upgrade\r\nUpgrade: websocket\r\n", websocketAccept},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got atomic.Int64
			got.Store(-1)
			_, _, audit, addr := apiProxy(t, "", upgradeServer(1<<20, &got, tc.accept))
			c := dialProxy(t, addr)
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "GET http://api.example.com/ws HTTP/1.1\r\nHost: api.example.com\r\n%s\r\n", tc.headers)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusBadGateway {
				t.Fatalf("status %s, want 502", resp.Status)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			// What the sandbox sends next is never relayed as stream.
			_, _ = c.Write([]byte("DELETE /admin HTTP/1.1\r\nHost: api.example.com\r\n\r\n"))
			deadline := time.Now().Add(5 * time.Second)
			for got.Load() < 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n := got.Load(); n > 0 {
				t.Errorf("the server received %d bytes after its 101", n)
			}
			if ev := upgradeEvent(t, audit); ev.Decision != Deny || ev.Status != http.StatusBadGateway || !strings.Contains(ev.Reason, "WebSocket") {
				t.Errorf("audit: %s %d %q, want a denial", ev.Decision, ev.Status, ev.Reason)
			}
		})
	}
}

// TestConnectEndedAudited: a CONNECT that was allowed but carried nothing
// before the sandbox closed it still has its audit line.
func TestConnectEndedAudited(t *testing.T) {
	var got atomic.Int64
	_, _, audit, addr := apiProxy(t, ", max_response_size_mb: 4", upgradeServer(0, &got, websocketAccept))
	c := dialProxy(t, addr)
	fmt.Fprintf(c, "CONNECT api.example.com:80 HTTP/1.1\r\nHost: api.example.com:80\r\n\r\n")
	buf := make([]byte, 39)
	if _, err := io.ReadFull(c, buf); err != nil || !strings.Contains(string(buf), " 200 ") {
		t.Fatalf("CONNECT: %v %q", err, buf)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, e := range readEvents(t, audit) {
			if e.Kind == "connect" && strings.Contains(e.Reason, "before its first byte") {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no audit line for the empty tunnel: %+v", readEvents(t, audit))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestChunkedBodyIdle: a chunked body read whole before it is sent (a
// small max_request_size_kb) that stops coming ends at the idle timeout
// instead of holding the connection.
func TestChunkedBodyIdle(t *testing.T) {
	saved := idleTimeout
	idleTimeout = 300 * time.Millisecond
	t.Cleanup(func() { idleTimeout = saved })
	_, _, _, addr := apiProxy(t, ", max_request_size_kb: 8", bytesHandler())
	c := dialProxy(t, addr)
	fmt.Fprintf(c, "POST http://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	answer, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("the stalled body held the connection: %v", err)
	}
	if !strings.HasPrefix(string(answer), "HTTP/1.1 403") || !strings.Contains(string(answer), "request body") {
		t.Errorf("the stalled body got %q, want a 403 naming the request body", answer)
	}
	if d := time.Since(start); d > 10*idleTimeout {
		t.Errorf("the stalled body ended after %s", d)
	}
}

// TestPoolKeptApart: a kept-alive upstream connection serves the next
// request for the same name only while that name is allowed the same
// addresses; otherwise a new one is dialled to an address now allowed.
func TestPoolKeptApart(t *testing.T) {
	g, up, _, addr := apiProxy(t, "", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.RemoteAddr)
	}))
	from := func() string {
		t.Helper()
		c := dialProxy(t, addr)
		fmt.Fprintf(c, "GET http://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s", resp.Status, b)
		}
		return string(b)
	}
	first, again := from(), from()
	if first != again {
		t.Fatalf("the same name and addresses did not reuse the connection: %s, then %s", first, again)
	}
	up.add("api.example.com", "93.184.216.35")
	g.dns.mu.Lock()
	g.dns.cache = nil
	g.dns.mu.Unlock()
	if other := from(); other == first {
		t.Errorf("a connection dialled for 93.184.216.34 served a request allowed only 93.184.216.35 (%s)", other)
	}
}

// TestUpgradeStalled: a stream the sandbox stops reading while the server
// still sends, and one on terminated TLS whose server has closed while
// the sandbox stays silent, end at the idle timeout: their handlers
// return and their lines are written.
func TestUpgradeStalled(t *testing.T) {
	saved := idleTimeout
	idleTimeout = 300 * time.Millisecond
	t.Cleanup(func() { idleTimeout = saved })
	waitIdleLine := func(t *testing.T, audit, kind string) {
		t.Helper()
		deadline := time.Now().Add(20 * idleTimeout)
		for time.Now().Before(deadline) {
			for _, e := range readEvents(t, audit) {
				if e.Kind == kind && e.Path == "/ws" {
					if !strings.Contains(e.Reason, "quiet both ways") {
						t.Errorf("audit: %q", e.Reason)
					}
					return
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatal("the stalled stream never ended: no audit line")
	}
	t.Run("sandbox stops reading", func(t *testing.T) {
		var got atomic.Int64
		_, _, audit, addr := apiProxy(t, "", upgradeServer(1<<30, &got, websocketAccept))
		c := dialProxy(t, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4 << 10)
		}
		fmt.Fprintf(c, "GET http://api.example.com/ws HTTP/1.1\r\nHost: api.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: %s\r\n\r\n", sandboxKey)
		waitIdleLine(t, audit, "http")
	})
	t.Run("terminated TLS, server gone, sandbox silent", func(t *testing.T) {
		// The server switches and closes at once.
		_, audit, open := terminatedSetup(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, brw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", websocketAccept(r.Header.Get("Sec-WebSocket-Key")))
			_ = brw.Flush()
			c.Close()
		}))
		c := open()
		defer c.Close()
		fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: api.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: %s\r\n\r\n", sandboxKey)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		waitIdleLine(t, audit, "https")
	})
}

// TestInformationalBounded: a server that answers with informational
// (1xx) responses without end gets a 502 after a few, instead of being
// relayed, uncounted, for as long as it likes.
func TestInformationalBounded(t *testing.T) {
	_, _, audit, addr := apiProxy(t, "", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for range 50 {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
		}
		fmt.Fprint(w, "done")
	}))
	c := dialProxy(t, addr)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET http://api.example.com/hints HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
	all, _ := io.ReadAll(c)
	if n := strings.Count(string(all), "103 Early Hints"); n > maxInformational {
		t.Errorf("%d informational responses relayed, at most %d", n, maxInformational)
	}
	if !strings.Contains(string(all), "502 Bad Gateway") || strings.Contains(string(all), "done") {
		t.Errorf("the sandbox got %q, want a 502", all)
	}
	var seen bool
	for _, e := range readEvents(t, audit) {
		seen = seen || e.Path == "/hints" && e.Decision == Deny && strings.Contains(e.Reason, "informational")
	}
	if !seen {
		t.Errorf("no audit line names the informational responses: %+v", readEvents(t, audit))
	}
}

// TestAnswerStalls: an ordinary answer the sandbox stops reading, and one
// whose server goes quiet in the middle of its body, end at the idle
// timeout: the handler returns and the line is written.
func TestAnswerStalls(t *testing.T) {
	saved := idleTimeout
	idleTimeout = 300 * time.Millisecond
	t.Cleanup(func() { idleTimeout = saved })
	quiet := make(chan struct{})
	t.Cleanup(func() { close(quiet) })
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/quiet" {
			w.Header().Set("Content-Length", "1048576")
			_, _ = w.Write(make([]byte, 1024))
			w.(http.Flusher).Flush()
			<-quiet
			return
		}
		bytesHandler().ServeHTTP(w, r)
	})
	for _, tc := range []struct{ name, path string }{
		{"sandbox stops reading", "/?n=268435456"},
		{"server goes quiet", "/quiet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, audit, addr := apiProxy(t, "", handler)
			c := dialProxy(t, addr)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetReadBuffer(4 << 10)
			}
			fmt.Fprintf(c, "GET http://api.example.com%s HTTP/1.1\r\nHost: api.example.com\r\n\r\n", tc.path)
			want := strings.SplitN(tc.path, "?", 2)[0]
			deadline := time.Now().Add(30 * idleTimeout)
			for time.Now().Before(deadline) {
				for _, e := range readEvents(t, audit) {
					if e.Kind == "http" && e.Path == want {
						return
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Fatal("the stalled answer never ended: no audit line")
		})
	}
}
