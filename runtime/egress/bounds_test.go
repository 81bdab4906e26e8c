package egress

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// The gateway's own bounds (limits.go, dns.go, gateway.go), each held to
// its figure.

// tcpPair is two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		ch <- c
	}()
	client, err = net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-ch
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestIdleTimeout: a relay that moves nothing either way ends at the idle
// timeout, one that trickles does not, whether the kernel copies (src nil)
// or the gateway reads the bytes.
func TestIdleTimeout(t *testing.T) {
	saved := idleTimeout
	idleTimeout = 300 * time.Millisecond
	t.Cleanup(func() { idleTimeout = saved })
	for _, kernel := range []bool{true, false} {
		t.Run(fmt.Sprintf("kernel-copy=%v", kernel), func(t *testing.T) {
			srcPeer, src := tcpPair(t)
			dst, dstPeer := tcpPair(t)
			go io.Copy(io.Discard, dstPeer)
			var clock idleClock
			clock.touch()
			var r io.Reader
			if !kernel {
				r = src
			}
			start := time.Now()
			done := make(chan error, 1)
			go func() { _, err := pipe(dst, src, r, &clock); done <- err }()
			// Trickle for three idle timeouts: the relay must stay.
			var last time.Time
			for time.Since(start) < 3*idleTimeout {
				if _, err := srcPeer.Write([]byte("x")); err != nil {
					t.Fatal(err)
				}
				last = time.Now()
				time.Sleep(idleTimeout / 4)
			}
			select {
			case err := <-done:
				t.Fatalf("a relay that moved a byte every %s ended after %s: %v", idleTimeout/4, time.Since(start), err)
			default:
			}
			select {
			case err := <-done:
				took := time.Since(last)
				if took < idleTimeout || !isTimeout(err) {
					t.Errorf("the quiet relay ended after %s (idle timeout %s): %v", took, idleTimeout, err)
				}
			case <-time.After(10 * idleTimeout):
				t.Fatalf("a quiet relay still runs %s after its last byte (idle timeout %s)", 10*idleTimeout, idleTimeout)
			}
		})
	}
}

// TestDNSInFlightCap: with maxDNSInFlight questions being answered, the
// next UDP question is dropped unanswered (never queued: a flood cannot
// grow the gateway), and it is answered again once a slot frees.
func TestDNSInFlightCap(t *testing.T) {
	g, _, _ := newTestGateway(t, testPolicy)
	if maxDNSInFlight != 64 || cap(g.dnsSlots) != 64 {
		t.Fatalf("%d UDP DNS questions in flight, docs/egress.md says 64", cap(g.dnsSlots))
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go g.serveDNSUDP(pc)
	client, err := net.Dial("udp4", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ask := func(id uint16) bool {
		q := dnsmessage.Message{Header: dnsmessage.Header{ID: id, RecursionDesired: true},
			Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName("api.example.com."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}}}
		packed, _ := q.Pack()
		if _, err := client.Write(packed); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1500)
		_ = client.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		for {
			n, err := client.Read(buf)
			if err != nil {
				return false
			}
			var m dnsmessage.Message
			if m.Unpack(buf[:n]) == nil && m.ID == id {
				return true
			}
		}
	}
	if !ask(1) {
		t.Fatal("no answer with every slot free")
	}
	// Take every slot, as 64 questions waiting on a slow upstream would.
	for range maxDNSInFlight {
		g.dnsSlots <- struct{}{}
	}
	for id := uint16(2); id < 5; id++ {
		if ask(id) {
			t.Fatalf("question %d answered with %d in flight", id, maxDNSInFlight)
		}
	}
	<-g.dnsSlots
	if !ask(9) {
		t.Fatal("no answer once a slot was free again")
	}
}

// TestNameTableBound: a sandbox resolving names without end (a wildcard
// rule) never makes the table hold more than maxNames; recent names stay
// findable, and expired ones are the first to go.
func TestNameTableBound(t *testing.T) {
	if maxNames != 16384 {
		t.Fatalf("maxNames is %d, docs/egress.md says 16,384", maxNames)
	}
	tb := newNameTable()
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }
	peak := 0
	const total = 3 * maxNames
	for i := range total {
		tb.add("n"+strconv.Itoa(i)+".wild.example", []netip.Addr{addr(i)}, time.Hour)
		tb.mu.Lock()
		peak = max(peak, tb.n)
		count := 0
		if i%4096 == 0 {
			for _, names := range tb.m {
				count += len(names)
			}
			if count != tb.n {
				t.Fatalf("the table counts %d entries and holds %d", tb.n, count)
			}
		}
		tb.mu.Unlock()
	}
	if peak > maxNames {
		t.Errorf("the table held %d names, bound %d", peak, maxNames)
	}
	last := total - 1
	if !tb.has(addr(last), "n"+strconv.Itoa(last)+".wild.example") {
		t.Error("the newest name was dropped")
	}
	// Expired entries go first: fill with short-lived names, then one
	// more long-lived name makes room from the expired ones only.
	tb = newNameTable()
	for i := range maxNames {
		tb.add("old"+strconv.Itoa(i)+".example", []netip.Addr{addr(i)}, -keep-time.Second)
	}
	tb.add("keep.example", []netip.Addr{addr(1 << 20)}, time.Hour)
	if tb.n != 1 || !tb.has(addr(1<<20), "keep.example") {
		t.Errorf("after expiry the table holds %d entries, want only the new one", tb.n)
	}
}

