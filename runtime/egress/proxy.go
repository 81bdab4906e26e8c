package egress

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openshell/openshell/policyhook/policy"
)

// InferenceHost is the name the sandbox calls for model inference: the
// gateway serves it itself (inference.go): HTTP on port 80, HTTPS on 443.
const InferenceHost = "inference.local"

func (g *Gateway) httpServer(transparent bool) *http.Server {
	return &http.Server{
		Handler:           &proxyHandler{g: g, transparent: transparent},
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       keepAliveTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          quietLog,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*trackedConn); ok {
				ctx = context.WithValue(ctx, trackedKey{}, tc)
			}
			return ctx
		},
	}
}

// quietLog takes net/http's complaints about what the sandbox sends: the
// sandbox must not be able to fill the gateway's log.
var quietLog = log.New(io.Discard, "", 0)

type proxyHandler struct {
	g           *Gateway
	transparent bool
	// tunnel is set for plain HTTP inside a CONNECT tunnel: every
	// request goes to the host and port the CONNECT named.
	tunnel     bool
	tunnelHost string
	tunnelPort int
	// tls is set inside a TLS connection the gateway terminated: the
	// sandbox's side is TLS, and requests go on over the gateway's own.
	tls bool
	// peer is the tunnel's connection from the sandbox (nil on the
	// top-level servers, where each request's connection says).
	peer *peer
}

