package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/test/fakenet"
)

// egressCPUProbe downloads n times size MB from the fake internet, through
// a CONNECT tunnel or straight, after one download it does not count; it
// prints "start" and "end" around the counted ones, for the test to read
// every process's CPU time at both, then their bytes, seconds and median
// rate.
const egressCPUProbe = pyTunnel + `
import json, socket, sys, time
host, ip, proxy, mb, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def download():
    if proxy != "none":
        s = open_tunnel(proxy, host)
    else:
        s = socket.create_connection((ip, 80))
    s.sendall(("GET /bytes?n=%d HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (mb << 20, host)).encode())
    t0 = time.perf_counter(); total = 0
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        total += len(b)
    s.close()
    return total, time.perf_counter() - t0
download()
print("start", flush=True)
t0 = time.perf_counter()
runs = [download() for _ in range(n)]
wall = time.perf_counter() - t0
print("end", flush=True)
rates = sorted(b / s / 1e6 for b, s in runs)
print(json.dumps({"bytes": sum(b for b, _ in runs), "wall": wall, "mbps": rates[len(rates) // 2]}))
`

// cpuFigures is what a probe's counted downloads cost, by process class.
type cpuFigures struct {
	PerGB map[string]float64 // CPU-seconds per GB moved, by class
	Busy  float64            // the machine's busy share over the window
	MBps  float64
}

// The process classes the CPU is told by.
const (
	cpuSandbox  = "sandbox (runsc sentry, gofer)"
	cpuGateway  = "gateway (serving process, keeper)"
	cpuServer   = "fake internet's server (this test)"
	cpuSoftirq  = "kernel softirq threads"
	cpuWorkers  = "kernel workers"
	cpuOther    = "everything else"
	cpuMachine  = "machine (all CPUs, /proc/stat)"
	clockTicks  = 100 // USER_HZ: /proc's tick on every Linux this runs on
	cpuDownload = 1000
	cpuCount    = 4
)

var cpuClasses = []string{cpuSandbox, cpuGateway, cpuServer, cpuSoftirq, cpuWorkers, cpuOther, cpuMachine}

// procCPU is every process's utime+stime in ticks, by pid, with its class.
func procCPU(t *testing.T) map[int]struct {
	ticks int64
	class string
} {
	t.Helper()
	out := map[int]struct {
		ticks int64
		class string
	}{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		comm := string(stat[bytes.IndexByte(stat, '(')+1 : i])
		f := strings.Fields(string(stat[i+2:]))
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(cmd), "\x00")
		class := cpuOther
		switch {
		case pid == os.Getpid():
			class = cpuServer
		case strings.HasPrefix(comm, "ksoftirqd"):
			class = cpuSoftirq
		case strings.HasPrefix(comm, "kworker"):
			class = cpuWorkers
		case args[0] == runscBin || strings.HasPrefix(args[0], "runsc-"):
			class = cpuSandbox
		case len(args) > 1 && args[1] == "gateway":
			class = cpuGateway
		}
		out[pid] = struct {
			ticks int64
			class string
		}{ut + st, class}
	}
	return out
}

// machineBusy is /proc/stat's busy and total ticks over all CPUs.
func machineBusy(t *testing.T) (busy, total int64) {
	t.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	// user nice system idle iowait irq softirq steal (guest and
	// guest_nice, after them, are inside user and nice already). Steal
	// is the hypervisor's: not busy, but time the CPUs had.
	for i, v := range f[1:min(len(f), 9)] {
		n, _ := strconv.ParseInt(v, 10, 64)
		total += n
		if i != 3 && i != 4 && i != 7 {
			busy += n
		}
	}
	return busy, total
}

