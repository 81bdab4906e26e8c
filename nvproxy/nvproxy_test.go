package nvproxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/test/golden"
	"github.com/openshell/openshell/test/spectest"
)

func dev(path string, major, minor int64) specs.LinuxDevice {
	return specs.LinuxDevice{Path: path, Type: "c", Major: major, Minor: minor}
}

// engineGPUSpec is what an engine sends for `--gpus all`: every NVIDIA
// node, the legacy hook, and the toolkit's variables.
func engineGPUSpec(t testing.TB) *specs.Spec {
	s := spectest.Base(t)
	s.Linux.Devices = append(s.Linux.Devices,
		dev("/dev/nvidiactl", 195, 255), dev("/dev/nvidia-uvm", 510, 0), dev("/dev/nvidia-uvm-tools", 510, 1),
		dev("/dev/nvidia-modeset", 195, 254), dev("/dev/nvidia0", 195, 0), dev("/dev/nvidia1", 195, 1), dev("/dev/nvidia2", 195, 2))
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/dev/nvidia-caps", Type: "bind", Source: "/dev/nvidia-caps"})
	s.Process.Env = append(s.Process.Env, "NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=all")
	return s
}

func TestRefuse(t *testing.T) {
	r := Refuse{Policy: "agent"}
	if err := r.Modify(spectest.Base(t)); err != nil {
		t.Fatalf("a spec without GPUs: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*specs.Spec)
		want string
	}{
		{"device", func(s *specs.Spec) { s.Linux.Devices = append(s.Linux.Devices, dev("/dev/nvidiactl", 195, 255)) }, "device /dev/nvidiactl"},
		{"legacy hook", func(s *specs.Spec) {
			//lint:ignore SA1019 what Docker --gpus sends
			s.Hooks = &specs.Hooks{Prestart: []specs.Hook{{Path: "/usr/bin/nvidia-container-runtime-hook"}}}
		}, "hook /usr/bin/nvidia-container-runtime-hook"},
		{"cdi hook", func(s *specs.Spec) {
			s.Hooks = &specs.Hooks{CreateContainer: []specs.Hook{{Path: "/usr/bin/nvidia-cdi-hook"}}}
		}, "hook /usr/bin/nvidia-cdi-hook"},
		{"cdi annotation", func(s *specs.Spec) { s.Annotations["cdi.k8s.io/gpu"] = "nvidia.com/gpu=0" }, "CDI annotation cdi.k8s.io/gpu=nvidia.com/gpu=0"},
		{"nvproxy annotation", func(s *specs.Spec) { s.Annotations[AnnotationNVProxy] = "true" }, "annotation dev.gvisor.internal.nvproxy"},
		// runsc reads it with strconv.ParseBool: every spelling it takes
		// for true, and any it cannot read, is a request.
		{"nvproxy annotation 1", func(s *specs.Spec) { s.Annotations[AnnotationNVProxy] = "1" }, "annotation dev.gvisor.internal.nvproxy"},
		{"nvproxy annotation TRUE", func(s *specs.Spec) { s.Annotations[AnnotationNVProxy] = "TRUE" }, "annotation dev.gvisor.internal.nvproxy"},
		{"nvproxy annotation garbage", func(s *specs.Spec) { s.Annotations[AnnotationNVProxy] = "yes please" }, "annotation dev.gvisor.internal.nvproxy"},
		{"device mount", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/dev/nvidia0", Type: "bind", Source: "/dev/nvidia0"})
		}, "mount /dev/nvidia0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := spectest.Base(t)
			if s.Annotations == nil {
				s.Annotations = map[string]string{}
			}
			tc.mod(s)
			err := r.Modify(s)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "policy agent has no gpu section") {
				t.Fatalf("error = %v, want one naming %q", err, tc.want)
			}
		})
	}
	// CUDA images set NVIDIA_VISIBLE_DEVICES themselves: that alone is
	// not a request (no device, no hook).
	s := spectest.Base(t)
	s.Process.Env = append(s.Process.Env, "NVIDIA_VISIBLE_DEVICES=all")
	if err := r.Modify(s); err != nil {
		t.Errorf("the variable alone was refused: %v", err)
	}
}