// peerFor is the sandbox's end of the connection r came on.
func (h *proxyHandler) peerFor(r *http.Request) *peer {
	if h.peer != nil {
		return h.peer
	}
	if c := trackedOf(r.Context()); c != nil {
		return h.g.peerOf(c, netip.AddrPort{})
	}
	return nil
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
	// A connection serving a request is never displaced for a new one.
	defer trackedOf(r.Context()).hold()()
	g := h.g
	rs := g.current()
	if r.Method == http.MethodConnect && !h.transparent && !h.tunnel {
		h.connect(w, r, rs)
		return
	}
	// Not canceled when the client half-closes after its request (an
	// HTTP/1.0 client, nc): it still wants the answer.
	ctx, cancel := context.WithTimeout(withPeer(context.WithoutCancel(r.Context()), h.peerFor(r)), 30*time.Second)
	defer cancel()
	var (
		host string
		port int
		t    *target
		d    *denial
		err  error
	)
	switch {
	case h.tunnel:
		host, port = h.tunnelHost, h.tunnelPort
		switch {
		case r.Method == http.MethodConnect:
			err = errors.New("CONNECT inside a tunnel")
		case !sameHostHeader(r, host):
			err = fmt.Errorf("a request for host %q on a connection opened for %s", r.Host, host)
		default:
			t, d = g.authorizeHost(ctx, rs, host, port)
		}
	case h.transparent:
		local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		dst, perr := netip.ParseAddrPort(fmt.Sprint(local))
		if perr != nil {
			http.Error(w, "no destination", http.StatusBadGateway)
			return
		}
		// The port is the connection's own: the Host header's may say
		// anything, and neither the decision nor the dial reads it.
		host, _, err = splitHostPort(r.Host, int(dst.Port()))
		port = int(dst.Port())
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
	ev := Event{Kind: "http", Host: host, Port: port, Method: r.Method}
	if h.tls {
		ev.Kind = "https"
	}
	var info requestInfo
	if err != nil {
		d = deny(nil, "bad request: %s", err)
	}
	g.who(ctx, rs, &ev, t, d)
	if host == InferenceHost {
		g.serveInference(w, r)
		return
	}
	if d == nil {
		d = admit(r, rs, t, host, h.tls, &info)
	}
	ev.Path = info.path
	if ev.Path == "" {
		ev.Path = auditPath(r)
	}
	if d == nil {
		d = prebuffer(r, t, w)
	}
	if d != nil {
		ev.Rule, ev.Decision, ev.Reason = ruleName(d.rule), Deny, d.reason
		code := http.StatusForbidden
		if d.rateLimited {
			code = http.StatusTooManyRequests
		}
		ev.Status = code
		g.event(rs, ev)
		writeDenial(w, code, host, port, d)
		return
	}
	if info.rule != "" {
		ev.Grant = info.rule
	}
	h.forward(w, r, rs, t, host, info.checked, ev)
}

// admit applies a request's per-rule checks: the endpoint's HTTP rules,
// tls_required (met where the gateway terminated the sandbox's TLS), the
// request's size as it goes on the wire (its headers and the body it
// declares), and the rate limit, which counts every request.
func admit(r *http.Request, rs *rules, t *target, host string, overTLS bool, info *requestInfo) *denial {
	if d := rs.l7.decide(t, r, info); d != nil {
		return d
	}
	if t.rule.TLSRequired && !overTLS {
		if d := t.violate(deny(t.rule, "tls_required: plain HTTP to %s is refused", host)); d != nil {
			return d
		}
	}
	if kb := t.rule.MaxRequestKB; kb > 0 {
		if size := requestHeaderSize(r) + max(r.ContentLength, 0); size > kb<<10 {
			if d := t.violate(deny(t.rule, "max_request_size_kb %d exceeded (%d bytes with the headers)", kb, size)); d != nil {
				return d
			}
		}
	}
	return t.limit(rs)
}

// requestHeaderSize is the size of r's request line and headers on the
// wire.
func requestHeaderSize(r *http.Request) int64 {
	n := len(r.Method) + 1 + len(r.RequestURI) + 1 + len(r.Proto) + 2
	n += len("Host: ") + len(r.Host) + 2
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	for _, te := range r.TransferEncoding {
		n += len("Transfer-Encoding: ") + len(te) + 2
	}
	return int64(n + 2)
}

// bodyLimit is how many body bytes r may still send under t's
// max_request_size_kb; -1: no limit applies.
func bodyLimit(r *http.Request, t *target) int64 {
	if t.rule.MaxRequestKB <= 0 || t.audit != "" || t.rule.Enforcement == policy.EnforcementAudit {
		return -1
	}
	return max(t.rule.MaxRequestKB<<10-requestHeaderSize(r), 0)
}

// maxPrebuffer is the largest body limit under which a body of unknown
// length (chunked) is read whole before anything is sent: over the limit,
// the destination then sees nothing of it. Larger limits stream, and stop
// at the limit.
const maxPrebuffer = 64 << 10

// prebuffer reads a chunked body whole when its limit is small, so a
// body over the limit is refused before a byte of it leaves. A body that
// stops coming ends at the idle timeout, as a forwarded one does.
func prebuffer(r *http.Request, t *target, w http.ResponseWriter) *denial {
	lim := bodyLimit(r, t)
	if lim < 0 || lim > maxPrebuffer || r.ContentLength >= 0 || r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	data, err := io.ReadAll(io.LimitReader(newIdleBody(r, w), lim+1))
	switch {
	case int64(len(data)) > lim:
		return deny(t.rule, "max_request_size_kb %d exceeded (a chunked body of more than %d bytes after %d bytes of headers)", t.rule.MaxRequestKB, lim, requestHeaderSize(r))
	case err != nil:
		return deny(t.rule, "request body: %s", err)
	}
	r.Body = io.NopCloser(bytes.NewReader(data))
	r.ContentLength = int64(len(data))
	r.TransferEncoding = nil
	return nil
}

// targetKey carries a request's checked target to the shared transport's
// dialer: a connection is only ever dialed to an address the policy
// allowed for the request that needs it.
type targetKey struct{}

// poolHost is an outgoing request's URL host. The transports pool
// kept-alive connections by it, and read nothing else of it: the dialer
// dials the target's own addresses, the Host header is the request's and
// TLS names t.name. It stands for the name, the port and the exact
// addresses the decision allowed, so a connection is reused only by a
// request allowed that same name and those same addresses: one name can
// have others under another rule (another binary's, other allowed_ips)
// or after a reload.
func poolHost(host string, t *target) string {
	addrs := slices.Clone(t.addrs)
	slices.SortFunc(addrs, netip.Addr.Compare)
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d", host, t.port)
	for _, a := range addrs {
		h.Write(a.AsSlice())
	}
	return net.JoinHostPort(hex.EncodeToString(h.Sum(nil)[:16])+".pool.invalid", strconv.Itoa(t.port))
}

// newTransport is the gateway's one upstream HTTP transport. It keeps
// connections alive, pooled by poolHost: a connection is reused only by
// requests the policy allowed for that same name and addresses.
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
		MaxIdleConns:           64,
		MaxIdleConnsPerHost:    8,
		IdleConnTimeout:        30 * time.Second,
		ResponseHeaderTimeout:  60 * time.Second,
		MaxResponseHeaderBytes: 256 << 10,
	}
}

