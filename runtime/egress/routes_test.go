package egress

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestUplinkRoutesLocal: the kernel's route lookup, on the kept socket,
// calls loopback, this namespace's own addresses and broadcast local and
// a documentation address not; the answers stay right question after
// question, and after the kept socket is closed; an address the kernel
// cannot be asked about counts as local.
func TestUplinkRoutesLocal(t *testing.T) {
	u := &uplinkRoutes{routeGet: netlink.RouteGet}
	want := map[netip.Addr]bool{
		netip.MustParseAddr("127.0.0.1"):        true,
		netip.MustParseAddr("127.3.4.5"):        true,
		netip.MustParseAddr("255.255.255.255"):  true,
		netip.MustParseAddr("224.0.0.1"):        true,
		netip.MustParseAddr("::ffff:127.0.0.1"): true,
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			want[p.Addr()] = true
		}
	}
	check := func(round string) {
		t.Helper()
		for a, local := range want {
			if got := u.isLocal(a); got != local {
				t.Errorf("%s: isLocal(%s) = %v, want %v", round, a, got, local)
			}
		}
	}
	for range 50 {
		check("kept socket")
	}
	if u.h == nil {
		t.Fatal("no kept netlink socket")
	}
	// A documentation address is routed (a default route) or not at
	// all: either way it is not local.
	if u.isLocal(netip.MustParseAddr("192.0.2.1")) {
		t.Error("192.0.2.1 called local")
	}
	u.h.Close()
	check("after the kept socket closed")

	// No kept socket, and the question's own fails: the address is
	// taken as local (never dialled), unless the kernel said it has no
	// route to it.
	u.h = nil
	u.routeGet = func(net.IP) ([]netlink.Route, error) { return nil, unix.EMFILE }
	if !u.isLocal(netip.MustParseAddr("192.0.2.1")) {
		t.Error("an address the kernel could not be asked about was called not local")
	}
	u.routeGet = func(net.IP) ([]netlink.Route, error) { return nil, unix.ENETUNREACH }
	if u.isLocal(netip.MustParseAddr("192.0.2.1")) {
		t.Error("an address with no route was called local")
	}
}
