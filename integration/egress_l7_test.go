package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/runtime/egress"
)

// l7Policy is NVIDIA OpenShell's format with the L7 constructs its real
// policies use: an access preset, method and path rules, and an
// endpoint without either, which stays passthrough.
const l7Policy = `version: 1
filesystem_policy:
  read_only: [/usr, /lib, /lib64, /bin, /etc, /sbin]
  read_write: [/tmp]
network_policies:
  api:
    name: read-only-api
    endpoints:
      - {host: allowed.test, port: 443, protocol: rest, access: read-only}
      - {host: allowed.test, port: 80, protocol: rest, access: read-only}
  scoped:
    name: scoped-rules
    endpoints:
      - host: rules.test
        port: 443
        protocol: rest
        rules:
          - allow: {method: GET, path: "/repos/*/issues"}
          - allow: {method: POST, path: "/upload/**"}
  plain:
    name: passthrough
    endpoints:
      - {host: pass.test, port: 443}
`

// l7Probe runs in the sandbox: it prints the CA it trusts, waits for the
// host to send a line of the CA's key, then prints one "name: result"
// line per case.
const l7Probe = `
import os, subprocess, sys, json, urllib.request
print(open("/.openshell/ca.crt").read().replace("\n", "|"), flush=True)
needle = sys.stdin.readline().strip()
def code(*args):
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20"] + list(args), capture_output=True, text=True)
    return r.stdout.strip() or ("rc=%d %s" % (r.returncode, r.stderr.strip()[:200]))
cases = [
    ("connect-get", ["https://allowed.test/x"]),
    ("connect-post", ["-X", "POST", "-d", "a=1", "https://allowed.test/x"]),
    ("connect-head", ["-I", "https://allowed.test/x"]),
    ("transparent-get", ["--noproxy", "*", "https://allowed.test/x"]),
    ("transparent-post", ["--noproxy", "*", "-X", "POST", "-d", "a=1", "https://allowed.test/x"]),
    ("http-get", ["http://allowed.test/x"]),
    ("http-delete", ["-X", "DELETE", "http://allowed.test/x"]),
    ("rules-get", ["https://rules.test/repos/openshell/issues"]),
    ("rules-get-deeper", ["https://rules.test/repos/a/b/issues"]),
    ("rules-post-upload", ["-X", "POST", "-d", "x", "https://rules.test/upload/a/b/c"]),
    ("rules-get-upload", ["https://rules.test/upload/a"]),
    ("rules-encoded-slash", ["--path-as-is", "https://rules.test/repos/a%2Fb/issues"]),
    ("rules-double-encoded", ["--path-as-is", "https://rules.test/repos/a%252Fb/issues"]),
    ("rules-dot-climb", ["--path-as-is", "-X", "POST", "-d", "x", "https://rules.test/upload/../admin"]),
    ("rules-other-host", ["-H", "Host: allowed.test", "https://rules.test/repos/a/issues"]),
    ("pass-get", ["-k", "https://pass.test/p"]),
]
for name, args in cases:
    print(name + ": " + code(*args), flush=True)
try:
    with urllib.request.urlopen("https://allowed.test/py", timeout=20) as r:
        print("python: %d" % r.status, flush=True)
except Exception as e:
    print("python: %r" % e, flush=True)
node = subprocess.run(["node", "-e", "require('https').get('https://allowed.test/node', r => { console.log(r.statusCode); r.resume() }).on('error', e => { console.log('error ' + e.message) })"], capture_output=True, text=True, timeout=60)
print("node: " + (node.stdout.strip() or node.stderr.strip()[:200]), flush=True)
git = subprocess.run(["git", "ls-remote", "https://allowed.test/repo.git"], capture_output=True, text=True, timeout=60, env=dict(os.environ, HOME="/tmp"))
print("git: " + (git.stdout.split()[1] if git.returncode == 0 and git.stdout.split() else "rc=%d %s" % (git.returncode, git.stderr.strip()[:300])), flush=True)
found = []
for k, v in os.environ.items():
    if needle in v:
        found.append("env " + k)
# The key could only come in through what the runtime adds to the
# image: its mounts (the trust directory and bundles, resolv.conf, all
# under /etc or /.openshell), the environment and the processes.
g = subprocess.run(["grep", "-rlF", needle, "/etc", "/tmp", "/.openshell"], capture_output=True, text=True)
found += g.stdout.split()
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    for f in ["environ", "cmdline"]:
        try:
            with open("/proc/%s/%s" % (pid, f), "rb") as fh:
                if needle.encode() in fh.read():
                    found.append("/proc/%s/%s" % (pid, f))
        except Exception:
            pass
print("key-in-sandbox: " + (",".join(found) or "none"), flush=True)
`

