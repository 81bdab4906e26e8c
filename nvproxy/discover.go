package nvproxy

import (
	"fmt"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// A Discoverer finds the host's devices for the GPUs a policy names and
// adds them to a spec no engine gave any. It is the only part of GPU
// handling that reads the host (device nodes, CDI specs, the driver):
// Expose decides what the sandbox may have, the Discoverer finds it, as
// nvidia-container-toolkit's modifiers take their discoverers. The
// runtime injects HostDevices; compiling a policy without a host uses
// Placeholder, or none.
type Discoverer interface {
	// Discover adds the GPUs req names to s (device nodes, and whatever
	// a CDI spec brings with them) and says where they came from. byCDI
	// is true when a CDI spec chose the device nodes for the names: they
	// are then the named GPUs' whatever their indexes.
	Discover(s *specs.Spec, req Request) (from string, byCDI bool, err error)
}

// Request is what a policy's gpu section asks a Discoverer for.
type Request struct {
	// Devices are the policy's devices, as written ("all", "0", "GPU-…").
	Devices []string
	// Indexes are the GPU indexes allowed; nil: all of them.
	Indexes map[string]bool
	// UUIDs are the devices named by UUID, which only CDI can map.
	UUIDs []string
}

// HostDevices is the Discoverer that reads this host: the CDI specs (or
// a generated one) first, else the NVIDIA device nodes under DevRoot.
type HostDevices struct {
	// CDI, when set, is asked first: the host's CDI specs (or a
	// generated one) bring the driver's libraries and hooks as well as
	// the device nodes.
	CDI *CDI
	// DevRoot is where host device nodes are found when CDI has none
	// (openshell run on a host without CDI specs): "/dev" unless set.
	DevRoot string
}

var _ Discoverer = HostDevices{}

// Discover injects by CDI where the host has (or can generate) a spec,
// else the host's nodes.
func (h HostDevices) Discover(s *specs.Spec, req Request) (from string, byCDI bool, err error) {
	devRoot := h.DevRoot
	if devRoot == "" {
		devRoot = "/dev"
	}
	var why []string
	if h.CDI != nil {
		from, ok, w, err := h.CDI.injectCDI(s, cdiNames(req.Devices))
		if err != nil || ok {
			return from, ok, err
		}
		why = w
	}
	if len(req.UUIDs) > 0 {
		return "", false, fmt.Errorf("GPU %s is named by UUID, and only a CDI spec can map a UUID to device nodes (%s): name it by index (nvidia-smi -L lists them), or write one with nvidia-ctk cdi generate --device-name-strategy=uuid", req.UUIDs[0], strings.Join(why, "; "))
	}
	if err := addHostDevices(s, devRoot, req.Indexes); err != nil {
		if len(why) > 0 {
			return "", false, fmt.Errorf("%w (and %s)", err, strings.Join(why, "; "))
		}
		return "", false, err
	}
	return "the host's " + devRoot, false, nil
}

// NoDevices is the Discoverer for the runtime's driver_version =
// "latest": nvproxy boots with its newest driver ABI and no GPU (a smoke
// test on a host without one). It adds nothing.
type NoDevices struct{}

var _ Discoverer = NoDevices{}

// FromNoDevices is where NoDevices says the devices came from.
const FromNoDevices = "none (driver_version = latest)"

func (NoDevices) Discover(*specs.Spec, Request) (string, bool, error) {
	return FromNoDevices, false, nil
}

// FromPlaceholder is where Placeholder says the devices came from: the
// spec it yields is a picture, never one to run.
const FromPlaceholder = "PLACEHOLDER: not this host's devices; at create the runtime adds the host's (its CDI specs, else /dev/nvidia*), and these device numbers (0:0) are not real"

// Placeholder is the Discoverer for compiling a GPU policy without its
// host (openshell policy compile and explain): it reads nothing and adds
// the device nodes the runtime would add (nvidiactl, nvidia-uvm, one per
// named GPU; nvidia0 standing for "all"), with device numbers 0:0, and
// marks the spec as such. A UUID stands for a CDI device: only the
// control nodes are shown.
type Placeholder struct{}

var _ Discoverer = Placeholder{}

func (Placeholder) Discover(s *specs.Spec, req Request) (string, bool, error) {
	paths := []string{ctlDevice, uvmDevice}
	switch {
	case len(req.UUIDs) > 0:
	case req.Indexes == nil:
		paths = append(paths, "/dev/nvidia0")
	default:
		for _, i := range sortedKeys(req.Indexes) {
			paths = append(paths, "/dev/nvidia"+i)
		}
	}
	for _, p := range paths {
		addDevice(s, specs.LinuxDevice{Path: p, Type: "c"})
	}
	return FromPlaceholder, len(req.UUIDs) > 0, nil
}

// addHostDevices adds the host's device nodes under devRoot for the
// allowed GPUs (nil: all the host has).
func addHostDevices(s *specs.Spec, devRoot string, allowed map[string]bool) error {
	paths := []string{ctlDevice, uvmDevice}
	if allowed == nil {
		matches, _ := filepath.Glob(filepath.Join(devRoot, "nvidia[0-9]*"))
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
		d, err := deviceFromPath(filepath.Join(devRoot, strings.TrimPrefix(p, "/dev/")), p)
		if err != nil {
			return err
		}
		addDevice(s, d)
	}
	return nil
}

// addDevice adds a device node and the cgroup rule that allows exactly it.
func addDevice(s *specs.Spec, d specs.LinuxDevice) {
	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	s.Linux.Devices = append(s.Linux.Devices, d)
	if s.Linux.Resources == nil {
		s.Linux.Resources = &specs.LinuxResources{}
	}
	major, minor := d.Major, d.Minor
	s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: &major, Minor: &minor, Access: "rwm"})
}
