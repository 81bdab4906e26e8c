package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/runtime-tools/generate"
)

const gpuPolicy = `version: "1.0"
name: gpu-it
sandbox:
  filesystem:
    allowed_writes: [/tmp]
  gpu:
    enabled: true
    devices: [all]
`

// runWithConfig is openshell run with a runtime configuration given as
// its contents.
func runWithConfig(t *testing.T, configTOML, policyYAML string, cmd ...string) result {
	t.Helper()
	return sandboxWithConfig(t, writeConfig(t, configTOML), policyYAML, cmd...)
}

// TestGPUPolicyBootsWithoutGPU: on a host with no GPU (CI), a GPU policy
// boots a sandbox with nvproxy on at its newest driver ABI and no device.
func TestGPUPolicyBootsWithoutGPU(t *testing.T) {
	logs := t.TempDir()
	cfg := fmt.Sprintf("runsc_flags = [\"--debug\", \"--debug-log=%s/\"]\n[gpu]\ndriver_version = \"latest\"\n", logs)
	r := runWithConfig(t, cfg, gpuPolicy, "/bin/sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES $NVIDIA_DRIVER_CAPABILITIES; cat /proc/version")
	if r.code != 0 || !strings.Contains(r.stdout, "all compute,utility") || !strings.Contains(strings.ToLower(r.stdout), "gvisor") {
		t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// runsc's boot log records its configuration: nvproxy was on.
	boot, _ := filepath.Glob(filepath.Join(logs, "*boot*"))
	var found bool
	for _, f := range boot {
		data, _ := os.ReadFile(f)
		found = found || (bytes.Contains(data, []byte("(--nvproxy): true")) && bytes.Contains(data, []byte("(--nvproxy-driver-version): latest")))
	}
	if !found {
		t.Errorf("no runsc boot log (%v) shows nvproxy on at driver version latest", boot)
	}
}

// TestGPUUnsupportedDriverRefused: a driver this runsc's nvproxy does not
// support stops the sandbox before anything starts, naming the supported
// versions.
func TestGPUUnsupportedDriverRefused(t *testing.T) {
	r := runWithConfig(t, "[gpu]\ndriver_version = \"999.1.1\"\n", gpuPolicy, "/bin/true")
	if r.code == 0 || !strings.Contains(r.stderr, "NVIDIA driver 999.1.1 is not supported by this runsc's nvproxy; supported: 535.") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, "gvisor") {
		t.Errorf("something started: %s", r.stderr)
	}
}

// TestGPURequestWithoutGPUPolicyRefused: a container that asks for GPUs
// (here the device node the Kubernetes device plugin adds) under a policy
// without a gpu section is refused at create, and nothing is left.
func TestGPURequestWithoutGPUPolicyRefused(t *testing.T) {
	bundle := busyboxBundle(t, inline(permissive), "/bin/true")
	g, err := generate.NewFromFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	g.AddDevice(specDevice("/dev/nvidiactl", 195, 255))
	writeBundleSpec(t, bundle, g.Config)
	r := ort(t, "create", "--bundle", bundle, "gpu-refused")
	if r.code == 0 || !strings.Contains(r.stderr, "asks for NVIDIA GPUs (device /dev/nvidiactl), but policy") {
		t.Fatalf("create: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	assertRuntimeClean(t)
}
