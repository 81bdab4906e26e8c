package egress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/openshell/openshell/policyhook/egress"
	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/runtime/inference"
)

// inferenceState is the gateway's model router for inference.local. It
// is built from the policy's route when first needed and again when a
// reload changes the route; what the sandbox spent outlives it.
type inferenceState struct {
	mu    sync.Mutex
	route *policy.Inference // the route r serves
	r     *inference.Router
	usage inference.Usage
	// cred fetches a provider's key from the keeper, which reads it
	// afresh each time it is asked (at most once a credTTL); nil outside
	// a confined gateway (tests), where keys are read here.
	cred inference.CredentialFunc
	// forget drops the keys cred holds (at a reload); nil where it holds
	// none.
	forget func()
}

// router is the router for rs's route; nil when the policy has none.
func (g *Gateway) router(rs *rules) *inference.Router {
	route := rs.policy.Inference
	if route == nil {
		return nil
	}
	s := &g.inference
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.r != nil && reflect.DeepEqual(s.route, route) {
		return s.r
	}
	if s.r != nil {
		s.r.Close()
	}
	cred := s.cred
	if cred == nil {
		cred = g.readCredential
	}
	s.route = route
	s.r = inference.New(inference.Options{
		Route:      route,
		Providers:  g.cfg.InferenceProviders,
		Credential: cred,
		Audit:      g.auditInference,
		Dial:       g.dialModelServer,
		RootCAs:    g.roots,
		Usage:      &s.usage,
	})
	if _, err := s.r.Target(); err != nil {
		g.log.Warn("inference route cannot be served", "err", err)
	}
	if _, err := s.r.LocalTarget(); err != nil {
		g.log.Warn("local inference route cannot be served: calls the privacy rule routes there are refused", "err", err)
	}
	return s.r
}

// readCredential reads a provider's key in this process: only where no
// keeper hands keys over (an unconfined gateway in tests).
func (g *Gateway) readCredential(_ context.Context, name string) (string, error) {
	for _, p := range g.cfg.InferenceProviders {
		if p.Name == name {
			return inference.ReadCredential(p.Credential, func(string) string { return "" })
		}
	}
	return "", fmt.Errorf("no provider %q", name)
}

// serveInference serves one request to inference.local, however it
// reached the gateway (proxy, captured port 80, a CONNECT tunnel).
func (g *Gateway) serveInference(w http.ResponseWriter, r *http.Request) {
	rs := g.current()
	rt := g.router(rs)
	if rt == nil {
		port := inferencePort(r.TLS != nil)
		d := deny(nil, "%s", noRoute)
		g.event(rs, Event{Kind: "inference", Host: InferenceHost, Port: port, Decision: Deny, Reason: d.reason})
		writeDenial(w, http.StatusForbidden, InferenceHost, port, d)
		return
	}
	rt.ServeHTTP(w, r)
}

// inferencePort is the port a call to inference.local came on, for its
// audit line: 443 over TLS, else 80.
func inferencePort(overTLS bool) int {
	if overTLS {
		return 443
	}
	return 80
}

// noRoute is why inference.local is refused to a policy without a route.
const noRoute = "no inference routing: the sandbox's policy has no inference section"

// connectInference serves a CONNECT to inference.local: port 80 is
// served request by request, like plain HTTP in any tunnel, port 443 as
// HTTPS (serveInferenceTLS); any other port is refused.
func (h *proxyHandler) connectInference(w http.ResponseWriter, r *http.Request, rs *rules, port int) {
	g := h.g
	ev := Event{Kind: "connect", Host: InferenceHost, Port: port}
	if (port != 80 && port != 443) || rs.policy.Inference == nil {
		reason := "inference.local is served on port 80 (HTTP) and 443 (HTTPS) only"
		if rs.policy.Inference == nil {
			reason = noRoute
		}
		ev.Decision, ev.Reason = Deny, reason
		g.event(rs, ev)
		writeDenial(w, http.StatusForbidden, InferenceHost, port, deny(nil, "%s", reason))
		return
	}
	down, br, ok := acceptConnect(w)
	if !ok {
		return
	}
	defer down.Close()
	if port == 443 {
		g.serveInferenceTLS(rs, ev, &bufferedConn{Conn: down, r: br})
		return
	}
	h.tunnelHTTP(down, br, InferenceHost, 80, nil)
}

// serveInferenceTLS serves https://inference.local on down, whose reader
// starts with the sandbox's ClientHello (captured 443, or a CONNECT
// tunnel to port 443). The gateway is the server itself: TLS ends here,
// with a certificate for inference.local that the sandbox's CA signs
// (the sandbox trusts it: SSL_CERT_FILE and the image's bundles), and
// each request inside goes to the model router. ev is the connection's
// audit line; the calls have their own.
func (g *Gateway) serveInferenceTLS(rs *rules, ev Event, down net.Conn) {
	ev.Host = InferenceHost
	switch {
	case rs.policy.Inference == nil:
		ev.Decision, ev.Reason = Deny, noRoute
	case g.ca == nil:
		ev.Decision, ev.Reason = Deny, "https://inference.local needs the sandbox's CA, and this gateway has none (http://inference.local is served)"
	default:
		tc, err := g.handshake(down, InferenceHost)
		if err != nil {
			ev.Decision, ev.Reason = Deny, "TLS handshake with the sandbox: "+err.Error()
			break
		}
		ev.Decision, ev.Reason = Allow, "served by the gateway: TLS terminated with the sandbox's CA; each call is routed and audited on its own"
		g.event(rs, ev)
		serveConn(tc, inferenceTLSHandler{g})
		return
	}
	g.event(rs, ev)
}

