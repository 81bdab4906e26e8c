// Package policy is openshell's policy model: it reads a policy file in
// either supported format (openshell's own "1.0" format or NVIDIA
// OpenShell's v1 format), strictly, and validates it into one Policy.
//
// It never touches a container, a spec or the network: it only reads the
// policy. A Policy returned without error has passed every check; nothing
// downstream re-validates it.
package policy

import (
	"net/netip"
	"time"
)

// Format names the dialect a policy file was written in.
type Format string

const (
	// FormatSeed is openshell's own format (`version: "1.0"`, a `sandbox:` section).
	FormatSeed Format = "openshell-1.0"
	// FormatOpenShellV1 is NVIDIA OpenShell's format (`version: 1`).
	FormatOpenShellV1 Format = "nvidia-openshell-v1"
)

// Defaults applied where a policy is silent. Each is documented in docs/policy.md.
const (
	DefaultMaxProcesses = 256
	DefaultMaxOpenFiles = 1024
	DefaultTmpSizeMB    = 64
	DefaultUser         = "65534" // nobody: non-root unless the policy names a user
	DefaultGroup        = "65534"
)

// DefaultSystemPaths are the read-only paths a seed-format policy gets unless
// it sets sandbox.filesystem.system_paths: what a program needs to be
// loaded and run, nothing else.
var DefaultSystemPaths = []string{"/bin", "/etc", "/lib", "/lib64", "/sbin", "/usr"}

// Policy is one validated policy, whichever format it came from.
type Policy struct {
	File   string // where it was read from, for messages
	Format Format
	Name   string
	Hash   string // sha256 of the file's bytes, hex; audit lines carry it

	Filesystem Filesystem
	Process    Process
	Resources  Resources
	Network    Network
	Inference  *Inference
	Env        []EnvVar
	// GPU is nil unless the policy gives the sandbox GPUs.
	GPU *GPU
	// Audit is what the sandbox's timeline records beyond its defaults.
	Audit Audit

	// Warnings are fields that were accepted but whose effect under gVisor
	// differs from what their name suggests. They are shown by every
	// command that loads the policy; they are never hidden.
	Warnings ErrorList

	pos map[string]Pos // where each field sits in File
}

// Position returns where field (or its nearest ancestor that is in the
// file) sits; the compiler uses it to place its own warnings.
func (p *Policy) Position(field string) Pos {
	s := errSink{pos: p.pos}
	return s.lookup(field)
}

// Audit is what the sandbox's timeline records beyond its processes and
// connections.
type Audit struct {
	// FileOpens adds every file open (path, flags, result) to the
	// timeline; off by default, since tracing an open triples its cost.
	FileOpens bool
}

// PathRule is one path the sandbox may see, and the field that granted it.
type PathRule struct {
	Path  string
	Field string
}

// Filesystem is what the sandbox may read and write. Every path not listed
// does not exist inside the sandbox.
type Filesystem struct {
	ReadOnly       []PathRule
	ReadWrite      []PathRule
	IncludeWorkdir bool  // the container's working directory is read-write
	MaxFileSizeMB  int64 // RLIMIT_FSIZE; 0: unlimited
	MaxTotalSizeMB int64 // size of the /tmp tmpfs; 0: DefaultTmpSizeMB
	BlockSymlinks  bool
}

// Process is how the sandboxed processes run.
type Process struct {
	AllowExec    bool
	MaxProcesses int64
	User         string // a uid or a user name in the image
	Group        string
	UserField    string
	GroupField   string
	Seccomp      *Seccomp
}

// Seccomp is the policy's own syscall filter. openshell's always-denied
// syscalls apply on top of it, and apply when it is nil too.
type Seccomp struct {
	DefaultAction string // an OCI action name, e.g. SCMP_ACT_ERRNO
	Allowed       []string
	Field         string
}

// Resources are the limits on the sandbox as a whole.
type Resources struct {
	MaxMemoryMB      int64
	MaxCPUCores      float64
	MaxExecutionTime time.Duration
	MaxOpenFiles     int64
}

// Network is the egress policy. Egress is denied unless a rule allows it.
type Network struct {
	BlockMetadata      bool
	BlockPrivateRanges bool
	DNSFiltering       bool
	Egress             []EgressRule
}

// Enforcement says what happens when a connection matches no enforcing rule.
type Enforcement string

const (
	EnforcementEnforce Enforcement = "enforce"
	// EnforcementAudit allows the traffic the rule describes but records
	// it as a would-be denial.
	EnforcementAudit Enforcement = "audit"
)

// EgressRule allows connections to one host on some ports.
type EgressRule struct {
	Field string // e.g. sandbox.network.allowed_egress[1]
	Group string // the network_policies key (OpenShell); "" for the seed format
	Name  string

	Host        string // NormalizeHostPattern's form; "*." one label, "**." any depth
	Ports       []int
	Protocol    string // "" (plain TCP) or "rest"
	TLS         string
	Enforcement Enforcement
	Access      string // read-only, read-write, full ("" when unset)
	HTTPRules   []HTTPRule
	AllowedIPs  []netip.Prefix
	Binaries    []string

	RateLimit     *RateLimit
	MaxRequestKB  int64
	MaxResponseMB int64
	TLSRequired   bool
}

// ScopedRule is the first egress rule that names binaries, nil when none
// does: a sandbox with one needs the sentry to say which binary opened
// each connection.
func (n *Network) ScopedRule() *EgressRule {
	for i := range n.Egress {
		if len(n.Egress[i].Binaries) > 0 {
			return &n.Egress[i]
		}
	}
	return nil
}

// HTTPRule allows one HTTP method on one path pattern.
type HTTPRule struct {
	Method string
	Path   string
}

// RateLimit is Count requests per Per.
type RateLimit struct {
	Count int64
	Per   time.Duration
}

// GPU is the GPUs the sandbox may use, through gVisor's nvproxy.
type GPU struct {
	// Devices are "all", GPU indexes ("0") or UUIDs ("GPU-…", "MIG-…").
	Devices []string
	// Capabilities are NVIDIA driver capabilities (compute, utility, ...).
	Capabilities []string
	// AllowUnsupportedDriver lets a sandbox start on a host driver that
	// this runsc's nvproxy does not list as supported.
	AllowUnsupportedDriver bool
	Field                  string
}

// DefaultGPUCapabilities are the driver capabilities a GPU policy gets
// unless it names others: nvproxy's and nvidia-container-toolkit's default.
var DefaultGPUCapabilities = []string{"compute", "utility"}

// GPUCapabilities are the driver capabilities a policy may name: the ones
// nvproxy supports for containers. "all" stands for all of them.
var GPUCapabilities = []string{"compute", "utility", "graphics", "video", "ngx"}

// EnvVar is one environment variable set in the sandbox.
type EnvVar struct {
	Name  string
	Value string
	Field string
}
