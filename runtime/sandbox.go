// Package runtime prepares sandboxes for runsc: it applies a compiled
// policy to a bundle, gives each sandbox its own empty root directory, and
// removes what it made afterwards.
//
// It must never leave a sandbox's state behind, and never remove anything
// it did not create: a directory with a mount below it is not removed.
package runtime

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/openshell/openshell/nvproxy"
	"github.com/openshell/openshell/nvproxy/hostspec"
	"github.com/openshell/openshell/policyhook"
	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/runtime/runsc"
)

// Sandbox is one prepared sandbox: its id, state directory, bundle and the
// policy compiled for it.
type Sandbox struct {
	ID       string
	Dir      string // <state>/<id>; removed by Cleanup
	Bundle   string // Dir/bundle: the modified config.json that runsc runs
	RootDir  string // Dir/root: the empty root of the mount view
	Compiled *policyhook.Compiled
	Pruned   []string // mounts dropped because their source does not exist in the image
	// Engine is the network the engine set up for the container, which
	// the policy replaces: the egress gateway dials out from there.
	Engine EngineNetwork
}

// EngineNetwork is the network an engine gave a container: a CNI
// namespace under Kubernetes, Docker's bridge namespace. The resolv.conf
// the engine wrote is the pod author's (dnsConfig, --dns) and is never
// read.
type EngineNetwork struct {
	Netns string // the spec's network namespace path; "" for a new one
}

func engineNetwork(s *specs.Spec) EngineNetwork {
	var n EngineNetwork
	if s.Linux != nil {
		for _, ns := range s.Linux.Namespaces {
			if ns.Type == specs.NetworkNamespace {
				n.Netns = ns.Path
			}
		}
	}
	return n
}

// NewID returns a random sandbox id.
func NewID() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("sandbox id: %w", err)
	}
	return "openshell-" + hex.EncodeToString(b), nil
}

// CompileFunc compiles the sandbox's policy once its root directory exists.
// image is the directory the policy's paths are taken from.
type CompileFunc func(rootDir, bundle, image string) (*policyhook.Compiled, error)

// CompilePolicy is the CompileFunc for p: the mount view rooted at the
// sandbox's own directory, user names looked up in the image, a GPU
// policy's devices found on this host. extra options come last, so a dry
// run (openshell policy compile) can swap what reads the host, such as
// the GPU discoverer, and keep the rest as the runtime builds it.
func CompilePolicy(p *policy.Policy, cfg *Config, extra ...policyhook.Option) CompileFunc {
	return func(rootDir, bundle, image string) (*policyhook.Compiled, error) {
		opts := []policyhook.Option{
			policyhook.WithRootDir(rootDir), policyhook.WithBundle(bundle), policyhook.WithUsers(policyhook.UsersInRoot(image)),
			policyhook.WithGateway(gatewayNetwork(filepath.Dir(rootDir), image)),
		}
		if cfg != nil {
			opts = append(opts, policyhook.WithAllowedHooks(cfg.AllowedHooks))
		}
		if cfg != nil && p.GPU != nil {
			var gpus nvproxy.Discoverer = nvproxy.HostDevices{CDI: &nvproxy.CDI{
				SpecDirs: cfg.GPU.CDISpecDirs,
				Generate: hostspec.Generator(hostspec.Options{DriverRoot: cfg.GPU.DriverRoot}),
			}}
			if cfg.GPU.DriverVersion == nvproxy.DriverLatest {
				gpus = nvproxy.NoDevices{}
			}
			opts = append(opts, policyhook.WithGPUDiscoverer(gpus))
		}
		return policyhook.Compile(p, append(opts, extra...)...)
	}
}

// PrepareOptions say where a sandbox's state goes and what it runs.
type PrepareOptions struct {
	StateDir string // the sandbox gets StateDir/ID
	ID       string
	// Spec is the container's spec. Its root path is the image.
	Spec Spec
	// Bundle is the engine's bundle, which a relative root path is
	// resolved against. It is never written: the modified spec goes to
	// the sandbox's own bundle in its state directory.
	Bundle  string
	Compile CompileFunc
}

