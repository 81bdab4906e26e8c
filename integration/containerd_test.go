package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/test/image"
	"github.com/openshell/openshell/test/rootfs"
)

// testImage is the busybox image every engine test runs.
const testImage = "docker.io/library/busybox:openshell-test"

// ctrNamespace keeps the tests' containers, and the runc shim's state for
// them (/run/containerd/runc/<namespace>), apart from anything else.
const ctrNamespace = "openshell-it"

// containerd is one containerd started for the tests, with its own root,
// state and socket, and the binaries under test first on its PATH.
type containerd struct {
	dir  string
	cmd  *exec.Cmd
	sock string
	ctr  string
}

var (
	ctrd    lazyEngine[*containerd]
	engines []func()
)

// stopEngines stops what the tests started, last first.
func stopEngines() {
	for i := len(engines) - 1; i >= 0; i-- {
		engines[i]()
	}
}

// engineBin finds a binary that make installs into bin/ (containerd, ctr):
// $OPENSHELL_BIN, then ../bin.
func engineBin(name string) (string, error) {
	dir := os.Getenv("OPENSHELL_BIN")
	if dir == "" {
		dir, _ = filepath.Abs("../bin")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s not found at %s: run `make containerd`", name, p)
	}
	return p, nil
}

// lazyEngine starts an engine once, for the tests that need it.
type lazyEngine[T any] struct {
	once sync.Once
	v    T
	skip string // why its tests skip: it is not installed
	err  error  // why they fail: it did not start
}

func (l *lazyEngine[T]) get(t *testing.T, start func() (T, string, error)) T {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	l.once.Do(func() { l.v, l.skip, l.err = start() })
	if l.err != nil {
		t.Fatal(l.err)
	}
	if l.skip != "" {
		t.Skip(l.skip)
	}
	return l.v
}

// startContainerd starts the tests' containerd once and imports the test
// image. Tests skip, saying why, when containerd was not built.
func startContainerd(t *testing.T) *containerd {
	t.Helper()
	return ctrd.get(t, func() (*containerd, string, error) {
		bin, err := engineBin("containerd")
		if err != nil {
			return nil, err.Error(), nil
		}
		ctrBin, err := engineBin("ctr")
		if err != nil {
			return nil, err.Error(), nil
		}
		// The runc shim of the same containerd, for the benchmark's
		// baselines: Debian's (1.6) does not speak containerd 2's protocol.
		if runcShim, err := engineBin("containerd-shim-runc-v2"); err == nil {
			if err := os.Symlink(runcShim, filepath.Join(binDir, "containerd-shim-runc-v2")); err != nil && !os.IsExist(err) {
				return nil, "", err
			}
		}
		c, err := newContainerd(bin, ctrBin)
		return c, "", err
	})
}

func newContainerd(bin, ctrBin string) (*containerd, error) {
	dir, err := os.MkdirTemp("", "openshell-it-containerd")
	if err != nil {
		return nil, err
	}
	c := &containerd{dir: dir, sock: filepath.Join(dir, "containerd.sock"), ctr: ctrBin}
	// The CRI is on, with the runtime handler "openshell" as
	// deploy/containerd/openshell.toml has it, and openshell's
	// configuration as its options: the CRI tests give pods their policy
	// inline. Pods use the node's network, so no CNI is needed, and the
	// pause image is the tests' own.
	config := containerdConfig(dir, c.sock) + fmt.Sprintf(`[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = %q
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.openshell]
    runtime_type = "io.openshell.v1"
    pod_annotations = ["io.openshell.*"]
    container_annotations = ["io.openshell.*"]
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.openshell.options]
      ConfigPath = %q
`, pauseImage, filepath.Join(dir, "openshell.toml"))
	for name, data := range map[string]string{
		"config.toml":    config,
		"openshell.toml": "allow_inline_policy = true\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			return nil, err
		}
	}
	c.cmd = exec.Command(bin, "--config", filepath.Join(dir, "config.toml"))
	c.cmd.Env = append(os.Environ(), "PATH="+binDir+":"+os.Getenv("PATH"))
	if err := startDaemon(c.cmd, dir, c.stop, 30*time.Second, func() (string, error) { return c.run("version") }); err != nil {
		return nil, err
	}
	if err := loadTestImage(dir, func(tar string) (string, error) { return c.run("images", "import", tar) }); err != nil {
		return nil, err
	}
	if err := c.importCRIImages(dir); err != nil {
		return nil, err
	}
	return c, nil
}

