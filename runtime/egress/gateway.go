// Package egress is the per-sandbox egress gateway: a DNS server that
// answers only the names the policy allows, and a proxy (HTTP CONNECT,
// plain HTTP, and transparent capture of TCP 80 and 443) that checks every
// connection against the policy and dials out itself. Every decision is an
// audit event. It also builds the network namespaces that leave the
// sandbox no other way out (topology.go).
//
// One gateway process serves one sandbox: a crash or a kill takes one
// sandbox's network down (its namespaces forward nothing, so it fails
// closed), never another's; its lifetime is the sandbox's; and it needs no
// privilege but its listening sockets, which the runtime hands it.
package egress

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/openshell/openshell/policyhook/egress"
	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/runtime/inference"
)

// Config is what one gateway needs besides its sockets.
type Config struct {
	Sandbox    string `json:"sandbox"`
	PolicyFile string `json:"policy_file"` // loaded at start, watched for reloads
	AuditFile  string `json:"audit_file"`
	// DNSUpstream is the resolver (host:port) the gateway asks for the
	// names the policy allows. Empty: the first nameserver of the
	// gateway's /etc/resolv.conf.
	DNSUpstream string `json:"dns_upstream,omitempty"`
	// AuditMaxMB bounds the audit log on disk, rotated file included
	// (egress.audit_max_mb). 0: DefaultAuditMaxBytes.
	AuditMaxMB int `json:"audit_max_mb,omitempty"`
	// InferenceProviders are the host's model providers
	// ([inference.providers]): where their keys come from, never a key.
	// The keeper reads the keys; the serving process asks it per call.
	InferenceProviders []inference.Provider `json:"inference_providers,omitempty"`
	// CAFile holds the sandbox CA's certificate and key (WriteCAFile):
	// the gateway signs with it where it terminates the sandbox's TLS.
	// Empty: no endpoint is terminated; one whose rules need it is
	// refused (fail closed).
	CAFile string `json:"ca_file,omitempty"`
	// UpstreamCA is the PEM bundle servers are verified against where
	// the gateway opens its own TLS. Empty: the host's trust store.
	UpstreamCA string `json:"upstream_ca,omitempty"`
	// Learn puts the gateway in learning mode (learn.go): every name
	// answered, every connection no rule allows let through as audit.
	// The runtime's switch, never a policy field.
	Learn bool `json:"learn,omitempty"`
	// Attribution: the sandbox's sentry reports which binary opened each
	// connection (attribution.go), on the Attr socket. Off: binary-scoped
	// rules grant nothing.
	Attribution bool `json:"attribution,omitempty"`
}

// Listeners are the sockets a gateway serves, all in the sandbox's
// gateway namespace. A nil one is not served.
type Listeners struct {
	DNSUDP net.PacketConn
	DNSTCP net.Listener
	Proxy  net.Listener // explicit proxy: HTTP CONNECT and absolute-URI requests
	HTTP   net.Listener // transparent TCP 80
	TLS    net.Listener // transparent TCP 443
	Catch  net.Listener // TCP to every other port, redirected by the firewall
	// UDPCatch gets UDP to every port but DNS (TPROXY), and ICMP is a
	// raw socket that sees the sandbox's ICMP: both only to audit it.
	UDPCatch *net.UDPConn
	ICMP     *os.File
	// Attr is the unix socket the sentry's attribution sink connects to.
	Attr net.Listener
}

// rules is one loaded policy: swapped whole on reload.
type rules struct {
	policy   *policy.Policy
	m        *egress.Matcher
	limiters map[*policy.EgressRule]*rate.Limiter
	l7       l7Rules
	// learn is the learning rule in learning mode, else nil.
	learn *policy.EgressRule
}

func newRules(p *policy.Policy, learn bool) *rules {
	var lr *policy.EgressRule
	if learn {
		p, lr = learningPolicy(p), learnRule()
	}
	r := &rules{policy: p, learn: lr, m: egress.New(p.Network), limiters: map[*policy.EgressRule]*rate.Limiter{}, l7: newL7Rules(&p.Network)}
	for i := range p.Network.Egress {
		e := &p.Network.Egress[i]
		if e.RateLimit != nil {
			per := float64(e.RateLimit.Count) / e.RateLimit.Per.Seconds()
			r.limiters[e] = rate.NewLimiter(rate.Limit(per), int(e.RateLimit.Count))
		}
	}
	return r
}

