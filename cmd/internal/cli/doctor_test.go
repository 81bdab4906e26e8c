package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func fakeHost(t *testing.T) (host, string) {
	t.Helper()
	root := t.TempDir()
	h := host{
		procRoot:   filepath.Join(root, "proc"),
		sysRoot:    filepath.Join(root, "sys"),
		devRoot:    filepath.Join(root, "dev"),
		dockerJSON: filepath.Join(root, "daemon.json"),
	}
	for _, d := range []string{"proc/self", "proc/driver/nvidia", "sys/fs/cgroup", "dev"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(h.procRoot, "self/status"), []byte("Name:\tx\nCapEff:\t000001ffffffffff\n"), 0o644)
	runsc := filepath.Join(root, "runsc")
	os.WriteFile(runsc, []byte(`#!/bin/sh
case "$1" in
--version) echo "runsc version fake"; echo "spec: 1.2.1" ;;
nvproxy) printf '535.183.06\n550.54.15\n' ;;
esac
`), 0o755)
	return h, runsc
}

// expectChecks checks each named check's "status detail" starts as given.
func expectChecks(t *testing.T, checks []check, want map[string]string) {
	t.Helper()
	for name, prefix := range want {
		c := find(checks, name)
		if got := c.status + " " + c.detail; !strings.HasPrefix(got, prefix) {
			t.Errorf("%s: %q, want prefix %q", name, got, prefix)
		}
	}
}

func find(checks []check, name string) check {
	for _, c := range checks {
		if c.name == name {
			return c
		}
	}
	return check{}
}

func TestDoctorChecks(t *testing.T) {
	h, runsc := fakeHost(t)
	os.WriteFile(filepath.Join(h.procRoot, "driver/nvidia/version"), []byte("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 2024\n"), 0o644)
	os.WriteFile(filepath.Join(h.sysRoot, "fs/cgroup/cgroup.controllers"), []byte("cpu io pids\n"), 0o644)
	os.WriteFile(h.dockerJSON, []byte(`{"runtimes":{"openshell":{"path":"/usr/local/bin/openshell-runtime"}}}`), 0o644)
	checks := doctorChecks(context.Background(), h, "/nonexistent/config.toml", runsc, false)
	expectChecks(t, checks, map[string]string{
		"runsc":        "ok runsc version fake",
		"gpu":          "ok NVIDIA driver 550.54.15, supported by nvproxy",
		"cgroups":      "warn v2: cpu io pids (no memory controller",
		"docker":       "ok runtimes openshell (path /usr/local/bin/openshell-runtime)",
		"capabilities": "ok CAP_SYS_RESOURCE present",
		"platform":     "ok systrap (no /dev/kvm)",
		"config":       "ok /nonexistent/config.toml absent: defaults",
	})
}

func TestDoctorFailures(t *testing.T) {
	h, runsc := fakeHost(t)
	os.WriteFile(filepath.Join(h.procRoot, "driver/nvidia/version"), []byte("NVRM version: NVIDIA UNIX x86_64 Kernel Module  999.1.2  x\n"), 0o644)
	os.WriteFile(filepath.Join(h.procRoot, "self/status"), []byte("CapEff:\t0000000000000000\n"), 0o644)
	cfg := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(cfg, []byte("platform = \"kvm\"\n"), 0o644)
	checks := doctorChecks(context.Background(), h, cfg, runsc, false)
	expectChecks(t, checks, map[string]string{
		"platform":     "FAIL kvm configured but /dev/kvm is absent",
		"gpu":          "warn NVIDIA driver 999.1.2 is not in runsc's nvproxy list",
		"capabilities": "warn no CAP_SYS_RESOURCE",
		"cgroups":      "warn no memory cgroup found",
	})
	checks = doctorChecks(context.Background(), h, cfg, filepath.Join(t.TempDir(), "none"), false)
	if c := find(checks, "runsc"); c.status != "FAIL" || !strings.Contains(c.detail, "runsc not found") {
		t.Errorf("missing runsc: %+v", c)
	}
}

func TestDoctorBadConfigExitsNonZero(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(cfg, []byte("root = [\n"), 0o644)
	var out, errb bytes.Buffer
	code := Main(context.Background(), []string{"doctor", "--config", cfg}, nil, &out, &errb)
	if code != exitFailed || !strings.Contains(out.String(), "FAIL  config") || !strings.Contains(out.String(), cfg+":") {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errb.String())
	}
}

func TestDockerRuntimeTypeOnOldDockerd(t *testing.T) {
	h, _ := fakeHost(t)
	bin := t.TempDir()
	os.WriteFile(filepath.Join(bin, "dockerd"), []byte("#!/bin/sh\necho 'Docker version 20.10.24+dfsg1, build 297e128'\n"), 0o755)
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	os.WriteFile(h.dockerJSON, []byte(`{"runtimes":{"openshell":{"runtimeType":"io.openshell.v1"}}}`), 0o644)
	c, ok := dockerCheck(h)
	if !ok || c.status != "FAIL" || !strings.Contains(c.detail, `runtime "openshell": dockerd 20.10.24+dfsg1 ignores runtimeType`) {
		t.Fatalf("%+v", c)
	}
}
