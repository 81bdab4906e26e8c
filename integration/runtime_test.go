package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-tools/generate"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/test/rootfs"
)

// runtimeRoot is openshell-runtime's --root in these tests.
func runtimeRoot() string { return filepath.Join(stateDir, "runtime") }

// busyboxBundle builds a bundle with a busybox root filesystem, running
// args, with the given annotations.
func busyboxBundle(t *testing.T, annotations map[string]string, args ...string) string {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	bundle := t.TempDir()
	if err := rootfs.Busybox(filepath.Join(bundle, "rootfs")); err != nil {
		t.Fatal(err)
	}
	g, err := generate.New("linux")
	if err != nil {
		t.Fatal(err)
	}
	g.SetRootPath("rootfs")
	g.SetProcessArgs(args)
	g.SetProcessTerminal(false)
	g.SetHostname("busybox")
	for k, v := range annotations {
		g.AddAnnotation(k, v)
	}
	writeBundleSpec(t, bundle, g.Config)
	return bundle
}

func writeBundleSpec(t *testing.T, bundle string, s *specs.Spec) {
	t.Helper()
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func inline(policyYAML string) map[string]string {
	return map[string]string{"io.openshell.policy.inline": policyYAML}
}

// ort runs openshell-runtime as an engine would, with the tests'
// configuration (inline policies allowed): its streams are files (the
// sandbox inherits them), its log is JSON.
func ort(t *testing.T, args ...string) result {
	t.Helper()
	return ortWith(t, runtimeConfig, args...)
}

// ortWith is ort with the runtime configuration file config.
func ortWith(t *testing.T, config string, args ...string) result {
	t.Helper()
	dir := t.TempDir()
	out, err := os.Create(filepath.Join(dir, "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	errf, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	global := []string{"--root", runtimeRoot(), "--config", config, "--log", filepath.Join(dir, "log.json"), "--log-format", "json"}
	c := exec.CommandContext(ctx, runtimeBin, append(global, args...)...)
	c.Stdout, c.Stderr = out, errf
	c.Env = append(os.Environ(), "OPENSHELL_RUNSC="+runscBin)
	runErr := c.Run()
	out.Close()
	errf.Close()
	o, _ := os.ReadFile(out.Name())
	e, _ := os.ReadFile(errf.Name())
	r := result{code: c.ProcessState.ExitCode(), stdout: string(o), stderr: string(e)}
	if runErr != nil && r.code < 0 {
		t.Fatalf("openshell-runtime %v: %v\n%s", args, runErr, e)
	}
	return r
}

func mustOrt(t *testing.T, args ...string) result {
	t.Helper()
	r := ort(t, args...)
	if r.code != 0 {
		t.Fatalf("openshell-runtime %v: exit %d\n%s%s", args, r.code, r.stdout, r.stderr)
	}
	return r
}

func status(t *testing.T, id string) string {
	t.Helper()
	r := ort(t, "state", id)
	if r.code != 0 {
		return "gone"
	}
	var st struct{ Status string }
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("state %s: %v: %s", id, err, r.stdout)
	}
	return st.Status
}

func waitStatus(t *testing.T, id, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := status(t, id)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s is %s after %s, want %s", id, got, within, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// assertRuntimeClean checks openshell-runtime left no state of its own and
// runsc none of its containers.
func assertRuntimeClean(t *testing.T) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(runtimeRoot(), "openshell"))
	for _, e := range ents {
		t.Errorf("runtime state left behind: %s", e.Name())
	}
	ents, _ = os.ReadDir(runtimeRoot())
	for _, e := range ents {
		if e.Name() != "openshell" && e.Name() != "null-netns" {
			t.Errorf("runsc state left behind: %s", e.Name())
		}
	}
}

func TestRuntimeRunForeground(t *testing.T) {
	for _, tc := range []struct {
		script string
		want   int
	}{{"exit 0", 0}, {"exit 3", 3}, {"kill -9 $$", 137}} {
		bundle := busyboxBundle(t, nil, "/bin/sh", "-c", tc.script)
		if r := ort(t, "run", "--bundle", bundle, "fg"); r.code != tc.want {
			t.Errorf("%q: exit %d, want %d\n%s", tc.script, r.code, tc.want, r.stderr)
		}
		assertRuntimeClean(t)
	}
	bundle := busyboxBundle(t, nil, "/bin/sh", "-c", "echo to-out; echo to-err >&2; cat /proc/version; id -u; cat /etc/shadow | wc -c")
	r := ort(t, "run", "--bundle", bundle, "fg")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 4 || lines[0] != "to-out" || !strings.Contains(lines[1], "gvisor") ||
		lines[2] != "65534" || strings.TrimSpace(lines[3]) != "0" || r.stderr != "to-err\n" {
		t.Errorf("exit %d\nstdout %q\nstderr %q", r.code, r.stdout, r.stderr)
	}
	assertRuntimeClean(t)
}

// TestRuntimeLifecycle drives the commands containerd's runc shim uses, in
// its order, and checks exec is confined by the container's policy.
func TestRuntimeLifecycle(t *testing.T) {
	bundle := busyboxBundle(t, nil, "/bin/sleep", "60")
	pidFile := filepath.Join(t.TempDir(), "pid")
	mustOrt(t, "create", "--bundle", bundle, "--pid-file", pidFile, "life")
	t.Cleanup(func() { ort(t, "delete", "--force", "life") })
	if st := status(t, "life"); st != "created" {
		t.Fatalf("after create: %s", st)
	}
	if data, err := os.ReadFile(pidFile); err != nil || len(strings.TrimSpace(string(data))) == 0 {
		t.Fatalf("pid file: %q %v", data, err)
	}
	mustOrt(t, "start", "life")
	waitStatus(t, "life", "running", 5*time.Second)
	if r := mustOrt(t, "ps", "life"); !strings.Contains(r.stdout, "sleep") {
		t.Errorf("ps: %s", r.stdout)
	}
	// containerd's shim reads a JSON list of pids.
	if r := mustOrt(t, "ps", "--format", "json", "life"); strings.TrimSpace(r.stdout) != "[1]" {
		t.Errorf("ps --format json: %s", r.stdout)
	}
	if r := mustOrt(t, "exec", "life", "/bin/sh", "-c", "id -u; grep CapEff /proc/self/status"); !strings.Contains(r.stdout, "65534\n") || !strings.Contains(r.stdout, "0000000000000000") {
		t.Errorf("exec is not confined: %s", r.stdout)
	}
	// An engine's process.json asking for root and capabilities gets the
	// policy's user and none.
	proc := specs.Process{
		Args: []string{"/bin/sh", "-c", "id -u; grep CapEff /proc/self/status"}, Cwd: "/",
		User:         specs.User{UID: 0, GID: 0},
		Capabilities: &specs.LinuxCapabilities{Effective: []string{"CAP_SYS_ADMIN"}, Permitted: []string{"CAP_SYS_ADMIN"}, Bounding: []string{"CAP_SYS_ADMIN"}},
	}
	pf := filepath.Join(t.TempDir(), "process.json")
	data, _ := json.Marshal(proc)
	os.WriteFile(pf, data, 0o600)
	if r := mustOrt(t, "exec", "--process", pf, "life"); !strings.Contains(r.stdout, "65534\n") || !strings.Contains(r.stdout, "0000000000000000") {
		t.Errorf("exec --process as root was not confined: %s", r.stdout)
	}
	if r := ort(t, "exec", "life", "/bin/sh", "-c", "exit 5"); r.code != 5 {
		t.Errorf("exec exit %d, want 5", r.code)
	}
	mustOrt(t, "pause", "life")
	waitStatus(t, "life", "paused", 5*time.Second)
	mustOrt(t, "resume", "life")
	waitStatus(t, "life", "running", 5*time.Second)
	mustOrt(t, "kill", "life", "KILL")
	waitStatus(t, "life", "stopped", 10*time.Second)
	mustOrt(t, "delete", "life")
	if st := status(t, "life"); st != "gone" {
		t.Errorf("after delete: %s", st)
	}
	assertRuntimeClean(t)
}

func TestRuntimeExecRefusedWithoutAllowExec(t *testing.T) {
	bundle := busyboxBundle(t, inline(permissive+"  process: {allow_exec: false}\n"), "/bin/sleep", "60")
	mustOrt(t, "run", "--detach", "--bundle", bundle, "noexec")
	t.Cleanup(func() { ort(t, "delete", "--force", "noexec") })
	r := ort(t, "exec", "noexec", "/bin/true")
	if r.code == 0 || !strings.Contains(r.stderr, "allow_exec: false: exec into the sandbox is refused") {
		t.Errorf("exec: exit %d: %s", r.code, r.stderr)
	}
	mustOrt(t, "delete", "--force", "noexec")
	assertRuntimeClean(t)
}

// TestRuntimeBadPolicyLeavesNothing: a policy that is invalid, missing,
// named twice or chosen where the configuration does not allow it stops
// create before anything is made. The configuration lets annotations name
// files under broken.yaml's directory and carry inline policies; the
// defaults (no configuration) allow neither.
func TestRuntimeBadPolicyLeavesNothing(t *testing.T) {
	broken, err := filepath.Abs("../policyhook/policy/testdata/broken.yaml")
	if err != nil {
		t.Fatal(err)
	}
	allowing := writeConfig(t, fmt.Sprintf("allow_inline_policy = true\npolicy_paths = [%q]\n", filepath.Dir(broken)))
	for name, tc := range map[string]struct {
		config string
		ann    map[string]string
		want   []string // in stderr
		unwant string   // not in stderr
	}{
		// The file's messages are withheld (an annotation chose it), its
		// places are not.
		"invalid file": {allowing, map[string]string{"io.openshell.policy": broken}, []string{
			"annotation io.openshell.policy: policy " + broken + " does not validate (",
			broken + ":5:22", "the messages are withheld",
		}, "can never be writable"},
		"missing name": {allowing, map[string]string{"io.openshell.policy": "no-such-policy"}, nil, ""},
		"invalid YAML": {allowing, inline("version: \"1.0\"\nsandbox: [\n"), nil, ""},
		"both named":   {allowing, map[string]string{"io.openshell.policy": broken, "io.openshell.policy.inline": permissive}, nil, ""},
		"path not in policy_paths": {noConfig, map[string]string{"io.openshell.policy": broken}, []string{
			`refuse policy path "` + broken + `"`,
		}, "can never be writable"},
		"inline not allowed": {noConfig, inline(permissive), []string{
			"inline policies are refused unless the runtime configuration sets allow_inline_policy = true",
		}, ""},
	} {
		t.Run(name, func(t *testing.T) {
			bundle := busyboxBundle(t, tc.ann, "/bin/true")
			before, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
			r := ortWith(t, tc.config, "create", "--bundle", bundle, "bad")
			if r.code == 0 {
				ortWith(t, tc.config, "delete", "--force", "bad")
				t.Fatal("create succeeded")
			}
			for _, want := range tc.want {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("message lacks %q: %s", want, r.stderr)
				}
			}
			if tc.unwant != "" && strings.Contains(r.stderr, tc.unwant) {
				t.Errorf("message has %q: %s", tc.unwant, r.stderr)
			}
			after, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
			if string(before) != string(after) {
				t.Error("bundle changed")
			}
			if st := status(t, "bad"); st != "gone" {
				t.Errorf("runsc knows the container: %s", st)
			}
			assertRuntimeClean(t)
		})
	}
}

