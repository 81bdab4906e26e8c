package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/test/image"
)

// pauseImage is the pod sandbox image: busybox with test/pause as /pause.
// No registry is needed.
const pauseImage = "registry.k8s.io/pause:openshell-test"

// criNamespace is the containerd namespace of the CRI.
const criNamespace = "k8s.io"

// importCRIImages puts the test and pause images where the CRI looks.
func (c *containerd) importCRIImages(dir string) error {
	tarPath, err := buildTestImage(dir)
	if err != nil {
		return err
	}
	fs := filepath.Join(dir, "image", "rootfs")
	build := exec.Command("go", "build", "-o", filepath.Join(fs, "pause"), "../test/pause")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build pause: %v\n%s", err, out)
	}
	pauseTar := filepath.Join(dir, "image", "pause.tar")
	if err := image.WriteFile(pauseTar, fs, image.Options{Name: pauseImage, Cmd: []string{"/pause"}}); err != nil {
		return err
	}
	for _, tar := range []string{tarPath, pauseTar} {
		out, err := exec.Command(c.ctr, "-a", c.sock, "-n", criNamespace, "images", "import", tar).CombinedOutput()
		if err != nil {
			return fmt.Errorf("import %s for the CRI: %v\n%s", tar, err, out)
		}
	}
	return nil
}

// crictl runs crictl against the tests' containerd.
func (c *containerd) crictl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin, err := engineBin("crictl")
	if err != nil {
		t.Skip(err.Error() + " (make crictl)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--runtime-endpoint", "unix://" + c.sock, "--image-endpoint", "unix://" + c.sock}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("crictl %v: %v: %s", args, err, filterLogs(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

func writeJSON(t *testing.T, dir, name string, v any) string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCRIPod runs a pod through the CRI with the runtime handler
// "openshell": its policy comes from the pod's annotation, its container's
// output reaches the CRI log, and exit codes are kept.
func TestCRIPod(t *testing.T) {
	c := startContainerd(t)
	dir := t.TempDir()
	logDir := filepath.Join(dir, "logs")
	os.MkdirAll(logDir, 0o755)
	// The pod's sandbox container runs /pause from the pause image: a pod
	// policy must let it be seen.
	policy := "version: \"1.0\"\nsandbox:\n  filesystem:\n    allowed_reads: [/pause]\n    allowed_writes: [/tmp]\n  process: {allow_exec: false}\n"
	pod := writeJSON(t, dir, "pod.json", map[string]any{
		"metadata":      map[string]any{"name": "agent", "namespace": "default", "uid": "openshell-it-agent"},
		"annotations":   map[string]string{"io.openshell.policy.inline": policy},
		"log_directory": logDir,
		"linux":         map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}},
	})
	podID, err := c.crictl(t, "runp", "--runtime", "openshell", pod)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := c.crictl(t, "stopp", podID); err != nil {
			t.Error(err)
		}
		if _, err := c.crictl(t, "rmp", "-f", podID); err != nil {
			t.Error(err)
		}
		c.assertClean(t)
	})
	run := func(name string, script string) (string, string) {
		t.Helper()
		cfg := writeJSON(t, dir, name+".json", map[string]any{
			"metadata": map[string]any{"name": name},
			"image":    map[string]any{"image": testImage},
			"command":  []string{"/bin/sh", "-c", script},
			"log_path": name + ".log",
		})
		id, err := c.crictl(t, "create", podID, cfg, pod)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.crictl(t, "start", id); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, _ := c.crictl(t, "inspect", "-o", "go-template", "--template", "{{.status.state}} {{.status.exitCode}}", id)
			if strings.HasPrefix(out, "CONTAINER_EXITED") {
				log, _ := os.ReadFile(filepath.Join(logDir, name+".log"))
				return strings.TrimPrefix(out, "CONTAINER_EXITED "), string(log)
			}
			if time.Now().After(deadline) {
				t.Fatalf("container %s did not exit: %s", name, out)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// Under allow_exec: false only the entrypoint runs: the shell's
	// builtins work, every program it would start is refused.
	code, log := run("agent", "read v < /proc/version; echo $v; echo entrypoint-ran; /bin/id -u && echo ID-RAN; exit 3")
	if code != "3" || !strings.Contains(log, "gvisor") || !strings.Contains(log, "entrypoint-ran") ||
		strings.Contains(log, "ID-RAN") || !strings.Contains(log, "/bin/id: Operation not permitted") {
		t.Errorf("exit %s, log:\n%s", code, log)
	}
	if code, log := run("second", "echo second; exit 0"); code != "0" || !strings.Contains(log, "stdout F second") {
		t.Errorf("second container: exit %s, log:\n%s", code, log)
	}
}

// TestCRIBadPolicy: a pod whose policy does not validate is never created,
// and the error names the policy's line.
func TestCRIBadPolicy(t *testing.T) {
	c := startContainerd(t)
	dir := t.TempDir()
	pod := writeJSON(t, dir, "pod.json", map[string]any{
		"metadata":    map[string]any{"name": "bad", "namespace": "default", "uid": "openshell-it-bad"},
		"annotations": map[string]string{"io.openshell.policy.inline": "version: \"1.0\"\nsandbox:\n  filesystem: {allowed_writes: [/]}\n"},
		"linux":       map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}},
	})
	_, err := c.crictl(t, "runp", "--runtime", "openshell", pod)
	if err == nil || !strings.Contains(err.Error(), "<io.openshell.policy.inline>:3:33: sandbox.filesystem.allowed_writes[0]: / can never be writable") {
		t.Fatalf("runp: %v", err)
	}
	if out, _ := c.crictl(t, "pods", "-q"); out != "" {
		t.Errorf("pods left: %s", out)
	}
	c.assertClean(t)
}
