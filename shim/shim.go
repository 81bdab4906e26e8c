// Package shim is containerd-shim-openshell-v1: containerd's runc v2 shim
// (its manager, task service and process state machine, unchanged) with
// openshell-runtime as the runtime binary it drives. Every container it
// creates therefore goes through openshell-runtime create, which applies
// the container's policy and hands off to runsc.
//
// The only thing this package adds is a seam in front of the task
// service's Create: it makes sure the runtime options name our runtime,
// whatever the engine sent. It must never let a container be created by
// another binary.
package shim

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/manager"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/task"
	shimapi "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/log"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
)

// RuntimeName is the runtime type engines name: containerd maps it to
// the binary containerd-shim-openshell-v1.
const RuntimeName = "io.openshell.v1"

// RuntimeBinary is the runc-compatible runtime the shim drives.
const RuntimeBinary = "openshell-runtime"

// Run runs the shim. It is all a main needs.
func Run(ctx context.Context) {
	registry.Register(&plugin.Registration{
		Type:     plugins.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugins.EventPlugin, plugins.InternalPlugin},
		InitFn:   initTaskService,
	})
	shimapi.RunShim(ctx, manager.NewShimManager(RuntimeName))
}

func initTaskService(ic *plugin.InitContext) (any, error) {
	pp, err := ic.GetByID(plugins.EventPlugin, "publisher")
	if err != nil {
		return nil, err
	}
	ss, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
	if err != nil {
		return nil, err
	}
	next, err := task.NewTaskService(ic.Context, pp.(shimapi.Publisher), ss.(shutdown.Service))
	if err != nil {
		return nil, err
	}
	return &service{TTRPCTaskService: next, binary: runtimeBinary()}, nil
}

// runtimeBinary is openshell-runtime beside the shim (both are installed
// together), else on PATH.
func runtimeBinary() string {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), RuntimeBinary)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p
		}
	}
	if p, err := exec.LookPath(RuntimeBinary); err == nil {
		return p
	}
	return RuntimeBinary
}

// service is containerd's runc task service with Create seen first.
type service struct {
	taskAPI.TTRPCTaskService
	binary string
}

var _ taskAPI.TTRPCTaskService = (*service)(nil)

func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	return nil
}

// Create points the request's runtime options at openshell-runtime and
// hands it on unchanged otherwise.
func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	opts, err := RuntimeOptions(r.Options, s.binary)
	if err != nil {
		return nil, fmt.Errorf("openshell: %w", err)
	}
	if opts.configPath != "" {
		// openshell-runtime reads its configuration from here; every
		// runtime call this shim makes inherits it.
		if err := os.Setenv("OPENSHELL_CONFIG", opts.configPath); err != nil {
			return nil, fmt.Errorf("openshell: %w", err)
		}
	}
	r.Options, err = typeurl.MarshalAnyToProto(opts.runc)
	if err != nil {
		return nil, fmt.Errorf("openshell: encode runtime options: %w", err)
	}
	log.G(ctx).WithField("runtime", opts.runc.BinaryName).Debug("openshell create")
	return s.TTRPCTaskService.Create(ctx, r)
}

type options struct {
	runc       *runcoptions.Options
	configPath string
}

// RuntimeOptions turns what an engine sent into the runc shim's options
// with openshell-runtime as the binary:
//   - none (plain ctr, Docker): defaults;
//   - runc options (containerd's runtime "options" table for a runc-type
//     runtime): kept, but a BinaryName other than openshell-runtime is
//     refused, since it would bypass the policy;
//   - CRI's generic options (ConfigPath): the path of openshell's
//     config.toml, for openshell-runtime.
func RuntimeOptions(any typeurl.Any, binary string) (*options, error) {
	o := &options{runc: &runcoptions.Options{}}
	if any != nil && len(any.GetValue()) > 0 {
		v, err := typeurl.UnmarshalAny(any)
		if err != nil {
			return nil, fmt.Errorf("decode runtime options: %w", err)
		}
		switch v := v.(type) {
		case *runcoptions.Options:
			o.runc = v
		case *runtimeoptions.Options:
			o.configPath = v.ConfigPath
		default:
			return nil, fmt.Errorf("runtime options of type %T are not supported", v)
		}
	}
	switch name := o.runc.BinaryName; {
	case name == "":
		o.runc.BinaryName = binary
	case filepath.Base(name) != RuntimeBinary:
		return nil, fmt.Errorf("runtime options name %q as the runtime binary: only %s applies openshell policies", name, RuntimeBinary)
	}
	return o, nil
}