// Gateway serves one sandbox.
type Gateway struct {
	cfg   Config
	log   *slog.Logger
	audit *AuditLog
	rules atomic.Pointer[rules]
	names *nameTable
	dns   *resolver
	// dialer dials out from the gateway's own network namespace.
	dialer net.Dialer
	// dialTCP is dialer.DialContext; tests put a server at an address
	// the policy allows through it.
	dialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
	// isLocal reports whether an address is the uplink's own, asked of
	// the kernel at each decision and each dial: never a destination,
	// whenever the host gained it.
	isLocal   func(netip.Addr) bool
	transport *http.Transport
	// Where the gateway terminates the sandbox's TLS: the sandbox's CA,
	// the roots servers are verified against (nil: the host's), and the
	// transports that open its own TLS (verifying, and tls: skip's).
	ca            *CA
	roots         *x509.CertPool
	tlsTransport  *http.Transport
	skipTransport *http.Transport
	drops         *dropLog
	conns         *connTable
	dnsSlots      chan struct{} // one per UDP DNS question being answered
	reloadMu      sync.Mutex
	inference     inferenceState
	attr          *attribution
}

// New loads the policy and opens the audit log.
func New(cfg Config, log *slog.Logger) (*Gateway, error) {
	p, err := policy.Load(cfg.PolicyFile)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	upstream := cfg.DNSUpstream
	if upstream == "" {
		if upstream, err = SystemResolver("/etc/resolv.conf"); err != nil {
			return nil, fmt.Errorf("gateway: %w", err)
		}
	}
	a, err := OpenAuditLog(cfg.AuditFile, AuditLimits{MaxBytes: int64(cfg.AuditMaxMB) << 20})
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g := &Gateway{
		cfg:      cfg,
		log:      log,
		audit:    a,
		names:    newNameTable(),
		dialer:   net.Dialer{Timeout: 10 * time.Second},
		conns:    newConnTable(maxConns),
		dnsSlots: make(chan struct{}, maxDNSInFlight),
	}
	g.dialTCP = g.dialer.DialContext
	g.isLocal = (&uplinkRoutes{routeGet: netlink.RouteGet}).isLocal
	g.dns = &resolver{upstream: upstream, timeout: 3 * time.Second}
	if cfg.CAFile != "" {
		if g.ca, err = LoadCA(cfg.CAFile); err != nil {
			return nil, fmt.Errorf("gateway: %w", err)
		}
	}
	if g.roots, err = upstreamRoots(cfg.UpstreamCA); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.transport = g.newTransport()
	g.tlsTransport, g.skipTransport = g.newTLSTransport(false), g.newTLSTransport(true)
	g.drops = newDropLog()
	g.rules.Store(newRules(p, cfg.Learn))
	g.attr = newAttribution(cfg.Attribution, func(msg string) {
		g.event(g.current(), Event{Kind: "attribution", Decision: Deny, Reason: msg})
	})
	g.conns.attr = g.attr
	g.attr.closed = func() {
		g.log.Warn("attribution: the sentry's channel closed; binary-scoped rules deny from now on")
	}
	return g, nil
}

// uplinkRoutes reports whether the namespace the gateway dials from would
// deliver a packet to an address to itself: an address on any of its
// interfaces, a local route (AnyIP), a broadcast or multicast. The
// kernel's own route lookup answers, at the moment of asking, so an
// address the host gains after the gateway started (a bridge, DHCP, a
// service IP) counts as soon as it is there; an address it cannot ask
// about counts as local (fail closed). It asks on one netlink
// socket kept for the gateway's life, opened at the first question: a
// socket per question cost three socket(2)/bind/close rounds per
// connection (27 µs each here, 9 µs on a kept socket).
type uplinkRoutes struct {
	once sync.Once
	h    *netlink.Handle // nil: opening it failed; every question opens its own
	// routeGet asks on a socket of its own (netlink.RouteGet; tests
	// make it fail).
	routeGet func(net.IP) ([]netlink.Route, error)
}