// forward sends an allowed plain-HTTP request on, to the address the
// policy checked, counting bytes both ways and holding the size limits.
//
// checked, when set, is the path the endpoint's HTTP rules decided on (dot
// segments resolved, escapes normalised): it is the path sent, so the
// server is asked for exactly what was checked, never a raw path it might
// resolve otherwise.
func (h *proxyHandler) forward(w http.ResponseWriter, r *http.Request, rs *rules, t *target, host, checked string, ev Event) {
	g := h.g
	ev.Rule = ruleName(t.rule)
	body := r.Body
	if body != nil && body != http.NoBody {
		body = newIdleBody(r, w)
	}
	up := &counter{r: body}
	if lim := bodyLimit(r, t); lim >= 0 {
		// Counted as it streams: nothing past the limit is sent on.
		up.limit = max(lim, 1)
		up.what = fmt.Sprintf("max_request_size_kb %d", t.rule.MaxRequestKB)
	}
	r.Body = up
	var down *counter
	var stream *upgradeStream
	// The upstream connection the request went on: its address is the
	// audit line's, its deadlines the idle timeout's.
	var upConn atomic.Value
	upstream := func() net.Conn {
		c, _ := upConn.Load().(net.Conn)
		return c
	}
	var informational int
	trace := &httptrace.ClientTrace{
		GotConn: func(ci httptrace.GotConnInfo) { upConn.Store(ci.Conn) },
		// ReverseProxy relays 1xx answers (its hook runs before this
		// one), and the transport then lifts its own bound on how many
		// come: a server could send headers without end, counted by no
		// limit. The last one relayed ends the request.
		Got1xxResponse: func(int, textproto.MIMEHeader) error {
			if informational++; informational >= maxInformational {
				return &refusal{fmt.Sprintf("%d informational (1xx) responses: at most %d are relayed", informational, maxInformational)}
			}
			return nil
		},
	}
	var userConn atomic.Pointer[net.Conn]
	var keys wsKeys
	// See ServeHTTP: a client that is really gone fails the response's
	// writes instead.
	ctx := context.WithoutCancel(r.Context())
	r = r.WithContext(httptrace.WithClientTrace(context.WithValue(ctx, targetKey{}, t), trace))
	scheme, transport := "http", g.transport
	if h.tls {
		scheme, transport = "https", g.tlsTransport
		if t.rule.TLS == "skip" {
			transport = g.skipTransport
		}
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = scheme
			pr.Out.URL.Host = poolHost(host, t)
			if checked != "" {
				if p, err := url.PathUnescape(checked); err == nil {
					pr.Out.URL.Path, pr.Out.URL.RawPath = p, checked
				}
			}
			pr.Out.Host = r.Host
			if pr.Out.Host == "" {
				// The URL's host is poolHost's: never a Host header.
				pr.Out.Host = net.JoinHostPort(host, strconv.Itoa(t.port))
			}
			pr.Out.Header.Del("Proxy-Authorization")
			pr.Out.Header.Del("Proxy-Connection")
			keys.replace(pr.Out.Header)
		},
		Transport:  transport,
		BufferPool: copyBuffers,
		ModifyResponse: func(resp *http.Response) error {
			ev.Status = resp.StatusCode
			if resp.StatusCode == http.StatusSwitchingProtocols {
				// An upgrade (WebSocket) the rules allowed as a GET of its
				// path: from here the connection is a two-way stream that
				// ReverseProxy copies (it needs the body writable), held to
				// the rule's size limits and the idle timeout, and counted.
				rwc, ok := resp.Body.(io.ReadWriteCloser)
				c := upstream()
				switch {
				case !keys.accepted(resp):
					return &refusal{"the server switched protocols without completing a WebSocket handshake: only WebSocket upgrades are relayed"}
				case !ok || c == nil:
					return &refusal{"an upgrade the gateway cannot hold to its limits"}
				case r.ContentLength != 0 || len(r.TransferEncoding) > 0:
					return &refusal{"an upgrade of a request with a body"}
				}
				stream = newUpgradeStream(rwc, c, t, up.limit, up.what)
				stream.watch(&userConn)
				resp.Body = stream
				return nil
			}
			down = responseCounter(t, idleRead{resp.Body, upstream()})
			if down.limit > 0 && resp.ContentLength > down.limit {
				return &limitError{what: down.what}
			}
			resp.Body = down
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			var le *limitError
			var ur *refusal
			if errors.As(err, &ur) {
				ev.Decision, ev.Reason, ev.Status = Deny, ur.Error(), http.StatusBadGateway
				http.Error(w, "openshell gateway: "+ur.Error(), http.StatusBadGateway)
				return
			}
			if errors.As(err, &le) {
				ev.Decision, ev.Reason, ev.Status = Deny, le.Error(), http.StatusForbidden
				writeDenial(w, http.StatusForbidden, host, t.port, deny(t.rule, "%s", le.Error()))
				return
			}
			ev.Decision, ev.Reason, ev.Status = Allow, "upstream: "+err.Error(), http.StatusBadGateway
			http.Error(w, "openshell gateway: "+err.Error(), http.StatusBadGateway)
		},
	}
	ev.Decision = Allow
	defer func() {
		if c := upstream(); c != nil {
			if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
				ev.IP = ap.Addr().String()
			}
		}
		var upTripped error
		ev.BytesUp, upTripped = up.counted()
		if stream != nil {
			stream.audit(&ev)
		}
		if down != nil {
			var downTripped error
			if ev.BytesDown, downTripped = down.counted(); downTripped != nil {
				ev.Decision, ev.Reason = Deny, downTripped.Error()
			}
		}
		if upTripped != nil {
			ev.Decision, ev.Reason = Deny, upTripped.Error()
		}
		if ev.Decision == Allow && t.audit != "" {
			reason := t.audit
			if ev.Reason != "" {
				reason += "; " + ev.Reason
			}
			ev.Decision, ev.Reason = Audit, reason
		}
		g.event(rs, ev)
	}()
	hw := hijackWatch{noCloseNotify{w}, &userConn}
	rp.ServeHTTP(hw, r)
	// What the server flushes after the handler is held to it too.
	hw.arm()
}

