package egress

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/openshell/openshell/policyhook/egress"
	"github.com/openshell/openshell/policyhook/l7"
	"github.com/openshell/openshell/policyhook/policy"
)

// An endpoint with HTTP rules (an access preset, method and path rules,
// or tls: terminate) has each of its requests decided on its own. Plain
// HTTP is read as it comes. TLS is terminated: the gateway answers the
// sandbox's handshake with a certificate for the name it asked for,
// signed by the sandbox's CA (ca.go), reads the requests inside, and
// sends each allowed one on over its own TLS connection to the server,
// which it verifies against the host's trust store (or the operator's
// egress.upstream_ca_file; tls: skip, where the policy says so, does not
// verify). HTTP/2 is not offered to the sandbox: ALPN settles on
// HTTP/1.1, so every request is one the gateway can read.

// l7Rules are the compiled HTTP rules of one policy's endpoints.
type l7Rules struct {
	inspect map[*policy.EgressRule]bool
	eps     map[*policy.EgressRule]*l7.Endpoint
	errs    map[*policy.EgressRule]error
}

func newL7Rules(n *policy.Network) l7Rules {
	l := l7Rules{inspect: map[*policy.EgressRule]bool{}, eps: map[*policy.EgressRule]*l7.Endpoint{}, errs: map[*policy.EgressRule]error{}}
	for i := range n.Egress {
		r := &n.Egress[i]
		if !l7.Inspects(r) {
			continue
		}
		l.inspect[r] = true
		ep, err := l7.Compile(r)
		if err != nil {
			// Validation compiles them too: a rule that does not compile
			// here allows no request (fail closed).
			l.errs[r] = err
			continue
		}
		l.eps[r] = ep
	}
	return l
}

// err is the first endpoint whose HTTP rules did not compile: a reload
// to such a policy is refused (the runtime refuses it at create).
func (l *l7Rules) err() error {
	for r, err := range l.errs {
		return fmt.Errorf("%s: %w", r.Field, err)
	}
	return nil
}

// requestInfo is what the audit line of one request records of it.
type requestInfo struct {
	rule string // the grant that matched, from the endpoint's rules
	path string
	// checked is the normalised path the rules decided on: the path
	// forwarded (set only where the endpoint has rules).
	checked string
}

// decide applies t's HTTP rules to r; nil when r may go.
func (l *l7Rules) decide(t *target, r *http.Request, info *requestInfo) *denial {
	info.path = auditPath(r)
	if !l.inspect[t.rule] {
		return nil
	}
	if err := l.errs[t.rule]; err != nil {
		return t.violate(deny(t.rule, "the endpoint's HTTP rules: %s", err))
	}
	ep := l.eps[t.rule]
	if ep == nil {
		// tls: terminate with no rules: every request is seen and
		// audited, none refused.
		return nil
	}
	dec := ep.Decide(r.Method, r.RequestURI)
	if dec.Path != "" {
		info.path, info.checked = dec.Path, dec.Path
	}
	info.rule = dec.Rule
	if !dec.Allow {
		return t.violate(deny(t.rule, "%s", dec.Reason))
	}
	return nil
}

// auditPath is r's path as the audit log keeps it: no query.
func auditPath(r *http.Request) string {
	if r.URL == nil {
		return ""
	}
	return r.URL.EscapedPath()
}

// sameHostHeader reports whether a request on a connection opened for
// host names host in its Host header (any port, any case): a request for
// another host may not ride a connection the policy opened for this one.
func sameHostHeader(r *http.Request, host string) bool {
	h := r.Host
	if hh, _, err := net.SplitHostPort(h); err == nil {
		h = hh
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	return h != "" && egress.Normalize(h) == egress.Normalize(host)
}

// upstreamRoots reads the bundle servers are verified against; nil: the
// host's trust store, as crypto/x509 finds it.
func upstreamRoots(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	data, err := readHeld(file)
	if err != nil {
		return nil, fmt.Errorf("upstream CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("upstream CA %s: no certificate in it", file)
	}
	return pool, nil
}

// newTLSTransport is the transport for requests the gateway sends on
// over its own TLS; skip leaves the server unverified (tls: skip).
func (g *Gateway) newTLSTransport(skip bool) *http.Transport {
	tr := g.newTransport()
	tr.DialContext = nil
	tr.DialTLSContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
		t, ok := ctx.Value(targetKey{}).(*target)
		if !ok {
			return nil, errors.New("no checked target for this request")
		}
		c, _, err := g.dial(ctx, t)
		if err != nil {
			return nil, err
		}
		name := t.name
		if name == "" && len(t.addrs) > 0 {
			// An allowed_ips endpoint reached by address: the
			// certificate must name the address.
			name = t.addrs[0].String()
		}
		cfg := &tls.Config{ServerName: name, RootCAs: g.roots, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12}
		if skip {
			cfg.InsecureSkipVerify = true
		}
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("TLS to %s: %w", name, err)
		}
		return tc, nil
	}
	return tr
}

// terminate serves the TLS a sandbox opened to host:port, on an endpoint
// whose requests are decided one by one. down's reader starts with the
// ClientHello. It returns when the connection ends.
func (g *Gateway) terminate(rs *rules, ev Event, t *target, down net.Conn, host string, port int, p *peer) {
	if g.ca == nil {
		ev.Rule, ev.Decision, ev.Reason = ruleName(t.rule), Deny, "this endpoint's HTTP rules need TLS termination, and the gateway has no sandbox CA (fail closed)"
		g.event(rs, ev)
		return
	}
	tc, err := g.handshake(down, host)
	if err != nil {
		ev.Rule, ev.Decision, ev.Reason = ruleName(t.rule), Deny, "TLS handshake with the sandbox: "+err.Error()
		g.event(rs, ev)
		return
	}
	serveConn(tc, &proxyHandler{g: g, tunnel: true, tunnelHost: host, tunnelPort: port, tls: true, peer: p})
}

// handshake answers the TLS handshake the sandbox opened to host on down
// with a certificate for host signed by the sandbox's CA (HTTP/1.1 only),
// refusing a server name other than host.
// Preconditions: g.ca is not nil.
func (g *Gateway) handshake(down net.Conn, host string) (*tls.Conn, error) {
	tc := tls.Server(down, &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if hi.ServerName != "" && egress.Normalize(hi.ServerName) != egress.Normalize(host) {
				return nil, fmt.Errorf("the TLS server name %q is not %s, the host this connection was allowed for", hi.ServerName, host)
			}
			return g.ca.Certificate(egress.Normalize(host))
		},
	})
	_ = down.SetDeadline(time.Now().Add(headerTimeout))
	err := tc.Handshake()
	_ = down.SetDeadline(time.Time{})
	if err != nil {
		return nil, err
	}
	return tc, nil
}

// prefixConn reads head before the connection itself: the bytes already
// read of it (a ClientHello the gateway peeked at).
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }
