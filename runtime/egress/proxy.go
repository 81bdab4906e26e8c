package egress

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openshell/openshell/policyhook/policy"
)

// InferenceHost is the name the sandbox calls for model inference. The
// gateway refuses it until inference routing is built on this seam: the
// router will take requests to it, add the provider's credential, and
// forward them to the policy's routing_endpoint.
const InferenceHost = "inference.local"

func (g *Gateway) httpServer(transparent bool) *http.Server {
	return &http.Server{
		Handler:           &proxyHandler{g: g, transparent: transparent},
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          nil,
	}
}

type proxyHandler struct {
	g           *Gateway
	transparent bool
}

// denyBody is the JSON a refused HTTP request gets with its 403.
type denyBody struct {
	Error  string `json:"error"`
	Host   string `json:"host"`
	Port   int    `json:"port"`
	Rule   string `json:"rule,omitempty"`
	Reason string `json:"reason"`
}

func writeDenial(w http.ResponseWriter, code int, host string, port int, d *denial) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Connection", "close")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(denyBody{Error: "denied by the openshell egress policy", Host: host, Port: port, Rule: ruleName(d.rule), Reason: d.reason})
}

func splitHostPort(hostport string, defPort int) (string, int, error) {
	host, ps, err := net.SplitHostPort(hostport)
	if err != nil {
		var aerr *net.AddrError
		if errors.As(err, &aerr) && aerr.Err == "missing port in address" {
			return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), defPort, nil
		}
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", ps)
	}
	return host, port, nil
}

func (h *proxyHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g := h.g
	rs := g.current()
	if r.Method == http.MethodConnect && !h.transparent {
		h.connect(w, r, rs)
		return
	}
	// Not canceled when the client half-closes after its request (an
	// HTTP/1.0 client, nc): it still wants the answer.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 30*time.Second)
	defer cancel()
	var (
		host string
		port int
		t    *target
		d    *denial
		err  error
	)
	switch {
	case h.transparent:
		local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		dst, perr := netip.ParseAddrPort(fmt.Sprint(local))
		if perr != nil {
			http.Error(w, "no destination", http.StatusBadGateway)
			return
		}
		host, port, err = splitHostPort(r.Host, int(dst.Port()))
		if err == nil {
			t, d = g.authorizeDst(ctx, rs, host, dst)
		}
	case r.URL.IsAbs() && r.URL.Scheme == "http":
		host, port, err = splitHostPort(r.URL.Host, 80)
		if err == nil {
			t, d = g.authorizeHost(ctx, rs, host, port)
		}
	default:
		err = fmt.Errorf("the proxy takes CONNECT and absolute http:// URLs; got %s %s", r.Method, r.URL)
	}
	ev := Event{Kind: "http", Host: host, Port: port}
	if err != nil {
		d = deny(nil, "bad request: %s", err)
	}
	if host == InferenceHost {
		d = deny(nil, "inference routing is not available in this build")
	}
	if d == nil && t.rule.TLSRequired {
		d = t.violate(deny(t.rule, "tls_required: plain HTTP to %s is refused", host))
	}
	if d == nil && t.rule.MaxRequestKB > 0 && r.ContentLength > t.rule.MaxRequestKB<<10 {
		d = t.violate(deny(t.rule, "max_request_size_kb %d exceeded (%d bytes)", t.rule.MaxRequestKB, r.ContentLength))
	}
	if d == nil {
		d = t.limit(rs)
	}
	if d != nil {
		ev.Rule, ev.Decision, ev.Reason = ruleName(d.rule), Deny, d.reason
		g.event(rs, ev)
		code := http.StatusForbidden
		if d.rateLimited {
			code = http.StatusTooManyRequests
		}
		writeDenial(w, code, host, port, d)
		return
	}
	h.forward(w, r, rs, t, host, ev)
}

// targetKey carries a request's checked target to the shared transport's
// dialer: a connection is only ever dialed to an address the policy
// allowed for the request that needs it.
type targetKey struct{}