func (u *uplinkRoutes) isLocal(ip netip.Addr) bool {
	u.once.Do(func() {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return
		}
		// An answer that never comes must not hold every later
		// question behind the socket's lock.
		if err := h.SetSocketTimeout(2 * time.Second); err != nil {
			h.Close()
			return
		}
		u.h = h
	})
	dst := ip.Unmap().AsSlice()
	var routes []netlink.Route
	var err error
	if u.h != nil {
		routes, err = u.h.RouteGet(dst)
	}
	if u.h == nil || err != nil && !unroutable(err) {
		// No kept socket, or it failed (a timeout, a lost answer): ask
		// on a socket of its own before calling the address not local.
		routes, err = u.routeGet(dst)
	}
	if err != nil {
		// No route at all: the kernel would not deliver it locally
		// either. Any other failure is taken as local: an address the
		// kernel could not be asked about is never dialled.
		return !unroutable(err)
	}
	for _, r := range routes {
		switch r.Type {
		case unix.RTN_LOCAL, unix.RTN_BROADCAST, unix.RTN_ANYCAST, unix.RTN_MULTICAST:
			return true
		}
	}
	return false
}

// unroutable is the kernel's answer that it has no route to an address.
func unroutable(err error) bool {
	return errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH)
}

func (g *Gateway) current() *rules { return g.rules.Load() }

// event fills in what every audit line carries and writes it.
func (g *Gateway) event(r *rules, e Event) {
	e.Time = time.Now().UTC()
	e.Sandbox = g.cfg.Sandbox
	e.Policy = r.policy.Name
	e.PolicyHash = r.policy.Hash
	if r.learn != nil {
		learned(&e)
	}
	if err := g.audit.Write(&e); err != nil {
		g.log.Error("audit", "err", err)
	}
}

