package policy

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Bounds on numeric fields. They keep a typo (an extra zero) from turning
// into a limit that means nothing.
const (
	maxProcessesLimit = 1 << 22
	maxOpenFilesLimit = 1 << 20
	maxCPUCoresLimit  = 1024
)

// writableDevNull may be listed writable although it lies under /dev:
// NVIDIA OpenShell's own default policy lists it in read_write, and
// gVisor's /dev/null is its own device that discards writes, whatever the
// policy says (the mount view never binds a kernel path from the host).
const writableDevNull = "/dev/null"

// kernelPaths are provided by gVisor's own kernel (its procfs, sysfs and
// devices), not by the image, so listing them grants nothing from the host.
var kernelPaths = []string{"/dev", "/proc", "/sys"}

// IsKernelPath reports whether p lies under /dev, /proc or /sys.
func IsKernelPath(p string) bool {
	for _, k := range kernelPaths {
		if p == k || strings.HasPrefix(p, k+"/") {
			return true
		}
	}
	return false
}

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// validate checks the whole model, adding every problem to s. It may
// normalise values (host names to lower case).
func validate(p *Policy, s *errSink) {
	if hasControl(p.Name) {
		s.addf("name", "%q contains a control character", p.Name)
	}
	validateFilesystem(&p.Filesystem, s)
	validateProcess(&p.Process, s)
	validateResources(p, s)
	validateNetwork(&p.Network, s)
	for _, e := range p.Env {
		if !envNameRE.MatchString(e.Name) {
			s.addf(e.Field, "%q is not a valid environment variable name", e.Name)
		}
	}
	if p.GPU != nil {
		validateGPU(p.GPU, s)
	}
	if p.Inference != nil {
		validateInference(p.Inference, s)
	}
}

var gpuUUID = regexp.MustCompile(`^(GPU|MIG)-[0-9a-fA-F-]{8,}(/[0-9]+/[0-9]+)?$`)

// privilegedGPUCaps are nvproxy capabilities no sandbox policy may ask for.
var privilegedGPUCaps = map[string]string{
	"profiling":        "GPU performance counters let one workload observe others",
	"rdma":             "GPUDirect RDMA exports GPU memory outside the sandbox",
	"fabric-imex-mgmt": "fabric management is a host administrator's capability",
	"display":          "nvproxy does not support display",
	"compat32":         "nvproxy does not support 32-bit applications",
}

func validateGPU(g *GPU, s *errSink) {
	seen := map[string]bool{}
	for i, d := range g.Devices {
		f := fmt.Sprintf("%s.devices[%d]", g.Field, i)
		switch {
		case seen[d]:
			s.addf(f, "%q is listed twice", d)
		case d == "all":
			if len(g.Devices) > 1 {
				s.addf(f, "\"all\" cannot be combined with other devices")
			}
		case gpuUUID.MatchString(d):
		default:
			n, err := strconv.Atoi(d)
			if err != nil || n < 0 || n > 63 || strconv.Itoa(n) != d {
				s.addf(f, "%q is not a GPU: write all, an index (0, 1, ...) or a UUID (GPU-...)", d)
			}
		}
		seen[d] = true
	}
	caps := map[string]bool{}
	for i, c := range g.Capabilities {
		f := fmt.Sprintf("%s.capabilities[%d]", g.Field, i)
		switch why, bad := privilegedGPUCaps[c]; {
		case bad:
			s.addf(f, "%q is refused: %s", c, why)
		case c == "all":
			if len(g.Capabilities) > 1 {
				s.addf(f, "\"all\" cannot be combined with other capabilities")
			}
		case !slices.Contains(GPUCapabilities, c):
			s.addf(f, "%q is not a driver capability nvproxy supports (%s, or all)", c, strings.Join(GPUCapabilities, ", "))
		case caps[c]:
			s.addf(f, "%q is listed twice", c)
		}
		caps[c] = true
	}
}

