package runtime

import (
	"context"
	"fmt"

	"github.com/openshell/openshell/nvproxy"
	"github.com/openshell/openshell/policyhook/policy"
)

// GPUFlags checks the host's NVIDIA driver against the ones runsc's
// nvproxy supports, for a policy with a gpu section, and returns the
// driver flags and any warning. It is called before anything starts, so
// an unsupported driver stops the sandbox with the supported list.
func GPUFlags(ctx context.Context, runscPath string, cfg *Config, p *policy.Policy) (flags, warnings []string, err error) {
	g := p.GPU
	if g == nil {
		return nil, nil, nil
	}
	d := nvproxy.DriverCheck{Version: cfg.GPU.DriverVersion, AllowUnsupported: g.AllowUnsupportedDriver}
	if d.Version == "" {
		if d.Version, err = nvproxy.HostDriverVersion("/sys", "/proc"); err != nil {
			return nil, nil, err
		}
	}
	if d.Version != "" && d.Version != nvproxy.DriverLatest {
		if d.Supported, err = nvproxy.SupportedDrivers(ctx, runscPath); err != nil {
			return nil, nil, err
		}
	}
	flags, warnings, err = d.Flags()
	if err != nil {
		return nil, nil, fmt.Errorf("policy %s: %s: %w", p.File, g.Field, err)
	}
	return flags, warnings, nil
}
