package integration

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/test/fakenet"
)

// connectLatencyProbe opens n fresh CONNECT tunnels (or, with proxy
// "none", n plain connections) after 20 it does not count, and prints
// the p50 and p99 of the time until each was usable. Through the proxy it
// first prints "ready" and waits for a line: the test starts its packet
// captures in between.
const connectLatencyProbe = pyTunnel + `
import json, socket, sys, time
host, ip, proxy, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if proxy != "none":
    print("ready", flush=True)
    sys.stdin.readline()
usable = []
for i in range(n + 20):
    t0 = time.perf_counter()
    if proxy == "none":
        s = socket.create_connection((ip, 80))
    else:
        s = open_tunnel(proxy, host)
    t1 = time.perf_counter()
    s.close()
    if i >= 20:
        usable.append((t1 - t0) * 1000)
usable.sort()
print(json.dumps({"p50": usable[len(usable) // 2], "p99": usable[int(len(usable) * .99)]}))
`

// packet is one TCP segment a capture saw, with the kernel's timestamp.
type packet struct {
	at       time.Time
	src, dst netip4Port
	syn, ack bool
	payload  int
}

type netip4Port struct {
	ip   [4]byte
	port uint16
}

// capture records the TCP segments through interface ifname in the
// network namespace at path, both ways, until stop.
type capture struct {
	fd      int
	stop    atomic.Bool
	wg      sync.WaitGroup
	mu      sync.Mutex
	packets []packet
	untimed int // segments that came without the kernel's timestamp
}

func startCapture(t *testing.T, path, ifname string) *capture {
	t.Helper()
	c := &capture{fd: -1}
	err := egress.Do(path, func() error {
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		c.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index}); err != nil {
			return err
		}
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return err
		}
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	})
	if err != nil {
		if c.fd >= 0 {
			_ = unix.Close(c.fd)
		}
		t.Fatalf("capture on %s in %s: %v", ifname, path, err)
	}
	c.wg.Add(1)
	go c.read()
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *capture) read() {
	defer c.wg.Done()
	buf := make([]byte, 128)
	oob := make([]byte, 128)
	for !c.stop.Load() {
		n, oobn, _, _, err := unix.Recvmsg(c.fd, buf, oob, 0)
		if err != nil {
			continue
		}
		p, ok := parseSegment(buf[:n])
		if !ok {
			continue
		}
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_TIMESTAMPNS && len(m.Data) >= 16 {
					p.at = time.Unix(int64(binary.NativeEndian.Uint64(m.Data)), int64(binary.NativeEndian.Uint64(m.Data[8:])))
				}
			}
		}
		c.mu.Lock()
		if p.at.IsZero() {
			c.untimed++
		} else {
			c.packets = append(c.packets, p)
		}
		c.mu.Unlock()
	}
}

// close stops the capture; it may be called again.
func (c *capture) close() (packets []packet, untimed int) {
	if !c.stop.Swap(true) {
		c.wg.Wait()
		_ = unix.Close(c.fd)
	}
	return c.packets, c.untimed
}

// parseSegment reads an IPv4 TCP segment's addresses, flags and payload
// length (from the IP header: the capture keeps only the headers).
func parseSegment(b []byte) (packet, bool) {
	if len(b) < 20 || b[0]>>4 != 4 || b[9] != unix.IPPROTO_TCP {
		return packet{}, false
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:]))
	if len(b) < ihl+20 {
		return packet{}, false
	}
	tcp := b[ihl:]
	doff := int(tcp[12]>>4) * 4
	var p packet
	copy(p.src.ip[:], b[12:16])
	copy(p.dst.ip[:], b[16:20])
	p.src.port = binary.BigEndian.Uint16(tcp[0:])
	p.dst.port = binary.BigEndian.Uint16(tcp[2:])
	p.syn, p.ack = tcp[13]&0x02 != 0, tcp[13]&0x10 != 0
	p.payload = total - ihl - doff
	return p, true
}

