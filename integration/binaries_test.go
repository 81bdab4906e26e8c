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
	goruntime "runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/policyhook"
	"github.com/openshell/openshell/runtime"
	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/test/fakenet"
)

// binariesPolicy lets only /usr/bin/curl reach allowed.test, and any
// binary reach pass.test (the same server). It also names
// /tmp/tools/curl, which lies on a writable mount: listed or not, such a
// binary never counts.
const binariesPolicy = `version: "1.0"
name: binaries-it
sandbox:
  filesystem:
    allowed_writes: [/tmp]
  process: {allow_exec: true, max_processes: 128}
  network:
    allowed_egress:
      - {host: allowed.test, ports: [80], binaries: [/usr/bin/curl, /tmp/tools/curl]}
      - {host: pass.test, ports: [80]}
      - {host: limited.test, ports: [80], binaries: ["/usr/bin/python3*"]}
`

// binariesProbe: 64 curl processes (through the proxy) and 64 python3
// connections (captured, straight to the address) to allowed.test, 16 at
// a time; then a copy of curl in the writable /tmp; then, after the test
// cut the sentry's attribution channel, curl to allowed.test and python3
// to pass.test. Each line: who, then the HTTP status.
const binariesProbe = `
import socket, subprocess, shutil, sys, json
from concurrent.futures import ThreadPoolExecutor

def curl(path="/usr/bin/curl", host="allowed.test", env=None):
    r = subprocess.run([path, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10", "http://%s/" % host], capture_output=True, text=True, env=env)
    return r.stdout or "err"

def direct(host="allowed.test"):
    try:
        s = socket.create_connection((host, 80), timeout=10)
        s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host).encode())
        line = s.makefile("rb").readline().decode()
        s.close()
        return line.split()[1] if line else "closed"
    except OSError as e:
        return "oserror"

jobs = [("curl", curl) for _ in range(64)] + [("python3", direct) for _ in range(64)]
jobs = [j for pair in zip(jobs[:64], jobs[64:]) for j in pair]
with ThreadPoolExecutor(16) as ex:
    results = list(ex.map(lambda j: (j[0], j[1]()), jobs))
print(json.dumps(results), flush=True)
shutil.copy("/usr/bin/curl", "/tmp/curl")
print("copy", curl("/tmp/curl"), flush=True)
import os
os.makedirs("/tmp/tools")
shutil.copy("/usr/bin/curl", "/tmp/tools/curl")
print("listed-copy", curl("/tmp/tools/curl"), flush=True)
import glob
shutil.copy(glob.glob("/usr/lib/*/libz.so.1")[0], "/tmp/libz.so")
print("preload", curl(env=dict(os.environ, LD_PRELOAD="/tmp/libz.so")), flush=True)
try:
    open("/proc/self/mem", "r+b")
    print("procmem writable", flush=True)
except OSError as e:
    print("procmem", e.strerror, flush=True)
# python3 may reach limited.test, until it has loaded code from /tmp:
# then never again in this image, even once the library is unloaded.
import ctypes, _ctypes
print("python3-own", direct("limited.test"), flush=True)
lib = ctypes.CDLL("/tmp/libz.so")
_ctypes.dlclose(lib._handle)
print("python3-after-dlclose", direct("limited.test"), flush=True)
print("phase1", flush=True)
sys.stdin.readline()
print("after-curl", curl(), flush=True)
print("after-python3-pass", direct("pass.test"), flush=True)
`

