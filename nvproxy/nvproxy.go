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
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/policyhook/modifier"
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
		case k == AnnotationNVProxy && nvproxyOn(v):
			why = append(why, "annotation "+k)
		case strings.HasPrefix(k, cdiAnnotation) && strings.Contains(v, "nvidia.com/"):
			why = append(why, "CDI annotation "+k+"="+v)
		}
	}
	slices.Sort(why)
	return why
}

// nvproxyOn reads the annotation as runsc does (strconv.ParseBool), and
// takes a value runsc would not parse for a request too: "1", "TRUE" and
// "t" turn nvproxy on, and must not slip past Refuse.
func nvproxyOn(v string) bool {
	on, err := strconv.ParseBool(v)
	return on || err != nil
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
	// Discoverer gets the policy's GPUs into a spec no engine gave any;
	// it is the only part of Expose that may read the host. Nil: no
	// devices are added, and the spec says so (a compile without host).
	Discoverer Discoverer
}

// FromNoDiscoverer is where the devices came from when Expose had no
// Discoverer: nowhere.
const FromNoDiscoverer = "none (compiled without GPU discovery)"

// AnnotationDevicesFrom records where the sandbox's GPU devices came from
// (the engine, a CDI spec, the host's /dev), for operators and tests.
const AnnotationDevicesFrom = "io.openshell.gpu.devices-from"

// Expose is the modifier for a policy with GPUs.
type Expose struct{ o Options }

// NewExpose returns the modifier that gives the sandbox the policy's GPUs.
func NewExpose(o Options) *Expose { return &Expose{o: o} }

// Modify gets the policy's GPUs into the spec when the engine did not
// (CDI, else the host's device nodes), keeps only nvidiactl, nvidia-uvm
// and the allowed nvidia# nodes, sets NVIDIA_* to what the policy
// allows, and marks the container for nvproxy.
func (e *Expose) Modify(s *specs.Spec) error {
	g := e.o.GPU
	if g == nil {
		return errors.New("gpu: no gpu section")
	}
	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	allowed, uuids := e.allowedIndexes()
	hadCtl := slices.ContainsFunc(s.Linux.Devices, func(d specs.LinuxDevice) bool { return d.Path == ctlDevice })
	from := "the engine"
	switch {
	case hadCtl && len(uuids) > 0:
		return fmt.Errorf("%s: GPU %s is named by UUID, but the engine already chose the device nodes and openshell cannot map a UUID to them: name it by index (nvidia-smi -L lists them), or let the engine inject it by CDI", g.Field, uuids[0])
	case hadCtl:
	case e.o.Discoverer == nil:
		from = FromNoDiscoverer
	default:
		f, viaCDI, err := e.o.Discoverer.Discover(s, Request{Devices: g.Devices, Indexes: allowed, UUIDs: uuids})
		if err != nil {
			return fmt.Errorf("%s: %w", g.Field, err)
		}
		from = f
		// What CDI injected for the named devices is theirs, whatever
		// their indexes: only the kinds of node are checked below.
		if viaCDI {
			allowed = nil
		}
	}
	keep := func(path string) bool {
		if path == ctlDevice || path == uvmDevice {
			return true
		}
		m := gpuDevice.FindStringSubmatch(path)
		return m != nil && (allowed == nil || allowed[m[1]])
	}
	dropDevices(s, func(d specs.LinuxDevice) bool {
		return (strings.HasPrefix(d.Path, "/dev/nvidia") && !keep(d.Path)) || strings.HasPrefix(d.Path, "/dev/dri/")
	})
	s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool {
		return (strings.HasPrefix(m.Destination, "/dev/nvidia") && !keep(m.Destination)) ||
			strings.HasPrefix(m.Destination, "/dev/dri") || isIPCSocket(m.Source)
	})
	dropNoOpHooks(s)
	modifier.SetEnv(s, EnvVisibleDevices, strings.Join(g.Devices, ","))
	modifier.SetEnv(s, EnvCapabilities, strings.Join(Capabilities(g), ","))
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[AnnotationNVProxy] = "true"
	s.Annotations[AnnotationDevicesFrom] = from
	return nil
}

// allowedIndexes maps the policy's devices to GPU indexes (nil for all)
// and lists those named by UUID.
func (e *Expose) allowedIndexes() (map[string]bool, []string) {
	out := map[string]bool{}
	var uuids []string
	for _, d := range e.o.GPU.Devices {
		switch {
		case d == "all":
			return nil, nil
		case strings.HasPrefix(d, "GPU-") || strings.HasPrefix(d, "MIG-"):
			uuids = append(uuids, d)
		default:
			out[d] = true
		}
	}
	return out, uuids
}

// dropDevices removes the device nodes drop matches, and the cgroup
// rules that allowed exactly them.
func dropDevices(s *specs.Spec, drop func(specs.LinuxDevice) bool) {
	type node struct {
		typ          string
		major, minor int64
	}
	var dropped []node
	s.Linux.Devices = slices.DeleteFunc(s.Linux.Devices, func(d specs.LinuxDevice) bool {
		if drop(d) {
			dropped = append(dropped, node{d.Type, d.Major, d.Minor})
			return true
		}
		return false
	})
	if len(dropped) == 0 || s.Linux.Resources == nil {
		return
	}
	s.Linux.Resources.Devices = slices.DeleteFunc(s.Linux.Resources.Devices, func(r specs.LinuxDeviceCgroup) bool {
		return r.Allow && r.Major != nil && r.Minor != nil &&
			slices.Contains(dropped, node{r.Type, *r.Major, *r.Minor})
	})
}

// isIPCSocket: the driver's daemons' sockets, which CDI specs bind in;
// gVisor's gofer cannot bind a host socket, and nvproxy needs none.
func isIPCSocket(source string) bool {
	for _, dir := range []string{"/run/nvidia-persistenced/", "/var/run/nvidia-persistenced/", "/run/nvidia-fabricmanager/", "/var/run/nvidia-fabricmanager/", "/tmp/nvidia-mps"} {
		if strings.HasPrefix(source, dir) || source+"/" == dir {
			return true
		}
	}
	return false
}

// dropNoOpHooks removes the toolkit's disable-device-node-modification
// hook: under nvproxy the sentry owns /dev and already reports
// ModifyDeviceFiles=0, and the hook fails there (no procfs in the rootfs
// while hooks run).
func dropNoOpHooks(s *specs.Spec) {
	if s.Hooks == nil {
		return
	}
	noop := func(h specs.Hook) bool { return slices.Contains(h.Args, "disable-device-node-modification") }
	s.Hooks.CreateRuntime = slices.DeleteFunc(s.Hooks.CreateRuntime, noop)
	s.Hooks.CreateContainer = slices.DeleteFunc(s.Hooks.CreateContainer, noop)
	s.Hooks.StartContainer = slices.DeleteFunc(s.Hooks.StartContainer, noop)
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