// inferenceTLSHandler serves the requests of one TLS connection to
// inference.local: each is a call for the model router, and no other
// host rides on it.
type inferenceTLSHandler struct{ g *Gateway }

func (h inferenceTLSHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect || !sameHostHeader(r, InferenceHost) {
		d := deny(nil, "a request for host %q on a TLS connection to inference.local", r.Host)
		h.g.event(h.g.current(), Event{Kind: "https", Host: InferenceHost, Port: 443, Method: r.Method, Decision: Deny, Reason: d.reason})
		writeDenial(w, http.StatusForbidden, InferenceHost, 443, d)
		return
	}
	h.g.serveInference(w, r)
}

// metadataAddrs are never dialled for a model server, whoever vouched
// for it.
var metadataAddrs = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("fd00:ec2::254/128"),
	netip.MustParsePrefix("100.100.100.200/32"),
}

// dialModelServer dials the route's model server from the gateway's
// uplink. A configured provider's base_url is the operator's choice, so
// any address but link-local and cloud metadata is dialled (a vLLM on a
// private network, an Ollama on the host); an endpoint only the policy
// names is held to what egress rules are held to (no host, loopback or
// link-local address; private ranges under block_private_ranges).
func (g *Gateway) dialModelServer(ctx context.Context, _, addr string, trusted bool) (net.Conn, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil {
		return nil, fmt.Errorf("port %q", ps)
	}
	var addrs []netip.Addr
	if ip, ok := egress.HostIP(host); ok {
		addrs = []netip.Addr{ip.Unmap()}
	} else if addrs, err = g.lookup(ctx, host); err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	rs := g.current()
	var ok []netip.Addr
	var why []error
	for _, a := range addrs {
		reason := ""
		switch {
		case trusted:
			for _, p := range metadataAddrs {
				if p.Contains(a.Unmap()) {
					reason = "link-local or cloud metadata"
				}
			}
		default:
			reason = g.checkIP(rs, a, nil)
		}
		if reason != "" {
			why = append(why, fmt.Errorf("%s: %s", a, reason))
			continue
		}
		ok = append(ok, a)
	}
	if len(ok) == 0 {
		return nil, fmt.Errorf("no address of %s may be dialled: %w", host, errors.Join(why...))
	}
	if trusted {
		var errs []error
		for _, a := range ok {
			c, err := g.dialer.DialContext(ctx, "tcp", netip.AddrPortFrom(a, uint16(port)).String())
			if err == nil {
				return c, nil
			}
			errs = append(errs, err)
		}
		return nil, errors.Join(errs...)
	}
	c, _, err := g.dial(ctx, &target{name: host, addrs: ok, port: port})
	return c, err
}

// auditInference records one call: the router's fields as they are, and
// a summary in the reason for the text view.
func (g *Gateway) auditInference(ie *inference.Event) {
	ev := Event{Kind: "inference", Host: InferenceHost, Port: inferencePort(ie.TLS), IP: ie.UpstreamHost, Status: ie.Status,
		BytesUp: ie.BytesUp, BytesDown: ie.BytesDown, Decision: ie.Decision, Inference: ie}
	switch {
	case ie.Decision == inference.Allow:
		ev.Reason = fmt.Sprintf("%s %s: %d in, %d out, %s", ie.API, firstOf(ie.ReportedModel, ie.SentModel), ie.TokensIn, ie.TokensOut, time.Duration(ie.LatencyMS)*time.Millisecond)
		if ie.Reason != "" {
			ev.Reason += "; " + ie.Reason
		}
	default:
		ev.Reason = ie.Reason
	}
	g.event(g.current(), ev)
}

func firstOf(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return "-"
}

// answerInference answers a question for inference.local: the gateway's
// own address, which serves it (A only; other types get an empty
// answer). Nothing is asked upstream.
func (g *Gateway) answerInference(resp dnsmessage.Message, q dnsmessage.Question, maxSize int) []byte {
	ev := Event{Kind: "dns", Host: InferenceHost, Decision: Allow, Reason: "served by the gateway: the policy has an inference route"}
	if q.Type == dnsmessage.TypeA && q.Class == dnsmessage.ClassINET {
		resp.Answers = append(resp.Answers, dnsmessage.Resource{
			Header: dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: maxTTL},
			Body:   &dnsmessage.AResource{A: GatewayAddr.Addr().As4()},
		})
		ev.IP = GatewayAddr.Addr().String()
	}
	g.event(g.current(), ev)
	return pack(resp, maxSize)
}
