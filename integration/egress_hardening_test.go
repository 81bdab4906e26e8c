package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/openshell/openshell/runtime"
	"github.com/openshell/openshell/runtime/egress"
)

// The gateway against a hostile sandbox: each test reproduces a way the
// gateway's limits used to leak (issue 15, findings 3, 4 and 6) and shows
// it now holds.

var (
	// sinkAddr is a server in the fake internet that only counts what
	// reaches it.
	sinkAddr = netip.MustParseAddr("198.51.100.30")
	// lateHostAddr is an address the uplink (the host) gains after the
	// gateway has started.
	lateHostAddr = netip.MustParseAddr("203.0.113.77")
)

// sink records every byte that reaches it, per port, per connection.
type sink struct {
	mu    sync.Mutex
	conns map[int][][]byte
}

func (s *sink) received(port int) [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.conns[port]...)
}

// addAddr puts a on lo in the namespace at path.
func hardeningAddAddr(t *testing.T, path string, a netip.Addr) {
	t.Helper()
	h, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatalf("address %s: %v", a, err)
	}
}

// startHardeningSink listens on sinkAddr's ports in the fake internet.
func startHardeningSink(t *testing.T, e *egressEnv, ports ...int) *sink {
	t.Helper()
	hardeningAddAddr(t, e.net.Inet, sinkAddr)
	s := &sink{conns: map[int][][]byte{}}
	for _, port := range ports {
		var l net.Listener
		if err := egress.Do(e.net.Inet, func() (err error) {
			l, err = net.Listen("tcp4", netip.AddrPortFrom(sinkAddr, uint16(port)).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(5 * time.Second))
					var buf bytes.Buffer
					_, _ = io.Copy(&buf, c)
					s.mu.Lock()
					s.conns[port] = append(s.conns[port], buf.Bytes())
					s.mu.Unlock()
				}()
			}
		}()
	}
	return s
}

// runLines runs program under policyYAML and returns its "name: value"
// lines.
func (e *egressEnv) runLines(t *testing.T, policyYAML, program string) map[string]string {
	t.Helper()
	out := e.run(t, policyYAML, program)
	got := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok {
			got[k] = v
		}
	}
	t.Logf("sandbox output:\n%s", out)
	return got
}

const hardeningPolicy = `version: "1.0"
name: egress-hardening
sandbox:
  filesystem:
    allowed_writes: [/tmp]
  process: {max_processes: 64}
  network:
    allowed_egress:
      - {host: allowed.test, ports: [80, 443]}
      - {host: sink.test, ports: [80], max_request_size_kb: 1}
      - {host: rate1.test, port: 80, rate_limit: "2/minute"}
      - {host: rate2.test, port: 80, rate_limit: "2/minute"}
      - {host: rate3.test, port: 80, rate_limit: "2/minute"}
      - {host: tlsonly.test, ports: [443, 8443], tls_required: true}
      - {host: tlsok.test, port: 443, tls_required: true}
      - {host: late.test, ports: [80, 8080]}
`

