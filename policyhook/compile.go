// Package policyhook compiles a validated policy into what enforces it: a
// list of OCI spec modifiers, the runsc flags they need, and the settings
// the runtime itself enforces (the wall-clock limit).
//
// It reads no file but the image's user database, when asked to, and
// starts nothing: applying a Compiled to a spec is all it does. What a
// GPU policy needs from the host (device nodes, CDI specs) comes from an
// nvproxy.Discoverer the caller injects (WithGPUDiscoverer); without one
// nothing on the host is read.
package policyhook

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/openshell/openshell/nvproxy"
	"github.com/openshell/openshell/policyhook/modifier"
	"github.com/openshell/openshell/policyhook/policy"
)

// Runsc flags a policy can require.
const (
	FlagOCISeccomp  = "--oci-seccomp"
	FlagNetworkNone = "--network=none"
	// FlagNetworkSandbox gives the sandbox gVisor's own network stack in
	// the namespace the runtime made, whose only link is the gateway's.
	FlagNetworkSandbox = "--network=sandbox"
)

// SymlinkSyscalls are closed by block_symlinks.
var SymlinkSyscalls = []string{"symlink", "symlinkat"}

// Compiled is a policy turned into enforcement.
type Compiled struct {
	Policy     *policy.Policy
	Modifiers  modifier.List
	RunscFlags []string
	// Timeout is max_execution_time_seconds; the runtime kills the sandbox
	// when it runs out. Zero: no limit.
	Timeout time.Duration
	UID     uint32
	GID     uint32
	// Egress is set when the sandbox needs its egress gateway.
	Egress bool
	// Attribution is set when an egress rule names binaries: the gateway
	// must learn which binary opened each connection, from the sink in
	// openshell's runsc build.
	Attribution bool
	// Gateway is how the sandbox reaches it, when Egress is set.
	Gateway *modifier.GatewayNetwork
	// Warnings are the policy's own plus what the compiler could not
	// enforce as the policy asks. A caller shows them; it never drops them.
	Warnings policy.ErrorList
}

// Apply modifies spec to enforce the policy.
func (c *Compiled) Apply(spec *specs.Spec) error {
	if err := c.Modifiers.Modify(spec); err != nil {
		return fmt.Errorf("apply policy %s: %w", c.Policy.File, err)
	}
	return nil
}

// UserLookup resolves user and group names in the image.
type UserLookup interface {
	LookupUser(name string) (uid, gid uint32, err error)
	LookupGroup(name string) (gid uint32, err error)
}

type options struct {
	view       modifier.ViewOptions
	users      UserLookup
	noLookup   bool
	gateway    *modifier.GatewayNetwork
	discoverer nvproxy.Discoverer
	hooks      []string
	learn      bool
}

// Option configures Compile.
type Option func(*options)

// WithRootDir sets the empty directory that becomes the sandbox's root.
func WithRootDir(dir string) Option { return func(o *options) { o.view.RootDir = dir } }

// WithBundle sets the bundle a relative root path is resolved against.
func WithBundle(dir string) Option { return func(o *options) { o.view.Bundle = dir } }

// WithUsers resolves run_as_user and run_as_group names.
func WithUsers(u UserLookup) Option { return func(o *options) { o.users, o.noLookup = u, false } }

// WithGateway says how the sandbox reaches the egress gateway the runtime
// will start for it. Without it, a policy that allows egress compiles to
// no network at all, with a warning: fail closed.
func WithGateway(n modifier.GatewayNetwork) Option { return func(o *options) { o.gateway = &n } }

// WithGPUDiscoverer has a GPU policy's devices found by d when no engine
// injected them: the runtime passes the host's (nvproxy.HostDevices), a
// dry run nvproxy.Placeholder. Without it a GPU policy gets nvproxy and
// no device nodes, and nothing on the host is read.
func WithGPUDiscoverer(d nvproxy.Discoverer) Option { return func(o *options) { o.discoverer = d } }

// WithAllowedHooks names the OCI hook binaries the spec may keep (the
// runtime configuration's allowed_hooks); without it every hook is
// dropped. runsc runs hooks on the host as root, outside the sandbox.
func WithAllowedHooks(paths []string) Option { return func(o *options) { o.hooks = paths } }

// WithLearning compiles for learning mode (openshell run --learn): the
// sandbox gets its egress gateway, where there is one, even when the
// policy allows no egress, so the gateway can record what it asks for.
// The filesystem view, process and resource limits stay the policy's:
// learning widens only the network, and only to audited connections.
func WithLearning() Option { return func(o *options) { o.learn = true } }

// WithoutUserLookup compiles a run_as_user or run_as_group name without
// an image to look it up in (policy compile and explain with no --rootfs
// or --spec): the name is a warning placed at its field, and the sandbox
// is shown as the default user. Never for a sandbox that runs.
func WithoutUserLookup() Option { return func(o *options) { o.users, o.noLookup = nil, true } }