// containerdConfig is the head of a test containerd's config: its own
// root, state and sockets under dir, NRI off, the CRI on a socket only.
func containerdConfig(dir, sock string) string {
	return fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc")
}

// startDaemon starts an engine the tests need, logging to dir, registers
// stop with the engines TestMain ends, and waits until ready succeeds.
func startDaemon(cmd *exec.Cmd, dir string, stop func(), within time.Duration, ready func() (string, error)) error {
	logPath := filepath.Join(dir, filepath.Base(cmd.Path)+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	engines = append(engines, stop)
	deadline := time.Now().Add(within)
	for {
		out, err := ready()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("%s did not come up: %v\n%s\n%s", cmd.Path, err, out, log)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// loadTestImage builds the busybox test image below dir and hands its tar
// to the engine's import.
func loadTestImage(dir string, load func(tar string) (string, error)) error {
	tarPath, err := buildTestImage(dir)
	if err != nil {
		return err
	}
	if out, err := load(tarPath); err != nil {
		return fmt.Errorf("load test image: %v\n%s", err, out)
	}
	return nil
}

// stop ends containerd (the shims it started end with their containers),
// and removes its directories and the runc shim's state for our namespace.
func (c *containerd) stop() {
	stopProcess(c.cmd, 20*time.Second)
	for _, ns := range []string{ctrNamespace, criNamespace} {
		runcRoot := filepath.Join("/run/containerd/runc", ns)
		if _, err := os.Stat(filepath.Join(runcRoot, "null-netns")); err == nil {
			_ = unix.Unmount(filepath.Join(runcRoot, "null-netns"), unix.MNT_DETACH)
			_ = os.Remove(filepath.Join(runcRoot, "null-netns"))
		}
		// Only what openshell made; the directory goes only when empty.
		_ = os.RemoveAll(filepath.Join(runcRoot, "openshell"))
		_ = os.Remove(runcRoot)
	}
	unmountBelow(c.dir)
	_ = os.RemoveAll(c.dir)
}

// buildTestImage writes the busybox test image tar below dir.
func buildTestImage(dir string) (string, error) {
	fs := filepath.Join(dir, "image", "rootfs")
	if err := rootfs.Busybox(fs); err != nil {
		return "", err
	}
	tarPath := filepath.Join(dir, "image", "busybox.tar")
	if err := image.WriteFile(tarPath, fs, image.Options{Name: testImage, Cmd: []string{"/bin/sh"}}); err != nil {
		return "", err
	}
	return tarPath, nil
}

// stopProcess ends a daemon the tests started: SIGTERM, then SIGKILL
// after grace.
func stopProcess(cmd *exec.Cmd, grace time.Duration) {
	if cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
}

// unmountBelow lazily unmounts whatever is still mounted below dir (a
// snapshot of a container that failed midway), deepest first.
func unmountBelow(dir string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var below []string
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			below = append(below, f[4])
		}
	}
	for i := len(below) - 1; i >= 0; i-- {
		_ = unix.Unmount(below[i], unix.MNT_DETACH)
	}
}

func (c *containerd) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.ctr, append([]string{"-a", c.sock, "-n", ctrNamespace}, args...)...).CombinedOutput()
	return string(out), err
}