// runCPUProbe runs c (the probe) and reads each class's CPU between its
// "start" and "end".
func runCPUProbe(t *testing.T, c *exec.Cmd) cpuFigures {
	t.Helper()
	stdout, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	c.Stderr = &errb
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	fail := func(format string, args ...any) {
		t.Helper()
		// openshell run cleans up after SIGTERM.
		_ = c.Process.Signal(unix.SIGTERM)
		_ = c.Wait()
		t.Fatalf(format, args...)
	}
	expect := func(want string) {
		t.Helper()
		if !lines.Scan() || lines.Text() != want {
			fail("probe: %q, want %q\n%s", lines.Text(), want, errb.String())
		}
	}
	expect("start")
	before := procCPU(t)
	b0, t0 := machineBusy(t)
	expect("end")
	after := procCPU(t)
	b1, t1 := machineBusy(t)
	var res struct {
		Bytes int64   `json:"bytes"`
		Wall  float64 `json:"wall"`
		MBps  float64 `json:"mbps"`
	}
	if !lines.Scan() || json.Unmarshal(lines.Bytes(), &res) != nil {
		fail("probe result %q\n%s", lines.Text(), errb.String())
	}
	if err := c.Wait(); err != nil {
		t.Fatalf("probe: %v\n%s", err, errb.String())
	}
	// The bodies, and each response's headers.
	if want := int64(cpuCount * cpuDownload << 20); res.Bytes < want || res.Bytes > want+cpuCount*1024 {
		t.Fatalf("the probe moved %d bytes, want %d and the headers", res.Bytes, want)
	}
	gb := float64(res.Bytes) / 1e9
	f := cpuFigures{PerGB: map[string]float64{}, Busy: float64(b1-b0) / float64(t1-t0), MBps: res.MBps}
	// A process counts for what it used in the window: one that started
	// within it counts whole, one that ended within it not at all.
	for pid, a := range after {
		d := a.ticks
		if b, ok := before[pid]; ok && b.class == a.class {
			d -= b.ticks
		}
		f.PerGB[a.class] += float64(d) / clockTicks / gb
	}
	f.PerGB[cpuMachine] = float64(b1-b0) / clockTicks / gb
	return f
}

// TestEgressTunnelCPU tells where the CPU of a CONNECT tunnel's bytes goes,
// against the same downloads routed straight to the fake internet: the
// CPU-seconds each class of process spends per GB moved, over four
// downloads of 1000 MB (after one not counted), read from /proc at the
// downloads' start and end. On a host whose CPUs the sandbox's netstack
// already fills, what the gateway's hop adds per byte sets the tunnel's
// throughput against direct. It runs only when OPENSHELL_BENCH is set.
func TestEgressTunnelCPU(t *testing.T) {
	requireBench(t)
	e := newEgressEnv(t)
	dir := t.TempDir()
	pf := writePolicy(t, egressPolicy)
	probeArgs := func(ip, proxy string) []string {
		return []string{"/usr/bin/python3", "-c", egressCPUProbe, "allowed.test", ip, proxy, strconv.Itoa(cpuDownload), strconv.Itoa(cpuCount)}
	}
	direct := func() cpuFigures {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		c, done := e.directCommand(t, ctx, dir, "egress-cpu-direct", probeArgs(fakenet.WebA.String(), "none")...)
		defer done()
		return runCPUProbe(t, c)
	}
	tunnel := func() cpuFigures {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		return runCPUProbe(t, e.runCommand(ctx, pf, probeArgs("resolve", "169.254.213.1")...))
	}
	rounds := benchRounds()
	var dr, tr []cpuFigures
	for i := range rounds {
		// The two take turns going first.
		if i%2 == 0 {
			dr, tr = append(dr, direct()), append(tr, tunnel())
		} else {
			tr, dr = append(tr, tunnel()), append(dr, direct())
		}
	}
	fmt.Printf("egress tunnel CPU: %d rounds, %d downloads of %d MB each (after one not counted); CPU-seconds per GB moved (medians of the rounds)\n", rounds, cpuCount, cpuDownload)
	fmt.Printf("%-36s %10s %10s %16s\n", "", "direct", "CONNECT", "CONNECT-direct")
	for _, c := range cpuClasses {
		d := medianOf(dr, func(f cpuFigures) float64 { return f.PerGB[c] })
		g := medianOf(tr, func(f cpuFigures) float64 { return f.PerGB[c] })
		fmt.Printf("%-36s %10.3f %10.3f %+16.3f\n", c, d, g, g-d)
	}
	d := medianOf(dr, func(f cpuFigures) float64 { return f.Busy })
	g := medianOf(tr, func(f cpuFigures) float64 { return f.Busy })
	fmt.Printf("%-36s %9.0f%% %9.0f%%\n", "machine busy over the downloads", 100*d, 100*g)
	d = medianOf(dr, func(f cpuFigures) float64 { return f.MBps })
	g = medianOf(tr, func(f cpuFigures) float64 { return f.MBps })
	fmt.Printf("%-36s %10.1f %10.1f %15.2fx\n", "throughput (MB/s)", d, g, g/d)
	for _, fs := range [][]cpuFigures{dr, tr} {
		for _, f := range fs {
			if f.PerGB[cpuSandbox] <= 0 {
				t.Errorf("no CPU read for the sandbox: the classes are wrong (%v)", f.PerGB)
			}
		}
	}
	for _, f := range tr {
		if f.PerGB[cpuGateway] <= 0 {
			t.Errorf("no CPU read for the gateway: the classes are wrong (%v)", f.PerGB)
		}
	}
}