func TestRuntimeWallClockDetached(t *testing.T) {
	bundle := busyboxBundle(t, inline(permissive+"  resources: {max_execution_time_seconds: 2}\n"), "/bin/sleep", "60")
	start := time.Now()
	mustOrt(t, "run", "--detach", "--bundle", bundle, "clock")
	t.Cleanup(func() { ort(t, "delete", "--force", "clock") })
	waitStatus(t, "clock", "stopped", 15*time.Second)
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("stopped after %s, before its limit", d)
	}
	mustOrt(t, "delete", "clock")
	assertRuntimeClean(t)
}

// TestRuntimeMemoryLimit: a sandbox past max_memory_mb is killed whole by
// the host's memory cgroup. The control shows the same program completes
// with room to spare.
func TestRuntimeMemoryLimit(t *testing.T) {
	t.Cleanup(func() {
		// runsc removes each sandbox's cgroup but not the parent it made.
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/openshell-it")
		for _, d := range dirs {
			// Busy: another run's sandboxes (a parallel test binary on
			// this host) still live under it; that run removes it.
			if err := os.Remove(d); err != nil && !os.IsNotExist(err) && !errors.Is(err, unix.EBUSY) {
				t.Errorf("remove cgroup %s: %v", d, err)
			}
		}
	})
	script := `awk 'BEGIN { s = sprintf("%200000000s", ""); print "survived", length(s) }'`
	run := func(limitMB int) result {
		bundle := busyboxBundle(t, inline(permissive+"  resources: {max_memory_mb: "+strconv.Itoa(limitMB)+"}\n"), "/bin/sh", "-c", script)
		s := readBundleSpec(t, bundle)
		s.Linux.CgroupsPath = "/openshell-it/mem-" + strconv.Itoa(limitMB)
		writeBundleSpec(t, bundle, s)
		r := ort(t, "run", "--bundle", bundle, "mem")
		assertRuntimeClean(t)
		return r
	}
	if r := run(4096); r.code != 0 || !strings.Contains(r.stdout, "survived 200000000") {
		t.Fatalf("control run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := run(64); r.code == 0 || strings.Contains(r.stdout, "survived") {
		t.Errorf("200 MB under max_memory_mb 64: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

func readBundleSpec(t *testing.T, bundle string) *specs.Spec {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s specs.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

// TestRuntimeSeccompAllowlist: a syscall missing from allowed_syscalls
// fails with EPERM; the control, with it allowed, succeeds.
func TestRuntimeSeccompAllowlist(t *testing.T) {
	var allowed []string
	for _, name := range policy.KnownSyscalls() {
		if !slices.Contains(policy.AlwaysDenied, name) && name != "mkdir" && name != "mkdirat" {
			allowed = append(allowed, name)
		}
	}
	pol := func(extra ...string) string {
		return permissive + "  process:\n    seccomp:\n      default_action: SCMP_ACT_ERRNO\n      allowed_syscalls: [" + strings.Join(append(slices.Clone(allowed), extra...), ", ") + "]\n"
	}
	script := "mkdir /tmp/d && echo made"
	bundle := busyboxBundle(t, inline(pol("mkdir", "mkdirat")), "/bin/sh", "-c", script)
	if r := ort(t, "run", "--bundle", bundle, "sc"); r.code != 0 || !strings.Contains(r.stdout, "made") {
		t.Fatalf("control: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	bundle = busyboxBundle(t, inline(pol()), "/bin/sh", "-c", script)
	r := ort(t, "run", "--bundle", bundle, "sc")
	if r.code == 0 || strings.Contains(r.stdout, "made") || !strings.Contains(r.stderr, "Operation not permitted") {
		t.Errorf("mkdir without mkdir allowed: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	assertRuntimeClean(t)
}

// TestRuntimeNoNetwork: with no egress rules the sandbox has loopback and
// nothing else, even when the engine handed it the host's namespace.
func TestRuntimeNoNetwork(t *testing.T) {
	bundle := busyboxBundle(t, nil, "/bin/sh", "-c", "cat /proc/net/dev; for ip in 169.254.169.254 1.1.1.1 10.0.0.1; do nc -w 3 $ip 80 </dev/null 2>&1; done; echo done")
	s := readBundleSpec(t, bundle)
	s.Linux.Namespaces = slices.DeleteFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.NetworkNamespace })
	s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/proc/1/ns/net"})
	writeBundleSpec(t, bundle, s)
	r := ort(t, "run", "--bundle", bundle, "nonet")
	var ifaces []string
	for _, l := range strings.Split(r.stdout, "\n") {
		if name, _, ok := strings.Cut(strings.TrimSpace(l), ":"); ok && !strings.Contains(name, "|") && !strings.HasPrefix(name, "nc") {
			ifaces = append(ifaces, name)
		}
	}
	if r.code != 0 || !slices.Equal(ifaces, []string{"lo"}) || !strings.Contains(r.stdout, "done") || strings.Count(r.stdout, "Network is unreachable") != 3 {
		t.Errorf("exit %d, interfaces %v\n%s%s", r.code, ifaces, r.stdout, r.stderr)
	}
	assertRuntimeClean(t)
}

func specDevice(path string, major, minor int64) specs.LinuxDevice {
	return specs.LinuxDevice{Path: path, Type: "c", Major: major, Minor: minor}
}
