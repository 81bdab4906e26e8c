package hostspec

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/nvproxy"
	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/test/spectest"
)

// fakeDriver is a driver root as nvcdi sees one on a DGX A100 with
// driver 550.54.15 (go-nvml's mock): the libraries it looks for by
// version, and the device nodes.
func fakeDriver(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("making device nodes needs root")
	}
	root := t.TempDir()
	lib := filepath.Join(root, "usr/lib/x86_64-linux-gnu")
	if err := os.MkdirAll(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"libcuda.so.550.54.15", "libnvidia-ml.so.550.54.15", "libnvidia-ptxjitcompiler.so.550.54.15"} {
		if err := os.WriteFile(filepath.Join(lib, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dev := filepath.Join(root, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	nodes := map[string][2]uint32{"nvidiactl": {195, 255}, "nvidia-uvm": {510, 0}, "nvidia-uvm-tools": {510, 1}}
	for i := range 8 {
		nodes[fmt.Sprintf("nvidia%d", i)] = [2]uint32{195, uint32(i)}
	}
	for name, mm := range nodes {
		if err := unix.Mknod(filepath.Join(dev, name), unix.S_IFCHR|0o666, int(unix.Mkdev(mm[0], mm[1]))); err != nil {
			t.Skipf("mknod: %v", err)
		}
	}
	return root
}

// mockNVML is go-nvml's DGX A100, completed where this toolkit asks
// more of it than the mock answers.
func mockNVML() nvml.Interface {
	srv := dgxa100.New()
	for _, d := range srv.Devices {
		d.(*server.Device).GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 0, nvml.SUCCESS }
	}
	return srv
}

func TestGenerator(t *testing.T) {
	root := fakeDriver(t)
	raw, err := Generator(Options{DriverRoot: root, NVML: mockNVML()})()
	if err != nil {
		t.Fatal(err)
	}
	if raw.Kind != nvproxy.CDIKind || len(raw.Devices) != 8 {
		t.Fatalf("kind %s, %d devices", raw.Kind, len(raw.Devices))
	}
	for _, h := range raw.ContainerEdits.Hooks {
		if slices.Contains(h.Args, "disable-device-node-modification") {
			t.Errorf("generated with the hook nvproxy cannot run: %v", h.Args)
		}
	}

	// The generated spec through Expose: GPU 3 of 8, with the driver's
	// files, and nothing nvproxy does not serve.
	s := spectest.Base(t)
	g := &policy.GPU{Devices: []string{"3"}, Capabilities: []string{"compute", "utility"}, Field: "sandbox.gpu"}
	c := &nvproxy.CDI{SpecDirs: []string{t.TempDir()}, Generate: Generator(Options{DriverRoot: root, NVML: mockNVML()})}
	if err := nvproxy.NewExpose(nvproxy.Options{GPU: g, Discoverer: nvproxy.HostDevices{CDI: c}}).Modify(s); err != nil {
		t.Fatal(err)
	}
	var devs, mounts []string
	for _, d := range s.Linux.Devices {
		devs = append(devs, d.Path)
	}
	for _, m := range s.Mounts {
		mounts = append(mounts, m.Destination)
	}
	slices.Sort(devs)
	if got := strings.Join(devs, " "); got != "/dev/nvidia-uvm /dev/nvidia3 /dev/nvidiactl" {
		t.Errorf("devices %s", got)
	}
	if !slices.Contains(mounts, "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15") {
		t.Errorf("mounts %v lack libcuda", mounts)
	}
	if s.Annotations[nvproxy.AnnotationDevicesFrom] != "a CDI spec generated from the host driver" {
		t.Errorf("from %q", s.Annotations[nvproxy.AnnotationDevicesFrom])
	}
}

// Without a driver, generation fails with nvcdi's reason: what
// openshell reports when a host has neither CDI specs nor NVML.
func TestGeneratorNoDriver(t *testing.T) {
	if _, err := Generator(Options{DriverRoot: t.TempDir()})(); err == nil {
		t.Fatal("a spec from a root with no driver")
	}
}