// hijackWatch keeps the sandbox's connection ReverseProxy takes over for
// an upgrade, which the stream's watch closes when it idles.
type hijackWatch struct {
	noCloseNotify
	conn *atomic.Pointer[net.Conn]
}

func (w hijackWatch) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.conn.Store(&c)
	}
	return c, brw, err
}

// arm gives the next write of the answer the idle timeout: a sandbox
// that stops reading would otherwise hold the handler, the upstream
// connection and a busy slot for as long as it likes. Every header and
// body write arms it (a connection's next answer never inherits an old
// deadline).
func (w hijackWatch) arm() {
	_ = http.NewResponseController(w.ResponseWriter).SetWriteDeadline(time.Now().Add(idleTimeout))
}

func (w hijackWatch) WriteHeader(code int) {
	w.arm()
	w.ResponseWriter.WriteHeader(code)
}

func (w hijackWatch) Write(p []byte) (int, error) {
	w.arm()
	return w.ResponseWriter.Write(p)
}

// idleRead holds each read of an answer's body to the idle timeout: a
// server that goes quiet in the middle of one ends it. The deadline goes
// at the body's end, so a kept-alive connection does not carry it.
type idleRead struct {
	io.ReadCloser
	conn net.Conn
}

func (r idleRead) Read(p []byte) (int, error) {
	if r.conn != nil {
		_ = r.conn.SetReadDeadline(time.Now().Add(idleTimeout))
	}
	n, err := r.ReadCloser.Read(p)
	if err != nil && r.conn != nil {
		_ = r.conn.SetReadDeadline(time.Time{})
	}
	return n, err
}

// copyBuffers are the proxy's copy buffers: larger than ReverseProxy's
// 32 KiB default, for bulk transfers.
// A bounded free list, not a sync.Pool, which would box each slice.
var copyBuffers = bufferPool{free: make(chan []byte, 64), size: 256 << 10}

type bufferPool struct {
	free chan []byte
	size int
}

func (b bufferPool) Get() []byte {
	select {
	case buf := <-b.free:
		return buf
	default:
		return make([]byte, b.size)
	}
}