func TestEgressBinaries(t *testing.T) {
	e := newEgressEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	c, stdin, lines, errb := e.startPiped(t, ctx, writePolicy(t, binariesPolicy), binariesProbe)
	if !lines.Scan() {
		t.Fatalf("sandbox said nothing\n%s", errb.String())
	}
	var results [][2]string
	if err := json.Unmarshal(lines.Bytes(), &results); err != nil {
		t.Fatalf("results %q: %v\n%s", lines.Text(), err, errb.String())
	}
	right := map[string]int{}
	for _, r := range results {
		want := map[string]string{"curl": "200", "python3": "403"}[r[0]]
		if r[1] == want {
			right[r[0]]++
		} else {
			t.Errorf("%s got %s, want %s", r[0], r[1], want)
		}
	}
	t.Logf("per-binary decisions: curl %d/64 allowed, python3 %d/64 refused (16 at a time, one host)", right["curl"], right["python3"])
	if len(results) != 128 {
		t.Fatalf("%d results", len(results))
	}
	// Code the agent could have written, run inside curl (a library
	// preloaded from /tmp), does not count as curl; nor can a process
	// write into another's memory (/proc is read-only under binaries).
	for _, want := range []string{"copy 403", "listed-copy 403", "preload 403", "procmem Read-only file system", "python3-own 200", "python3-after-dlclose 403", "phase1"} {
		if !lines.Scan() || lines.Text() != want {
			t.Fatalf("sandbox: %q, want %q\n%s", lines.Text(), want, errb.String())
		}
	}

	// The gateway's audit names the binary of each binary-scoped decision.
	id := sandboxPid(t, "binaries-it")
	_, st, err := runtime.Open(stateDir, id)
	if err != nil || st.Gateway == nil {
		t.Fatalf("state: %v", err)
	}
	var audit []egress.Event
	for _, ev := range e.events(t) {
		if ev.Sandbox == id {
			audit = append(audit, ev)
		}
	}
	var curlAllowed, pyDenied, copyDenied, listedDenied, preloadDenied bool
	for _, ev := range audit {
		switch {
		case ev.Binary == "/usr/bin/curl" && ev.Decision == egress.Allow:
			curlAllowed = true
		case strings.HasPrefix(ev.Binary, "/usr/bin/python3") && ev.Decision == egress.Deny:
			pyDenied = true
		case ev.Binary == "/tmp/curl" && ev.Decision == egress.Deny && strings.Contains(ev.Reason, "not to /tmp/curl"):
			copyDenied = true
		case ev.Binary == "/tmp/tools/curl" && ev.Decision == egress.Deny && strings.Contains(ev.Reason, "not on a read-only mount"):
			listedDenied = true
		case ev.Binary == "/usr/bin/curl" && ev.Decision == egress.Deny && strings.Contains(ev.Reason, "runs code from /tmp/libz.so"):
			preloadDenied = true
		}
	}
	if !curlAllowed || !pyDenied || !copyDenied || !listedDenied || !preloadDenied {
		for _, ev := range audit {
			if ev.Decision != egress.Allow {
				t.Logf("%+v", ev)
			}
		}
		t.Errorf("audit: curl allowed %v, python3 denied %v, /tmp/curl denied %v, /tmp/tools/curl denied for its mount %v, curl with /tmp/libz.so preloaded denied %v", curlAllowed, pyDenied, copyDenied, listedDenied, preloadDenied)
	}

	// Cut the sentry's channel: binary-scoped rules must deny from then
	// on, and rules without binaries keep working.
	cutAttribution(t, childOf(t, st.Gateway.Pid), runtimeAttrSocket(id))
	fmt.Fprintln(stdin)
	rest := waitRest(t, c, lines, errb)
	if strings.Join(rest, "|") != "after-curl 403|after-python3-pass 200" {
		t.Errorf("after the channel was cut: %q", rest)
	}
	assertNothingLeft(t, stateDir)
}

// runtimeAttrSocket is where openshell run's sandbox id has its
// attribution socket.
func runtimeAttrSocket(id string) string {
	sb := &runtime.Sandbox{ID: id, Dir: filepath.Join(stateDir, id)}
	sb.Compiled = &policyhook.Compiled{Attribution: true}
	return sb.AttributionSocket()
}

