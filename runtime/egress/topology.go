package egress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	goruntime "runtime"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The sandbox link. Every sandbox has its own pair of namespaces, so every
// sandbox can use the same addresses. They are link-local: no egress rule
// can ever name them (the gateway refuses link-local destinations), so the
// link can never be confused with a destination.
var (
	GatewayAddr = netip.MustParsePrefix("169.254.213.1/30")
	SandboxAddr = netip.MustParsePrefix("169.254.213.2/30")
)

// Ports the gateway serves on its side of the link.
const (
	ProxyPort = 3128
	DNSPort   = 53
)

// Interface names on each side of the sandbox link.
const (
	sandboxIf = "eth0"
	gatewayIf = "gw0"
)

// Topology is a sandbox's two network namespaces: the sandbox's own, whose
// only link leads to the gateway's namespace, and the gateway's, which
// forwards nothing, answers no ping, and accepts connections to any
// address: TCP 80 and 443 to anywhere reach the gateway's listeners, and
// its nftables ruleset sends TCP to every other port to the gateway's
// catch-all listener and drops the rest. Nothing leaves but what the
// gateway process dials itself, from its own namespace.
type Topology struct {
	Dir     string // holds the namespaces' bind mounts
	Sandbox string // the sandbox's network namespace: the spec's path
	Gateway string // the gateway's network namespace
}

// TopologyAt names the topology kept in dir, without creating it.
func TopologyAt(dir string) *Topology {
	return &Topology{Dir: dir, Sandbox: filepath.Join(dir, "sandbox"), Gateway: filepath.Join(dir, "gateway")}
}

// CreateTopology makes the namespaces and the link in dir. On error it
// removes what it made.
func CreateTopology(dir string) (t *Topology, err error) {
	t = TopologyAt(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("egress topology: %w", err)
	}
	defer func() {
		if err != nil {
			_ = t.Remove()
		}
	}()
	for _, p := range []string{t.Sandbox, t.Gateway} {
		if err := NewNetns(p); err != nil {
			return t, fmt.Errorf("egress topology: %w", err)
		}
	}
	// Sysctls first: IPv6 off before a link comes up and gets an address.
	if err := Do(t.Sandbox, func() error {
		return sysctls(map[string]string{"ipv6/conf/all/disable_ipv6": "1", "ipv6/conf/default/disable_ipv6": "1"})
	}); err != nil {
		return t, fmt.Errorf("egress topology: sandbox namespace: %w", err)
	}
	if err := Do(t.Gateway, func() error {
		return sysctls(map[string]string{
			"ipv6/conf/all/disable_ipv6":     "1",
			"ipv6/conf/default/disable_ipv6": "1",
			"ipv4/ip_forward":                "0",
			"ipv4/icmp_echo_ignore_all":      "1",
		})
	}); err != nil {
		return t, fmt.Errorf("egress topology: gateway namespace: %w", err)
	}
	if err := t.link(); err != nil {
		return t, fmt.Errorf("egress topology: %w", err)
	}
	if err := t.firewall(); err != nil {
		return t, fmt.Errorf("egress topology: %w", err)
	}
	return t, nil
}