func validateFilesystem(fs *Filesystem, s *errSink) {
	seen := map[string]string{}
	check := func(r PathRule, writable bool) {
		switch {
		case r.Path == "":
			s.addf(r.Field, "is empty")
			return
		case hasControl(r.Path):
			s.addf(r.Field, "%q contains a control character", r.Path)
			return
		case !strings.HasPrefix(r.Path, "/"):
			s.addf(r.Field, "%q is not an absolute path", r.Path)
			return
		case slices.Contains(strings.Split(r.Path, "/"), ".."):
			s.addf(r.Field, "%q contains \"..\"", r.Path)
			return
		case path.Clean(r.Path) != r.Path:
			s.addf(r.Field, "%q is not clean; write %q", r.Path, path.Clean(r.Path))
			return
		case writable && r.Path == "/":
			s.addf(r.Field, "/ can never be writable")
			return
		case writable && IsKernelPath(r.Path) && r.Path != writableDevNull:
			s.addf(r.Field, "%s is under /proc, /sys or /dev, which can never be writable", r.Path)
			return
		}
		// A path may be both readable and writable (writes win, as in the
		// seed example's /tmp), and may repeat a system path; only a repeat
		// within one list is a mistake.
		key := parentField(r.Field) + "\x00" + r.Path
		if prev, dup := seen[key]; dup {
			s.addf(r.Field, "%s is already listed at %s", r.Path, prev)
			return
		}
		seen[key] = r.Field
	}
	if n := len(fs.ReadOnly) + len(fs.ReadWrite); n > MaxPaths {
		// Each list is bounded by the decoder; this is all of them
		// together, reported where the bound is crossed.
		over := fs.ReadWrite[0]
		if len(fs.ReadOnly) > MaxPaths {
			over = fs.ReadOnly[MaxPaths]
		} else if len(fs.ReadOnly) < MaxPaths {
			over = fs.ReadWrite[MaxPaths-len(fs.ReadOnly)]
		}
		s.addf(over.Field, "the policy lists %d paths in all; at most %d are allowed", n, MaxPaths)
		return
	}
	for _, r := range fs.ReadOnly {
		check(r, false)
	}
	for _, r := range fs.ReadWrite {
		check(r, true)
	}
	if fs.MaxFileSizeMB < 0 {
		s.addf("sandbox.filesystem.max_file_size_mb", "must be positive")
	}
	if fs.MaxTotalSizeMB < 0 {
		s.addf("sandbox.filesystem.max_total_size_mb", "must be positive")
	}
}

func validateProcess(pr *Process, s *errSink) {
	const pf = "sandbox.process"
	if pr.MaxProcesses < 0 || pr.MaxProcesses > maxProcessesLimit {
		s.addf(pf+".max_processes", "%d is out of range (1-%d)", pr.MaxProcesses, maxProcessesLimit)
	}
	if msg := checkID(pr.User, "user"); msg != "" {
		s.addf(pr.UserField, "%s", msg)
	}
	if msg := checkID(pr.Group, "group"); msg != "" {
		s.addf(pr.GroupField, "%s", msg)
	}
	sc := pr.Seccomp
	if sc == nil {
		return
	}
	af := sc.Field + ".default_action"
	switch {
	case sc.DefaultAction == "":
		s.addf(af, "is required (one of %s)", strings.Join(SeccompActions, ", "))
	case !slices.Contains(SeccompActions, sc.DefaultAction):
		s.addf(af, "%q is not a seccomp action (one of %s)", sc.DefaultAction, strings.Join(SeccompActions, ", "))
	}
	if sc.DefaultAction != "SCMP_ACT_ALLOW" && sc.DefaultAction != "SCMP_ACT_LOG" && len(sc.Allowed) == 0 {
		s.addf(sc.Field+".allowed_syscalls", "is empty: with default_action %s nothing could run", sc.DefaultAction)
	}
	seen := map[string]bool{}
	for i, name := range sc.Allowed {
		f := fmt.Sprintf("%s.allowed_syscalls[%d]", sc.Field, i)
		switch {
		case !KnownSyscall(name):
			s.addf(f, "%q is not a Linux syscall", name)
		case seen[name]:
			s.addf(f, "%s is listed twice", name)
		case slices.Contains(AlwaysDenied, name):
			s.addf(f, "%s is always denied in a sandbox and cannot be allowed", name)
		case !pr.AllowExec && slices.Contains(ExecSyscalls, name):
			s.addf(f, "%s conflicts with allow_exec: false", name)
		}
		seen[name] = true
	}
}

