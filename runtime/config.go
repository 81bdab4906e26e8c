package runtime

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// DefaultConfigPath is where the runtime, the shim and openshell look for
// their configuration.
const DefaultConfigPath = "/etc/openshell/config.toml"

// BuiltinPolicy names the policy compiled into the binaries, used when the
// configuration names no default.
const BuiltinPolicy = "builtin:default"

// Config is /etc/openshell/config.toml. A missing file means the defaults;
// a file that does not parse, or names a field we do not know, is an error:
// a typo must never quietly weaken a sandbox.
type Config struct {
	// Runsc is the runsc binary. Empty: runsc beside our binary, then PATH.
	Runsc string `toml:"runsc"`
	// Root is where openshell run keeps sandbox state.
	Root string `toml:"root"`
	// Platform is runsc's platform. Empty: systrap; kvm only when set.
	Platform string `toml:"platform"`
	// DefaultPolicy is used when a container names none: a name in
	// PolicyDir, an absolute path, or "builtin:default".
	DefaultPolicy string `toml:"default_policy"`
	// PolicyDir holds the policies containers may name by annotation.
	PolicyDir string `toml:"policy_dir"`
	// PolicyPaths are the directories under which the io.openshell.policy
	// annotation may name a policy by absolute path, checked after
	// symlinks are resolved. Empty (the default): names only.
	PolicyPaths []string `toml:"policy_paths"`
	// AllowInlinePolicy lets the io.openshell.policy.inline annotation
	// carry a policy's YAML. Off by default: whoever writes a pod spec
	// would choose its sandbox.
	AllowInlinePolicy bool `toml:"allow_inline_policy"`
	// AllowLearn lets the io.openshell.learn annotation run a container
	// in learning mode (every name answered, every connection allowed as
	// audit). Off by default: the annotation's author is not trusted, and
	// learning opens the network.
	AllowLearn bool `toml:"allow_learn"`
	// CeilingPolicy, when set, is a policy every annotation-chosen policy
	// must lie within: a name in PolicyDir, an absolute path, or
	// "builtin:default". The default_policy is not held to it.
	CeilingPolicy string `toml:"ceiling_policy"`
	// AllowedHooks are the OCI hook binaries (absolute paths) a
	// container's spec may run on the host; every other hook is dropped.
	// Empty (the default): none.
	AllowedHooks []string `toml:"allowed_hooks"`
	// RunscFlags are extra global runsc flags, e.g. ["--debug"].
	RunscFlags []string `toml:"runsc_flags"`
	// Egress configures the egress gateway of sandboxes whose policy
	// allows egress.
	Egress EgressConfig `toml:"egress"`
	// GPU configures nvproxy for policies with a gpu section.
	GPU GPUConfig `toml:"gpu"`
	// Inference holds the model providers a sandbox's inference route
	// may lead to, with where their keys are (docs/inference.md).
	Inference InferenceConfig `toml:"inference"`

	file string
}

// GPUConfig is the [gpu] table.
type GPUConfig struct {
	// DriverVersion overrides the host driver version nvproxy is set up
	// for. "latest" boots nvproxy with no driver and no GPU: a smoke
	// test's setting. Empty: the loaded driver's version.
	DriverVersion string `toml:"driver_version"`
	// CDISpecDirs are searched for a CDI spec naming nvidia.com/gpu
	// devices when no engine injected the GPUs (openshell run,
	// openshell-runtime under an engine without CDI): CDI's own
	// /etc/cdi and /var/run/cdi unless set. Where none names them, a
	// spec is generated from the loaded driver.
	CDISpecDirs []string `toml:"cdi_spec_dirs"`
	// DriverRoot is where the driver's files are when a spec is
	// generated: "/" unless the driver is installed elsewhere.
	DriverRoot string `toml:"driver_root"`
}