// TestEgressL7 enforces an OpenShell policy's HTTP rules on HTTPS (TLS
// terminated with the sandbox's own CA, through CONNECT and transparent
// 443) and plain HTTP, with curl, python3, node and git unchanged; an
// endpoint without rules stays passthrough; the CA's key is nowhere in
// the sandbox, and a second sandbox gets another CA.
func TestEgressL7(t *testing.T) {
	e := newEgressEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	pf := writePolicy(t, l7Policy)
	c, stdin, lines, errb := e.startPiped(t, ctx, pf, l7Probe)
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), "-----BEGIN CERTIFICATE-----") {
		_ = c.Process.Kill()
		_ = c.Wait()
		t.Fatalf("sandbox: first line %q, want its CA\n%s", lines.Text(), errb.String())
	}
	caLine := lines.Text()
	caPEM := strings.ReplaceAll(caLine, "|", "\n")
	fmt.Fprintln(stdin, sandboxCAKeyLine(t, caPEM))
	got := map[string]string{}
	var out strings.Builder
	for lines.Scan() {
		out.WriteString(lines.Text() + "\n")
		if k, v, ok := strings.Cut(lines.Text(), ": "); ok {
			got[k] = v
		}
	}
	if err := c.Wait(); err != nil {
		t.Fatalf("sandbox: %v\n%s\n%s", err, out.String(), errb.String())
	}
	t.Logf("sandbox:\n%s", out.String())
	want := map[string]string{
		"connect-get": "200", "connect-post": "403", "connect-head": "200",
		"transparent-get": "200", "transparent-post": "403",
		"http-get": "200", "http-delete": "403",
		"rules-get": "200", "rules-get-deeper": "403", "rules-post-upload": "200", "rules-get-upload": "403",
		"rules-encoded-slash": "403", "rules-double-encoded": "403", "rules-dot-climb": "403", "rules-other-host": "403",
		"pass-get": "200", "python": "200", "node": "200", "git": "HEAD", "key-in-sandbox": "none",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %q, want %q", k, got[k], v)
		}
	}
	// The servers saw the gateway's own handshakes for terminated
	// endpoints (HTTP/1.1 only) and curl's, offering h2, for the
	// passthrough one.
	var passOwn, terminatedOwn bool
	for _, h := range e.net.Hellos() {
		switch {
		case strings.HasPrefix(h, "pass.test ") && strings.Contains(h, "h2"):
			passOwn = true
		case strings.HasPrefix(h, "allowed.test ") && strings.Contains(h, "h2"):
			t.Errorf("a terminated endpoint's server saw the sandbox's own ClientHello: %q", h)
		case strings.HasPrefix(h, "allowed.test "):
			terminatedOwn = true
		}
	}
	if !passOwn || !terminatedOwn {
		t.Errorf("handshakes the servers saw: %q", e.net.Hellos())
	}
	// Each request has its own audit line, with method, path and status.
	var sawDeny, sawAllow bool
	for _, ev := range e.events(t) {
		if ev.Kind != "https" || ev.Host != "allowed.test" || ev.Path != "/x" {
			continue
		}
		switch {
		case ev.Method == "POST" && ev.Decision == egress.Deny && ev.Status == 403 && strings.Contains(ev.Reason, "POST"):
			sawDeny = true
		case ev.Method == "GET" && ev.Decision == egress.Allow && ev.Status == 200 && ev.Grant != "":
			sawAllow = true
		}
	}
	if !sawDeny || !sawAllow {
		t.Errorf("audit: no per-request lines for allowed.test /x (allow %v, deny %v)", sawAllow, sawDeny)
	}
	assertNothingLeft(t, stateDir)

	// A second sandbox gets a CA of its own.
	again := e.run(t, l7Policy, `print(open("/.openshell/ca.crt").read().replace("\n", "|"))`)
	if !strings.HasPrefix(again, "-----BEGIN CERTIFICATE-----") || strings.TrimSpace(again) == strings.TrimSpace(caLine) {
		t.Errorf("second sandbox's CA: %q (the first's: %q)", again, caLine)
	}
}

// sandboxCAKeyLine finds the state directory of the running sandbox whose
// trust directory holds caPEM, and returns one line of its CA key.
func sandboxCAKeyLine(t *testing.T, caPEM string) string {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(stateDir, "*", "trust", "ca.crt"))
	for _, f := range dirs {
		data, err := os.ReadFile(f)
		if err != nil || strings.TrimSpace(string(data)) != strings.TrimSpace(caPEM) {
			continue
		}
		key, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(f)), "gateway-ca.pem"))
		if err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(filepath.Join(filepath.Dir(filepath.Dir(f)), "gateway-ca.pem"))
		if st.Mode().Perm() != 0o600 {
			t.Errorf("the CA key file is mode %v, want 0600", st.Mode().Perm())
		}
		_, rest, ok := strings.Cut(string(key), "-----BEGIN PRIVATE KEY-----\n")
		if !ok {
			t.Fatalf("no key in %s", f)
		}
		line, _, _ := strings.Cut(rest, "\n")
		return line
	}
	t.Fatalf("no sandbox's trust directory holds the CA it printed")
	return ""
}