// MaxID is the largest uid or gid a sandbox may run as: 4294967295 is
// (uid_t)-1, which the kernel's calls take as "unchanged".
const MaxID = 4294967294

// checkID says what is wrong with a run_as_user or run_as_group, or "".
// A number is read the one way the kernel would and written the one way
// the policy must: "00", "0000" and YAML's 000 are root too, so leading
// zeros are refused rather than compared as strings.
func checkID(id, what string) string {
	if id == "" {
		return ""
	}
	if isRoot(id) {
		return fmt.Sprintf("the sandbox never runs with %s root (0 in any spelling); name an unprivileged %s", what, what)
	}
	if strings.Trim(id, "0123456789") != "" {
		return "" // a name, looked up in the image when the policy is compiled
	}
	n, err := strconv.ParseUint(id, 10, 64)
	switch {
	case err != nil || n > MaxID:
		return fmt.Sprintf("%s id %s is out of range (1-%d)", what, id, uint64(MaxID))
	case strconv.FormatUint(n, 10) != id:
		return fmt.Sprintf("%s id %q: write it without leading zeros (%d)", what, id, n)
	}
	return ""
}

// isRoot reports whether id names uid or gid 0, however it is spelt.
func isRoot(id string) bool {
	if id == "root" {
		return true
	}
	return id != "" && strings.Trim(id, "0") == ""
}

func validateResources(p *Policy, s *errSink) {
	const rf = "sandbox.resources"
	r := p.Resources
	if r.MaxMemoryMB < 0 {
		s.addf(rf+".max_memory_mb", "must be positive")
	} else if r.MaxMemoryMB > 0 && r.MaxMemoryMB < 16 {
		s.addf(rf+".max_memory_mb", "%d MiB is too small to start a sandbox (at least 16)", r.MaxMemoryMB)
	}
	if r.MaxCPUCores < 0 || r.MaxCPUCores > maxCPUCoresLimit {
		s.addf(rf+".max_cpu_cores", "%s is out of range (0-%d)", strconv.FormatFloat(r.MaxCPUCores, 'g', -1, 64), maxCPUCoresLimit)
	}
	if r.MaxExecutionTime < 0 {
		s.addf(rf+".max_execution_time_seconds", "must be positive")
	}
	if r.MaxOpenFiles < 0 || r.MaxOpenFiles > maxOpenFilesLimit || (r.MaxOpenFiles > 0 && r.MaxOpenFiles < 16) {
		s.addf(rf+".max_open_files", "%d is out of range (16-%d)", r.MaxOpenFiles, maxOpenFilesLimit)
	}
}