// ctr runs ctr and keeps stdout and stderr apart, dropping ctr's own
// log lines (cgroup v1 deprecation warnings) from stderr.
func (c *containerd) ctrRun(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.ctr, append([]string{"-a", c.sock, "-n", ctrNamespace}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{code: cmd.ProcessState.ExitCode(), stdout: out.String()}
	for _, l := range strings.SplitAfter(errb.String(), "\n") {
		if !strings.HasPrefix(l, "time=") {
			r.stderr += l
		}
	}
	if err != nil && r.code < 0 {
		t.Fatalf("ctr %v: %v\n%s", args, err, errb.String())
	}
	return r
}

// runOpenshell is ctr run --rm through io.openshell.v1, with the
// runtime's default configuration.
func (c *containerd) runOpenshell(t *testing.T, id string, annotations []string, cmd ...string) result {
	t.Helper()
	return c.runOpenshellWith(t, "", id, annotations, cmd...)
}

// runOpenshellWith is runOpenshell with the runtime configuration file
// config, given as the runtime's options (ctr --runtime-config-path), as
// the CRI gives its ConfigPath; "" gives none.
func (c *containerd) runOpenshellWith(t *testing.T, config, id string, annotations []string, cmd ...string) result {
	t.Helper()
	args := []string{"run", "--rm", "--runtime", "io.openshell.v1"}
	if config != "" {
		args = append(args, "--runtime-config-path", config)
	}
	for _, a := range annotations {
		args = append(args, "--annotation", a)
	}
	args = append(append(args, testImage, id), cmd...)
	return c.ctrRun(t, args...)
}

// shims lists the pids of our shim.
func shims() []string {
	return processesMentioning("containerd-shim-openshell-v1")
}

// assertCtrClean checks no container, task, shim, runtime state or mount
// of the tests' namespace is left.
func (c *containerd) assertClean(t *testing.T) {
	t.Helper()
	if out, _ := c.run("containers", "list", "-q"); strings.TrimSpace(filterLogs(out)) != "" {
		t.Errorf("containers left: %s", out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(shims()) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if s := shims(); len(s) > 0 {
		t.Errorf("shims left: %v", s)
	}
	for _, ns := range []string{ctrNamespace, criNamespace} {
		ents, _ := os.ReadDir(filepath.Join("/run/containerd/runc", ns, "openshell"))
		for _, e := range ents {
			t.Errorf("runtime state left in %s: %s", ns, e.Name())
		}
	}
	data, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.Contains(f[4], "/openshell/") && strings.Contains(f[4], "/run/containerd/") {
			t.Errorf("mount left: %s", f[4])
		}
	}
}

func filterLogs(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "time=") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestCtrRun(t *testing.T) {
	c := startContainerd(t)
	for _, tc := range []struct {
		script string
		want   int
	}{{"exit 0", 0}, {"exit 3", 3}, {"kill -9 $$", 137}, {"true", 0}} {
		if r := c.runOpenshell(t, "exit", nil, "/bin/sh", "-c", tc.script); r.code != tc.want {
			t.Errorf("%q: exit %d, want %d\n%s", tc.script, r.code, tc.want, r.stderr)
		}
	}
	r := c.runOpenshell(t, "io", nil, "/bin/sh", "-c", "echo to-out; echo to-err >&2; cat /proc/version; id -u; wc -c < /etc/shadow; touch /etc/x 2>&1; touch /tmp/x && echo tmp-ok")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 6 || lines[0] != "to-out" || !strings.Contains(lines[1], "gvisor") || lines[2] != "65534" ||
		strings.TrimSpace(lines[3]) != "0" || !strings.Contains(lines[4], "touch: /etc/x:") || lines[5] != "tmp-ok" || r.stderr != "to-err\n" {
		t.Errorf("exit %d\nstdout %q\nstderr %q", r.code, r.stdout, r.stderr)
	}
	c.assertClean(t)
}

// TestCtrPolicyAnnotation: a policy file named by absolute path in the
// annotation, in a directory the configuration's policy_paths lists,
// reaches the sandbox through the shim.
func TestCtrPolicyAnnotation(t *testing.T) {
	c := startContainerd(t)
	pf := writePolicy(t, permissive+"  process: {allow_exec: false, max_processes: 16}\n")
	cfg := writeConfig(t, fmt.Sprintf("policy_paths = [%q]\n", filepath.Dir(pf)))
	r := c.runOpenshellWith(t, cfg, "annot", []string{"io.openshell.policy=" + pf}, "/bin/sh", "-c", "echo entrypoint-ran; /bin/ls / && echo LS-RAN")
	if !strings.Contains(r.stdout, "entrypoint-ran") || strings.Contains(r.stdout, "LS-RAN") || !strings.Contains(r.stderr, "Operation not permitted") {
		t.Errorf("allow_exec false through the shim: stdout %q stderr %q", r.stdout, r.stderr)
	}
	c.assertClean(t)
}

// TestCtrBadPolicyLeavesNothing: an annotation-chosen policy file that
// does not validate is refused through the shim, naming its places but
// not its messages, and nothing is left.
func TestCtrBadPolicyLeavesNothing(t *testing.T) {
	c := startContainerd(t)
	broken, _ := filepath.Abs("../policyhook/policy/testdata/broken.yaml")
	cfg := writeConfig(t, fmt.Sprintf("policy_paths = [%q]\n", filepath.Dir(broken)))
	r := c.runOpenshellWith(t, cfg, "bad", []string{"io.openshell.policy=" + broken}, "/bin/true")
	if r.code == 0 || !strings.Contains(r.stderr, "policy "+broken+" does not validate (") || !strings.Contains(r.stderr, broken+":5:22") ||
		!strings.Contains(r.stderr, "the messages are withheld") || strings.Contains(r.stderr, "can never be writable") {
		t.Errorf("exit %d: %s", r.code, r.stderr)
	}
	c.assertClean(t)
}

func TestCtrExecKillDelete(t *testing.T) {
	c := startContainerd(t)
	if r := c.ctrRun(t, "run", "-d", "--runtime", "io.openshell.v1", testImage, "long", "/bin/sleep", "60"); r.code != 0 {
		t.Fatalf("run -d: %d %s", r.code, r.stderr)
	}
	t.Cleanup(func() {
		c.run("task", "kill", "-s", "KILL", "long")
		c.run("task", "delete", "-f", "long")
		c.run("containers", "delete", "long")
	})
	r := c.ctrRun(t, "task", "exec", "--exec-id", "e1", "long", "/bin/sh", "-c", "id -u; grep CapEff /proc/self/status")
	if r.code != 0 || !strings.Contains(r.stdout, "65534\n") || !strings.Contains(r.stdout, "0000000000000000") {
		t.Errorf("exec not confined: %d %q %q", r.code, r.stdout, r.stderr)
	}
	// Quick execs end while openshell-runtime is still returning: their
	// status must still reach the shim.
	for i := range 10 {
		if r := c.ctrRun(t, "task", "exec", "--exec-id", fmt.Sprintf("quick%d", i), "long", "/bin/sh", "-c", "exit 4"); r.code != 4 {
			t.Errorf("exec %d: exit %d, want 4: %s", i, r.code, r.stderr)
		}
	}
	// Engines end an exec by signalling the pid they were given (a
	// timed-out ExecSync or probe: SIGKILL). The process in the sandbox
	// must end with it, or its streams stay open and the engine hangs.
	for _, tc := range []struct {
		id, sig string
		cmd     []string
	}{
		{"e3", "TERM", []string{"/bin/sleep", "1000"}},
		{"e4", "KILL", []string{"/bin/sh", "-c", `trap "" TERM; exec sleep 1001`}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		bg := exec.CommandContext(ctx, c.ctr, append([]string{"-a", c.sock, "-n", ctrNamespace, "task", "exec", "--exec-id", tc.id, "long"}, tc.cmd...)...)
		if err := bg.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		waited := make(chan error, 1)
		go func() { waited <- bg.Wait() }()
		time.Sleep(1500 * time.Millisecond)
		start := time.Now()
		if r := c.ctrRun(t, "task", "kill", "--exec-id", tc.id, "-s", tc.sig, "long"); r.code != 0 {
			t.Errorf("kill exec %s: %s", tc.id, r.stderr)
		}
		select {
		case <-waited:
			t.Logf("exec ended %s after SIG%s", time.Since(start).Round(time.Millisecond), tc.sig)
			// The exec's status is the signal's, as a shell reports it:
			// a SIGTERM'd exec is 143, not a generic kill.
			want := map[string]int{"TERM": 143, "KILL": 137}[tc.sig]
			if code := bg.ProcessState.ExitCode(); code != want {
				t.Errorf("exec %s after SIG%s: exit %d, want %d", tc.id, tc.sig, code, want)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("exec %s still running 20s after SIG%s", tc.id, tc.sig)
		}
		cancel()
	}
	if r := c.ctrRun(t, "task", "exec", "--exec-id", "e5", "long", "/bin/ps"); r.code != 0 || strings.Contains(r.stdout, "sleep 100") {
		t.Errorf("killed execs still run in the sandbox: %d %q %q", r.code, r.stdout, r.stderr)
	}
	// Stats come from the sandbox's cgroup; pause and resume freeze it.
	if r := c.ctrRun(t, "task", "metrics", "long"); r.code != 0 || !strings.Contains(r.stdout, "memory.usage_in_bytes") {
		t.Errorf("metrics: %d %q %q", r.code, r.stdout, r.stderr)
	}
	for _, step := range []struct{ cmd, want string }{{"pause", "PAUSED"}, {"resume", "RUNNING"}} {
		if r := c.ctrRun(t, "task", step.cmd, "long"); r.code != 0 {
			t.Fatalf("%s: %s", step.cmd, r.stderr)
		}
		if out, _ := c.run("task", "list"); !strings.Contains(out, step.want) {
			t.Errorf("after %s: %s", step.cmd, out)
		}
	}
	if r := c.ctrRun(t, "task", "kill", "-s", "KILL", "long"); r.code != 0 {
		t.Fatalf("kill: %s", r.stderr)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, _ := c.run("task", "list")
		if strings.Contains(out, "STOPPED") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("task not stopped: %s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r := c.ctrRun(t, "task", "delete", "long"); r.code != 0 || strings.TrimSpace(r.stdout) != "" && !strings.Contains(r.stdout, "137") {
		t.Errorf("task delete: %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := c.ctrRun(t, "containers", "delete", "long"); r.code != 0 {
		t.Errorf("container delete: %s", r.stderr)
	}
	c.assertClean(t)
}

// TestCtrCycles runs many sandboxes one after another and checks nothing
// leaks: shims, runtime state, mounts. OPENSHELL_CYCLES sets how many.
func TestCtrCycles(t *testing.T) {
	c := startContainerd(t)
	n := 100
	if v, err := strconv.Atoi(os.Getenv("OPENSHELL_CYCLES")); err == nil && v > 0 {
		n = v
	}
	mountsBefore := countMounts()
	start := time.Now()
	for i := 0; i < n; i++ {
		if r := c.runOpenshell(t, "cycle", nil, "/bin/true"); r.code != 0 {
			t.Fatalf("cycle %d: exit %d: %s", i, r.code, r.stderr)
		}
	}
	t.Logf("%d ctr run --rm cycles in %s", n, time.Since(start).Round(time.Millisecond))
	c.assertClean(t)
	if after := countMounts(); after > mountsBefore {
		t.Errorf("mounts grew from %d to %d over %d cycles", mountsBefore, after, n)
	}
}

func countMounts() int {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	return strings.Count(string(data), "\n")
}
