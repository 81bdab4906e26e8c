// Package integration runs openshell against real runsc sandboxes. The
// tests need root and runsc ($OPENSHELL_RUNSC, or bin/runsc from
// `make runsc`); without them the run fails and says why, unless
// OPENSHELL_ALLOW_SKIP=1 lets every test skip instead.
package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/test/rootfs"
)

var (
	openshellBin string
	runtimeBin   string
	binDir       string // the binaries under test, with runsc beside them
	runscBin     string
	stateDir     string // shared: runsc keeps a bind-mounted null-netns in its root
	skipReason   string
	// runtimeConfig is openshell-runtime's --config in these tests: the
	// tests give a bundle its policy inline, which the runtime refuses
	// unless the configuration allows it.
	runtimeConfig string
)

// noConfig is a configuration file that does not exist: the runtime's
// defaults, as on a host without /etc/openshell/config.toml.
const noConfig = "/nonexistent/config.toml"

// allowSkipEnv lets a run without root or runsc skip every test instead
// of failing; without it such a run fails, so that a green `make
// integration` means the sandboxes ran.
const allowSkipEnv = "OPENSHELL_ALLOW_SKIP"

func TestMain(m *testing.M) {
	os.Exit(setup(m))
}

func setup(m *testing.M) int {
	switch {
	case os.Geteuid() != 0:
		skipReason = "integration tests need root (runsc creates namespaces and mounts)"
	default:
		runscBin = os.Getenv("OPENSHELL_RUNSC")
		if runscBin == "" {
			runscBin, _ = filepath.Abs("../bin/runsc")
		}
		if _, err := os.Stat(runscBin); err != nil {
			skipReason = fmt.Sprintf("runsc not found at %s: run `make runsc`", runscBin)
		}
	}
	if skipReason == "" {
		dir, err := os.MkdirTemp("", "openshell-it-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		openshellBin = filepath.Join(dir, "openshell")
		runtimeBin = filepath.Join(dir, "openshell-runtime")
		stateDir = filepath.Join(dir, "state")
		defer cleanupState(stateDir)
		binDir = dir
		out, err := exec.Command("go", "build", "-o", dir+"/", "../cmd/openshell", "../cmd/openshell-runtime").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
			return 1
		}
		shimBuild := exec.Command("go", "build", "-tags", "no_grpc", "-o", dir+"/", "./cmd/containerd-shim-openshell-v1")
		shimBuild.Dir = "../shim"
		if out, err := shimBuild.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build shim: %v\n%s", err, out)
			return 1
		}
		// openshell-runtime finds runsc beside itself, as an install has it.
		if err := os.Symlink(runscBin, filepath.Join(dir, "runsc")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		runtimeConfig = filepath.Join(dir, "runtime.toml")
		if err := os.WriteFile(runtimeConfig, []byte("allow_inline_policy = true\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer stopEngines()
	} else if os.Getenv(allowSkipEnv) == "1" {
		fmt.Println("SKIP integration:", skipReason)
	} else {
		fmt.Fprintf(os.Stderr, "FAIL integration: %s\n(set %s=1 to let every integration test skip instead)\n", skipReason, allowSkipEnv)
		return 1
	}
	return m.Run()
}

type result struct {
	code           int
	stdout, stderr string
}

// writePolicy writes a policy file into a fresh temporary directory.
func writePolicy(t *testing.T, policyYAML string) string {
	t.Helper()
	pf := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pf, []byte(policyYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	return pf
}

// writeConfig writes a runtime configuration into a fresh temporary
// directory.
func writeConfig(t *testing.T, configTOML string) string {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfg, []byte(configTOML), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// sandbox runs `openshell run` with the policy body under the shared state
// dir, and checks afterwards that nothing was left behind.
func sandbox(t *testing.T, policyYAML string, cmd ...string) result {
	t.Helper()
	return sandboxWithConfig(t, noConfig, policyYAML, cmd...)
}

// sandboxWithConfig is sandbox with a runtime configuration file.
func sandboxWithConfig(t *testing.T, config, policyYAML string, cmd ...string) result {
	t.Helper()
	return openshellRun(t, config, nil, policyYAML, cmd...)
}

// openshellRun runs `openshell run` with the configuration file, extra
// flags (--rootfs, --workdir) and the policy body under the shared state
// dir, and checks afterwards that nothing was left behind.
func openshellRun(t *testing.T, config string, flags []string, policyYAML string, cmd ...string) result {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	pf := writePolicy(t, policyYAML)
	state := stateDir
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append([]string{"run", "--config", config, "--runsc", runscBin, "--state-dir", state, "--policy", pf}, flags...)
	args = append(append(args, "--"), cmd...)
	c := exec.CommandContext(ctx, openshellBin, args...)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	r := result{code: c.ProcessState.ExitCode(), stdout: out.String(), stderr: errb.String()}
	if err != nil && r.code < 0 {
		t.Fatalf("openshell run: %v\n%s", err, errb.String())
	}
	assertNothingLeft(t, state)
	return r
}

// debianRoot is the cached debootstrapped Debian root (bash, python3,
// curl, git, node); the test is skipped where debootstrap is missing.
func debianRoot(t *testing.T) string {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	cache, _ := filepath.Abs(filepath.Join("../.cache", rootfs.DebianCacheName()))
	root, err := rootfs.Cached(cache, rootfs.Debian)
	if err != nil {
		if strings.Contains(err.Error(), "apt-get install debootstrap") {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	return root
}

// cleanupState unmounts what runsc left in its roots (the null network
// namespace it shares between sandboxes) and removes the state dir.
func cleanupState(state string) {
	// Whatever a killed sandbox left mounted below the state dir (runsc's
	// null-netns, a sandbox's staged binds of an image, its namespaces)
	// is detached first, deepest first: removing through a bind of an
	// image would delete the image's files.
	mounted := mountsUnder(state)
	for i := len(mounted) - 1; i >= 0; i-- {
		if err := unix.Unmount(mounted[i], unix.MNT_DETACH); err != nil {
			fmt.Fprintf(os.Stderr, "unmount %s: %v\n", mounted[i], err)
		}
	}
	if left := mountsUnder(state); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "not removing %s: still mounted below it: %s\n", state, strings.Join(left, ", "))
		return
	}
	if err := os.RemoveAll(state); err != nil {
		fmt.Fprintf(os.Stderr, "remove state: %v\n", err)
	}
	// runsc removes each sandbox's cgroup, not the parent it made for
	// openshell run's /openshell/<id> or ctr's /<namespace>/<id>, and the
	// runtime removes each gateway's, not openshell-egress/ above them
	// (another gateway may be starting under it): remove them when they
	// are empty.
	var parents []string
	for _, pattern := range []string{"/sys/fs/cgroup/*/openshell", "/sys/fs/cgroup/*/" + ctrNamespace, "/sys/fs/cgroup/*/openshell-egress", "/sys/fs/cgroup/openshell-egress"} {
		found, _ := filepath.Glob(pattern)
		parents = append(parents, found...)
	}
	for _, p := range parents {
		_ = os.Remove(p)
	}
}

// mountsUnder lists the mount points below dir, in the order they were
// mounted.
func mountsUnder(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

// assertNothingLeft checks no sandbox directory and no runsc container state
// remain under the state dir.
func assertNothingLeft(t *testing.T, state string) {
	t.Helper()
	entries, _ := os.ReadDir(state)
	for _, e := range entries {
		if e.Name() == "runtime" {
			continue // openshell-runtime's root: its tests check it themselves
		}
		if e.Name() == "runsc" {
			sub, _ := os.ReadDir(filepath.Join(state, "runsc"))
			for _, s := range sub {
				if s.Name() != "null-netns" {
					t.Errorf("runsc state left behind: %s", s.Name())
				}
			}
			continue
		}
		t.Errorf("sandbox state left behind: %s", e.Name())
	}
}

const permissive = `version: "1.0"
sandbox:
  filesystem:
    allowed_writes: [/tmp]
`

func TestExitCodesPropagate(t *testing.T) {
	for _, tc := range []struct {
		script string
		want   int
	}{{"exit 0", 0}, {"exit 3", 3}, {"kill -9 $$", 137}} {
		if r := sandbox(t, permissive, "/bin/sh", "-c", tc.script); r.code != tc.want {
			t.Errorf("%q: exit %d, want %d\n%s", tc.script, r.code, tc.want, r.stderr)
		}
	}
}

func TestStdoutStderrApart(t *testing.T) {
	r := sandbox(t, permissive, "/bin/sh", "-c", "echo to-out; echo to-err >&2")
	if r.stdout != "to-out\n" || !strings.HasSuffix(r.stderr, "to-err\n") || strings.Contains(r.stderr, "to-out") {
		t.Errorf("stdout %q stderr %q", r.stdout, r.stderr)
	}
}

func TestRunsUnderGVisor(t *testing.T) {
	r := sandbox(t, permissive, "/bin/sh", "-c", "dmesg 2>/dev/null | head -1; cat /proc/version")
	if !strings.Contains(strings.ToLower(r.stdout), "gvisor") {
		t.Errorf("not a gVisor kernel:\n%s", r.stdout)
	}
}

// hostFixture makes a directory on the host with a secret beside a
// workspace the sandbox (uid 65534) may write to.
func hostFixture(t *testing.T) (root, ws, secret string) {
	t.Helper()
	root, err := os.MkdirTemp("/var/tmp", "openshell-it-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	ws = filepath.Join(root, "ws")
	secret = filepath.Join(root, "secret.txt")
	if err := os.Mkdir(ws, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(ws, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secret, []byte("TOPSECRET\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root, ws, secret
}

func wsPolicy(ws string, more string) string {
	return fmt.Sprintf("version: \"1.0\"\nsandbox:\n  filesystem:\n    allowed_writes: [%s, /tmp]\n%s", ws, more)
}

func TestFilesystemView(t *testing.T) {
	_, ws, secret := hostFixture(t)
	script := fmt.Sprintf(`cat %s || echo READ-DENIED
echo persisted > %s/out.txt && echo WRITE-OK
echo no > /etc/openshell-it 2>/dev/null || echo ETC-DENIED
echo no > /usr/openshell-it 2>/dev/null || echo USR-DENIED
ls /root 2>/dev/null || echo ROOT-ABSENT
head -c 5 /etc/shadow | wc -c`, secret, ws)
	r := sandbox(t, wsPolicy(ws, ""), "/bin/sh", "-c", script)
	for _, want := range []string{"READ-DENIED", "WRITE-OK", "ETC-DENIED", "USR-DENIED", "ROOT-ABSENT"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("missing %s in:\n%s\n%s", want, r.stdout, r.stderr)
		}
	}
	if strings.Contains(r.stdout, "TOPSECRET") {
		t.Errorf("read a path the policy does not list:\n%s", r.stdout)
	}
	if !strings.HasSuffix(strings.TrimSpace(r.stdout), "0") {
		t.Errorf("/etc/shadow is not masked:\n%s", r.stdout)
	}
	if data, err := os.ReadFile(filepath.Join(ws, "out.txt")); err != nil || string(data) != "persisted\n" {
		t.Errorf("allowed write did not persist on the host: %q %v", data, err)
	}
}

func TestSymlinkAndDotDotEscapes(t *testing.T) {
	_, ws, secret := hostFixture(t)
	if err := os.Symlink(secret, filepath.Join(ws, "abs-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../secret.txt", filepath.Join(ws, "rel-link")); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("cat %[1]s/abs-link; cat %[1]s/rel-link; cat %[1]s/../secret.txt; echo done", ws)
	r := sandbox(t, wsPolicy(ws, ""), "/bin/sh", "-c", script)
	if strings.Contains(r.stdout, "TOPSECRET") || !strings.Contains(r.stdout, "done") {
		t.Errorf("escaped the view:\n%s\n%s", r.stdout, r.stderr)
	}
}

func TestNoExec(t *testing.T) {
	r := sandbox(t, permissive+"  process: {allow_exec: false}\n", "/bin/sh", "-c", "echo entrypoint-ran; /bin/ls / && echo LS-RAN")
	if !strings.Contains(r.stdout, "entrypoint-ran") || strings.Contains(r.stdout, "LS-RAN") || !strings.Contains(r.stderr, "Operation not permitted") {
		t.Errorf("stdout %q stderr %q", r.stdout, r.stderr)
	}
}

func TestForkBombStopsAtMaxProcesses(t *testing.T) {
	script := `n=0; for i in $(seq 1 40); do sleep 2 & n=$((n+1)); done; echo started $n; wait`
	// Control: at the default limit all 40 start, so the case below fails
	// if RLIMIT_NPROC stops being set.
	if r := sandbox(t, permissive, "/bin/sh", "-c", script); !strings.Contains(r.stdout, "started 40") {
		t.Fatalf("control run: stdout %q stderr %q", r.stdout, r.stderr)
	}
	r := sandbox(t, permissive+"  process: {max_processes: 16}\n", "/bin/sh", "-c", script)
	if strings.Contains(r.stdout, "started 40") || !strings.Contains(r.stderr, "Cannot fork") {
		t.Errorf("40 processes started under max_processes 16:\nstdout %s\nstderr %s", r.stdout, r.stderr)
	}
}

func TestWallClockLimit(t *testing.T) {
	start := time.Now()
	r := sandbox(t, permissive+"  resources: {max_execution_time_seconds: 2}\n", "/bin/sleep", "60")
	if r.code != 137 || time.Since(start) > 20*time.Second || !strings.Contains(r.stderr, "max_execution_time") {
		t.Errorf("exit %d after %s: %s", r.code, time.Since(start), r.stderr)
	}
}

// perl is on the host's /usr, and can make raw syscalls.
func TestSeccompDenials(t *testing.T) {
	if _, err := os.Stat("/usr/bin/perl"); err != nil {
		t.Skip("perl not installed on the host")
	}
	script := `use Socket;
syscall(101, 0, 0, 0, 0) == -1 ? print "ptrace: $!\n" : print "ptrace: allowed\n";
syscall(165, 0, 0, 0, 0, 0) == -1 ? print "mount: $!\n" : print "mount: allowed\n";
socket(my $r, PF_INET, SOCK_RAW, 1) ? print "raw: allowed\n" : print "raw: $!\n";
socket(my $s, PF_INET, SOCK_STREAM, 0) ? print "stream: ok\n" : print "stream: $!\n";
connect($s, pack_sockaddr_in(80, inet_aton("169.254.169.254"))) ? print "metadata: reached\n" : print "metadata: $!\n";`
	r := sandbox(t, permissive, "/usr/bin/perl", "-e", script)
	for _, want := range []string{"ptrace: Operation not permitted", "mount: Operation not permitted", "raw: Operation not permitted", "stream: ok", "metadata: Network is unreachable"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("missing %q in:\n%s%s", want, r.stdout, r.stderr)
		}
	}
}

func TestBadPolicyStartsNothing(t *testing.T) {
	r := sandbox(t, "version: \"1.0\"\nsandbox:\n  filesystem: {allowed_writes: [/]}\n", "/bin/true")
	if r.code != 1 || !strings.Contains(r.stderr, "policy.yaml:3:33: sandbox.filesystem.allowed_writes[0]: / can never be writable") {
		t.Errorf("exit %d: %s", r.code, r.stderr)
	}
}

func TestMissingRunsc(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	pf := writePolicy(t, permissive)
	state := filepath.Join(t.TempDir(), "state")
	out, err := exec.Command(openshellBin, "run", "--runsc", "/nonexistent/runsc", "--state-dir", state, "--policy", pf, "--", "/bin/true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "runsc not found at /nonexistent/runsc") {
		t.Errorf("err %v: %s", err, out)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("state dir created without runsc: %v", err)
	}
}

// processesMentioning lists the pids whose command line contains s.
func processesMentioning(s string) []string {
	var pids []string
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		cmdline, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err == nil && bytes.Contains(cmdline, []byte(s)) {
			pids = append(pids, filepath.Base(d))
		}
	}
	return pids
}

// TestKilledRunLeavesNothing: when openshell run is SIGKILLed, its sandbox
// dies with it (runsc has a parent-death signal, and its sandbox is
// attached), and the next openshell run sweeps the state it left.
func TestKilledRunLeavesNothing(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	pf := writePolicy(t, permissive)
	c := exec.Command(openshellBin, "run", "--runsc", runscBin, "--state-dir", stateDir, "--policy", pf, "--", "/bin/sleep", "60")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	var id string
	deadline := time.Now().Add(15 * time.Second)
	running := func() bool {
		_, err := os.Stat(filepath.Join(stateDir, "runsc", id+"_sandbox:"+id+".state"))
		return err == nil && len(processesMentioning(id)) >= 3 // runsc run, its sandbox and gofer
	}
	for id == "" || !running() {
		if time.Now().After(deadline) {
			c.Process.Kill()
			c.Wait()
			t.Fatalf("sandbox %q did not start", id)
		}
		time.Sleep(100 * time.Millisecond)
		dirs, _ := filepath.Glob(filepath.Join(stateDir, "openshell-*"))
		if len(dirs) == 1 {
			id = filepath.Base(dirs[0])
		}
	}
	if err := c.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	c.Wait()
	deadline = time.Now().Add(10 * time.Second)
	for len(processesMentioning(id)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("sandbox processes outlived openshell run: %v", processesMentioning(id))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(stateDir, id)); err != nil {
		t.Fatalf("expected the killed run's state to remain until swept: %v", err)
	}
	// The next run sweeps it; sandbox() checks nothing is left.
	if r := sandbox(t, permissive, "/bin/true"); r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/*/" + id); len(left) > 0 {
		t.Errorf("cgroups left: %v", left)
	}
}

// TestMemoryLimitEndsSandbox: past max_memory_mb the host's memory cgroup
// kills the whole sandbox; the control completes.
func TestMemoryLimitEndsSandbox(t *testing.T) {
	script := `BEGIN { s = "a"; while (length(s) < 100000000) s = s s; print "survived", length(s) }`
	if r := sandbox(t, permissive+"  resources: {max_memory_mb: 4096}\n", "/usr/bin/awk", script); r.code != 0 || !strings.Contains(r.stdout, "survived 134217728") {
		t.Fatalf("control run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r := sandbox(t, permissive+"  resources: {max_memory_mb: 64}\n", "/usr/bin/awk", script)
	if r.code != 137 || strings.Contains(r.stdout, "survived") {
		t.Errorf("128 MiB under max_memory_mb 64: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestNoNetworkAtAll: with no egress rules there is loopback and nothing
// else: no interface, no route, DNS cannot resolve.
func TestNoNetworkAtAll(t *testing.T) {
	r := sandbox(t, permissive, "/bin/sh", "-c", "cat /proc/net/dev | tail -n +3 | cut -d: -f1; cat /proc/net/route | wc -l; getent hosts deb.debian.org || echo no-dns")
	got := strings.Fields(r.stdout)
	if r.code != 0 || len(got) != 3 || got[0] != "lo" || got[1] != "1" || got[2] != "no-dns" {
		t.Errorf("exit %d: stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestBadConfigStartsNothing(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	pf := writePolicy(t, permissive)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte("root = \"/run/x\"\nrunsc_flags = [\"--network=host\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	out, err := exec.Command(openshellBin, "run", "--config", cfg, "--runsc", runscBin, "--state-dir", state, "--policy", pf, "--", "/bin/true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), cfg+": runsc_flags: --network is set by openshell from the policy and may not be overridden") {
		t.Errorf("err %v: %s", err, out)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("state dir created under a bad config: %v", err)
	}
}

// TestAgentOnDebianRootfs runs a Python agent in a debootstrapped Debian
// (bash, python3, curl) under a policy: its workspace is writable and
// what it writes lands on the host, the rest of the image is read-only,
// what the policy does not list does not exist, and there is no network.
func TestAgentOnDebianRootfs(t *testing.T) {
	root := debianRoot(t)
	ws := filepath.Join(root, "workspace")
	os.RemoveAll(ws)
	if err := os.Mkdir(ws, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(ws, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(ws) })
	agent := `
import os, socket, subprocess, sys, threading
print("python", sys.version_info[0])
# glibc starts threads with clone3, which the sandbox answers ENOSYS so
# that it falls back to clone: threads must still start.
t = threading.Thread(target=lambda: print("thread ran")); t.start(); t.join()
with open("/workspace/out.txt", "w") as f:
    f.write("agent-wrote\n")
for path in ["/root", "/home", "/var/lib"]:
    try:
        os.listdir(path); print(path, "visible")
    except OSError as e:
        print(path, e.strerror)
print("shadow bytes", len(open("/etc/shadow").read()))
r = subprocess.run(["bash", "-c", "echo from-bash; curl -sS -m 3 http://169.254.169.254/ || echo curl-failed"], capture_output=True, text=True)
print(r.stdout.strip().replace("\n", " "))
s = socket.socket(); s.settimeout(3)
try:
    s.connect(("1.1.1.1", 80)); print("net connected")
except OSError as e:
    print("net", e.strerror)
`
	policy := permissive + "  process: {max_processes: 64}\n"
	policy = strings.Replace(policy, "allowed_writes: [/tmp]", "allowed_writes: [/tmp, /workspace]", 1)
	pf := writePolicy(t, policy)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, openshellBin, "run", "--config", "/nonexistent", "--runsc", runscBin, "--state-dir", stateDir,
		"--rootfs", root, "--workdir", "/workspace", "--policy", pf, "--", "/usr/bin/python3", "-c", agent)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil {
		t.Fatalf("agent: %v\n%s%s", err, out.String(), errb.String())
	}
	for _, want := range []string{
		"python 3", "thread ran", "/root No such file or directory", "/home No such file or directory",
		"/var/lib No such file or directory", "shadow bytes 0", "from-bash curl-failed", "net Network is unreachable",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("missing %q in:\n%s%s", want, out.String(), errb.String())
		}
	}
	if data, err := os.ReadFile(filepath.Join(ws, "out.txt")); err != nil || string(data) != "agent-wrote\n" {
		t.Errorf("the agent's write did not land in the workspace: %q %v", data, err)
	}
	assertNothingLeft(t, stateDir)
}
