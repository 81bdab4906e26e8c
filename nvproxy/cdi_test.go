package nvproxy

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"go.yaml.in/yaml/v3"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/openshell/openshell/test/golden"
	"github.com/openshell/openshell/test/spectest"
)

// cdiDir writes testdata/cdi/nvidia.yaml into a temp spec dir, its host
// paths pointing into that dir (where no device exists).
func cdiDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	data, err := os.ReadFile("testdata/cdi/nvidia.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nvidia.yaml"), []byte(strings.ReplaceAll(string(data), "@DIR@", dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// generated is the same spec, as a generator would return it.
func generated(t *testing.T, dir string) Generator {
	data, err := os.ReadFile(filepath.Join(dir, "nvidia.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var raw cdispecs.Spec
	if err := yaml.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	return func() (*cdispecs.Spec, error) { return &raw, nil }
}

func paths(s *specs.Spec) (devs, mounts, hooks []string) {
	for _, d := range s.Linux.Devices {
		devs = append(devs, d.Path)
	}
	for _, m := range s.Mounts {
		if !strings.HasPrefix(m.Destination, "/proc") && !strings.HasPrefix(m.Destination, "/dev") && !strings.HasPrefix(m.Destination, "/sys") {
			mounts = append(mounts, m.Destination)
		}
	}
	if s.Hooks != nil {
		for _, h := range s.Hooks.CreateContainer {
			hooks = append(hooks, h.Args[1])
		}
	}
	return devs, mounts, hooks
}

func TestExposeCDI(t *testing.T) {
	for _, tc := range []struct {
		name      string
		devices   []string
		generate  bool // from a generator, the spec dir empty
		wantDevs  string
		wantFrom  string
		wantRules int // device cgroup rules left for NVIDIA nodes
	}{
		{"index", []string{"1"}, false, "/dev/nvidiactl /dev/nvidia-uvm /dev/nvidia1", "CDI spec $DIR/nvidia.yaml", 3},
		{"all", []string{"all"}, false, "/dev/nvidiactl /dev/nvidia-uvm /dev/nvidia0 /dev/nvidia1", "CDI spec $DIR/nvidia.yaml", 4},
		{"uuid", []string{"GPU-8e6f1c2a-1111-2222-3333-444455556666"}, false, "/dev/nvidiactl /dev/nvidia-uvm /dev/nvidia1", "CDI spec $DIR/nvidia.yaml", 3},
		{"generated", []string{"0"}, true, "/dev/nvidiactl /dev/nvidia-uvm /dev/nvidia0", "a CDI spec generated from the host driver", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := cdiDir(t)
			c := &CDI{SpecDirs: []string{dir}}
			if tc.generate {
				c = &CDI{SpecDirs: []string{t.TempDir()}, Generate: generated(t, dir)}
			}
			s := spectest.Base(t)
			if err := NewExpose(Options{GPU: gpu(tc.devices, []string{"compute", "utility"}), Discoverer: HostDevices{CDI: c, DevRoot: t.TempDir()}}).Modify(s); err != nil {
				t.Fatal(err)
			}
			devs, mounts, hooks := paths(s)
			var nv []string
			for _, d := range devs {
				if strings.HasPrefix(d, "/dev/nvidia") || strings.HasPrefix(d, "/dev/dri") {
					nv = append(nv, d)
				}
			}
			if got := strings.Join(nv, " "); got != tc.wantDevs {
				t.Errorf("devices %s, want %s", got, tc.wantDevs)
			}
			// The driver's files come with the devices; the daemon's
			// socket and the hook nvproxy makes moot do not.
			if !slices.Contains(mounts, "/usr/lib/x86_64-linux-gnu/libcuda.so.570.86.15") || slices.Contains(mounts, "/run/nvidia-persistenced/socket") {
				t.Errorf("mounts %v", mounts)
			}
			if strings.Join(hooks, " ") != "create-symlinks update-ldcache" {
				t.Errorf("hooks %v", hooks)
			}
			rules := 0
			for _, r := range s.Linux.Resources.Devices {
				if r.Allow && r.Major != nil && (*r.Major == 195 || *r.Major == 510 || *r.Major == 226) {
					rules++
				}
			}
			if rules != tc.wantRules {
				t.Errorf("%d NVIDIA device rules, want %d: %+v", rules, tc.wantRules, s.Linux.Resources.Devices)
			}
			if got := strings.ReplaceAll(s.Annotations[AnnotationDevicesFrom], dir, "$DIR"); got != tc.wantFrom {
				t.Errorf("devices from %q, want %q", got, tc.wantFrom)
			}
			if env := strings.Join(s.Process.Env, " "); !strings.Contains(env, "NVIDIA_VISIBLE_DEVICES="+tc.devices[0]) || strings.Contains(env, "void") {
				t.Errorf("env %s", env)
			}
			if !tc.generate {
				s.Annotations[AnnotationDevicesFrom] = tc.wantFrom
				for i := range s.Linux.Devices {
					s.Linux.Devices[i].FileMode = nil
				}
				golden.JSON(t, "cdi/"+tc.name, s)
			}
		})
	}
}

func TestExposeCDIRefusals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		devices []string
		cdi     func(t *testing.T) *CDI
		want    []string
	}{
		{"no such GPU, no generator", []string{"3"}, func(t *testing.T) *CDI { return &CDI{SpecDirs: []string{cdiDir(t)}} },
			[]string{"sandbox.gpu: ", "/nvidiactl does not exist on this host", "no CDI device nvidia.com/gpu=3 in "}},
		{"no such GPU, generated", []string{"3"}, func(t *testing.T) *CDI {
			return &CDI{SpecDirs: []string{t.TempDir()}, Generate: generated(t, cdiDir(t))}
		}, []string{"GPU 3 is not on this host: its devices are 0, GPU-8e6f1c2a-1111-2222-3333-444455556666, 1, all"}},
		{"no driver", []string{"0"}, func(t *testing.T) *CDI {
			return &CDI{SpecDirs: []string{t.TempDir()}, Generate: func() (*cdispecs.Spec, error) { return nil, errors.New("ERROR_LIBRARY_NOT_FOUND") }}
		}, []string{"sandbox.gpu: ", "nvidiactl does not exist on this host: is the NVIDIA driver loaded", "generating a CDI spec: ERROR_LIBRARY_NOT_FOUND"}},
		{"uuid nobody knows", []string{"GPU-00000000-0000-0000-0000-000000000000"}, func(t *testing.T) *CDI { return &CDI{SpecDirs: []string{cdiDir(t)}} },
			[]string{"named by UUID, and only a CDI spec can map a UUID", "no CDI device nvidia.com/gpu=GPU-00000000-0000-0000-0000-000000000000"}},
		{"wrong kind generated", []string{"0"}, func(t *testing.T) *CDI {
			return &CDI{Generate: func() (*cdispecs.Spec, error) { return &cdispecs.Spec{Version: "0.5.0", Kind: "example.com/gpu"}, nil }}
		}, []string{"the generated spec is for example.com/gpu"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := spectest.Base(t)
			before := len(s.Linux.Devices)
			err := NewExpose(Options{GPU: gpu(tc.devices, []string{"compute"}), Discoverer: HostDevices{CDI: tc.cdi(t), DevRoot: t.TempDir()}}).Modify(s)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if len(s.Linux.Devices) != before {
				t.Errorf("a refused spec gained devices: %v", s.Linux.Devices)
			}
		})
	}
}

// An engine that injected its own devices (CRI with CDI, docker --gpus)
// is not second-guessed by the host's CDI specs.
func TestExposeCDIEngineFirst(t *testing.T) {
	s := engineGPUSpec(t)
	if err := NewExpose(Options{GPU: gpu([]string{"0"}, []string{"compute"}), Discoverer: HostDevices{CDI: &CDI{SpecDirs: []string{cdiDir(t)}}}}).Modify(s); err != nil {
		t.Fatal(err)
	}
	devs, mounts, _ := paths(s)
	if slices.Contains(mounts, "/usr/lib/x86_64-linux-gnu/libcuda.so.570.86.15") || slices.Contains(devs, "/dev/nvidia1") || s.Annotations[AnnotationDevicesFrom] != "the engine" {
		t.Errorf("devices %v mounts %v from %q", devs, mounts, s.Annotations[AnnotationDevicesFrom])
	}
}