func (b bufferPool) Put(buf []byte) {
	select {
	case b.free <- buf:
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

// idleBody ends a request body that sends nothing for the idle timeout.
//
// It ends on its own, too: at its declared length (left, -1 when
// unknown), and at the first EOF, for good. The transport's write of the
// request can outlive the handler (it reads once more past the declared
// length to check there is nothing extra), and by then the handler may
// have returned and the server closed the body: a read of a closed body
// fails, and the transport then closes the upstream connection under
// the next request it carries (a streamed response cut short).
type idleBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	left int64
	eof  bool
}

func newIdleBody(r *http.Request, w http.ResponseWriter) *idleBody {
	left := r.ContentLength
	if left < 0 {
		left = -1
	}
	return &idleBody{ReadCloser: r.Body, rc: http.NewResponseController(w), left: left}
}

func (b *idleBody) Read(p []byte) (int, error) {
	if b.eof || b.left == 0 {
		b.eof = true
		return 0, io.EOF
	}
	if b.left > 0 && int64(len(p)) > b.left {
		p = p[:b.left]
	}
	_ = b.rc.SetReadDeadline(time.Now().Add(idleTimeout))
	n, err := b.ReadCloser.Read(p)
	if b.left > 0 {
		b.left -= int64(n)
	}
	if err != nil || b.left == 0 {
		// The server reads on its own after the body: not under ours.
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// responseCounter counts an answer's bytes, body, toward t's
// max_response_size_mb (counted only, where the rule only audits).
func responseCounter(t *target, body io.ReadCloser) *counter {
	c := &counter{r: body}
	if t.rule.MaxResponseMB > 0 && t.rule.Enforcement != policy.EnforcementAudit {
		c.limit, c.what = t.rule.MaxResponseMB<<20, fmt.Sprintf("max_response_size_mb %d", t.rule.MaxResponseMB)
	}
	return c
}

// counter counts what passes through a reader and fails it past limit,
// passing on no byte beyond it. Its count is read (counted) while the
// transport may still be reading a request body through it.
type counter struct {
	r     io.ReadCloser
	limit int64 // 0: none
	what  string

	mu      sync.Mutex
	n       int64
	tripped error
}

// counted is what has passed, and the limit that stopped it (if one did).
func (c *counter) counted() (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n, c.tripped
}

func (c *counter) Read(p []byte) (int, error) {
	if c.r == nil {
		return 0, io.EOF
	}
	c.mu.Lock()
	tripped, room := c.tripped, c.limit-c.n+1
	c.mu.Unlock()
	if tripped != nil {
		return 0, tripped
	}
	if c.limit > 0 && int64(len(p)) > room {
		// One byte past the limit is enough to know it is crossed.
		p = p[:room]
	}
	n, err := c.r.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.limit > 0 && c.n+int64(n) > c.limit {
		n = int(c.limit - c.n)
		c.n = c.limit
		c.tripped = &limitError{what: c.what}
		return n, c.tripped
	}
	c.n += int64(n)
	return n, err
}

func (c *counter) Close() error {
	if c.r == nil {
		return nil
	}
	return c.r.Close()
}

// acceptConnect answers a CONNECT with 200 and takes its connection
// over: down, with br reading what the client has sent already. Not ok:
// there is nothing more to serve (the error is answered, or the
// connection is gone and closed).
func acceptConnect(w http.ResponseWriter) (down net.Conn, br *bufio.Reader, ok bool) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "cannot tunnel", http.StatusInternalServerError)
		return nil, nil, false
	}
	down, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, false
	}
	if _, err := down.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		_ = down.Close()
		return nil, nil, false
	}
	return down, brw.Reader, true
}