// EgressConfig is the [egress] table.
type EgressConfig struct {
	// DNSUpstream is the resolver (IP:port) the gateway asks for allowed
	// names. Empty: the first nameserver in /etc/resolv.conf.
	DNSUpstream string `toml:"dns_upstream"`
	// UplinkNetns is a network namespace (a path such as
	// /run/netns/egress) the gateway dials out from. Empty: the
	// runtime's own.
	UplinkNetns string `toml:"uplink_netns"`
	// AuditDir holds one audit log per sandbox, <id>.jsonl. It outlives
	// the sandbox.
	AuditDir string `toml:"audit_dir"`
	// AuditMaxMB bounds one sandbox's audit log on disk, in MiB: the live
	// file is rotated to <id>.jsonl.1 (replacing the previous one) when it
	// would pass half of it.
	AuditMaxMB int `toml:"audit_max_mb"`
	// GatewayUser is the user the gateway serves as: a name, a uid, or
	// uid:gid, never root. Default 65534 (nobody:nogroup).
	GatewayUser string `toml:"gateway_user"`
	// MonitorUser is the user each sandbox's process monitor runs as, in
	// the same forms as GatewayUser, never root. Default 65534: give it a
	// user of its own to keep it apart from the gateways.
	MonitorUser string `toml:"monitor_user"`
	// GatewayMemoryMB and GatewayPidsMax bound the gateway's own cgroup.
	// Default 256 MiB and 256 tasks.
	GatewayMemoryMB int `toml:"gateway_memory_mb"`
	GatewayPidsMax  int `toml:"gateway_pids_max"`
	// GatewayProcs is how many threads at once run the gateway's Go code
	// (its GOMAXPROCS). Default 1.
	GatewayProcs int `toml:"gateway_procs"`
	// UpstreamCAFile is the PEM bundle the gateway verifies servers
	// against where it terminates the sandbox's TLS and opens its own.
	// Empty: the host's trust store.
	UpstreamCAFile string `toml:"upstream_ca_file"`
}

// DefaultRuntimeRoot is openshell-runtime's default --root.
const DefaultRuntimeRoot = "/run/openshell/runtime"

// DefaultAuditDir is where audit logs go unless the config says otherwise.
const DefaultAuditDir = "/var/log/openshell/audit"

// DefaultAuditMaxMB bounds a sandbox's audit log unless the config says
// otherwise; MaxAuditMaxMB is the most it may say (1 GiB live, 1 GiB
// rotated).
const (
	DefaultAuditMaxMB = 64
	MaxAuditMaxMB     = 2048
)

// DefaultConfig is the configuration used when there is no file.
func DefaultConfig() *Config {
	return &Config{
		Root:          "/run/openshell",
		DefaultPolicy: BuiltinPolicy,
		PolicyDir:     "/etc/openshell/policies",
		Egress:        EgressConfig{AuditDir: DefaultAuditDir, AuditMaxMB: DefaultAuditMaxMB},
		GPU:           GPUConfig{CDISpecDirs: []string{"/etc/cdi", "/var/run/cdi"}},
	}
}

// File is the file the configuration came from; empty for the defaults.
func (c *Config) File() string { return c.file }

// Platforms are the runsc platforms the configuration may name.
var Platforms = []string{"systrap", "ptrace", "kvm"}

// managedFlags are the runsc flags the runtime sets itself: a
// configuration that set them could open what a policy closes.
var managedFlags = []string{
	"root", "network", "oci-seccomp", "platform", "host-uds", "host-fifo",
	"net-raw", "allow-packet-socket-write", "nvproxy", "nvproxy-allow-unsupported-driver",
	"nvproxy-driver-version", "nvproxy-allowed-driver-capabilities",
	"tpuproxy", "overlay2", "file-access", "directfs", "ignore-cgroups",
}