// newTransport is the gateway's one upstream HTTP transport. It keeps
// connections alive: pooled by host name and port, so a connection is
// reused only by requests the policy allowed for that same name.
func (g *Gateway) newTransport() *http.Transport {
	return &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			t, ok := ctx.Value(targetKey{}).(*target)
			if !ok {
				return nil, errors.New("no checked target for this request")
			}
			c, _, err := g.dial(ctx, t)
			return c, err
		},
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
	}
}

// forward sends an allowed plain-HTTP request on, to the address the
// policy checked, counting bytes both ways and holding the size limits.
func (h *proxyHandler) forward(w http.ResponseWriter, r *http.Request, rs *rules, t *target, host string, ev Event) {
	g := h.g
	ev.Rule = ruleName(t.rule)
	up := &counter{r: r.Body}
	if t.rule.MaxRequestKB > 0 && t.audit == "" && t.rule.Enforcement != policy.EnforcementAudit {
		up.limit = t.rule.MaxRequestKB << 10
		up.what = fmt.Sprintf("max_request_size_kb %d", t.rule.MaxRequestKB)
	}
	r.Body = up
	var down *counter
	var dialed atomic.Value
	trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
		if ap, err := netip.ParseAddrPort(ci.Conn.RemoteAddr().String()); err == nil {
			dialed.Store(ap)
		}
	}}
	// See ServeHTTP: a client that is really gone fails the response's
	// writes instead.
	ctx := context.WithoutCancel(r.Context())
	r = r.WithContext(httptrace.WithClientTrace(context.WithValue(ctx, targetKey{}, t), trace))
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = net.JoinHostPort(host, strconv.Itoa(t.port))
			pr.Out.Host = r.Host
			pr.Out.Header.Del("Proxy-Authorization")
			pr.Out.Header.Del("Proxy-Connection")
		},
		Transport:  g.transport,
		BufferPool: copyBuffers,
		ModifyResponse: func(resp *http.Response) error {
			down = &counter{r: resp.Body}
			if t.rule.MaxResponseMB > 0 && t.rule.Enforcement != policy.EnforcementAudit {
				down.limit = t.rule.MaxResponseMB << 20
				down.what = fmt.Sprintf("max_response_size_mb %d", t.rule.MaxResponseMB)
				if resp.ContentLength > down.limit {
					return &limitError{what: down.what}
				}
			}
			resp.Body = down
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			var le *limitError
			if errors.As(err, &le) {
				ev.Decision, ev.Reason = Deny, le.Error()
				writeDenial(w, http.StatusForbidden, host, t.port, deny(t.rule, "%s", le.Error()))
				return
			}
			ev.Decision, ev.Reason = Allow, "upstream: "+err.Error()
			http.Error(w, "openshell gateway: "+err.Error(), http.StatusBadGateway)
		},
	}
	ev.Decision = Allow
	defer func() {
		if ap, ok := dialed.Load().(netip.AddrPort); ok {
			ev.IP = ap.Addr().String()
		}
		ev.BytesUp = up.n
		if down != nil {
			ev.BytesDown = down.n
			if down.tripped != nil {
				ev.Decision, ev.Reason = Deny, down.tripped.Error()
			}
		}
		if up.tripped != nil {
			ev.Decision, ev.Reason = Deny, up.tripped.Error()
		}
		if ev.Decision == Allow && t.audit != "" {
			ev.Decision, ev.Reason = Audit, t.audit
		}
		g.event(rs, ev)
	}()
	rp.ServeHTTP(noCloseNotify{w}, r)
}

// copyBuffers are the proxy's copy buffers: larger than ReverseProxy's
// 32 KiB default, for bulk transfers.
// A bounded free list, not a sync.Pool, which would box each slice.
var copyBuffers = make(bufferPool, 64)

type bufferPool chan []byte

