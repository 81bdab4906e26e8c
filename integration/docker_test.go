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
)

// dockerd is Debian's dockerd (20.10), started by the tests with its own
// data root, exec root and socket, no bridge and no iptables.
type dockerd struct {
	dir, sock, cli string
	cmd            *exec.Cmd
}

var docker, dockerNew lazyEngine[*dockerd]

func startDockerd(t *testing.T) *dockerd {
	t.Helper()
	return docker.get(t, func() (*dockerd, string, error) {
		if _, err := os.Stat("/usr/sbin/dockerd"); err != nil {
			return nil, "dockerd not installed (make deps installs Debian's docker.io)", nil
		}
		d, err := newDockerd("/usr/sbin/dockerd", nil)
		return d, "", err
	})
}

// startNewDockerd starts moby's current dockerd (make dockerd), which runs
// runtimes by runtimeType through its own containerd (ours, from bin/).
func startNewDockerd(t *testing.T) *dockerd {
	t.Helper()
	return dockerNew.get(t, func() (*dockerd, string, error) {
		bin, err := engineBin("dockerd")
		if err != nil {
			return nil, err.Error() + " (make dockerd)", nil
		}
		ctrd, err := engineBin("containerd")
		if err != nil {
			return nil, err.Error(), nil
		}
		// Debian's docker CLI speaks API 1.41, below this dockerd's
		// default minimum.
		d, err := newDockerd(bin, []string{"DOCKER_MIN_API_VERSION=1.41", "PATH=" + binDir + ":" + filepath.Dir(ctrd) + ":" + os.Getenv("PATH")})
		return d, "", err
	})
}

// daemonJSON has both runtime forms: "openshell" with a path (what
// dockerd 20.10 understands) and "openshell-rt" with runtimeType (what
// dockerd >= 23 understands, and 20.10 silently ignores).
func daemonJSON() string {
	return fmt.Sprintf(`{
  "runtimes": {
    "openshell": {"path": %q},
    "openshell-rt": {"runtimeType": "io.openshell.v1"}
  },
  "bridge": "none",
  "iptables": false,
  "ip6tables": false,
  "exec-opts": ["native.cgroupdriver=cgroupfs"]
}
`, runtimeBin)
}

func newDockerd(bin string, env []string) (*dockerd, error) {
	dir, err := os.MkdirTemp("", "openshell-it-docker")
	if err != nil {
		return nil, err
	}
	d := &dockerd{dir: dir, sock: filepath.Join(dir, "docker.sock"), cli: "/usr/bin/docker"}
	if _, err := os.Stat(d.cli); err != nil {
		d.cli = "docker"
	}
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), []byte(daemonJSON()), 0o600); err != nil {
		return nil, err
	}
	// dockerd offers --gpus only when NVIDIA's hook is on its PATH; a
	// stand-in lets the tests send what --gpus sends on a GPU host.
	hookDir := filepath.Join(dir, "nvidia")
	if err := os.MkdirAll(hookDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(hookDir, "nvidia-container-runtime-hook"), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		return nil, err
	}
	d.cmd = exec.Command(bin, "--config-file", filepath.Join(dir, "daemon.json"),
		"--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"), "-H", "unix://"+d.sock)
	d.cmd.Env = append(append(os.Environ(), env...), "PATH="+hookDir+":"+envPath(env))
	if err := startDaemon(d.cmd, dir, d.stop, 60*time.Second, func() (string, error) { return d.docker("version") }); err != nil {
		return nil, err
	}
	if err := loadTestImage(dir, func(tar string) (string, error) { return d.docker("load", "-i", tar) }); err != nil {
		return nil, err
	}
	return d, nil
}

// envPath is PATH as env sets it, else ours.
func envPath(env []string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if p, ok := strings.CutPrefix(env[i], "PATH="); ok {
			return p
		}
	}
	return os.Getenv("PATH")
}

func (d *dockerd) stop() {
	stopProcess(d.cmd, 30*time.Second)
	unmountBelow(d.dir)
	_ = os.RemoveAll(d.dir)
}

func (d *dockerd) docker(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, d.cli, append([]string{"-H", "unix://" + d.sock}, args...)...).CombinedOutput()
	return string(out), err
}

