// Package fakenet is a small internet inside one network namespace, for
// the egress tests: a DNS server that logs every question it receives,
// and HTTP and HTTPS servers (self-signed) on several public-looking
// addresses. Nothing in it can reach, or be reached from, the real
// network: the gateway under test dials out from this namespace.
package fakenet

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/runtime/egress"
)

// Net is the fake internet: an uplink namespace, standing for the host
// the gateway dials from, routed to an internet namespace that holds the
// servers.
type Net struct {
	Netns string // the uplink namespace: the gateway's uplink_netns
	Inet  string // the servers' namespace
	DNS   netip.AddrPort

	mu      sync.Mutex
	zone    map[string]netip.Addr
	queries []string // "name TYPE" as the DNS server received them
	udp     int
	hellos  []string // "server-name alpn,alpn" of each TLS handshake

	// CAPEM is the certificate of the CA that signed the HTTPS servers'
	// certificate: what a gateway that verifies them must trust.
	CAPEM []byte

	closers []io.Closer
}

// Addresses the fake internet has. Public-looking documentation ranges,
// plus a private and a metadata address that must stay unreachable.
var (
	DNSAddr      = netip.MustParseAddr("203.0.113.53")
	WebA         = netip.MustParseAddr("198.51.100.10") // allowed.test
	WebB         = netip.MustParseAddr("198.51.100.20") // denied.test
	Private      = netip.MustParseAddr("10.77.0.5")
	Metadata     = netip.MustParseAddr("169.254.169.254")
	webAddresses = []netip.Addr{WebA, WebB, Private, Metadata}
	// HostAddr is the uplink's own address, where a host service
	// listens: a sandbox must never reach its host.
	HostAddr = netip.MustParseAddr("192.0.2.1")
	inetAddr = netip.MustParseAddr("192.0.2.2")
	// UDPSink counts the datagrams that reach WebA:9999.
	UDPSink = netip.AddrPortFrom(WebA, 9999)
)

// Start creates the namespace under dir and starts the servers. zone maps
// names to addresses for the DNS server.
func Start(dir string, zone map[string]netip.Addr) (n *Net, err error) {
	n = &Net{Netns: filepath.Join(dir, "uplink"), Inet: filepath.Join(dir, "inet"), DNS: netip.AddrPortFrom(DNSAddr, 53), zone: zone}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	for _, p := range []string{n.Netns, n.Inet} {
		if err := egress.NewNetns(p); err != nil {
			return n, err
		}
	}
	if err := n.links(); err != nil {
		return n, err
	}
	cert, caPEM, err := signedCert()
	if err != nil {
		return n, err
	}
	n.CAPEM = caPEM
	if err := egress.Do(n.Netns, func() error {
		l, err := net.Listen("tcp4", netip.AddrPortFrom(HostAddr, 80).String())
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: handler(HostAddr, "http"), ReadHeaderTimeout: 10 * time.Second}
		n.closers = append(n.closers, srv)
		go func() { _ = srv.Serve(l) }()
		return nil
	}); err != nil {
		return n, err
	}
	return n, egress.Do(n.Inet, func() error {
		sink, err := net.ListenPacket("udp4", UDPSink.String())
		if err != nil {
			return err
		}
		n.closers = append(n.closers, sink)
		go n.countUDP(sink)
		pc, err := net.ListenPacket("udp4", n.DNS.String())
		if err != nil {
			return err
		}
		n.closers = append(n.closers, pc)
		go n.serveDNS(pc)
		for _, a := range webAddresses {
			for _, port := range []int{80, 8080} {
				l, err := net.Listen("tcp4", netip.AddrPortFrom(a, uint16(port)).String())
				if err != nil {
					return err
				}
				srv := &http.Server{Handler: handler(a, "http"), ReadHeaderTimeout: 10 * time.Second}
				n.closers = append(n.closers, srv)
				go func() { _ = srv.Serve(l) }()
			}
			l, err := net.Listen("tcp4", netip.AddrPortFrom(a, 443).String())
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: handler(a, "https"), ReadHeaderTimeout: 10 * time.Second}
			n.closers = append(n.closers, srv)
			cfg := &tls.Config{Certificates: []tls.Certificate{cert}, GetConfigForClient: func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
				n.mu.Lock()
				n.hellos = append(n.hellos, hi.ServerName+" "+strings.Join(hi.SupportedProtos, ","))
				n.mu.Unlock()
				return nil, nil
			}}
			go func() { _ = srv.Serve(tls.NewListener(l, cfg)) }()
		}
		return nil
	})
}