func (b bufferPool) Get() []byte {
	select {
	case buf := <-b:
		return buf
	default:
		return make([]byte, 256<<10)
	}
}

func (b bufferPool) Put(buf []byte) {
	select {
	case b <- buf:
	default:
	}
}

// noCloseNotify hides the connection's close notification from
// ReverseProxy, which would cancel the upstream request when a client
// half-closes after sending it. Unwrap keeps flushing working.
type noCloseNotify struct{ http.ResponseWriter }

func (w noCloseNotify) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// limitError is a size limit a transfer ran into.
type limitError struct{ what string }

func (e *limitError) Error() string { return e.what + " exceeded" }

// counter counts what passes through a reader and fails it past limit.
type counter struct {
	r       io.ReadCloser
	n       int64
	limit   int64 // 0: none
	what    string
	tripped error
}

func (c *counter) Read(p []byte) (int, error) {
	if c.r == nil {
		return 0, io.EOF
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.limit > 0 && c.n > c.limit {
		c.tripped = &limitError{what: c.what}
		return n, c.tripped
	}
	return n, err
}

func (c *counter) Close() error {
	if c.r == nil {
		return nil
	}
	return c.r.Close()
}

// connect serves HTTP CONNECT: the policy decides host:port, the gateway
// dials the address it resolved itself, and the tunnel carries bytes.
func (h *proxyHandler) connect(w http.ResponseWriter, r *http.Request, rs *rules) {
	g := h.g
	host, port, err := splitHostPort(r.Host, 0)
	ev := Event{Kind: "connect", Host: host, Port: port}
	var t *target
	var d *denial
	switch {
	case err != nil || port == 0:
		d = deny(nil, "CONNECT needs host:port, got %q", r.Host)
	case host == InferenceHost:
		d = deny(nil, "inference routing is not available in this build")
	default:
		t, d = g.authorizeHost(r.Context(), rs, host, port)
	}
	if d == nil {
		d = t.limit(rs)
	}
	var up net.Conn
	var ap netip.AddrPort
	if d == nil {
		if up, ap, err = g.dial(r.Context(), t); err != nil {
			ev.Rule, ev.Decision, ev.Reason = ruleName(t.rule), Allow, "dial: "+err.Error()
			g.event(rs, ev)
			http.Error(w, "openshell gateway: "+err.Error(), http.StatusBadGateway)
			return
		}
	}
	if d != nil {
		ev.Rule, ev.Decision, ev.Reason = ruleName(d.rule), Deny, d.reason
		g.event(rs, ev)
		writeDenial(w, http.StatusForbidden, host, port, d)
		return
	}
	defer up.Close()
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "cannot tunnel", http.StatusInternalServerError)
		return
	}
	down, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer down.Close()
	if _, err := down.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		return
	}
	ev.Rule, ev.IP = ruleName(t.rule), ap.Addr().String()
	client := io.Reader(brw.Reader)
	if t.rule.TLSRequired {
		// The first byte of a TLS connection is a handshake record (22).
		first, err := brw.Reader.Peek(1)
		if err != nil || first[0] != 22 {
			if d := t.violate(deny(t.rule, "tls_required: the tunnel to %s did not start a TLS handshake", host)); d != nil {
				ev.Decision, ev.Reason = Deny, d.reason
				g.event(rs, ev)
				return
			}
		}
	}
	g.relay(rs, ev, t, client, down, up)
}

// serve hands each connection l accepts to handle, until l is closed.
func serve(l net.Listener, handle func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go handle(c)
	}
}

var errHelloRead = errors.New("hello read")