// limitsProbe runs inside the sandbox.
const limitsProbe = `
import socket, ssl, http.client, subprocess
GW = ("169.254.213.1", 3128)
def recv_head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        b = s.recv(4096)
        if not b: break
        data += b
    return data.split(b"\r\n")[0].decode(errors="replace")
def tunnel(host, port):
    s = socket.create_connection(GW, timeout=5)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    return s, recv_head(s)
def chunked(host, target):
    out = f"POST {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    for i in range(32):
        out += b"400\r\n" + b"x" * 1024 + b"\r\n"
    return out + b"0\r\n\r\n"
def send(name, s, data):
    try:
        s.sendall(data)
        s.settimeout(5)
        print(f"{name}: {recv_head(s)}", flush=True)
    except OSError as e:
        print(f"{name}: {e}", flush=True)
    s.close()

# max_request_size_kb 1: a 32 KiB chunked body, three ways.
send("size-proxy", socket.create_connection(GW, timeout=5), chunked("sink.test", "http://sink.test/up"))
sink = socket.gethostbyname("sink.test")
send("size-transparent", socket.create_connection((sink, 80), timeout=5), chunked("sink.test", "/up"))
s, head = tunnel("sink.test", 80)
send("size-connect " + head, s, chunked("sink.test", "/up"))

# rate_limit 2/minute: 12 requests on keep-alive connections, three ways.
def rate(name, conn, host, path):
    ok = 0
    codes = []
    for i in range(12):
        try:
            conn.request("GET", path, headers={"Host": host})
            r = conn.getresponse()
            body = r.read()
            codes.append(r.status)
            if r.status == 200 and b"hello from" in body:
                ok += 1
        except Exception as e:
            codes.append(type(e).__name__)
            conn.close()
    print(f"{name}: {ok} {codes}", flush=True)
rate("rate-proxy", http.client.HTTPConnection(*GW, timeout=5), "rate1.test", "http://rate1.test/")
c = http.client.HTTPConnection(*GW, timeout=5)
c.set_tunnel("rate2.test", 80)
rate("rate-connect", c, "rate2.test", "/")
rate("rate-transparent", http.client.HTTPConnection(socket.gethostbyname("rate3.test"), 80, timeout=5), "rate3.test", "/")

# tls_required: 0x16 then plaintext; a real ClientHello then plaintext.
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def hello(name):
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()
plain = b"GET /PLAINTEXT-MARKER HTTP/1.1\r\nHost: tlsonly.test\r\n\r\n"
h = hello("tlsonly.test")
print(f"hello-len: {len(h)}", flush=True)
s, head = tunnel("tlsonly.test", 443)
send("tls-connect-0x16 " + head, s, b"\x16" + plain)
s, head = tunnel("tlsonly.test", 443)
send("tls-connect-hello " + head, s, h + plain)
ip = socket.gethostbyname("tlsonly.test")
send("tls-transparent-hello", socket.create_connection((ip, 443), timeout=5), h + plain)
send("tls-catch-0x16", socket.create_connection((ip, 8443), timeout=5), b"\x16" + plain)
send("tls-catch-hello", socket.create_connection((ip, 8443), timeout=5), h + plain)
for name, args in [("tls-ok-proxy", []), ("tls-ok-transparent", ["--noproxy", "*"])]:
    r = subprocess.run(["curl", "-sS", "-k", "-m", "5", *args, "https://tlsok.test/"], capture_output=True, text=True)
    print(f"{name}: {(r.stdout + r.stderr).strip()}", flush=True)
`

// TestEgressHardeningLimits: the size limit counts a chunked body on the
// wire, the rate limit counts requests on keep-alive connections and
// inside CONNECT tunnels, and tls_required holds for the life of the
// connection. Before the fix, 32 KiB of chunked body reached the server,
// a tunnel carried 12 requests under a 2/minute limit, and plaintext
// after a 0x16 byte reached the server.
func TestEgressHardeningLimits(t *testing.T) {
	e := newEgressEnv(t)
	sk := startHardeningSink(t, e, 80, 443, 8443)
	for _, n := range []string{"sink.test", "tlsonly.test"} {
		e.net.SetZone(n, sinkAddr)
	}
	for _, n := range []string{"rate1.test", "rate2.test", "rate3.test", "tlsok.test"} {
		e.net.SetZone(n, zone["allowed.test"])
	}
	got := e.runLines(t, hardeningPolicy, limitsProbe)

	// Size: nothing over 1 KiB reached the server on any connection.
	for _, c := range sk.received(80) {
		if len(c) > 1024 {
			t.Errorf("max_request_size_kb 1: the server received %d bytes on one connection", len(c))
		}
	}
	for _, k := range []string{"size-proxy", "size-transparent", "size-connect HTTP/1.1 200 Connection established"} {
		if !strings.Contains(got[k], "403") {
			t.Errorf("%s: want a 403, got %q", k, got[k])
		}
	}
	// Rate: at most 2 requests through on each path.
	for _, k := range []string{"rate-proxy", "rate-connect", "rate-transparent"} {
		n, err := strconv.Atoi(strings.Fields(got[k] + " x")[0])
		if err != nil || n > 2 || n < 1 {
			t.Errorf("%s: %q: want 1 or 2 requests through a 2/minute limit", k, got[k])
		}
	}
	// TLS: the server never saw the plaintext, and got at most the
	// hello.
	hl, _ := strconv.Atoi(got["hello-len"])
	if hl < 100 {
		t.Fatalf("no ClientHello made: %q", got["hello-len"])
	}
	for _, port := range []int{443, 8443} {
		for _, c := range sk.received(port) {
			if bytes.Contains(c, []byte("PLAINTEXT-MARKER")) || len(c) > hl {
				t.Errorf("tls_required: port %d: the server received %d bytes: %q", port, len(c), c[:min(len(c), 80)])
			}
			if len(c) > 0 && c[0] != 0x16 {
				t.Errorf("tls_required: port %d: the server received non-TLS bytes %q", port, c[:min(len(c), 40)])
			}
		}
	}
	for _, k := range []string{"tls-ok-proxy", "tls-ok-transparent"} {
		if !strings.Contains(got[k], "hello from https") {
			t.Errorf("%s: real TLS under tls_required did not get through: %q", k, got[k])
		}
	}
	// Repeated denials may be aggregated in the log: one is enough.
	var tlsDenials int
	for _, ev := range e.events(t) {
		if ev.Decision == egress.Deny && strings.Contains(ev.Reason, "tls_required") {
			tlsDenials++
		}
	}
	if tlsDenials == 0 {
		t.Errorf("no tls_required denial in the audit log")
	}
}

