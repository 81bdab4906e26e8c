package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/runtime-tools/generate"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/test/fakenet"
)

// pyTunnel is Python for the probes: open_tunnel(proxy, host) opens a CONNECT
// tunnel to host:80 through the gateway's proxy at proxy and returns its
// socket once the 200 has come.
const pyTunnel = `
import socket
def open_tunnel(proxy, host):
    s = socket.create_connection((proxy, 3128))
    s.sendall(("CONNECT %s:80 HTTP/1.1\r\nHost: %s:80\r\n\r\n" % (host, host)).encode())
    got = b""
    while b"\r\n\r\n" not in got:
        b = s.recv(4096)
        assert b, got
        got += b
    assert b" 200 " in got, got
    return s
`

// egressBenchProbe measures, inside the sandbox: how long a fresh
// connection to the server takes to become usable (through the gateway:
// an HTTP CONNECT tunnel, which includes the gateway's decision and its
// own dial; direct: the TCP handshake), fresh connections to port 80
// (the handshake alone, which the gateway answers itself, and with one
// small HTTP exchange), and 100 MB downloads (the median of three) on a
// captured port-80 connection and through a CONNECT tunnel; direct, both
// are the same plain connection.
const egressBenchProbe = pyTunnel + `
import json, socket, sys, time
host, ip, proxy = sys.argv[1], sys.argv[2], sys.argv[3]
if ip == "resolve":
    ip = socket.gethostbyname(host)
req = ("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host).encode()
conn, rtt = [], []
for i in range(320):
    t0 = time.perf_counter()
    s = socket.create_connection((ip, 80))
    t1 = time.perf_counter()
    s.sendall(req)
    while s.recv(65536):
        pass
    t2 = time.perf_counter()
    s.close()
    if i >= 20:
        conn.append(t1 - t0); rtt.append(t2 - t0)
tunnel = []
for i in range(320):
    t0 = time.perf_counter()
    if proxy == "none":
        s = socket.create_connection((ip, 80))
    else:
        s = open_tunnel(proxy, host)
    t1 = time.perf_counter()
    s.close()
    if i >= 20:
        tunnel.append(t1 - t0)
tunnel.sort()
size = 100 << 20
def download(via_proxy):
    if via_proxy and proxy != "none":
        s = open_tunnel(proxy, host)
    else:
        s = socket.create_connection((ip, 80))
    s.sendall(("GET /bytes?n=%d HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (size, host)).encode())
    t0 = time.perf_counter(); total = 0
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        total += len(b)
    return total, time.perf_counter() - t0
runs = [download(False) for _ in range(3)]
tunnel_runs = [download(True) for _ in range(3)]
total = min(r[0] for r in runs + tunnel_runs)
mbps = sorted(r[0] / r[1] / 1e6 for r in runs)[1]
tmbps = sorted(r[0] / r[1] / 1e6 for r in tunnel_runs)[1]
conn.sort(); rtt.sort()
pct = lambda v, p: v[min(len(v) - 1, int(len(v) * p))] * 1000
print(json.dumps({"tunnel_p50": pct(tunnel, .5), "tunnel_p99": pct(tunnel, .99), "connect_p50": pct(conn, .5), "connect_p99": pct(conn, .99), "rtt_p50": pct(rtt, .5), "rtt_p99": pct(rtt, .99), "mbps": mbps, "tunnel_mbps": tmbps, "bytes": total}))
`

type egressFigures struct {
	TunnelP50  float64 `json:"tunnel_p50"`
	TunnelP99  float64 `json:"tunnel_p99"`
	ConnectP50 float64 `json:"connect_p50"`
	ConnectP99 float64 `json:"connect_p99"`
	RTTP50     float64 `json:"rtt_p50"`
	RTTP99     float64 `json:"rtt_p99"`
	MBps       float64 `json:"mbps"`
	TunnelMBps float64 `json:"tunnel_mbps"`
	Bytes      int64   `json:"bytes"`
}

