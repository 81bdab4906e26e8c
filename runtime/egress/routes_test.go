package egress

import (
	"net"
	"net/netip"
	"testing"
)

// TestUplinkRoutesLocal: the kernel's route lookup, on the kept socket,
// calls loopback, this namespace's own addresses and broadcast local and
// a documentation address not; the answers stay right question after
// question, and after the kept socket is lost (every later question
// asks on a socket of its own).
func TestUplinkRoutesLocal(t *testing.T) {
	u := &uplinkRoutes{}
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
}