// handleTLS takes transparently captured TCP 443: it reads the TLS
// ClientHello's server name without answering it, decides, and replays
// the hello to the destination.
func (g *Gateway) handleTLS(c net.Conn) {
	defer c.Close()
	rs := g.current()
	dst, err := netip.ParseAddrPort(c.LocalAddr().String())
	if err != nil {
		return
	}
	var rec bytes.Buffer
	var sni string
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	// crypto/tls parses the hello; the callback stops it before it
	// answers, and the tee keeps every byte it read for the replay.
	_ = tls.Server(readOnly{io.TeeReader(c, &rec), c}, &tls.Config{
		GetConfigForClient: func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			sni = hi.ServerName
			return nil, errHelloRead
		},
	}).Handshake()
	_ = c.SetReadDeadline(time.Time{})
	ev := Event{Kind: "tls", Host: sni, Port: int(dst.Port()), IP: dst.Addr().Unmap().String()}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	t, d := g.authorizeDst(ctx, rs, sni, dst)
	if d == nil && sni == InferenceHost {
		d = deny(nil, "inference routing is not available in this build")
	}
	if d == nil {
		d = t.limit(rs)
	}
	if d != nil {
		ev.Rule, ev.Decision, ev.Reason = ruleName(d.rule), Deny, d.reason
		if sni == "" {
			ev.Host = dst.Addr().Unmap().String()
		}
		g.event(rs, ev)
		return
	}
	g.dialAndRelay(ctx, rs, ev, t, io.MultiReader(&rec, c), c)
}

// dialAndRelay dials an allowed target for a captured connection and
// relays between them; a failed dial is audited as allowed-but-failed.
func (g *Gateway) dialAndRelay(ctx context.Context, rs *rules, ev Event, t *target, client io.Reader, down net.Conn) {
	ev.Rule = ruleName(t.rule)
	up, _, err := g.dial(ctx, t)
	if err != nil {
		ev.Decision, ev.Reason = Allow, "dial: "+err.Error()
		g.event(rs, ev)
		return
	}
	defer up.Close()
	g.relay(rs, ev, t, client, down, up)
}

// readOnly lets crypto/tls read a hello but never write to the client.
type readOnly struct {
	r io.Reader
	net.Conn
}

func (r readOnly) Read(p []byte) (int, error)  { return r.r.Read(p) }
func (r readOnly) Write(p []byte) (int, error) { return 0, errHelloRead }

// relay copies both ways between the sandbox and the destination until
// either side ends, holding the rule's size limits, and then writes the
// connection's audit line.
func (g *Gateway) relay(rs *rules, ev Event, t *target, client io.Reader, down, up net.Conn) {
	enforce := t.rule.Enforcement != policy.EnforcementAudit
	upC := &counter{r: io.NopCloser(client)}
	downC := &counter{r: io.NopCloser(up)}
	if t.rule.MaxRequestKB > 0 && enforce {
		upC.limit, upC.what = t.rule.MaxRequestKB<<10, fmt.Sprintf("max_request_size_kb %d", t.rule.MaxRequestKB)
	}
	if t.rule.MaxResponseMB > 0 && enforce {
		downC.limit, downC.what = t.rule.MaxResponseMB<<20, fmt.Sprintf("max_response_size_mb %d", t.rule.MaxResponseMB)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	pipe := func(dst, src net.Conn, c *counter, raw io.Reader) {
		defer wg.Done()
		if c.limit == 0 {
			// No limit: let io.Copy splice socket to socket in the
			// kernel; only the count is kept.
			n, _ := io.Copy(dst, raw)
			c.n = n
		} else {
			_, _ = io.Copy(dst, c)
		}
		closeWrite(dst)
		if c.tripped != nil {
			_ = down.Close()
			_ = up.Close()
		}
	}
	go pipe(up, down, upC, client)
	go pipe(down, up, downC, up)
	wg.Wait()
	ev.BytesUp, ev.BytesDown = upC.n, downC.n
	ev.Decision = Allow
	switch {
	case upC.tripped != nil:
		ev.Decision, ev.Reason = Deny, upC.tripped.Error()
	case downC.tripped != nil:
		ev.Decision, ev.Reason = Deny, downC.tripped.Error()
	case t.audit != "":
		ev.Decision, ev.Reason = Audit, t.audit
	}
	g.event(rs, ev)
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}