// TestCgroupsV2 makes the gateway's cgroup on a fake cgroup v2 hierarchy
// (this host is v1): the parent delegates memory and pids, the sandbox's
// group has its bounds, and joining writes the pid.
func TestCgroupsV2(t *testing.T) {
	root := fakeCgroupRoot(t)
	if err := os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("cpu memory pids\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := Confine{MemoryMax: 128 << 20, PidsMax: 99}.WithDefaults()
	dirs, err := makeCgroups("sb-v2", c)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(root, "openshell-egress", "sb-v2")
	if len(dirs) != 1 || dirs[0] != want {
		t.Fatalf("cgroups %v, want [%s]", dirs, want)
	}
	for file, v := range map[string]string{
		"openshell-egress/cgroup.subtree_control": "+memory +pids",
		"openshell-egress/sb-v2/memory.max":       strconv.Itoa(128 << 20),
		"openshell-egress/sb-v2/memory.swap.max":  "0",
		"openshell-egress/sb-v2/pids.max":         "99",
	} {
		if got := readFile(t, filepath.Join(root, file)); got != v {
			t.Errorf("%s = %q, want %q", file, got, v)
		}
	}
	if err := joinCgroups(dirs, 4242); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(want, "cgroup.procs")); got != "4242" {
		t.Errorf("cgroup.procs = %q", got)
	}
	if got := GatewayCgroups("sb-v2"); len(got) != 1 || got[0] != want {
		t.Errorf("GatewayCgroups: %v", got)
	}
	// A second gateway under the same parent.
	if _, err := makeCgroups("sb-v2b", c); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a\x00b"} {
		if _, err := makeCgroups(bad, c); err == nil {
			t.Errorf("sandbox id %q: made a cgroup", bad)
		}
	}
}

// TestCgroupsV2NoSwapAccounting: without memory.swap.max (no swap
// accounting) the memory and pids bounds still hold.
func TestCgroupsV2NoSwapAccounting(t *testing.T) {
	root := fakeCgroupRoot(t)
	os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("memory pids\n"), 0o644)
	sb := filepath.Join(root, "openshell-egress", "sb")
	// A directory where the file would be: the write fails, as on a
	// kernel without swap accounting.
	if err := os.MkdirAll(filepath.Join(sb, "memory.swap.max"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := makeCgroups("sb", Confine{}.WithDefaults()); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(sb, "memory.max")); got != strconv.Itoa(DefaultGatewayMemoryMax) {
		t.Errorf("memory.max = %q", got)
	}
	if got := readFile(t, filepath.Join(sb, "pids.max")); got != strconv.Itoa(DefaultGatewayPidsMax) {
		t.Errorf("pids.max = %q", got)
	}
}

// TestCgroupsV2FailsClosed: a hierarchy that refuses the bounds fails the
// gateway's start (and leaves no group).
func TestCgroupsV2FailsClosed(t *testing.T) {
	root := fakeCgroupRoot(t)
	os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("memory pids\n"), 0o644)
	sb := filepath.Join(root, "openshell-egress", "sb")
	os.MkdirAll(filepath.Join(sb, "pids.max"), 0o755)
	_, err := makeCgroups("sb", Confine{}.WithDefaults())
	if err == nil || !strings.Contains(err.Error(), "pids.max") {
		t.Fatalf("made a cgroup whose pids.max cannot be written: %v", err)
	}
}

// TestCgroupsV1 is the same on a fake v1 layout (one hierarchy per
// controller).
func TestCgroupsV1(t *testing.T) {
	root := fakeCgroupRoot(t)
	dirs, err := makeCgroups("sb-v1", Confine{MemoryMax: 64 << 20, PidsMax: 7}.WithDefaults())
	if err != nil {
		t.Fatal(err)
	}
	mem, pids := filepath.Join(root, "memory", "openshell-egress", "sb-v1"), filepath.Join(root, "pids", "openshell-egress", "sb-v1")
	if len(dirs) != 2 || dirs[0] != mem || dirs[1] != pids {
		t.Fatalf("cgroups %v", dirs)
	}
	if got := readFile(t, filepath.Join(mem, "memory.limit_in_bytes")); got != strconv.Itoa(64<<20) {
		t.Errorf("memory.limit_in_bytes = %q", got)
	}
	if got := readFile(t, filepath.Join(pids, "pids.max")); got != "7" {
		t.Errorf("pids.max = %q", got)
	}
}

// fakeCgroupRoot points CgroupRoot at an empty directory for one test.
func fakeCgroupRoot(t *testing.T) string {
	t.Helper()
	saved := CgroupRoot
	CgroupRoot = t.TempDir()
	t.Cleanup(func() { CgroupRoot = saved })
	return CgroupRoot
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