// Serve serves the listeners until ctx ends, then closes them.
func (g *Gateway) Serve(ctx context.Context, l Listeners) error {
	var wg sync.WaitGroup
	// Each served socket (or the server on it) is closed when ctx ends.
	var closers []io.Closer
	run := func(c io.Closer, f func()) {
		closers = append(closers, c)
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	if l.DNSUDP != nil {
		run(l.DNSUDP, func() { g.serveDNSUDP(l.DNSUDP) })
	}
	if l.DNSTCP != nil {
		run(l.DNSTCP, func() { serve(g.limit(l.DNSTCP), g.handleDNSTCP) })
	}
	if l.Proxy != nil {
		s := g.httpServer(false)
		run(s, func() { _ = s.Serve(g.limit(l.Proxy)) })
	}
	if l.HTTP != nil {
		s := g.httpServer(true)
		run(s, func() { _ = s.Serve(g.limit(l.HTTP)) })
	}
	if l.TLS != nil {
		run(l.TLS, func() { serve(g.limit(l.TLS), g.handleTLS) })
	}
	if l.Catch != nil {
		run(l.Catch, func() { serve(g.limit(l.Catch), g.handleCatch) })
	}
	if l.UDPCatch != nil {
		run(l.UDPCatch, func() { g.auditUDP(l.UDPCatch) })
	}
	if l.Attr != nil {
		run(l.Attr, func() { serve(l.Attr, g.attr.serve) })
	}
	if l.ICMP != nil {
		// A blocking read on a raw socket: not waited for at shutdown.
		closers = append(closers, l.ICMP)
		go g.auditICMP(l.ICMP)
	}
	<-ctx.Done()
	for _, c := range closers {
		_ = c.Close()
	}
	g.transport.CloseIdleConnections()
	wg.Wait()
	return g.audit.Close()
}

// limit holds l's connections to the gateway's bound, shared by all its
// sockets; one refused for want of room is audited (at the drop log's
// pace).
func (g *Gateway) limit(l net.Listener) net.Listener {
	return &limitedListener{Listener: l, table: g.conns, refuse: func(c net.Conn) {
		dst, _ := netip.ParseAddrPort(c.LocalAddr().String())
		g.dropped("tcp", dst, fmt.Sprintf("the gateway holds %d connections from this sandbox, all busy: refused", maxConns))
	}}
}

// Reload loads the policy file again. Only the network section may
// change under a running sandbox: a change anywhere else is refused, and
// the running rules stay.
func (g *Gateway) Reload() error {
	g.reloadMu.Lock()
	defer g.reloadMu.Unlock()
	old := g.current()
	p, err := policy.Load(g.cfg.PolicyFile)
	if err == nil {
		err = SameOutsideNetwork(old.policy, p)
	}
	if err == nil && !g.cfg.Attribution {
		err = needsAttribution(p)
	}
	var nr *rules
	if err == nil {
		nr = newRules(p, g.cfg.Learn)
		err = nr.l7.err()
	}
	if err != nil {
		g.event(old, Event{Kind: "reload", Host: g.cfg.PolicyFile, Decision: Deny, Reason: err.Error()})
		return fmt.Errorf("reload %s: %w", g.cfg.PolicyFile, err)
	}
	g.rules.Store(nr)
	// A key held for the old route is not used for the new one, nor
	// kept in memory once it may be withdrawn.
	if f := g.inference.forget; f != nil {
		f()
	}
	// Nor is a kept-alive upstream connection: the new rules may not
	// allow its address (poolHost keeps requests under them apart, and
	// this frees the old ones).
	for _, tr := range []*http.Transport{g.transport, g.tlsTransport, g.skipTransport} {
		if tr != nil {
			tr.CloseIdleConnections()
		}
	}
	g.event(nr, Event{Kind: "reload", Host: g.cfg.PolicyFile, Decision: Allow, Reason: fmt.Sprintf("%d egress rule(s) active", len(p.Network.Egress))})
	g.log.Info("policy reloaded", "file", g.cfg.PolicyFile, "sha256", p.Hash, "rules", len(p.Network.Egress))
	return nil
}

// needsAttribution refuses binary-scoped rules for a sandbox started
// without the sentry's attribution: they could grant nothing, and a rule
// that cannot hold is refused, not kept and dropped.
func needsAttribution(p *policy.Policy) error {
	if r := p.Network.ScopedRule(); r != nil {
		return fmt.Errorf("%s names binaries, and this sandbox was started without connection attribution (its policy then named none): restart it under the new policy", r.Field)
	}
	return nil
}

// SameOutsideNetwork returns an error naming what changed between a and b
// outside the network section (and inference routing, which the gateway
// also serves): those are fixed when the sandbox starts.
func SameOutsideNetwork(a, b *policy.Policy) error {
	var changed []string
	if !reflect.DeepEqual(a.Filesystem, b.Filesystem) {
		changed = append(changed, "filesystem")
	}
	if !reflect.DeepEqual(a.Process, b.Process) {
		changed = append(changed, "process")
	}
	if !reflect.DeepEqual(a.Resources, b.Resources) {
		changed = append(changed, "resources")
	}
	if !reflect.DeepEqual(a.Env, b.Env) {
		changed = append(changed, "environment")
	}
	// set_env is the sandbox process's environment too, written at
	// create: a reload could only drop the change.
	setEnv := func(p *policy.Policy) bool { return p.Inference != nil && p.Inference.SetEnv }
	if setEnv(a) != setEnv(b) {
		changed = append(changed, "inference.set_env")
	}
	if len(changed) > 0 {
		return fmt.Errorf("the %v section(s) changed: only network rules can change in a running sandbox; restart it to apply the rest", changed)
	}
	return nil
}

// Watch reloads the policy when its file changes, checking every
// interval, until ctx ends.
func (g *Gateway) Watch(ctx context.Context, interval time.Duration, hup <-chan struct{}) {
	stamp := fileStamp(g.cfg.PolicyFile)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		case <-t.C:
			if fileStamp(g.cfg.PolicyFile) == stamp {
				continue
			}
		}
		stamp = fileStamp(g.cfg.PolicyFile)
		if err := g.Reload(); err != nil {
			g.log.Warn("policy reload refused", "err", err)
		}
	}
}

// denial is why a connection was refused, and under which rule.
type denial struct {
	rule        *policy.EgressRule
	bin         Binary // the executable that opened the connection, when asked
	reason      string
	rateLimited bool // an HTTP client gets 429, not 403
}