func handleAt(path string) (*netlink.Handle, netns.NsHandle, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, 0, err
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		return nil, 0, err
	}
	return nl, h, nil
}

func addAddr(nl *netlink.Handle, name string, a netip.Addr, bits int) error {
	l, err := nl.LinkByName(name)
	if err != nil {
		return err
	}
	if err := nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}}); err != nil {
		return fmt.Errorf("address %s on %s: %w", a, name, err)
	}
	return nl.LinkSetUp(l)
}

func (n *Net) links() error {
	if err := veth(n.Netns, "u0", HostAddr, n.Inet, "i0", inetAddr); err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	nl, ih, err := handleAt(n.Inet)
	if err != nil {
		return err
	}
	defer ih.Close()
	defer nl.Close()
	// The servers' addresses sit on lo: the namespace accepts them from
	// the veth all the same (and this kernel may have no dummy links).
	for _, a := range append([]netip.Addr{DNSAddr}, webAddresses...) {
		if err := addAddr(nl, "lo", a, 32); err != nil {
			return err
		}
	}
	return nil
}

// veth links namespace a (interface aIf, address aAddr/24, lo up, default
// route via bAddr) to namespace b (bIf, bAddr/24, lo up).
func veth(a, aIf string, aAddr netip.Addr, b, bIf string, bAddr netip.Addr) error {
	ah, ans, err := handleAt(a)
	if err != nil {
		return err
	}
	defer ans.Close()
	defer ah.Close()
	bh, bns, err := handleAt(b)
	if err != nil {
		return err
	}
	defer bns.Close()
	defer bh.Close()
	if err := ah.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aIf}, PeerName: bIf, PeerNamespace: netlink.NsFd(int(bns))}); err != nil {
		return fmt.Errorf("veth: %w", err)
	}
	if err := addAddr(ah, aIf, aAddr, 24); err != nil {
		return err
	}
	if err := addAddr(bh, bIf, bAddr, 24); err != nil {
		return err
	}
	for _, h := range []*netlink.Handle{ah, bh} {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(lo); err != nil {
			return err
		}
	}
	l, err := ah.LinkByName(aIf)
	if err != nil {
		return err
	}
	if err := ah.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: bAddr.AsSlice()}); err != nil {
		return fmt.Errorf("default route: %w", err)
	}
	return nil
}

// deleteLink deletes the link called name in the namespace at path, if
// there is one.
func deleteLink(path, name string) error {
	nl, h, err := handleAt(path)
	if err != nil {
		return err
	}
	defer h.Close()
	defer nl.Close()
	l, err := nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	return nl.LinkDel(l)
}

// removeNetns unmounts and removes a namespace NewNetns made.
func removeNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// handler answers with where it is, and /bytes?n=N with N bytes.
func handler(a netip.Addr, scheme string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bytes" {
			n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
			buf := make([]byte, 64<<10)
			for n > 0 {
				k := min(n, int64(len(buf)))
				if _, err := w.Write(buf[:k]); err != nil {
					return
				}
				n -= k
			}
			return
		}
		if strings.HasSuffix(r.URL.Path, "/info/refs") && r.URL.Query().Get("service") == "git-upload-pack" {
			// Enough of git's smart HTTP for `git ls-remote`: one ref.
			w.Header().Set("Content-Type", "application/x-git-upload-pack-advertisement")
			pkt := func(s string) string { return fmt.Sprintf("%04x%s", len(s)+4, s) }
			const head = "0123456789abcdef0123456789abcdef01234567"
			fmt.Fprint(w, pkt("# service=git-upload-pack\n")+"0000"+pkt(head+" HEAD\x00symref=HEAD:refs/heads/main\n")+pkt(head+" refs/heads/main\n")+"0000")
			return
		}
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "hello from %s %s host=%s got=%d\n", scheme, a, r.Host, len(body))
	})
}