var (
	enforcements = []string{string(EnforcementEnforce), string(EnforcementAudit)}
	protocols    = []string{"", "rest", "tcp"}
	accesses     = []string{"", "read-only", "read-write", "full"}
	tlsModes     = []string{"", "terminate", "passthrough", "skip"}
	httpMethods  = []string{"*", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)

func validateNetwork(n *Network, s *errSink) {
	type key struct {
		group, host string
		port        int
	}
	if len(n.Egress) > MaxEgressRules {
		// Each list is bounded by the decoder; this is all of them
		// together, reported where the bound is crossed.
		s.addf(n.Egress[MaxEgressRules].Field, "the policy has %d egress rules in all; at most %d are allowed", len(n.Egress), MaxEgressRules)
		return
	}
	seen := map[key]string{}
	for i := range n.Egress {
		r := &n.Egress[i]
		hostless := r.Host == "" && len(r.AllowedIPs) > 0
		var err error
		if hostless {
			validateAddressRule(r, s)
		} else {
			var host string
			host, err = NormalizeHostPattern(r.Host)
			if err != nil {
				if r.Host == "" {
					err = errors.New("is required (or, for a rule by address, allowed_ips)")
				}
				s.addf(r.Field+".host", "%s", err)
			}
			r.Host = host
		}
		for _, p := range r.Ports {
			if err != nil || hostless {
				break
			}
			k := key{r.Group, r.Host, p}
			if prev, dup := seen[k]; dup {
				s.addf(r.Field, "%s:%d duplicates %s", r.Host, p, prev)
				continue
			}
			seen[k] = r.Field
		}
		oneOf(s, r.Field+".enforcement", string(r.Enforcement), enforcements)
		if slices.Contains(uninspectedProtocols, r.Protocol) {
			s.addf(r.Field+".protocol", "%s is not supported yet: openshell's egress gateway inspects HTTP method and path (protocol: rest) or passes TCP through (tcp, or no protocol); use rest with method/path rules, or tcp", r.Protocol)
		} else {
			oneOf(s, r.Field+".protocol", r.Protocol, protocols)
			if (len(r.HTTPRules) > 0 || r.Access != "") && r.Protocol != "rest" {
				s.addf(r.Field+".protocol", "must be rest when rules or access are set (without a protocol they would inspect nothing: NVIDIA OpenShell passes such an endpoint through at TCP level); set protocol: rest, or remove rules and access")
			}
		}
		oneOf(s, r.Field+".access", r.Access, accesses)
		oneOf(s, r.Field+".tls", r.TLS, tlsModes)
		for j, h := range r.HTTPRules {
			if slices.Contains(uninspectedProtocols, r.Protocol) {
				break // refused above: its rules are not HTTP rules
			}
			f := fmt.Sprintf("%s.rules[%d].allow", r.Field, j)
			if !slices.Contains(httpMethods, strings.ToUpper(h.Method)) {
				s.addf(f+".method", "%q is not an HTTP method", h.Method)
			}
			switch {
			case hasControl(h.Path):
				s.addf(f+".path", "%q contains a control character", h.Path)
			case !strings.HasPrefix(h.Path, "/") && h.Path != "*" && h.Path != "**":
				s.addf(f+".path", "%q must start with /", h.Path)
			}
		}
		if r.MaxRequestKB < 0 {
			s.addf(r.Field+".max_request_size_kb", "must be positive")
		}
		if r.MaxResponseMB < 0 {
			s.addf(r.Field+".max_response_size_mb", "must be positive")
		}
	}
}

// uninspectedProtocols are NVIDIA OpenShell's L7 protocols that
// openshell's gateway does not inspect.
var uninspectedProtocols = []string{"websocket", "graphql", "mcp", "json-rpc", "sql"}

// validateAddressRule checks a rule without a host: NVIDIA OpenShell's
// hostless endpoint, which allowed_ips alone bounds. openshell enforces it
// as a rule by address: the sandbox may connect to those addresses on the
// rule's ports (egress.Matcher.MatchIP), never to a name.
func validateAddressRule(r *EgressRule, s *errSink) {
	switch {
	case r.Protocol == "tcp":
		s.addf(r.Field+".host", "is required with protocol: tcp (NVIDIA OpenShell refuses a hostless tcp endpoint too); give the host, or remove protocol for a rule by address")
		return
	case r.Protocol != "" || r.Access != "" || len(r.HTTPRules) > 0:
		s.addf(r.Field+".host", "is required for protocol, access and rules: an endpoint without host is a rule by address, passed through at TCP level; give the host, or remove protocol, access and rules")
		return
	}
	ips := make([]string, len(r.AllowedIPs))
	for i, p := range r.AllowedIPs {
		ips[i] = p.String()
	}
	s.warnf(r.Field, "has no host: the sandbox may connect to %s on port %s by address only; NVIDIA OpenShell also admits any host name that resolves there, openshell does not (its DNS answers only names a rule lists): add rules naming the hosts to reach them by name", strings.Join(ips, ", "), joinPorts(r.Ports))
}

func joinPorts(ports []int) string {
	out := make([]string, len(ports))
	for i, p := range ports {
		out[i] = strconv.Itoa(p)
	}
	return strings.Join(out, ", ")
}

func oneOf(s *errSink, field, v string, allowed []string) {
	if slices.Contains(allowed, v) {
		return
	}
	var names []string
	for _, a := range allowed {
		if a != "" {
			names = append(names, a)
		}
	}
	s.addf(field, "%q is not one of %s", v, strings.Join(names, ", "))
}