func (d *denial) Error() string { return d.reason }

func deny(r *policy.EgressRule, format string, args ...any) *denial {
	return &denial{rule: r, reason: fmt.Sprintf(format, args...)}
}

// target is a connection the policy allows: where to dial.
type target struct {
	name  string // the host name the rule matched, when known
	rule  *policy.EgressRule
	addrs []netip.Addr
	port  int
	// bin is the executable that opened the connection, when a
	// binary-scoped rule made the gateway ask.
	bin Binary
	// audit is set when the connection goes ahead only because its rule
	// is in audit mode: the reason it would have been denied.
	audit string
}

func ruleName(r *policy.EgressRule) string {
	if r == nil {
		return ""
	}
	if r.Group != "" {
		return r.Group + "/" + r.Host
	}
	return r.Field
}

// limit applies the rule's rate limit; in audit mode a trip is recorded,
// not enforced.
func (t *target) limit(rs *rules) *denial {
	if l := rs.limiters[t.rule]; l != nil && !l.Allow() {
		d := deny(t.rule, "rate_limit %d per %s exceeded", t.rule.RateLimit.Count, t.rule.RateLimit.Per)
		d.rateLimited = true
		return t.violate(d)
	}
	return nil
}

// violate turns a limit's denial into an audit note for audit-mode rules.
func (t *target) violate(d *denial) *denial {
	if t.rule != nil && t.rule.Enforcement == policy.EnforcementAudit {
		t.audit = "would deny: " + d.reason
		return nil
	}
	return d
}

// choose picks, among the rules that allow a connection's host and port
// (in the matcher's order), the first that admits the binary that opened
// it. A rule without binaries admits every binary, so the binary is
// asked for only when a binary-scoped rule comes first. When none
// admits it, the first rule's denial stands, or its audit note when
// that rule only audits. what names the destination in a denial; it is
// called only for one, off the path of an allowed connection.
func choose(ctx context.Context, cands []*policy.EgressRule, what func() string) (*target, *denial) {
	if len(cands) == 0 {
		return nil, nil
	}
	var (
		bin   Binary
		berr  error
		asked bool
	)
	for _, r := range cands {
		if len(r.Binaries) == 0 {
			t := &target{rule: r}
			if asked && berr == nil {
				t.bin = bin
			}
			return t, nil
		}
		if !asked {
			bin, berr = peerFrom(ctx).binary()
			asked = true
		}
		if berr == nil && bin.trusted() && matchBinaries(r.Binaries, bin.Path) {
			return &target{rule: r, bin: bin}, nil
		}
	}
	first, dst := cands[0], what()
	var d *denial
	switch {
	case berr != nil:
		d = deny(first, "%s is allowed only to %s: %s", dst, strings.Join(first.Binaries, ", "), berr)
	case !bin.ReadOnly && matchBinaries(first.Binaries, bin.Path):
		d = deny(first, "%s: %s is not on a read-only mount; a binary counts only where the agent cannot have written it", dst, bin.Path)
	case bin.Foreign != "" && matchBinaries(first.Binaries, bin.Path):
		d = deny(first, "%s: %s runs code from %s, which is not on a read-only mount (a preloaded or loaded library the agent may have written)", dst, bin.Path, bin.Foreign)
	default:
		d = deny(first, "%s is allowed only to %s, not to %s", dst, strings.Join(first.Binaries, ", "), orUnknown(bin.Path))
	}
	d.bin = bin
	if first.Enforcement == policy.EnforcementAudit {
		return &target{rule: first, bin: bin, audit: "would deny: " + d.reason}, nil
	}
	return nil, d
}

func orUnknown(p string) string {
	if p == "" {
		return "an unknown executable"
	}
	return p
}

func matchBinaries(patterns []string, path string) bool {
	for _, p := range patterns {
		if egress.BinaryMatch(p, path) {
			return true
		}
	}
	return false
}

// chooseName is the rule for a connection to the name host on port, or
// why there is none.
func chooseName(ctx context.Context, rs *rules, host string, port int) (*target, *denial) {
	what := func() string { return fmt.Sprintf("%s:%d", egress.Normalize(host), port) }
	t, d := choose(ctx, rs.match(host, port), what)
	if d == nil && t == nil {
		d = deny(nil, "no rule allows %s", what())
	}
	return t, d
}