// LoadConfig reads the configuration at path. A missing file gives the
// defaults; anything else that goes wrong is an error naming the file and,
// where it can, the line.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return DefaultConfig(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig parses a configuration file's contents.
func ParseConfig(file string, data []byte) (*Config, error) {
	c := DefaultConfig()
	c.file = file
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		var serr *toml.StrictMissingError
		if errors.As(err, &serr) {
			var msgs []string
			for _, e := range serr.Errors {
				row, col := e.Position()
				msgs = append(msgs, fmt.Sprintf("%s:%d:%d: %s: unknown field", file, row, col, strings.Join(e.Key(), ".")))
			}
			return nil, errors.New(strings.Join(msgs, "\n"))
		}
		var derr *toml.DecodeError
		if errors.As(err, &derr) {
			row, col := derr.Position()
			return nil, fmt.Errorf("%s:%d:%d: %s", file, row, col, derr.Error())
		}
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	if err := c.Inference.validate(file); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Config) validate() error {
	var errs []string
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Sprintf("%s: %s: %s", c.file, field, fmt.Sprintf(format, a...)))
	}
	if u := c.Egress.DNSUpstream; u != "" {
		if _, err := netip.ParseAddrPort(u); err != nil {
			bad("egress.dns_upstream", "%q is not IP:port", u)
		}
	}
	if m := c.Egress.AuditMaxMB; m < 2 || m > MaxAuditMaxMB {
		bad("egress.audit_max_mb", "%d is not between 2 and %d (MiB)", m, MaxAuditMaxMB)
	}
	for _, e := range c.Egress.validateGateway() {
		bad(e.field, "%s", e.msg)
	}
	for field, p := range map[string]string{"runsc": c.Runsc, "root": c.Root, "policy_dir": c.PolicyDir, "egress.uplink_netns": c.Egress.UplinkNetns, "egress.audit_dir": c.Egress.AuditDir, "egress.upstream_ca_file": c.Egress.UpstreamCAFile, "gpu.driver_root": c.GPU.DriverRoot} {
		if p != "" && !filepath.IsAbs(p) {
			bad(field, "%q is not an absolute path", p)
		}
	}
	for i, d := range c.PolicyPaths {
		switch field := fmt.Sprintf("policy_paths[%d]", i); {
		case !filepath.IsAbs(d):
			bad(field, "%q is not an absolute path", d)
		case filepath.Clean(d) == "/":
			bad(field, "/ would let an annotation name any file on the host")
		}
	}
	for i, h := range c.AllowedHooks {
		if !filepath.IsAbs(h) || filepath.Clean(h) != h {
			bad(fmt.Sprintf("allowed_hooks[%d]", i), "%q is not a clean absolute path", h)
		}
	}
	if d := c.CeilingPolicy; d != "" && d != BuiltinPolicy && !filepath.IsAbs(d) && !validPolicyName(d) {
		bad("ceiling_policy", "%q is neither %s, an absolute path nor a policy name", d, BuiltinPolicy)
	}
	for i, d := range c.GPU.CDISpecDirs {
		if !filepath.IsAbs(d) {
			bad(fmt.Sprintf("gpu.cdi_spec_dirs[%d]", i), "%q is not an absolute path", d)
		}
	}
	if c.Root == "" {
		bad("root", "must not be empty")
	}
	if c.Platform != "" && !slices.Contains(Platforms, c.Platform) {
		bad("platform", "%q is not one of %s", c.Platform, strings.Join(Platforms, ", "))
	}
	if d := c.DefaultPolicy; d != "" && d != BuiltinPolicy && !filepath.IsAbs(d) && !validPolicyName(d) {
		bad("default_policy", "%q is neither %s, an absolute path nor a policy name", d, BuiltinPolicy)
	}
	for _, f := range c.RunscFlags {
		name, _, _ := strings.Cut(strings.TrimLeft(f, "-"), "=")
		if !strings.HasPrefix(f, "-") {
			bad("runsc_flags", "%q is not a flag", f)
		} else if slices.Contains(managedFlags, name) {
			bad("runsc_flags", "--%s is set by openshell from the policy and may not be overridden", name)
		}
	}
	if len(errs) > 0 {
		slices.Sort(errs)
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}

// PlatformOrDefault is the configured platform, else systrap. kvm is the
// operator's choice, never inferred from /dev/kvm: in a VM with nested
// virtualisation /dev/kvm can be present while runsc's kvm platform spins
// without ever starting the sandbox (seen on this project's CI machines).
func (c *Config) PlatformOrDefault() string {
	if c.Platform != "" {
		return c.Platform
	}
	return "systrap"
}

// RunscPath picks the runsc binary: the configured one, $OPENSHELL_RUNSC,
// runsc beside the running binary (make build puts them together in bin/),
// then runsc on PATH.
func (c *Config) RunscPath() string {
	if c.Runsc != "" {
		return c.Runsc
	}
	if p := os.Getenv("OPENSHELL_RUNSC"); p != "" {
		return p
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "runsc")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p
		}
	}
	if p, err := exec.LookPath("runsc"); err == nil {
		return p
	}
	return "runsc"
}