// Prepare creates the sandbox's state directory and its empty root, and
// applies the compiled policy to the spec, which it flushes into the
// sandbox's own bundle. On error nothing is left behind.
func Prepare(o PrepareOptions) (sb *Sandbox, err error) {
	if o.ID == "" || o.ID != filepath.Base(o.ID) || o.ID == "." || o.ID == ".." {
		return nil, fmt.Errorf("container id %q: not a valid id", o.ID)
	}
	s, err := o.Spec.Load()
	if err != nil {
		return nil, err
	}
	image := "/"
	if s.Root != nil && s.Root.Path != "" {
		image = s.Root.Path
		if !filepath.IsAbs(image) {
			if o.Bundle == "" {
				return nil, fmt.Errorf("root path %q is relative and there is no bundle", image)
			}
			image = filepath.Join(o.Bundle, image)
		}
	}
	s.Root = &specs.Root{Path: image}

	dir := filepath.Join(o.StateDir, o.ID)
	if err := os.MkdirAll(o.StateDir, 0o711); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	if err := os.Mkdir(dir, 0o711); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("container %q already exists", o.ID)
		}
		return nil, fmt.Errorf("create sandbox dir: %w", err)
	}
	sb = &Sandbox{ID: o.ID, Dir: dir, Bundle: o.Bundle, RootDir: filepath.Join(dir, "root"), Engine: engineNetwork(s)}
	defer func() {
		if err != nil {
			_ = sb.Cleanup()
			sb = nil
		}
	}()
	// The root is world-readable: runsc's gofer may run as another user.
	if err := os.Mkdir(sb.RootDir, 0o755); err != nil {
		return sb, fmt.Errorf("create %s: %w", sb.RootDir, err)
	}
	sb.Bundle = filepath.Join(dir, "bundle")
	if err := os.Mkdir(sb.Bundle, 0o700); err != nil {
		return sb, fmt.Errorf("create %s: %w", sb.Bundle, err)
	}
	c, err := o.Compile(sb.RootDir, sb.Bundle, image)
	if err != nil {
		return sb, err
	}
	sb.Compiled = c
	if c.Egress {
		if err := sb.prepareEgress(image); err != nil {
			return sb, err
		}
	}
	if err := o.Spec.Modify(c.Modifiers); err != nil {
		return sb, fmt.Errorf("apply policy %s: %w", c.Policy.File, err)
	}
	if sb.Pruned, err = sb.stageBinds(s, image); err != nil {
		return sb, err
	}
	if err := checkPolicyNotWritable(s, c.Policy.File); err != nil {
		return sb, err
	}
	return sb, o.Spec.Flush(filepath.Join(sb.Bundle, "config.json"))
}

// Remove ends what is left of a sandbox run in the foreground: runsc's
// container when runsc still knows it, runsc's stale files and cgroups,
// then the state directory. It goes on past a failed step, since Cleanup
// still refuses while anything is mounted below the state directory.
func (sb *Sandbox) Remove(ctx context.Context, r *runsc.Runsc) error {
	var errs []error
	if r.Known(sb.ID) {
		if err := r.Delete(ctx, sb.ID, true); err != nil && !runsc.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	if err := r.RemoveStale(sb.ID); err != nil {
		errs = append(errs, err)
	}
	if err := sb.Cleanup(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Cleanup removes the sandbox's state directory. It refuses when anything
// is still mounted below it, so a leftover bind mount can never turn a
// removal into deleting the host's files.
func (sb *Sandbox) Cleanup() error {
	sb.stopMonitor()
	if err := sb.removeEgress(); err != nil {
		return err
	}
	if err := sb.unstageBinds(); err != nil {
		return err
	}
	mounted, err := mountsBelow(sb.Dir)
	if err != nil {
		return err
	}
	if len(mounted) > 0 {
		return fmt.Errorf("remove %s: still mounted below it: %s", sb.Dir, strings.Join(mounted, ", "))
	}
	if err := os.RemoveAll(sb.Dir); err != nil {
		return fmt.Errorf("remove %s: %w", sb.Dir, err)
	}
	return nil
}

func mountsBelow(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			out = append(out, fields[4])
		}
	}
	return out, sc.Err()
}