// connect serves HTTP CONNECT: the policy decides host:port, the gateway
// dials the address it resolved itself, and the tunnel carries bytes.
// Plain HTTP through a tunnel to port 80 is served request by request,
// as the proxy serves its own, so each request is decided, counted by
// the rate limit and held to the size limit; what the gateway cannot
// read (TLS) is counted once per tunnel.
func (h *proxyHandler) connect(w http.ResponseWriter, r *http.Request, rs *rules) {
	g := h.g
	host, port, err := splitHostPort(r.Host, 0)
	ev := Event{Kind: "connect", Host: host, Port: port}
	p := h.peerFor(r)
	var t *target
	var d *denial
	switch {
	case err != nil || port == 0:
		d = deny(nil, "CONNECT needs host:port, got %q", r.Host)
	case host == InferenceHost:
		h.connectInference(w, r, rs, port)
		return
	default:
		t, d = g.authorizeHost(withPeer(r.Context(), p), rs, host, port)
	}
	g.who(withPeer(r.Context(), p), rs, &ev, t, d)
	// Port 80 may carry requests the gateway can read, and an endpoint
	// with HTTP rules has its requests read (its TLS terminated): they
	// are counted once it knows, not the tunnel. Where the rule neither
	// counts nor bounds requests, a tunnel to port 80 is bytes to the
	// host it names, as every other tunnel (the kernel splices them): a
	// request inside could only reach that same host.
	inspect := d == nil && rs.l7.inspect[t.rule]
	maybeHTTP := d == nil && (inspect || port == 80 && !t.rule.TLSRequired && perRequest(t.rule))
	if d == nil && !maybeHTTP {
		d = t.limit(rs)
	}
	var up net.Conn
	var ap netip.AddrPort
	if d == nil && !maybeHTTP {
		if up, ap, err = g.dial(r.Context(), t); err != nil {
			ev.Rule, ev.Decision, ev.Reason = ruleName(t.rule), Allow, "dial: "+err.Error()
			if errors.Is(err, errHostAddr) {
				ev.Decision = Deny
			}
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
	if up != nil {
		defer up.Close()
		ev.IP = ap.Addr().String()
	}
	ev.Rule = ruleName(t.rule)
	down, br, ok := acceptConnect(w)
	if !ok {
		// Allowed, and (unless it waits to see HTTP) dialled: a line
		// says so, though the sandbox was gone before the 200.
		ev.Decision, ev.Reason = Allow, "the sandbox's connection ended before the tunnel opened"
		g.event(rs, ev)
		return
	}
	defer down.Close()
	if maybeHTTP {
		_ = down.SetReadDeadline(time.Now().Add(headerTimeout))
		first, err := br.Peek(1)
		_ = down.SetReadDeadline(time.Time{})
		if err != nil {
			ev.Decision, ev.Reason = Allow, "the tunnel ended before its first byte: "+err.Error()
			g.event(rs, ev)
			return
		}
		if first[0] != recordHandshake {
			ev.Decision, ev.Reason = Allow, "plain HTTP: each request is decided and audited on its own"
			g.event(rs, ev)
			h.tunnelHTTP(down, br, host, port, p)
			return
		}
		if inspect {
			ev.Decision, ev.Reason = Allow, "TLS terminated: each request is decided and audited on its own"
			g.event(rs, ev)
			g.terminate(rs, ev, t, &bufferedConn{Conn: down, r: br}, host, port, p)
			return
		}
		// TLS on port 80: no requests to see, so the tunnel counts.
		if d := t.limit(rs); d != nil {
			ev.Decision, ev.Reason = Deny, d.reason
			g.event(rs, ev)
			return
		}
		if up, ap, err = g.dial(r.Context(), t); err != nil {
			ev.Decision, ev.Reason = Allow, "dial: "+err.Error()
			g.event(rs, ev)
			return
		}
		defer up.Close()
		ev.IP = ap.Addr().String()
	}
	var hello []byte
	if t.rule.TLSRequired {
		_ = down.SetReadDeadline(time.Now().Add(headerTimeout))
		hello, err = readClientHello(br)
		_ = down.SetReadDeadline(time.Time{})
		if err != nil {
			if d := t.violate(deny(t.rule, "the tunnel to %s did not start a TLS handshake: %s", host, err)); d != nil {
				ev.Decision, ev.Reason = Deny, d.reason
				g.event(rs, ev)
				return
			}
			// Audit mode: what was read goes on, unchecked.
			hello = append(hello, buffered(br)...)
			g.relay(rs, ev, t, nil, hello, down, up)
			return
		}
	}
	g.relay(rs, ev, t, hello, buffered(br), down, up)
}

// perRequest reports whether r has limits the gateway holds each request
// it can read to: a rate limit (which counts requests) or a size limit.
func perRequest(r *policy.EgressRule) bool {
	return r.RateLimit != nil || r.MaxRequestKB > 0 || r.MaxResponseMB > 0
}

// buffered is what br holds that its connection has no more.
func buffered(br *bufio.Reader) []byte {
	b, _ := br.Peek(br.Buffered())
	return append([]byte(nil), b...)
}

// tunnelHTTP serves the plain HTTP a CONNECT tunnel to host:port carries,
// until the client closes it or it idles.
func (h *proxyHandler) tunnelHTTP(down net.Conn, br *bufio.Reader, host string, port int, p *peer) {
	serveConn(&bufferedConn{Conn: down, r: br}, &proxyHandler{g: h.g, tunnel: true, tunnelHost: host, tunnelPort: port, peer: p})
}

// serveConn serves the requests one connection carries with h, until the
// client closes it or it idles. It returns when its handler has: one that
// took the connection over (an upgrade the server switched to) still
// holds it, and the caller closes it only after.
func serveConn(c net.Conn, h http.Handler) {
	l := &oneConnListener{c: c, done: make(chan struct{})}
	var handlers sync.WaitGroup
	defer handlers.Wait()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			handlers.Add(1)
			defer handlers.Done()
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       keepAliveTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          quietLog,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				l.Close()
			}
		},
	}
	_ = srv.Serve(l)
}