// cutAttribution shuts down, from outside, the gateway process pid's
// connection from the sentry's sink on socket path: it takes a copy of
// the descriptor (pidfd_getfd) and shuts the socket both ways, as a
// crashed or killed channel would end.
func cutAttribution(t *testing.T, pid int, path string) {
	t.Helper()
	// The socket lives in the network namespace it was made in: the
	// runtime's (this test's), not the gateway's.
	var data []byte
	for _, f := range []string{"/proc/self/net/unix", fmt.Sprintf("/proc/%d/net/unix", pid)} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, b...)
	}
	inodes := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// Num RefCount Protocol Flags Type St Inode Path; St 03: connected.
		if len(f) == 8 && f[7] == path && f[5] == "03" {
			inodes[f[6]] = true
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	cut := 0
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil || !strings.HasPrefix(link, "socket:[") || !inodes[strings.Trim(link[len("socket:"):], "[]")] {
			continue
		}
		n, _ := strconv.Atoi(fd.Name())
		dup, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			t.Fatalf("pidfd_getfd: %v", err)
		}
		err = unix.Shutdown(dup, unix.SHUT_RDWR)
		unix.Close(dup)
		if err != nil {
			t.Fatal(err)
		}
		cut++
	}
	if cut == 0 {
		t.Fatalf("no attribution channel of %s in gateway %d", path, pid)
	}
	// The gateway notices the end before the next decision.
	time.Sleep(200 * time.Millisecond)
}

// attrBenchProbe: 220 captured HTTP requests to pass.test, each on its own
// connection, timed from connect to the status line (the first 20 warm
// up), then 30 curl processes through the proxy, timed together.
const attrBenchProbe = `
import socket, time, json, subprocess
addr = socket.getaddrinfo("pass.test", 80, socket.AF_INET, socket.SOCK_STREAM)[0][4]
conn = []
def get():
    s = socket.socket()
    t0 = time.perf_counter()
    s.connect(addr)
    conn.append(time.perf_counter() - t0)
    s.sendall(b"GET / HTTP/1.1\r\nHost: pass.test\r\nConnection: close\r\n\r\n")
    line = s.makefile("rb").readline()
    s.close()
    assert b" 200 " in line, line
lat = []
for i in range(220):
    t0 = time.perf_counter()
    get()
    lat.append(time.perf_counter() - t0)
lat, conn = sorted(lat[20:]), sorted(conn[20:])
t0 = time.perf_counter()
for i in range(30):
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://pass.test/"], capture_output=True, text=True)
    assert r.stdout == "200", r.stdout
loop = time.perf_counter() - t0
print(json.dumps({"p50_us": lat[len(lat)//2] * 1e6, "p99_us": lat[int(len(lat) * 0.99)] * 1e6,
    "connect_p50_us": conn[len(conn)//2] * 1e6, "connect_p99_us": conn[int(len(conn) * 0.99)] * 1e6, "exec_loop_ms": loop * 1e3}))
`

