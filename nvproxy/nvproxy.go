// Package nvproxy gives a sandbox GPUs through gVisor's nvproxy, as its
// policy allows and no further: it decides whether nvproxy is on, which
// NVIDIA device nodes the spec keeps or gets, the NVIDIA_* variables, and
// the runsc flags; and it checks the host's driver against the ones this
// runsc supports before anything starts.
//
// A spec that asks for GPUs (NVIDIA device nodes, the NVIDIA hooks, CDI
// annotations, gVisor's nvproxy annotation) under a policy without a gpu
// section is refused, never passed through.
package nvproxy

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/policyhook/policy"
)

// Names gVisor and the NVIDIA toolkit use.
const (
	// AnnotationNVProxy turns nvproxy on for a container (gVisor's own).
	AnnotationNVProxy = "dev.gvisor.internal.nvproxy"
	EnvVisibleDevices = "NVIDIA_VISIBLE_DEVICES"
	EnvCapabilities   = "NVIDIA_DRIVER_CAPABILITIES"
	cdiAnnotation     = "cdi.k8s.io/"
)

// The device nodes nvproxy serves: the control device, unified memory,
// and one per GPU. Everything else NVIDIA (nvidia-uvm-tools, -modeset,
// nvidia-caps) stays out of the sandbox.
const (
	ctlDevice = "/dev/nvidiactl"
	uvmDevice = "/dev/nvidia-uvm"
)

var gpuDevice = regexp.MustCompile(`^/dev/nvidia([0-9]+)$`)

// Requests lists why a spec asks for GPUs; empty when it does not.
func Requests(s *specs.Spec) []string {
	var why []string
	if s.Linux != nil {
		for _, d := range s.Linux.Devices {
			if strings.HasPrefix(d.Path, "/dev/nvidia") {
				why = append(why, "device "+d.Path)
			}
		}
	}
	for _, m := range s.Mounts {
		if strings.HasPrefix(m.Destination, "/dev/nvidia") {
			why = append(why, "mount "+m.Destination)
		}
	}
	if s.Hooks != nil {
		//lint:ignore SA1019 Prestart is deprecated, and what Docker --gpus still sends
		for _, hs := range [][]specs.Hook{s.Hooks.Prestart, s.Hooks.CreateRuntime, s.Hooks.CreateContainer, s.Hooks.StartContainer} {
			for _, h := range hs {
				if b := filepath.Base(h.Path); strings.HasPrefix(b, "nvidia-") {
					why = append(why, "hook "+h.Path)
				}
			}
		}
	}
	for k, v := range s.Annotations {
		switch {
		case k == AnnotationNVProxy && v == "true":
			why = append(why, "annotation "+k)
		case strings.HasPrefix(k, cdiAnnotation) && strings.Contains(v, "nvidia.com/"):
			why = append(why, "CDI annotation "+k+"="+v)
		}
	}
	slices.Sort(why)
	return why
}

// Refuse is the modifier for a policy without GPUs: a spec that asks for
// them is an error.
type Refuse struct{ Policy string }

func (r Refuse) Modify(s *specs.Spec) error {
	if why := Requests(s); len(why) > 0 {
		return fmt.Errorf("the container asks for NVIDIA GPUs (%s), but policy %s has no gpu section: add sandbox.gpu with enabled: true, or run it without GPUs", strings.Join(why, ", "), r.Policy)
	}
	return nil
}

// Options configure Expose.
type Options struct {
	GPU *policy.GPU
	// DevRoot is where host device nodes are found when the spec has
	// none (openshell run, which no engine prepared): "/dev" unless set.
	DevRoot string
	// NoHostDevices adds no host device nodes: nvproxy boots with its
	// newest driver ABI and no GPU (the runtime's driver_version =
	// "latest", a smoke test on a host without one).
	NoHostDevices bool
}

// Expose is the modifier for a policy with GPUs.
type Expose struct{ o Options }

// NewExpose returns the modifier that gives the sandbox the policy's GPUs.
func NewExpose(o Options) *Expose {
	if o.DevRoot == "" {
		o.DevRoot = "/dev"
	}
	return &Expose{o: o}
}