func (t *Topology) link() error {
	sns, err := netns.GetFromPath(t.Sandbox)
	if err != nil {
		return err
	}
	defer sns.Close()
	gns, err := netns.GetFromPath(t.Gateway)
	if err != nil {
		return err
	}
	defer gns.Close()
	hs, err := netlink.NewHandleAt(sns)
	if err != nil {
		return err
	}
	defer hs.Close()
	hg, err := netlink.NewHandleAt(gns)
	if err != nil {
		return err
	}
	defer hg.Close()

	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: gatewayIf}, PeerName: sandboxIf, PeerNamespace: netlink.NsFd(int(sns))}
	if err := hg.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth: %w", err)
	}
	for _, side := range []struct {
		h    *netlink.Handle
		name string
		addr netip.Prefix
	}{{hg, gatewayIf, GatewayAddr}, {hs, sandboxIf, SandboxAddr}} {
		l, err := side.h.LinkByName(side.name)
		if err != nil {
			return fmt.Errorf("find %s: %w", side.name, err)
		}
		if err := side.h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(side.addr)}); err != nil {
			return fmt.Errorf("address %s: %w", side.name, err)
		}
		if err := side.h.LinkSetUp(l); err != nil {
			return fmt.Errorf("up %s: %w", side.name, err)
		}
		lo, err := side.h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := side.h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("up lo: %w", err)
		}
	}
	eth, err := hs.LinkByName(sandboxIf)
	if err != nil {
		return err
	}
	if err := hs.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(GatewayAddr.Addr().AsSlice())}); err != nil {
		return fmt.Errorf("sandbox default route: %w", err)
	}
	// Every IPv4 address is local to the gateway namespace: a connection
	// to anywhere ends at the gateway's sockets, or is refused.
	lo, err := hg.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := hg.RouteAdd(&netlink.Route{
		LinkIndex: lo.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Type: unix.RTN_LOCAL, Table: unix.RT_TABLE_LOCAL, Scope: netlink.SCOPE_HOST,
	}); err != nil {
		return fmt.Errorf("gateway local route: %w", err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Listen opens the gateway's sockets inside the gateway namespace.
func (t *Topology) Listen() (files []*os.File, err error) {
	err = Do(t.Gateway, func() error {
		var errs []error
		add := func(f *os.File, err error) {
			if err != nil {
				errs = append(errs, err)
				return
			}
			files = append(files, f)
		}
		add(listenUDP(fmt.Sprintf("0.0.0.0:%d", DNSPort)))
		for _, port := range []int{DNSPort, ProxyPort, 80, 443, CatchPort} {
			add(listenTCP(fmt.Sprintf("0.0.0.0:%d", port)))
		}
		add(listenUDPCatch(fmt.Sprintf("0.0.0.0:%d", CatchPort)))
		add(listenICMP())
		return errors.Join(errs...)
	})
	if err != nil {
		for _, f := range files {
			_ = f.Close()
		}
		return nil, fmt.Errorf("gateway sockets: %w", err)
	}
	return files, nil
}

func listenTCP(addr string) (*os.File, error) {
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	return l.(*net.TCPListener).File()
}

func listenUDP(addr string) (*os.File, error) {
	c, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.(*net.UDPConn).File()
}

// listenUDPCatch is the socket TPROXY hands UDP to: transparent, and
// told to report each datagram's original destination.
func listenUDPCatch(addr string) (*os.File, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1); serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1)
			}
		})
		return errors.Join(err, serr)
	}}
	c, err := lc.ListenPacket(context.Background(), "udp4", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.(*net.UDPConn).File()
}

// listenICMP is a raw socket that sees the ICMP the sandbox sends, so the
// gateway can audit it; the kernel answers none of it.
func listenICMP() (*os.File, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return nil, fmt.Errorf("raw ICMP socket: %w", err)
	}
	return os.NewFile(uintptr(fd), "icmp"), nil
}

// Remove unmounts the namespaces and removes dir. The link goes with the
// last process that still holds a namespace.
func (t *Topology) Remove() error {
	var errs []error
	for _, p := range []string{t.Sandbox, t.Gateway} {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(t.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// NewNetns creates a network namespace held by a bind mount at path.
func NewNetns(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o400)
	if err != nil {
		return err
	}
	_ = f.Close()
	return onThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		mountErr := unix.Mount(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), path, "", unix.MS_BIND, "")
		if err := netns.Set(orig); err != nil {
			return errThreadLost{err}
		}
		if mountErr != nil {
			return fmt.Errorf("bind %s: %w", path, mountErr)
		}
		return nil
	})
}

// Do runs fn on a thread inside the network namespace at path: what fn
// opens (sockets, /proc/sys/net files) belongs to that namespace.
func Do(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	return onThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("enter netns %s: %w", path, err)
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			return errThreadLost{err}
		}
		return ferr
	})
}

// errThreadLost is a thread that could not return to its namespace: it is
// left locked, so Go ends it instead of reusing it elsewhere.
type errThreadLost struct{ err error }

func (e errThreadLost) Error() string { return "restore network namespace: " + e.err.Error() }

// onThread runs fn on a locked OS thread of its own and waits.
func onThread(fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		err := fn()
		var lost errThreadLost
		if !errors.As(err, &lost) {
			goruntime.UnlockOSThread()
		}
		ch <- err
	}()
	return <-ch
}

func sysctls(kv map[string]string) error {
	for k, v := range kv {
		if err := os.WriteFile("/proc/sys/net/"+k, []byte(v), 0); err != nil {
			return fmt.Errorf("sysctl net.%s: %w", k, err)
		}
	}
	return nil
}