// TestEgressBench compares, in one run, a sandbox whose traffic goes
// through its egress gateway (transparent capture of port 80, a name
// allowed by the policy) with the same runsc sandbox routed straight to
// the same server with no policy and no gateway, and with the same
// gateway path through a benchmark build whose gateway is not confined
// (unconfinedBench): the last column is what the confinement costs. It
// runs only when OPENSHELL_BENCH is set (make bench sets it).
func TestEgressBench(t *testing.T) {
	requireBench(t)
	unconfined := unconfinedBench(t)
	e := newEgressEnv(t)
	dir := t.TempDir()
	pf := writePolicy(t, egressPolicy)
	viaGateway := func(bin string) egressFigures {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		c := e.runCommand(ctx, pf, "/usr/bin/python3", "-c", egressBenchProbe, "allowed.test", "resolve", "169.254.213.1")
		if bin == openshellBin {
			return probeFigures[egressFigures](t, c)
		}
		c.Path, c.Args[0] = bin, bin
		c.Env = append(os.Environ(), unconfinedBenchEnv+"=1")
		var stderr bytes.Buffer
		c.Stderr = &stderr
		defer func() {
			if t.Failed() {
				t.Logf("%s stderr:\n%s", bin, stderr.String())
			}
		}()
		f := probeFigures[egressFigures](t, c)
		// The benchmark build says so on every start: this was it.
		if !strings.Contains(stderr.String(), "NOT confined") {
			t.Fatalf("%s ran without the benchmark build's warning: not the unconfined build?", bin)
		}
		return f
	}
	gateway := func() egressFigures { return viaGateway(openshellBin) }
	direct := func() egressFigures {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		c, done := e.directCommand(t, ctx, dir, "egress-bench-direct", "/usr/bin/python3", "-c", egressBenchProbe, "allowed.test", fakenet.WebA.String(), "none")
		defer done()
		return probeFigures[egressFigures](t, c)
	}
	rounds := benchRounds()
	// The confined gateway runs twice a round: what the two runs differ
	// by is this host's noise in the same run, against which the
	// confined-unconfined difference is read.
	var gw, gw2, dr, uc []egressFigures
	for i := range rounds {
		dr = append(dr, direct())
		// The three gateway runs take turns going first.
		runs := []func(){
			func() { gw = append(gw, gateway()) },
			func() { uc = append(uc, viaGateway(unconfined)) },
			func() { gw2 = append(gw2, gateway()) },
		}
		for j := range runs {
			runs[(i+j)%len(runs)]()
		}
	}
	fmt.Printf("egress: %d rounds, 300 fresh connections and 3+3 downloads of 100 MB each (medians of the rounds)\n", rounds)
	fmt.Printf("unconfined: the gateway path through a build with -tags openshell_unconfined_bench (serving process as root: no user, cgroup, Landlock or seccomp)\n")
	fmt.Printf("noise: the confined gateway's two runs of each round, against each other\n")
	fmt.Printf("%-22s %12s %12s %22s %12s %27s %22s\n", "", "direct", "gateway", "gateway-direct / ratio", "unconfined", "confined-unconfined / ratio", "noise (confined twice)")
	for _, m := range []benchMetric[egressFigures]{
		{"usable conn p50 (ms)", func(x egressFigures) float64 { return x.TunnelP50 }, true},
		{"usable conn p99 (ms)", func(x egressFigures) float64 { return x.TunnelP99 }, true},
		{"connect p50 (ms)", func(x egressFigures) float64 { return x.ConnectP50 }, true},
		{"connect p99 (ms)", func(x egressFigures) float64 { return x.ConnectP99 }, true},
		{"connect+HTTP p50 (ms)", func(x egressFigures) float64 { return x.RTTP50 }, true},
		{"connect+HTTP p99 (ms)", func(x egressFigures) float64 { return x.RTTP99 }, true},
		{"100 MB captured (MB/s)", func(x egressFigures) float64 { return x.MBps }, false},
		{"100 MB CONNECT (MB/s)", func(x egressFigures) float64 { return x.TunnelMBps }, false},
	} {
		d, g, u, g2 := medianOf(dr, m.f), medianOf(gw, m.f), medianOf(uc, m.f), medianOf(gw2, m.f)
		if m.diff {
			fmt.Printf("%-22s %12.3f %12.3f %+19.3f ms %12.3f %+24.3f ms %+19.3f ms\n", m.name, d, g, g-d, u, g-u, g-g2)
		} else {
			fmt.Printf("%-22s %12.1f %12.1f %21.2fx %12.1f %26.2fx %21.2fx\n", m.name, d, g, g/d, u, g/u, g/g2)
		}
	}
	for _, x := range slices.Concat(gw, gw2, dr, uc) {
		if x.Bytes < 100<<20 {
			t.Errorf("a download got %d bytes, want %d", x.Bytes, 100<<20)
		}
	}
}

// unconfinedBenchEnv must be 1 for a build with the tag
// openshell_unconfined_bench to run (runtime/egress/confine_bench_on.go).
const unconfinedBenchEnv = "OPENSHELL_UNCONFINED_BENCH"

// unconfinedBench builds openshell with the tag
// openshell_unconfined_bench, as TestMain builds the binaries under test:
// its gateway serves unconfined, for the benchmarks to measure what the
// confinement costs. It is built into a temporary directory and never
// beside the others.
func unconfinedBench(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-tags", "openshell_unconfined_bench", "-o", dir+"/", "../cmd/openshell").CombinedOutput()
	if err != nil {
		t.Fatalf("build the unconfined benchmark openshell: %v\n%s", err, out)
	}
	return filepath.Join(dir, "openshell")
}

// directCommand is runsc running args in e's root, routed straight to
// the fake internet (no policy, no gateway): the baseline the egress
// benchmarks compare with. done removes what it made.
func (e *egressEnv) directCommand(t *testing.T, ctx context.Context, dir, id string, args ...string) (c *exec.Cmd, done func()) {
	t.Helper()
	// runsc takes the addresses off the namespace's link: a new
	// namespace for every run.
	removeDirect, err := e.net.Direct(filepath.Join(dir, "direct"))
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "runsc-root")
	done = func() {
		_ = unix.Unmount(filepath.Join(root, "null-netns"), unix.MNT_DETACH)
		if err := removeDirect(); err != nil {
			t.Error(err)
		}
	}
	bundle := t.TempDir()
	g, err := generate.New("linux")
	if err != nil {
		done()
		t.Fatal(err)
	}
	g.SetRootPath(e.root)
	g.SetRootReadonly(true)
	g.SetProcessArgs(args)
	g.SetProcessTerminal(false)
	if err := g.AddOrReplaceLinuxNamespace("network", filepath.Join(dir, "direct")); err != nil {
		done()
		t.Fatal(err)
	}
	writeBundleSpec(t, bundle, g.Config)
	return exec.CommandContext(ctx, runscBin, "--root", root, "--network=sandbox", "run", "--bundle", bundle, id), done
}
