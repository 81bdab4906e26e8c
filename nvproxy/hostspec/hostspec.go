// Package hostspec generates a CDI spec for the host's NVIDIA GPUs with
// nvidia-container-toolkit's nvcdi, for hosts where nvidia-ctk cdi
// generate never wrote one. It needs the driver's NVML (loaded at run
// time), so it lives apart from nvproxy and its tests.
package hostspec

import (
	"fmt"
	"log/slog"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/openshell/openshell/nvproxy"
)

// Options say where the driver is and which NVML to ask.
type Options struct {
	// DriverRoot holds the driver's libraries and binaries: "/" on a
	// host, another root where the driver is installed in a container.
	DriverRoot string
	// DevRoot holds the device nodes; DriverRoot unless set.
	DevRoot string
	// NVML is the library to ask; the driver's libnvidia-ml unless set
	// (tests pass go-nvml's mock).
	NVML nvml.Interface
	Log  *slog.Logger
}

// Generator returns an nvproxy.Generator that asks nvcdi for a spec with
// one device per GPU (by index and as "all") and what nvproxy can use.
func Generator(o Options) nvproxy.Generator {
	return func() (*cdispecs.Spec, error) {
		if o.DriverRoot == "" {
			o.DriverRoot = "/"
		}
		if o.DevRoot == "" {
			o.DevRoot = o.DriverRoot
		}
		if o.Log == nil {
			o.Log = slog.New(slog.DiscardHandler)
		}
		opts := []nvcdi.Option{
			nvcdi.WithLogger(logger{o.Log}),
			nvcdi.WithDriverRoot(o.DriverRoot),
			nvcdi.WithDevRoot(o.DevRoot),
			nvcdi.WithMode(nvcdi.ModeNvml),
			nvcdi.WithVendor("nvidia.com"),
			nvcdi.WithClass("gpu"),
			// The sentry owns /dev and nvproxy already hides
			// ModifyDeviceFiles; gVisor's gofer cannot bind the IPC
			// sockets (persistenced, fabric manager) at all.
			nvcdi.WithDisabledHooks(nvcdi.DisableDeviceNodeModificationHook),
			nvcdi.WithFeatureFlags(nvcdi.FeatureDisableIPCDiscoverer),
		}
		if o.NVML != nil {
			opts = append(opts, nvcdi.WithNvmlLib(o.NVML))
		}
		lib, err := nvcdi.New(opts...)
		if err != nil {
			return nil, fmt.Errorf("nvcdi: %w", err)
		}
		spec, err := lib.GetSpec("all")
		if err != nil {
			return nil, fmt.Errorf("nvcdi: %w", err)
		}
		return spec.Raw(), nil
	}
}

// logger gives nvcdi our structured log; its Info is chatty, so debug.
type logger struct{ l *slog.Logger }

func (g logger) Debugf(f string, a ...any)   { g.l.Debug(fmt.Sprintf(f, a...), "component", "nvcdi") }
func (g logger) Tracef(f string, a ...any)   { g.l.Debug(fmt.Sprintf(f, a...), "component", "nvcdi") }
func (g logger) Infof(f string, a ...any)    { g.l.Debug(fmt.Sprintf(f, a...), "component", "nvcdi") }
func (g logger) Warningf(f string, a ...any) { g.l.Warn(fmt.Sprintf(f, a...), "component", "nvcdi") }
func (g logger) Errorf(f string, a ...any)   { g.l.Error(fmt.Sprintf(f, a...), "component", "nvcdi") }