// Modify keeps (or, when the engine gave none, adds from the host) only
// nvidiactl, nvidia-uvm and the allowed nvidia# nodes, sets NVIDIA_* to
// what the policy allows, and marks the container for nvproxy.
func (e *Expose) Modify(s *specs.Spec) error {
	g := e.o.GPU
	if g == nil {
		return errors.New("gpu: no gpu section")
	}
	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	allowed, err := e.allowedIndexes(s)
	if err != nil {
		return err
	}
	keep := func(path string) bool {
		if path == ctlDevice || path == uvmDevice {
			return true
		}
		m := gpuDevice.FindStringSubmatch(path)
		return m != nil && (allowed == nil || allowed[m[1]])
	}
	hadCtl := slices.ContainsFunc(s.Linux.Devices, func(d specs.LinuxDevice) bool { return d.Path == ctlDevice })
	s.Linux.Devices = slices.DeleteFunc(s.Linux.Devices, func(d specs.LinuxDevice) bool {
		return strings.HasPrefix(d.Path, "/dev/nvidia") && !keep(d.Path)
	})
	s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool {
		return strings.HasPrefix(m.Destination, "/dev/nvidia") && !keep(m.Destination)
	})
	if !hadCtl && !e.o.NoHostDevices {
		if err := e.addHostDevices(s, allowed); err != nil {
			return err
		}
	}
	setEnv(s, EnvVisibleDevices, strings.Join(g.Devices, ","))
	setEnv(s, EnvCapabilities, strings.Join(Capabilities(g), ","))
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[AnnotationNVProxy] = "true"
	return nil
}

// allowedIndexes maps the policy's devices to GPU indexes; nil for all.
// A UUID is matched only where the engine gave devices named by it.
func (e *Expose) allowedIndexes(s *specs.Spec) (map[string]bool, error) {
	out := map[string]bool{}
	for _, d := range e.o.GPU.Devices {
		switch {
		case d == "all":
			return nil, nil
		case strings.HasPrefix(d, "GPU-") || strings.HasPrefix(d, "MIG-"):
			return nil, fmt.Errorf("%s: GPU %s is named by UUID; openshell maps indexes to device nodes itself, so name it by index (nvidia-smi -L lists them), or let the engine inject it by CDI", e.o.GPU.Field, d)
		default:
			out[d] = true
		}
	}
	return out, nil
}

// addHostDevices adds the host's device nodes for the allowed GPUs.
func (e *Expose) addHostDevices(s *specs.Spec, allowed map[string]bool) error {
	paths := []string{ctlDevice, uvmDevice}
	if allowed == nil {
		matches, _ := filepath.Glob(filepath.Join(e.o.DevRoot, "nvidia[0-9]*"))
		for _, m := range matches {
			if p := "/dev/" + filepath.Base(m); gpuDevice.MatchString(p) {
				paths = append(paths, p)
			}
		}
	} else {
		for _, i := range sortedKeys(allowed) {
			paths = append(paths, "/dev/nvidia"+i)
		}
	}
	for _, p := range paths {
		d, err := deviceFromPath(filepath.Join(e.o.DevRoot, strings.TrimPrefix(p, "/dev/")), p)
		if err != nil {
			return fmt.Errorf("%s: %w", e.o.GPU.Field, err)
		}
		s.Linux.Devices = append(s.Linux.Devices, d)
		if s.Linux.Resources == nil {
			s.Linux.Resources = &specs.LinuxResources{}
		}
		major, minor := d.Major, d.Minor
		s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: &major, Minor: &minor, Access: "rwm"})
	}
	return nil
}

func deviceFromPath(host, path string) (specs.LinuxDevice, error) {
	var st unix.Stat_t
	if err := unix.Stat(host, &st); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return specs.LinuxDevice{}, fmt.Errorf("%s does not exist on this host: is the NVIDIA driver loaded (nvidia-smi)?", host)
		}
		return specs.LinuxDevice{}, fmt.Errorf("%s: %w", host, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return specs.LinuxDevice{}, fmt.Errorf("%s is not a character device", host)
	}
	mode := os.FileMode(st.Mode & 0o777)
	uid, gid := st.Uid, st.Gid
	return specs.LinuxDevice{
		Path: path, Type: "c",
		Major: int64(unix.Major(uint64(st.Rdev))), Minor: int64(unix.Minor(uint64(st.Rdev))),
		FileMode: &mode, UID: &uid, GID: &gid,
	}, nil
}

func setEnv(s *specs.Spec, name, value string) {
	if s.Process == nil {
		s.Process = &specs.Process{}
	}
	prefix := name + "="
	s.Process.Env = slices.DeleteFunc(s.Process.Env, func(e string) bool { return strings.HasPrefix(e, prefix) })
	s.Process.Env = append(s.Process.Env, prefix+value)
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b string) int {
		if len(a) != len(b) {
			return len(a) - len(b)
		}
		return strings.Compare(a, b)
	})
	return out
}

// Capabilities are the policy's driver capabilities, with "all" spelled
// out: runsc's own "all" would include privileged ones (profiling, RDMA)
// no policy may have.
func Capabilities(g *policy.GPU) []string {
	if slices.Contains(g.Capabilities, "all") {
		return slices.Clone(policy.GPUCapabilities)
	}
	return g.Capabilities
}

// Flags are the runsc flags for a GPU policy.
func Flags(g *policy.GPU) []string {
	return []string{"--nvproxy", "--nvproxy-allowed-driver-capabilities=" + strings.Join(Capabilities(g), ",")}
}