// oneConnListener hands out one connection, then waits for it to end.
type oneConnListener struct {
	c    net.Conn
	once sync.Once
	done chan struct{}
	used bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.used {
		l.used = true
		return l.c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.c.LocalAddr() }

// bufferedConn reads what a hijacked connection's reader still holds
// before the connection itself.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

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
	_ = c.SetReadDeadline(time.Now().Add(headerTimeout))
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
	if sni == InferenceHost {
		defer tracked(c).hold()()
		g.serveInferenceTLS(rs, ev, &prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(rec.Bytes()), c)})
		return
	}
	p := g.peerOf(c, netip.AddrPort{})
	ctx, cancel := context.WithTimeout(withPeer(context.Background(), p), 15*time.Second)
	defer cancel()
	t, d := g.authorizeDst(ctx, rs, sni, dst)
	g.who(ctx, rs, &ev, t, d)
	if d == nil && rs.l7.inspect[t.rule] {
		// Each request is decided and counted; the connection is not.
		defer tracked(c).hold()()
		ev.Rule, ev.Decision, ev.Reason = ruleName(t.rule), Allow, "TLS terminated: each request is decided and audited on its own"
		g.event(rs, ev)
		all := append([]byte(nil), rec.Bytes()...)
		g.terminate(rs, ev, t, &prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(all), c)}, sni, int(dst.Port()), p)
		return
	}
	if d == nil {
		d = t.limit(rs)
	}
	all := append([]byte(nil), rec.Bytes()...)
	var hello, head []byte
	head = all
	if d == nil && t.rule.TLSRequired {
		// The same bytes crypto/tls read, checked as the stream they
		// will be relayed as (and read on when it stopped short).
		_ = c.SetReadDeadline(time.Now().Add(headerTimeout))
		raw, herr := readClientHello(io.MultiReader(bytes.NewReader(all), c))
		_ = c.SetReadDeadline(time.Time{})
		switch {
		case herr == nil:
			hello, head = raw, all[min(len(raw), len(all)):]
		case len(raw) > len(all):
			head = raw
		}
		if herr != nil {
			d = t.violate(deny(t.rule, "%s", herr))
		}
	}
	if d != nil {
		ev.Rule, ev.Decision, ev.Reason = ruleName(d.rule), Deny, d.reason
		if sni == "" {
			ev.Host = dst.Addr().Unmap().String()
		}
		g.event(rs, ev)
		return
	}
	defer tracked(c).hold()()
	g.dialAndRelay(ctx, rs, ev, t, hello, head, c)
}

// dialAndRelay dials an allowed target for a captured connection and
// relays between them; a failed dial is audited as allowed-but-failed
// (denied when the address turned out to be the host's own).
func (g *Gateway) dialAndRelay(ctx context.Context, rs *rules, ev Event, t *target, hello, head []byte, down net.Conn) {
	ev.Rule = ruleName(t.rule)
	up, _, err := g.dial(ctx, t)
	if err != nil {
		ev.Decision, ev.Reason = Allow, "dial: "+err.Error()
		if errors.Is(err, errHostAddr) {
			ev.Decision = Deny
		}
		g.event(rs, ev)
		return
	}
	defer up.Close()
	g.relay(rs, ev, t, hello, head, down, up)
}