// Compile turns a validated policy into modifiers and flags.
func Compile(p *policy.Policy, opts ...Option) (*Compiled, error) {
	if p == nil {
		return nil, fmt.Errorf("compile policy: policy is nil")
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if err := CheckHTTPRules(p); err != nil {
		return nil, fmt.Errorf("compile policy %s: %w", p.File, err)
	}
	c := &Compiled{Policy: p, Timeout: p.Resources.MaxExecutionTime, Warnings: slices.Clone(p.Warnings)}
	warn := func(field, format string, args ...any) {
		c.Warnings = append(c.Warnings, &policy.FieldError{File: p.File, Pos: p.Position(field), Field: field, Msg: fmt.Sprintf(format, args...)})
	}

	var err error
	if o.noLookup {
		c.UID, c.GID, err = placeholderUser(p.Process, warn)
	} else {
		c.UID, c.GID, err = resolveUser(p.Process, o.users)
	}
	if err != nil {
		return nil, fmt.Errorf("compile policy %s: %w", p.File, err)
	}

	fs := p.Filesystem
	view, err := modifier.NewRootView(fs, o.view)
	if err != nil {
		return nil, fmt.Errorf("compile policy %s: %w", p.File, err)
	}
	tmpWritable := slices.ContainsFunc(fs.ReadWrite, func(r policy.PathRule) bool { return r.Path == "/tmp" })
	tmpSize := fs.MaxTotalSizeMB
	if tmpSize == 0 {
		tmpSize = policy.DefaultTmpSizeMB
	}
	tmp, err := modifier.NewTmp(tmpSize, tmpWritable)
	if err != nil {
		return nil, fmt.Errorf("compile policy %s: %w", p.File, err)
	}
	if fs.MaxTotalSizeMB > 0 {
		var host []string
		for _, r := range fs.ReadWrite {
			if r.Path != "/tmp" && !policy.IsKernelPath(r.Path) {
				host = append(host, r.Path)
			}
		}
		if len(host) > 0 {
			warn("sandbox.filesystem.max_total_size_mb", "bounds /tmp only; the writable paths %s are image or host directories, bounded per file by max_file_size_mb", strings.Join(host, ", "))
		}
	}

	var deny []string
	if !p.Process.AllowExec {
		deny = append(deny, policy.ExecSyscalls...)
	}
	if fs.BlockSymlinks {
		deny = append(deny, SymlinkSyscalls...)
	}
	sc, err := modifier.NewSeccomp(p.Process.Seccomp, deny)
	if err != nil {
		return nil, fmt.Errorf("compile policy %s: %w", p.File, err)
	}

	maxProcs := p.Process.MaxProcesses
	if maxProcs == 0 {
		maxProcs = policy.DefaultMaxProcesses
	}
	maxFiles := p.Resources.MaxOpenFiles
	if maxFiles == 0 {
		maxFiles = policy.DefaultMaxOpenFiles
	}

	// The GPU decision comes first: it must see the engine's spec as the
	// engine sent it.
	var gpu modifier.SpecModifier = nvproxy.Refuse{Policy: p.Name}
	if p.GPU != nil {
		gpu = nvproxy.NewExpose(nvproxy.Options{GPU: p.GPU, Discoverer: o.discoverer})
	}
	// Hooks are dropped after the GPU decision has seen the engine's
	// (Docker's --gpus hook asks for GPUs), and after CDI injection, so
	// that the hooks a CDI spec brings are held to the same list: runsc
	// runs them all as root on the host. A dropped hook only narrows what
	// runs, so it is a warning, not an error.
	dropHooks := modifier.NewDropHooks(o.hooks, func(stage string, h specs.Hook) {
		c.Warnings = append(c.Warnings, &policy.FieldError{File: "config.json", Field: "hooks." + stage,
			Msg: fmt.Sprintf("dropped %s: a hook runs on the host as root, and only the runtime configuration's allowed_hooks are kept", h.Path)})
	})
	c.Modifiers = modifier.List{}.Append(
		modifier.NewRefuseGVisorAnnotations(nvproxy.AnnotationNVProxy),
		gpu,
		dropHooks,
		modifier.NewAnnotations(p.Name, p.Hash, string(p.Format)),
		view,
		tmp,
		modifier.NewMaskCredentials(nil),
		modifier.NewDropPrivileges(),
		modifier.NewUser(c.UID, c.GID),
		modifier.NewRlimits(modifier.Limits{
			NoFile:    uint64(maxFiles),
			NProc:     uint64(maxProcs),
			FSizeByte: uint64(fs.MaxFileSizeMB) << 20,
		}),
		modifier.NewResources(p.Resources.MaxMemoryMB, p.Resources.MaxCPUCores),
		sc,
		// Before the policy's own env, which wins; only where the
		// gateway serves inference.local.
		modifier.NewInferenceEnv(p.Inference != nil && p.Inference.SetEnv && o.gateway != nil),
		modifier.NewEnv(p.Env),
	)
	switch {
	case (len(p.Network.Egress) > 0 || p.Inference != nil || o.learn) && o.gateway != nil:
		c.Modifiers = c.Modifiers.Append(modifier.NewGatewayNetwork(*o.gateway))
		c.RunscFlags = []string{FlagOCISeccomp, FlagNetworkSandbox}
		c.Egress = true
		c.Gateway = o.gateway
		// Learning asks too: its suggestion names binaries where the
		// sentry said which one connected.
		scoped := p.Network.ScopedRule() != nil
		c.Attribution = o.learn || scoped
		if scoped {
			// No process may write its code into an allowed binary's
			// memory through /proc/PID/mem and connect as it.
			c.Modifiers = c.Modifiers.Append(modifier.NewReadOnlyProc())
		}
	default:
		c.Modifiers = c.Modifiers.Append(modifier.NewIsolateNetwork())
		c.RunscFlags = []string{FlagOCISeccomp, FlagNetworkNone}
		if len(p.Network.Egress) > 0 {
			// Only a runtime that starts the gateway can open egress
			// safely; here the sandbox gets no network. Fail closed.
			warn(parentOf(p.Network.Egress[0].Field), "%d egress rule(s) are not active: no egress gateway was set up for this sandbox, so it has no network at all (fail closed)", len(p.Network.Egress))
		}
	}
	if p.GPU != nil {
		c.RunscFlags = append(c.RunscFlags, nvproxy.Flags(p.GPU)...)
	}
	if p.Inference != nil && !c.Egress {
		warn(p.Inference.Field, "inference routing is not active: no egress gateway was set up for this sandbox, so inference.local does not exist (fail closed)")
	}
	return c, nil
}

// parentOf turns "a.b[3]" into "a.b": the list a set of rules came from.
func parentOf(field string) string {
	if i := strings.LastIndexByte(field, '['); i >= 0 {
		field = field[:i]
	}
	if strings.HasPrefix(field, "network_policies.") {
		return "network_policies"
	}
	return field
}

// placeholderUser is resolveUser without a user database: a name is a
// warning, and stands for the default user.
func placeholderUser(pr policy.Process, warn func(field, format string, args ...any)) (uid, gid uint32, err error) {
	def, _ := strconv.ParseUint(policy.DefaultUser, 10, 32)
	name := func(field, db string) func(string) (uint32, uint32, error) {
		return func(id string) (uint32, uint32, error) {
			warn(field, "%q is looked up in the image's %s when the sandbox is created; shown here as %d (give --rootfs DIR or --spec FILE to look it up)", id, db, def)
			return uint32(def), uint32(def), nil
		}
	}
	if uid, gid, err = lookupID(pr.User, pr.UserField, name(pr.UserField, "/etc/passwd")); err != nil || pr.Group == "" {
		return uid, gid, err
	}
	_, gid, err = lookupID(pr.Group, pr.GroupField, name(pr.GroupField, "/etc/group"))
	return uid, gid, err
}

func resolveUser(pr policy.Process, users UserLookup) (uid, gid uint32, err error) {
	uid, gid, err = lookupID(pr.User, pr.UserField, func(name string) (uint32, uint32, error) {
		if users == nil {
			return 0, 0, fmt.Errorf("no user database to look it up in; give a numeric uid")
		}
		return users.LookupUser(name)
	})
	if err != nil {
		return 0, 0, err
	}
	if pr.Group == "" {
		return uid, gid, nil // the user's own primary group
	}
	_, gid, err = lookupID(pr.Group, pr.GroupField, func(name string) (uint32, uint32, error) {
		if users == nil {
			return 0, 0, fmt.Errorf("no group database to look it up in; give a numeric gid")
		}
		g, err := users.LookupGroup(name)
		return g, g, err
	})
	return uid, gid, err
}

// lookupID parses a numeric id, or resolves a name; a numeric user's group
// defaults to the same number.
func lookupID(id, field string, lookup func(string) (uint32, uint32, error)) (uint32, uint32, error) {
	if n, err := strconv.ParseUint(id, 10, 32); err == nil {
		// Validation refuses these; a compiled policy never holds them.
		if n == 0 || n > policy.MaxID {
			return 0, 0, fmt.Errorf("%s: %q is root or out of range, and the sandbox never runs as root", field, id)
		}
		return uint32(n), uint32(n), nil
	}
	a, b, err := lookup(id)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %q: %w", field, id, err)
	}
	if a == 0 || b == 0 {
		return 0, 0, fmt.Errorf("%s: %q resolves to root, and the sandbox never runs as root", field, id)
	}
	return a, b, nil
}
