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
	// afresh each time; nil outside a confined gateway (tests), where
	// keys are read here.
	cred inference.CredentialFunc
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
		d := deny(nil, "no inference routing: the sandbox's policy has no inference section")
		g.event(rs, Event{Kind: "inference", Host: InferenceHost, Port: 80, Decision: Deny, Reason: d.reason})
		writeDenial(w, http.StatusForbidden, InferenceHost, 80, d)
		return
	}
	rt.ServeHTTP(w, r)
}

// connectInference serves a CONNECT to inference.local: port 80 is
// served request by request, like plain HTTP in any tunnel; any other
// port (HTTPS among them, until the gateway terminates TLS for it) is
// refused.
func (h *proxyHandler) connectInference(w http.ResponseWriter, r *http.Request, rs *rules, port int) {
	g := h.g
	if port != 80 || rs.policy.Inference == nil {
		reason := "inference.local is served as plain HTTP on port 80 only"
		if rs.policy.Inference == nil {
			reason = "no inference routing: the sandbox's policy has no inference section"
		}
		g.event(rs, Event{Kind: "connect", Host: InferenceHost, Port: port, Decision: Deny, Reason: reason})
		writeDenial(w, http.StatusForbidden, InferenceHost, port, deny(nil, "%s", reason))
		return
	}
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
	h.tunnelHTTP(down, brw.Reader, InferenceHost, 80)
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
	ev := Event{Kind: "inference", Host: InferenceHost, Port: 80, IP: ie.UpstreamHost, Status: ie.Status,
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