// signedCert makes a CA and, signed by it, the certificate every HTTPS
// server presents: the fake internet's names and addresses.
func signedCert() (tls.Certificate, []byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fakenet CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "fakenet"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames:    []string{"*.test", "allowed.test", "denied.test", "other.test", "pass.test", "rules.test", "limited.test"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, a := range webAddresses {
		tmpl.IPAddresses = append(tmpl.IPAddresses, a.AsSlice())
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}, caPEM, nil
}

// Hellos are the TLS handshakes the HTTPS servers saw, in order, each
// "server-name alpn,alpn": what the client offered, so a test tells the
// sandbox's own ClientHello (passthrough) from the gateway's.
func (n *Net) Hellos() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.hellos...)
}

func (n *Net) serveDNS(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		k, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(buf[:k])
		if err != nil {
			continue
		}
		q, err := p.Question()
		if err != nil {
			continue
		}
		name := strings.TrimSuffix(strings.ToLower(q.Name.String()), ".")
		n.mu.Lock()
		n.queries = append(n.queries, name+" "+q.Type.String())
		a, ok := n.zone[name]
		n.mu.Unlock()
		resp := dnsmessage.Message{Header: dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true}, Questions: []dnsmessage.Question{q}}
		switch {
		case !ok:
			resp.RCode = dnsmessage.RCodeNameError
		case q.Type == dnsmessage.TypeA:
			resp.Answers = []dnsmessage.Resource{{
				Header: dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 300},
				Body:   &dnsmessage.AResource{A: a.As4()},
			}}
		}
		out, err := resp.Pack()
		if err == nil {
			_, _ = pc.WriteTo(out, from)
		}
	}
}

func (n *Net) countUDP(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		if _, _, err := pc.ReadFrom(buf); err != nil {
			return
		}
		n.mu.Lock()
		n.udp++
		n.mu.Unlock()
	}
}

// UDPReceived is how many datagrams reached UDPSink.
func (n *Net) UDPReceived() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.udp
}

// Queries returns what the DNS server has been asked.
func (n *Net) Queries() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.queries...)
}

// SetZone changes what name resolves to.
func (n *Net) SetZone(name string, a netip.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.zone[name] = a
}

// Close stops the servers and removes the namespace.
func (n *Net) Close() error {
	var errs []error
	for _, c := range n.closers {
		_ = c.Close()
	}
	for _, p := range []string{n.Netns, n.Inet} {
		if err := removeNetns(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Direct makes a network namespace at path routed straight into the fake
// internet, with no gateway: the baseline the egress benchmarks compare
// the gateway with. It returns the namespace's removal.
func (n *Net) Direct(path string) (func() error, error) {
	if err := egress.NewNetns(path); err != nil {
		return nil, err
	}
	// The last direct namespace's link can outlive its removal for a
	// while (the kernel tears namespaces down in the background): this
	// net's own, so it goes now.
	if err := deleteLink(n.Inet, "direct0"); err != nil {
		_ = removeNetns(path)
		return nil, fmt.Errorf("direct namespace: %w", err)
	}
	if err := veth(path, "eth0", directAddr, n.Inet, "direct0", directGW); err != nil {
		_ = removeNetns(path)
		return nil, fmt.Errorf("direct namespace: %w", err)
	}
	return func() error { return removeNetns(path) }, nil
}

var (
	directGW   = netip.MustParseAddr("192.0.3.1")
	directAddr = netip.MustParseAddr("192.0.3.2")
)