func (d *dockerd) run(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.cli, append([]string{"-H", "unix://" + d.sock, "run", "--rm", "--network=none"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{code: cmd.ProcessState.ExitCode(), stdout: out.String(), stderr: errb.String()}
	if err != nil && r.code < 0 {
		t.Fatalf("docker run %v: %v\n%s", args, err, errb.String())
	}
	return r
}

func TestDockerPathRuntime(t *testing.T) {
	startDockerd(t).checkGVisor(t, "openshell")
}

// checkGVisor runs containers under runtime: exit codes, stdout and stderr
// apart, the gVisor kernel and the policy's user; and, as a control, the
// same image under Docker's default runtime (runc), so a silent fallback
// to runc would be caught.
func (d *dockerd) checkGVisor(t *testing.T, runtime string) {
	t.Helper()
	for _, tc := range []struct {
		script string
		want   int
	}{{"exit 0", 0}, {"exit 3", 3}, {"kill -9 $$", 137}} {
		if r := d.run(t, "--runtime="+runtime, testImage, "/bin/sh", "-c", tc.script); r.code != tc.want {
			t.Errorf("%q: exit %d, want %d\n%s", tc.script, r.code, tc.want, r.stderr)
		}
	}
	r := d.run(t, "--runtime="+runtime, testImage, "/bin/sh", "-c", "echo to-out; echo to-err >&2; cat /proc/version; id -u")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 3 || lines[0] != "to-out" || !strings.Contains(lines[1], "gvisor") || lines[2] != "65534" || r.stderr != "to-err\n" {
		t.Errorf("exit %d\nstdout %q\nstderr %q", r.code, r.stdout, r.stderr)
	}
	if r := d.run(t, testImage, "cat", "/proc/version"); strings.Contains(r.stdout, "gvisor") {
		t.Errorf("the default runtime ran gVisor too: %s", r.stdout)
	}
}

// TestDockerGPUsRefused: docker run --gpus under a policy without a gpu
// section is refused at create, naming what asked, and nothing runs.
func TestDockerGPUsRefused(t *testing.T) {
	d := startDockerd(t)
	r := d.run(t, "--runtime=openshell", "--gpus", "all", testImage, "/bin/true")
	if r.code == 0 || !strings.Contains(r.stderr, "asks for NVIDIA GPUs (hook ") || !strings.Contains(r.stderr, "nvidia-container-runtime-hook") || !strings.Contains(r.stderr, "has no gpu section") {
		t.Errorf("docker run --gpus all: exit %d\n%s", r.code, r.stderr)
	}
	// The control: the same run without --gpus starts.
	if r := d.run(t, "--runtime=openshell", testImage, "/bin/true"); r.code != 0 {
		t.Errorf("without --gpus: exit %d\n%s", r.code, r.stderr)
	}
}

// TestDockerRuntimeType: dockerd >= 23 runs the runtimeType form
// (daemon.json "runtimeType": "io.openshell.v1") through containerd and
// our shim, under gVisor, with exit codes and stdio intact.
func TestDockerRuntimeType(t *testing.T) {
	d := startNewDockerd(t)
	v, err := d.docker("version", "--format", "{{.Server.Version}}")
	if err != nil {
		t.Fatalf("version: %v %s", err, v)
	}
	d.checkGVisor(t, "openshell-rt")
	t.Logf("dockerd %s", strings.TrimSpace(v))
}

// TestDockerRuntimeTypeIgnoredBy2010 shows what openshell doctor warns
// about: dockerd 20.10 ignores runtimeType and runs the container under
// runc, not openshell.
func TestDockerRuntimeTypeIgnoredBy2010(t *testing.T) {
	d := startDockerd(t)
	if v, _ := d.docker("version", "--format", "{{.Server.Version}}"); !strings.HasPrefix(strings.TrimSpace(v), "20.") {
		t.Skipf("dockerd %s honours runtimeType", strings.TrimSpace(v))
	}
	r := d.run(t, "--runtime=openshell-rt", testImage, "cat", "/proc/version")
	if r.code != 0 || strings.Contains(r.stdout, "gvisor") {
		t.Fatalf("runtimeType on 20.10: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	cmd := exec.Command(openshellBin, "doctor", "--config", "/nonexistent", "--docker-config", filepath.Join(d.dir, "daemon.json"))
	cmd.Env = append(os.Environ(), "PATH=/usr/sbin:"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "ignores runtimeType and would run containers under runc") {
		t.Errorf("openshell doctor did not flag it: %v\n%s", err, out)
	}
}