// connectSteps cuts each CONNECT the captures saw, but the first skip,
// into its steps, in
// milliseconds: on the sandbox link, the request's arrival and the 200's
// departure; on the uplink, the gateway's SYN to the server and the
// server's SYN-ACK. Steps: the gateway's decision and dial (request to
// SYN), the server's answer (SYN to SYN-ACK), the gateway's work after it
// (SYN-ACK to 200), and the whole (request to 200).
func connectSteps(link, uplink []packet, skip int) (decide, server, after, whole []float64) {
	type conn struct{ req, resp time.Time }
	conns := map[uint16]*conn{}
	for _, p := range link {
		switch {
		case p.dst.port == egress.ProxyPort && p.payload > 0:
			c := conns[p.src.port]
			if c == nil {
				c = &conn{}
				conns[p.src.port] = c
			}
			if c.req.IsZero() {
				c.req = p.at
			}
		case p.src.port == egress.ProxyPort && p.payload > 0:
			if c := conns[p.dst.port]; c != nil && c.resp.IsZero() {
				c.resp = p.at
			}
		}
	}
	type dial struct{ syn, synack time.Time }
	var dials []*dial
	byPort := map[uint16]*dial{}
	for _, p := range uplink {
		switch {
		case p.syn && !p.ack && p.dst.port == 80:
			d := &dial{syn: p.at}
			dials = append(dials, d)
			byPort[p.src.port] = d
		case p.syn && p.ack && p.src.port == 80:
			if d := byPort[p.dst.port]; d != nil && d.synack.IsZero() {
				d.synack = p.at
			}
		}
	}
	slices.SortFunc(dials, func(a, b *dial) int { return a.syn.Compare(b.syn) })
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	// The first skip tunnels (the probe's warm-up) are left out.
	var ordered []*conn
	for _, c := range conns {
		if !c.req.IsZero() {
			ordered = append(ordered, c)
		}
	}
	slices.SortFunc(ordered, func(a, b *conn) int { return a.req.Compare(b.req) })
	for _, c := range ordered[min(skip, len(ordered)):] {
		if c.resp.IsZero() {
			continue
		}
		i, _ := slices.BinarySearchFunc(dials, c.req, func(d *dial, at time.Time) int { return d.syn.Compare(at) })
		if i == len(dials) || dials[i].syn.After(c.resp) || dials[i].synack.IsZero() {
			continue
		}
		d := dials[i]
		decide = append(decide, ms(d.syn.Sub(c.req)))
		server = append(server, ms(d.synack.Sub(d.syn)))
		after = append(after, ms(c.resp.Sub(d.synack)))
		whole = append(whole, ms(c.resp.Sub(c.req)))
	}
	return decide, server, after, whole
}

func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	return v[min(len(v)-1, int(float64(len(v))*p))]
}

// TestEgressConnectSteps tells where a fresh CONNECT tunnel's time goes.
// While the sandbox opens 1000 tunnels, it captures the sandbox link (in
// the gateway's namespace) and the uplink with the kernel's timestamps,
// and cuts each tunnel into what the gateway does before it dials, what
// the server takes to answer the dial, and what the gateway does after
// it until its 200 leaves; beside them, from inside the sandbox, the
// whole time until the tunnel was usable, and a plain connection's
// handshake. What is neither the gateway's nor the server's is the
// sandbox's own: sending the request and reading the reply through its
// netstack, one more round trip than a handshake. It runs only when
// OPENSHELL_BENCH is set.
func TestEgressConnectSteps(t *testing.T) {
	requireBench(t)
	e := newEgressEnv(t)
	dir := t.TempDir()
	pf := writePolicy(t, egressPolicy)
	// n tunnels are counted, after the probe's warm-up ones.
	const n, warmup = 1000, 20
	type latency struct {
		P50 float64 `json:"p50"`
		P99 float64 `json:"p99"`
	}
	var direct []latency
	var tunnel []latency
	var decide, server, after, whole []float64
	round := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		c, done := e.directCommand(t, ctx, dir, "egress-steps-direct", "/usr/bin/python3", "-c", connectLatencyProbe, "allowed.test", fakenet.WebA.String(), "none", fmt.Sprint(n))
		func() {
			defer done()
			direct = append(direct, probeFigures[latency](t, c))
		}()

		cmd, stdin, lines, errb := e.startPaused(t, ctx, pf, fmt.Sprintf("import sys\nsys.argv = ['', 'allowed.test', 'resolve', '169.254.213.1', '%d']\n", n)+connectLatencyProbe, "ready")
		defer func() {
			// A failed round leaves no sandbox running: openshell run
			// cleans up after SIGTERM.
			if cmd.ProcessState == nil {
				_ = cmd.Process.Signal(unix.SIGTERM)
				_ = cmd.Wait()
			}
		}()
		gws, _ := filepath.Glob(filepath.Join(stateDir, "*", "netns", "gateway"))
		if len(gws) != 1 {
			t.Fatalf("gateway namespaces: %v", gws)
		}
		link := startCapture(t, gws[0], "gw0")
		defer link.close()
		up := startCapture(t, e.net.Netns, "u0")
		defer up.close()
		if _, err := fmt.Fprintln(stdin, "go"); err != nil {
			t.Fatal(err)
		}
		rest := waitRest(t, cmd, lines, errb)
		lp, lu := link.close()
		upp, uu := up.close()
		if lu+uu > 0 {
			t.Fatalf("%d captured segments came without the kernel's timestamp", lu+uu)
		}
		if len(rest) != 1 {
			t.Fatalf("probe: %q", rest)
		}
		var l latency
		if err := json.Unmarshal([]byte(rest[0]), &l); err != nil {
			t.Fatal(err)
		}
		tunnel = append(tunnel, l)
		d, s, a, w := connectSteps(lp, upp, warmup)
		if len(w) < n*9/10 {
			t.Fatalf("the captures cut %d of %d tunnels into steps (%d and %d segments seen)", len(w), n, len(lp), len(upp))
		}
		decide, server, after, whole = append(decide, d...), append(server, s...), append(after, a...), append(whole, w...)
	}
	for range benchRounds() {
		round()
	}
	fmt.Printf("egress CONNECT steps: %d rounds of %d fresh tunnels; the steps from packet captures with the kernel's timestamps (all tunnels), the rest from inside the sandbox (medians of the rounds)\n", len(tunnel), n)
	fmt.Printf("%-56s %10s %10s\n", "", "p50 (ms)", "p99 (ms)")
	row := func(name string, p50, p99 float64) { fmt.Printf("%-56s %10.3f %10.3f\n", name, p50, p99) }
	row("gateway: request in to SYN out (decide, dial)", pct(decide, .5), pct(decide, .99))
	row("server: SYN to SYN-ACK (the fake internet)", pct(server, .5), pct(server, .99))
	row("gateway: SYN-ACK in to 200 out", pct(after, .5), pct(after, .99))
	row("gateway: request in to 200 out", pct(whole, .5), pct(whole, .99))
	row("sandbox: CONNECT tunnel usable", medianOf(tunnel, func(l latency) float64 { return l.P50 }), medianOf(tunnel, func(l latency) float64 { return l.P99 }))
	row("sandbox: a plain connection usable (its handshake)", medianOf(direct, func(l latency) float64 { return l.P50 }), medianOf(direct, func(l latency) float64 { return l.P99 }))
}