// lateProbe waits for the test to give the host a new address, then
// tries to reach it every way.
const lateProbe = `
import socket, subprocess, sys
print("ready", flush=True)
sys.stdin.readline()
def curl(name, *args):
    r = subprocess.run(["curl", "-sS", "-m", "5", *args], capture_output=True, text=True)
    print(f"{name}: rc={r.returncode} {(r.stdout + r.stderr).strip()}", flush=True)
curl("late-proxy", "http://late.test/")
curl("late-transparent", "--noproxy", "*", "--resolve", "late.test:80:203.0.113.77", "http://late.test/")
curl("late-proxy-ip", "http://203.0.113.77/")
curl("late-connect", "-p", "http://late.test/")
curl("late-catch", "--noproxy", "*", "http://203.0.113.77:8080/")
`

// TestEgressHardeningLateHostAddress: an address the host gains after the
// gateway started is its own as soon as it is there, and never dialled.
// Before the fix the gateway read the host's addresses once, and reached
// a host service on the new address.
func TestEgressHardeningLateHostAddress(t *testing.T) {
	e := newEgressEnv(t)
	e.net.SetZone("late.test", lateHostAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, stdin, lines, errb := e.startPaused(t, ctx, writePolicy(t, hardeningPolicy), lateProbe, "ready")
	// The gateway is serving: now the host gains an address, with a
	// service on it.
	hardeningAddAddr(t, e.net.Netns, lateHostAddr)
	var mu sync.Mutex
	var hits []string
	for _, port := range []int{80, 8080} {
		var l net.Listener
		if err := egress.Do(e.net.Netns, func() (err error) {
			l, err = net.Listen("tcp4", netip.AddrPortFrom(lateHostAddr, uint16(port)).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			hits = append(hits, r.Host+r.URL.Path)
			mu.Unlock()
			fmt.Fprintln(w, "host service")
		})}
		go func() { _ = srv.Serve(l) }()
		defer srv.Close()
	}
	fmt.Fprintln(stdin)
	out := waitRest(t, c, lines, errb)
	assertNothingLeft(t, stateDir)
	t.Logf("sandbox output:\n%s", strings.Join(out, "\n"))
	if len(out) != 5 {
		t.Fatalf("want 5 lines, got %q", out)
	}
	for _, l := range out {
		if strings.Contains(l, "host service") {
			t.Errorf("reached the host's new address: %s", l)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(hits) > 0 {
		t.Errorf("the host service was reached: %v", hits)
	}
	var denied bool
	for _, ev := range e.events(t) {
		denied = denied || (ev.Decision == egress.Deny && strings.Contains(ev.Reason, "an address of the host"))
	}
	if !denied {
		t.Errorf("no denial for the host's address in the audit log")
	}
}

// soakProbe opens 2,000 connections of every kind the gateway serves and
// floods it with DNS questions for about 15 s, holding what it opens,
// while asking for an allowed page every second.
const soakProbe = `
import socket, threading, time, random, subprocess, resource, struct
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
except Exception:
    pass
end = time.time() + 15
held = []
opened = [0, 0]
kinds = [
    (("169.254.213.1", 3128), b"GET http://allowed.test/ HTTP/1.1\r\nHost: allo"),
    (("198.51.100.10", 80), b"GET / HTTP/1.1\r\nHost: allowed.test\r\nX-Slow: "),
    (("198.51.100.10", 443), b"\x16\x03\x01\x02\x00\x01\x00\x01"),
    (("198.51.100.20", 9999), b"x"),
    (("169.254.213.1", 3128), b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n"),
]
def opener():
    i = 0
    while time.time() < end and opened[0] + opened[1] < 2000:
        addr, first = kinds[i % len(kinds)]
        i += 1
        try:
            s = socket.socket()
            s.settimeout(2)
            s.connect(addr)
            s.send(first)
            held.append(s)
            opened[0] += 1
            if len(held) > 700:
                held.pop(0).close()  # the sandbox's own fd limit
        except OSError:
            opened[1] += 1
        time.sleep(0.004)
def dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    n = 0
    while time.time() < end:
        name = random.choice(["allowed.test", "x%d.evil.example" % random.randrange(1 << 30)])
        q = struct.pack(">HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
        for label in name.split("."):
            q += bytes([len(label)]) + label.encode()
        q += b"\x00" + struct.pack(">HH", 1, 1)
        try:
            s.sendto(q, ("169.254.213.1", 53))
            n += 1
        except OSError:
            pass
        if n % 50 == 0:
            time.sleep(0.01)
    print(f"dns-sent: {n}", flush=True)
threads = [threading.Thread(target=opener), threading.Thread(target=opener), threading.Thread(target=dns)]
for th in threads:
    th.start()
ok = tries = 0
while time.time() < end:
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5", "http://allowed.test/"], capture_output=True, text=True)
    tries += 1
    ok += r.stdout == "200"
    time.sleep(1)
for th in threads:
    th.join()
print(f"allowed: {ok}/{tries}", flush=True)
print(f"opened: {opened[0]} failed: {opened[1]}", flush=True)
`

// gatewayRSSBound is the gateway's memory bound under a hostile sandbox
// (docs/egress.md): at most maxConns connections, each with bounded
// buffers, and a bounded number of DNS questions in flight.
const gatewayRSSBound = 96 << 20

// TestEgressHardeningSoak: a sandbox opening thousands of slow and
// refused connections and flooding DNS for 15 s cannot make its gateway
// grow past its bound, and an allowed request still succeeds meanwhile.
// Before the fix 800 slow connections grew the gateway to 1.7 GiB.
func TestEgressHardeningSoak(t *testing.T) {
	e := newEgressEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, stdout, errb := e.start(t, ctx, writePolicy(t, hardeningPolicy), soakProbe)
	id := sandboxPid(t, "egress-hardening")
	_, st, err := runtime.Open(stateDir, id)
	if err != nil || st.Gateway == nil {
		t.Fatalf("state: %v", err)
	}
	// The recorded pid is the keeper; the sandbox's traffic is the
	// serving process's.
	pid := childOf(t, st.Gateway.Pid)
	var peakFDs int
	var hwm int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
			if err != nil {
				return
			}
			peakFDs = max(peakFDs, len(fds))
			if v := hardeningProcStatus(pid, "VmHWM"); v > 0 {
				hwm = v
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	data, _ := io.ReadAll(stdout)
	if err := c.Wait(); err != nil {
		t.Fatalf("sandbox: %v\n%s\n%s", err, data, errb.String())
	}
	<-done
	assertNothingLeft(t, stateDir)
	t.Logf("sandbox output:\n%s", data)
	t.Logf("gateway: peak RSS %d MiB, peak open fds %d", hwm>>20, peakFDs)
	if hwm == 0 || hwm > gatewayRSSBound {
		t.Errorf("the gateway's peak RSS is %d MiB, bound %d MiB", hwm>>20, gatewayRSSBound>>20)
	}
	// Each held connection is at most its socket, its upstream socket
	// and the two pipes of a kernel copy each way.
	if peakFDs > 6*256+256 {
		t.Errorf("the gateway held %d fds at once", peakFDs)
	}
	out := string(data)
	var ok, tries int
	if _, err := fmt.Sscanf(hardeningLine(out, "allowed: "), "%d/%d", &ok, &tries); err != nil || ok == 0 {
		t.Errorf("no allowed request succeeded during the soak: %q", hardeningLine(out, "allowed: "))
	}
	var opened int
	if _, err := fmt.Sscanf(hardeningLine(out, "opened: "), "%d", &opened); err != nil || opened < 1000 {
		t.Errorf("the soak opened too few connections: %q", hardeningLine(out, "opened: "))
	}
}

// hardeningProcStatus is a "kB" field of /proc/pid/status, in bytes.
func hardeningProcStatus(pid int, field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && k == field {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n << 10
		}
	}
	return 0
}

func hardeningLine(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return strings.TrimPrefix(l, prefix)
		}
	}
	return ""
}