// TestAttributionBench measures what per-binary rules cost, in one run:
// the same workload under a rule without binaries (no sink: stock
// behaviour), with the process monitor alone (the timeline), under a rule
// naming the binaries (every connect reported, every executable mapping
// checked, every decision waits for its record), and with both.
func TestAttributionBench(t *testing.T) {
	requireBench(t)
	e := newEgressEnv(t)
	rule := func(bins string) string {
		return `version: "1.0"
sandbox:
  process: {allow_exec: true, max_processes: 64}
  network:
    allowed_egress:
      - {host: pass.test, ports: [80]` + bins + `}
`
	}
	open := writePolicy(t, rule(""))
	scoped := writePolicy(t, rule(", binaries: [/usr/bin/python3*, /usr/bin/curl]"))
	type figures struct {
		P50      float64 `json:"p50_us"`
		P99      float64 `json:"p99_us"`
		ConnP50  float64 `json:"connect_p50_us"`
		ConnP99  float64 `json:"connect_p99_us"`
		ExecLoop float64 `json:"exec_loop_ms"`
	}
	cols := []struct {
		name, policy string
		extra        []string
	}{
		{"no binaries", open, nil},
		{"monitor only", open, []string{"--timeline"}},
		{"binaries (sink)", scoped, nil},
		{"binaries + monitor", scoped, []string{"--timeline"}},
	}
	rounds := benchRuns(5)
	got := make([][]figures, len(cols))
	for i := 0; i < rounds; i++ {
		for k, c := range cols {
			ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
			args := append([]string{"run", "--config", e.config, "--runsc", runscBin, "--state-dir", stateDir, "--rootfs", e.root, "--policy", c.policy}, c.extra...)
			cmd := exec.CommandContext(ctx, openshellBin, append(args, "--", "/usr/bin/python3", "-u", "-c", attrBenchProbe)...)
			got[k] = append(got[k], probeFigures[figures](t, cmd))
			cancel()
		}
	}
	base := got[0]
	med := func(fs []figures, f func(figures) float64) float64 { return medianOf(fs, f) }
	for k, c := range cols {
		g := got[k]
		p50, p99 := med(g, func(f figures) float64 { return f.P50 }), med(g, func(f figures) float64 { return f.P99 })
		c50, c99 := med(g, func(f figures) float64 { return f.ConnP50 }), med(g, func(f figures) float64 { return f.ConnP99 })
		loop := med(g, func(f figures) float64 { return f.ExecLoop })
		t.Logf("%-20s connect() p50 %5.0f µs p99 %5.0f µs (%+5.0f, %+5.0f)   connect-to-status p50 %5.0f µs p99 %5.0f µs (%+5.0f, %+5.0f)   30 curl execs %4.0f ms (%.3fx)",
			c.name, c50, c99, c50-med(base, func(f figures) float64 { return f.ConnP50 }), c99-med(base, func(f figures) float64 { return f.ConnP99 }),
			p50, p99, p50-med(base, func(f figures) float64 { return f.P50 }), p99-med(base, func(f figures) float64 { return f.P99 }),
			loop, loop/med(base, func(f figures) float64 { return f.ExecLoop }))
	}
	t.Logf("medians of %d interleaved rounds; 200 connections and 30 execs a round", rounds)
	assertNothingLeft(t, stateDir)
}

// footholdProbe runs curl with testdata/foothold/foothold.so preloaded
// (its bytes come in on stdin): agent code that, once inside curl,
// connects from memory it copied itself into, with its own file unmapped
// (or left mapped, as a control). Each line: the variant, then the
// status line the payload got, or "no reply".
const footholdProbe = `
import os, subprocess, sys
open("/tmp/f.so", "wb").write(sys.stdin.buffer.read())
for name, extra in [("mapped", {"EVIL_NOUNMAP": "1"}), ("anonymous", {}), ("private-copy-of-env", {"EVIL_COW": "1"}), ("forked-child", {"EVIL_FORK": "1"})]:
    env = dict(os.environ, LD_PRELOAD="/tmp/f.so", EVIL_IP=sys.argv[1], **extra)
    r = subprocess.run(["/usr/bin/curl", "-s", "http://allowed.test/"], env=env, capture_output=True, timeout=20)
    line = r.stdout.split(b"\r\n")[0].decode(errors="replace")
    print(name, line or "no reply", flush=True)
`

// TestEgressBinariesFoothold: code the agent loaded into an allowed
// binary keeps the binary from counting even when it has copied itself
// elsewhere and unmapped its file (the sink marks the process image at
// the mmap, not at the connect), or connects from a forked child (the
// mark is inherited at clone). Before those, the anonymous and
// private-copy variants, then the forked child, reached allowed.test as
// /usr/bin/curl.
func TestEgressBinariesFoothold(t *testing.T) {
	if goruntime.GOARCH != "amd64" {
		t.Skipf("testdata/foothold/foothold.so is an amd64 library; this is %s", goruntime.GOARCH)
	}
	so, err := os.ReadFile("testdata/foothold/foothold.so")
	if err != nil {
		t.Fatal(err)
	}
	e := newEgressEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c := e.runCommand(ctx, writePolicy(t, binariesPolicy), "/usr/bin/python3", "-c", footholdProbe, fakenet.WebA.String())
	c.Stdin = bytes.NewReader(so)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("sandbox: %v\n%s", err, out)
	}
	got := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(got) != 4 {
		t.Fatalf("output %q", out)
	}
	t.Logf("agent code inside curl: %q", got)
	for _, l := range got {
		if !strings.Contains(l, " 403 ") {
			t.Errorf("agent code inside curl: %s (want 403)", l)
		}
	}
	assertNothingLeft(t, stateDir)
}