// TestConnectStepsCut checks the cutting on made-up segments: a tunnel
// whose dial the uplink saw, one whose dial it did not (left out), and
// segments of neither.
func TestConnectStepsCut(t *testing.T) {
	base := time.Unix(1000, 0)
	at := func(us int) time.Time { return base.Add(time.Duration(us) * time.Microsecond) }
	sb := func(port uint16) netip4Port { return netip4Port{ip: [4]byte{169, 254, 213, 2}, port: port} }
	gw := netip4Port{ip: [4]byte{169, 254, 213, 1}, port: egress.ProxyPort}
	host := func(port uint16) netip4Port { return netip4Port{ip: [4]byte{192, 0, 2, 1}, port: port} }
	srv := netip4Port{ip: [4]byte{198, 51, 100, 10}, port: 80}
	link := []packet{
		{at: at(0), src: sb(1000), dst: gw, syn: true},
		{at: at(100), src: sb(1000), dst: gw, ack: true, payload: 59},
		{at: at(105), src: gw, dst: sb(1000), ack: true},
		{at: at(400), src: gw, dst: sb(1000), ack: true, payload: 39},
		{at: at(450), src: sb(1000), dst: gw, ack: true, payload: 100}, // tunnel bytes: not the request
		{at: at(1000), src: sb(1001), dst: gw, ack: true, payload: 59},
		{at: at(1300), src: gw, dst: sb(1001), ack: true, payload: 39},
	}
	uplink := []packet{
		{at: at(250), src: host(5000), dst: srv, syn: true},
		{at: at(270), src: srv, dst: host(5000), syn: true, ack: true},
		{at: at(280), src: host(5000), dst: srv, ack: true},
		{at: at(2000), src: host(5001), dst: srv, syn: true}, // after the second tunnel's 200
	}
	if _, _, _, w := connectSteps(link, uplink, 1); len(w) != 0 {
		t.Errorf("skipping the first tunnel left %v", w)
	}
	decide, server, after, whole := connectSteps(link, uplink, 0)
	want := [][]float64{{0.15}, {0.02}, {0.13}, {0.3}}
	for i, got := range [][]float64{decide, server, after, whole} {
		if len(got) != 1 || got[0] < want[i][0]-1e-9 || got[0] > want[i][0]+1e-9 {
			t.Errorf("step %d: %v, want %v", i, got, want[i])
		}
	}
	// An IPv4 header (20 bytes) and a TCP header (20 bytes) of a SYN-ACK
	// with 7 bytes of payload.
	b := make([]byte, 40)
	b[0], b[9] = 0x45, unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(b[2:], 47)
	copy(b[12:], []byte{198, 51, 100, 10, 192, 0, 2, 1})
	binary.BigEndian.PutUint16(b[20:], 80)
	binary.BigEndian.PutUint16(b[22:], 5000)
	b[32], b[33] = 5<<4, 0x12
	p, ok := parseSegment(b)
	if !ok || p.src != srv || p.dst != host(5000) || !p.syn || !p.ack || p.payload != 7 {
		t.Errorf("parseSegment: %+v %v", p, ok)
	}
	if _, ok := parseSegment(append([]byte{0x60}, b[1:]...)); ok {
		t.Error("parseSegment took an IPv6 packet")
	}
}