// authorizeHost decides a connection the sandbox asked for by name (or by
// an address written as a name) on port: the explicit proxy's case.
func (g *Gateway) authorizeHost(ctx context.Context, rs *rules, host string, port int) (*target, *denial) {
	if ip, ok := egress.HostIP(host); ok {
		return g.authorizeIP(ctx, rs, ip, port)
	}
	t, d := chooseName(ctx, rs, host, port)
	if d != nil {
		return nil, d
	}
	r := t.rule
	addrs, err := g.lookup(ctx, host)
	if err != nil {
		return nil, deny(r, "resolve %s: %s", host, err)
	}
	var ok []netip.Addr
	var why string
	for _, a := range addrs {
		if reason := g.checkIP(rs, a, r); reason != "" {
			why = fmt.Sprintf("%s resolves to %s: %s", host, a, reason)
			continue
		}
		ok = append(ok, a)
	}
	if len(ok) == 0 {
		if why == "" {
			why = host + " has no address"
		}
		return nil, deny(r, "%s", why)
	}
	t.name, t.addrs, t.port = egress.Normalize(host), ok, port
	return t, nil
}

// authorizeIP decides a connection to a raw address: only allowed_ips
// open one.
func (g *Gateway) authorizeIP(ctx context.Context, rs *rules, ip netip.Addr, port int) (*target, *denial) {
	ip = ip.Unmap()
	t, d := choose(ctx, rs.matchIP(ip, port), netip.AddrPortFrom(ip, uint16(port)).String)
	if d != nil {
		return nil, d
	}
	if t == nil {
		if reason := g.checkIP(rs, ip, nil); reason != "" {
			return nil, deny(nil, "%s: %s", ip, reason)
		}
		return nil, deny(nil, "raw address %s:%d: egress rules name hosts; no rule's allowed_ips lists it", ip, port)
	}
	if reason := g.checkIP(rs, ip, t.rule); reason != "" {
		return nil, deny(t.rule, "%s: %s", ip, reason)
	}
	t.addrs, t.port = []netip.Addr{ip}, port
	return t, nil
}

// authorizeDst decides a transparently captured connection: the sandbox
// dialled dst itself and named host in its TLS SNI or HTTP Host. The name
// must be allowed, and dst must be an address that name resolves to, so a
// forged name cannot open another address.
func (g *Gateway) authorizeDst(ctx context.Context, rs *rules, host string, dst netip.AddrPort) (*target, *denial) {
	ip, port := dst.Addr().Unmap(), int(dst.Port())
	if host == "" {
		return g.authorizeIP(ctx, rs, ip, port)
	}
	if hip, ok := egress.HostIP(host); ok {
		if hip.Unmap() != ip {
			return nil, deny(nil, "the connection names %s but goes to %s", hip, ip)
		}
		return g.authorizeIP(ctx, rs, ip, port)
	}
	t, d := chooseName(ctx, rs, host, port)
	if d != nil {
		return nil, d
	}
	r := t.rule
	if !g.names.has(ip, host) {
		addrs, err := g.lookup(ctx, host)
		if err != nil {
			return nil, deny(r, "resolve %s: %s", host, err)
		}
		found := false
		for _, a := range addrs {
			found = found || a == ip
		}
		if !found {
			return nil, deny(r, "%s does not resolve to %s: the name the connection carries does not match where it goes", host, ip)
		}
	}
	if reason := g.checkIP(rs, ip, r); reason != "" {
		return nil, deny(r, "%s: %s", ip, reason)
	}
	t.name, t.addrs, t.port = egress.Normalize(host), []netip.Addr{ip}, port
	return t, nil
}

func (g *Gateway) checkIP(rs *rules, ip netip.Addr, r *policy.EgressRule) string {
	if reason := rs.m.CheckIP(ip, r); reason != "" {
		return reason
	}
	if g.isLocal(ip.Unmap()) {
		return "an address of the host"
	}
	return ""
}