func gpu(devices, caps []string) *policy.GPU {
	return &policy.GPU{Devices: devices, Capabilities: caps, Field: "sandbox.gpu"}
}

func TestExposeEngineDevices(t *testing.T) {
	for _, tc := range []struct {
		name string
		g    *policy.GPU
	}{
		{"two-of-three", gpu([]string{"0", "2"}, []string{"compute", "utility"})},
		{"all", gpu([]string{"all"}, []string{"all"})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := engineGPUSpec(t)
			if err := NewExpose(Options{GPU: tc.g, Discoverer: HostDevices{DevRoot: t.TempDir()}}).Modify(s); err != nil {
				t.Fatal(err)
			}
			golden.JSON(t, "expose/"+tc.name, s)
			for _, d := range s.Linux.Devices {
				if d.Path == "/dev/nvidia-uvm-tools" || d.Path == "/dev/nvidia-modeset" {
					t.Errorf("%s kept", d.Path)
				}
			}
			for _, m := range s.Mounts {
				if strings.HasPrefix(m.Destination, "/dev/nvidia") {
					t.Errorf("mount %s kept", m.Destination)
				}
			}
		})
	}
}

// fakeDev makes character device nodes like the driver's in a temp dir.
func fakeDev(t *testing.T, names map[string][2]uint32) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("making device nodes needs root")
	}
	dir := t.TempDir()
	for name, mm := range names {
		if err := unix.Mknod(filepath.Join(dir, name), unix.S_IFCHR|0o666, int(unix.Mkdev(mm[0], mm[1]))); err != nil {
			t.Skipf("mknod: %v", err)
		}
	}
	return dir
}

func TestExposeHostDevices(t *testing.T) {
	dir := fakeDev(t, map[string][2]uint32{"nvidiactl": {195, 255}, "nvidia-uvm": {510, 0}, "nvidia0": {195, 0}, "nvidia1": {195, 1}, "nvidia-uvm-tools": {510, 1}})
	for _, tc := range []struct {
		name, want string
		devices    []string
	}{
		{"index", "/dev/nvidiactl /dev/nvidia-uvm /dev/nvidia1", []string{"1"}},
		{"all", "/dev/nvidiactl /dev/nvidia-uvm /dev/nvidia0 /dev/nvidia1", []string{"all"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := spectest.Base(t)
			if err := NewExpose(Options{GPU: gpu(tc.devices, []string{"compute"}), Discoverer: HostDevices{DevRoot: dir}}).Modify(s); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range s.Linux.Devices {
				if strings.HasPrefix(d.Path, "/dev/nvidia") {
					got = append(got, d.Path)
				}
			}
			if strings.Join(got, " ") != tc.want {
				t.Errorf("devices %v, want %s", got, tc.want)
			}
			for _, d := range s.Linux.Devices {
				if d.Path == "/dev/nvidia1" && (d.Major != 195 || d.Minor != 1) {
					t.Errorf("nvidia1 is %d:%d", d.Major, d.Minor)
				}
			}
			if !strings.Contains(strings.Join(s.Process.Env, " "), "NVIDIA_VISIBLE_DEVICES="+strings.Join(tc.devices, ",")) || s.Annotations[AnnotationNVProxy] != "true" {
				t.Errorf("env %v annotations %v", s.Process.Env, s.Annotations)
			}
		})
	}
}

func TestExposeRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		g    *policy.GPU
		want string
	}{
		{"uuid without engine devices", gpu([]string{"GPU-8e6f1c2a-0000-0000-0000-000000000000"}, []string{"compute"}), "named by UUID"},
		{"no driver", gpu([]string{"0"}, []string{"compute"}), "does not exist on this host: is the NVIDIA driver loaded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := NewExpose(Options{GPU: tc.g, Discoverer: HostDevices{DevRoot: t.TempDir()}}).Modify(spectest.Base(t))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestFlags(t *testing.T) {
	if got := strings.Join(Flags(gpu([]string{"0"}, []string{"all"})), " "); got != "--nvproxy --nvproxy-allowed-driver-capabilities=compute,utility,graphics,video,ngx" {
		t.Errorf("all: %s", got)
	}
	if got := strings.Join(Flags(gpu([]string{"0"}, []string{"compute", "utility"})), " "); got != "--nvproxy --nvproxy-allowed-driver-capabilities=compute,utility" {
		t.Errorf("default: %s", got)
	}
}

func TestDriverCheck(t *testing.T) {
	supported := []string{"535.129.03", "570.86.15"}
	for _, tc := range []struct {
		name     string
		d        DriverCheck
		flags    string
		err      string
		warnings int
	}{
		{"latest", DriverCheck{Version: "latest"}, "--nvproxy-driver-version=latest", "", 0},
		{"supported", DriverCheck{Version: "570.86.15", Supported: supported}, "--nvproxy-driver-version=570.86.15", "", 0},
		{"unsupported", DriverCheck{Version: "999.1.1", Supported: supported}, "", "NVIDIA driver 999.1.1 is not supported by this runsc's nvproxy; supported: 535.129.03, 570.86.15", 0},
		{"unsupported allowed", DriverCheck{Version: "999.1.1", Supported: supported, AllowUnsupported: true}, "--nvproxy-allow-unsupported-driver", "", 1},
		{"no driver", DriverCheck{}, "", "no NVIDIA driver is loaded on this host", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			flags, warnings, err := tc.d.Flags()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || strings.Join(flags, " ") != tc.flags || len(warnings) != tc.warnings {
				t.Errorf("flags %v warnings %v err %v, want %s", flags, warnings, err, tc.flags)
			}
		})
	}
}

func TestHostDriverVersion(t *testing.T) {
	sys, proc := t.TempDir(), t.TempDir()
	if v, err := HostDriverVersion(sys, proc); v != "" || err != nil {
		t.Fatalf("no driver: %q %v", v, err)
	}
	if err := os.MkdirAll(filepath.Join(proc, "driver/nvidia"), 0o755); err != nil {
		t.Fatal(err)
	}
	procText := "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16-I3-B03-4-3)  Thu Jan 23 2025\nGCC version:  gcc version 12.2.0\n"
	if err := os.WriteFile(filepath.Join(proc, "driver/nvidia/version"), []byte(procText), 0o644); err != nil {
		t.Fatal(err)
	}
	if v, err := HostDriverVersion(sys, proc); v != "570.86.15" || err != nil {
		t.Fatalf("from /proc: %q %v", v, err)
	}
	if err := os.MkdirAll(filepath.Join(sys, "module/nvidia"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sys, "module/nvidia/version"), []byte("575.51.03\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if v, err := HostDriverVersion(sys, proc); v != "575.51.03" || err != nil {
		t.Fatalf("from /sys: %q %v", v, err)
	}
}

// TestDiscoverersWithoutHost: with no discoverer, NoDevices or the
// placeholder, Expose adds only what they say, and says where from.
func TestDiscoverersWithoutHost(t *testing.T) {
	for _, tc := range []struct {
		name     string
		d        Discoverer
		devices  []string
		wantDevs string
		wantFrom string
	}{
		{"nil", nil, []string{"0"}, "", FromNoDiscoverer},
		{"latest", NoDevices{}, []string{"0"}, "", FromNoDevices},
		{"placeholder index", Placeholder{}, []string{"1", "0"}, "/dev/nvidiactl /dev/nvidia-uvm /dev/nvidia0 /dev/nvidia1", FromPlaceholder},
		{"placeholder all", Placeholder{}, []string{"all"}, "/dev/nvidiactl /dev/nvidia-uvm /dev/nvidia0", FromPlaceholder},
		{"placeholder uuid", Placeholder{}, []string{"GPU-8e6f1c2a-1111-2222-3333-444455556666"}, "/dev/nvidiactl /dev/nvidia-uvm", FromPlaceholder},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := spectest.Base(t)
			if err := NewExpose(Options{GPU: gpu(tc.devices, []string{"compute"}), Discoverer: tc.d}).Modify(s); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range s.Linux.Devices {
				if strings.HasPrefix(d.Path, "/dev/nvidia") {
					got = append(got, d.Path)
				}
			}
			if strings.Join(got, " ") != tc.wantDevs || s.Annotations[AnnotationDevicesFrom] != tc.wantFrom {
				t.Errorf("devices %v from %q", got, s.Annotations[AnnotationDevicesFrom])
			}
		})
	}
}