// readOnly lets crypto/tls read a hello but never write to the client.
type readOnly struct {
	r io.Reader
	net.Conn
}

func (r readOnly) Read(p []byte) (int, error)  { return r.r.Read(p) }
func (r readOnly) Write(p []byte) (int, error) { return 0, errHelloRead }

// relay copies both ways between the sandbox (down) and the destination
// (up) until either side ends or both are quiet for the idle timeout,
// holding the rule's size limits, and then writes the connection's audit
// line. head is what was already read from the sandbox, to go first.
// hello, when set, is the sandbox's checked ClientHello (tls_required):
// it goes first, and then both ways must be TLS records to the end.
// Without a limit or a check, the kernel copies socket to socket.
func (g *Gateway) relay(rs *rules, ev Event, t *target, hello, head []byte, down, up net.Conn) {
	enforce := t.rule.Enforcement != policy.EnforcementAudit
	guard := hello != nil
	rawDown, rawUp := rawConn(down), rawConn(up)
	upC := &counter{}
	if t.rule.MaxRequestKB > 0 && enforce {
		upC.limit, upC.what = t.rule.MaxRequestKB<<10, fmt.Sprintf("max_request_size_kb %d", t.rule.MaxRequestKB)
	}
	downC := responseCounter(t, nil) // its reader is set below, where one is needed
	// nil: the kernel copies the raw socket.
	var upSrc, downSrc io.Reader
	if guard || upC.limit > 0 {
		var r io.Reader = io.MultiReader(bytes.NewReader(head), rawDown)
		if guard {
			r = io.MultiReader(bytes.NewReader(hello), &recordReader{r: r})
		}
		upC.r, upSrc, head = io.NopCloser(r), upC, nil
	}
	if guard || downC.limit > 0 {
		var r io.Reader = rawUp
		if guard {
			r = &recordReader{r: r}
		}
		downC.r, downSrc = io.NopCloser(r), downC
	}
	clock := &idleClock{}
	clock.touch()
	var wg sync.WaitGroup
	var upN, downN int64
	var upErr, downErr error
	run := func(dst, srcConn net.Conn, src io.Reader, head []byte, n *int64, perr *error) {
		defer wg.Done()
		var err error
		if len(head) > 0 {
			_ = dst.SetWriteDeadline(time.Now().Add(idleTimeout))
			var k int
			k, err = dst.Write(head)
			*n += int64(k)
		}
		if err == nil {
			var k int64
			k, err = pipe(dst, srcConn, src, clock)
			*n += k
		}
		*perr = err
		var nt *notTLSError
		var le *limitError
		if err != nil && (isTimeout(err) || errors.As(err, &nt) || errors.As(err, &le)) {
			// A limit, a framing error or a quiet tunnel ends both
			// ways at once.
			_ = rawDown.Close()
			_ = rawUp.Close()
			return
		}
		closeWrite(dst)
	}
	wg.Add(2)
	go run(rawUp, rawDown, upSrc, head, &upN, &upErr)
	go run(rawDown, rawUp, downSrc, nil, &downN, &downErr)
	wg.Wait()
	ev.BytesUp, ev.BytesDown = upN, downN
	_, upTripped := upC.counted()
	_, downTripped := downC.counted()
	ev.Decision = Allow
	var nt *notTLSError
	switch {
	case upTripped != nil:
		ev.Decision, ev.Reason = Deny, upTripped.Error()
	case downTripped != nil:
		ev.Decision, ev.Reason = Deny, downTripped.Error()
	case errors.As(upErr, &nt), errors.As(downErr, &nt):
		ev.Decision, ev.Reason = Deny, nt.Error()
	case isTimeout(upErr) || isTimeout(downErr):
		ev.Reason = fmt.Sprintf("closed: quiet both ways for %s", idleTimeout)
		if t.audit != "" {
			ev.Decision, ev.Reason = Audit, t.audit+"; "+ev.Reason
		}
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