// lookup resolves host upstream (IPv4) and remembers the answer.
func (g *Gateway) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	ans, err := g.dns.lookupA(ctx, egress.Normalize(host))
	if err != nil {
		return nil, err
	}
	g.names.add(host, ans.addrs, ans.ttl)
	return ans.addrs, nil
}

// errHostAddr is a dial refused because the address is the uplink's own.
var errHostAddr = errors.New("an address of the host")

// dial connects to the first of t's addresses that answers. Whatever the
// decision said, an address local to the uplink namespace at the moment
// of dialling is never dialled, and a connection that turns out to have
// been made to one (an address added between the check and the connect:
// the kernel then picks that address as the source too) is closed before
// a byte is sent.
func (g *Gateway) dial(ctx context.Context, t *target) (net.Conn, netip.AddrPort, error) {
	var errs []error
	for _, a := range t.addrs {
		ap := netip.AddrPortFrom(a, uint16(t.port))
		if g.isLocal(a) {
			errs = append(errs, fmt.Errorf("dial %s: %w", ap, errHostAddr))
			continue
		}
		c, err := g.dialTCP(ctx, "tcp", ap.String())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if sameHost(c) || g.isLocal(a) {
			_ = c.Close()
			errs = append(errs, fmt.Errorf("dial %s: %w", ap, errHostAddr))
			continue
		}
		return c, ap, nil
	}
	return nil, netip.AddrPort{}, errors.Join(errs...)
}

// sameHost reports whether c's two ends are one address: a connection
// the namespace made to itself.
func sameHost(c net.Conn) bool {
	l, lok := c.LocalAddr().(*net.TCPAddr)
	r, rok := c.RemoteAddr().(*net.TCPAddr)
	return lok && rok && l.IP.Equal(r.IP)
}

// nameTable remembers which names resolved to which addresses, so a
// transparently captured connection can be checked against the name it
// carries.
//
// Preconditions: mu guards m and n.
type nameTable struct {
	mu sync.Mutex
	m  map[netip.Addr]map[string]time.Time
	n  int // entries in m
}

// maxNames bounds the table: a wildcard rule lets the sandbox resolve
// names without end. Past it the expired entries go, then (when that is
// not enough) a quarter of the rest: a forgotten name only means a
// catch-all connection to its address is refused, or a captured one
// looks the name up again.
const maxNames = 16384

func newNameTable() *nameTable { return &nameTable{m: map[netip.Addr]map[string]time.Time{}} }

// keep is how long an answer is remembered past its TTL: clients cache
// answers longer than they should.
const keep = 10 * time.Minute

func (t *nameTable) add(name string, addrs []netip.Addr, ttl time.Duration) {
	name = egress.Normalize(name)
	until := time.Now().Add(ttl + keep)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n+len(addrs) > maxNames {
		t.shrink()
	}
	for _, a := range addrs {
		if t.m[a] == nil {
			t.m[a] = map[string]time.Time{}
		}
		if _, ok := t.m[a][name]; !ok {
			t.n++
		}
		t.m[a][name] = until
	}
}

// shrink drops expired entries, and a quarter of all when none had.
//
// Preconditions: t.mu must be locked.
func (t *nameTable) shrink() {
	now := time.Now()
	before := t.n
	for pass := 0; pass < 2 && t.n > before*3/4; pass++ {
		i := 0
		for a, names := range t.m {
			for name, until := range names {
				// Map order is random: the second pass drops every
				// fourth entry it meets.
				if now.After(until) || (pass == 1 && i%4 == 0) {
					delete(names, name)
					t.n--
				}
				i++
			}
			if len(names) == 0 {
				delete(t.m, a)
			}
		}
	}
}

// namesOf lists the names a resolved to, and are still remembered.
func (t *nameTable) namesOf(a netip.Addr) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	now := time.Now()
	for name, until := range t.m[a] {
		if now.Before(until) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

func (t *nameTable) has(a netip.Addr, name string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	until, ok := t.m[a][egress.Normalize(name)]
	return ok && time.Now().Before(until)
}

// fileStamp changes whenever the file is rewritten or replaced (an
// editor's rename, a ConfigMap's symlink swap).
func fileStamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return fmt.Sprintf("%d/%d/%d", fi.ModTime().UnixNano(), fi.Size(), ino)
}
