package policyhook

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/openshell/openshell/policyhook/egress"
	"github.com/openshell/openshell/policyhook/policy"
)

// Widening is one way a policy allows more than its ceiling.
type Widening struct {
	Field string // the candidate's field (e.g. sandbox.filesystem.allowed_writes[1])
	Msg   string
}

func (w Widening) String() string { return w.Field + ": " + w.Msg }

// CeilingError lists every way a policy widens its ceiling.
type CeilingError struct {
	Policy, Ceiling string // the two policies' files
	Widenings       []Widening
}

func (e *CeilingError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "policy %s widens the ceiling %s in %d field(s):", e.Policy, e.Ceiling, len(e.Widenings))
	for _, w := range e.Widenings {
		b.WriteString("\n  ")
		b.WriteString(w.String())
	}
	return b.String()
}

// CheckCeiling refuses a policy that allows anything its ceiling does not:
// the error is a *CeilingError naming every widened field. A nil ceiling
// allows everything.
func CheckCeiling(ceiling, p *policy.Policy) error {
	if p == nil {
		return errors.New("check ceiling: policy is nil")
	}
	if ceiling == nil {
		return nil
	}
	if w := Widenings(ceiling, p); len(w) > 0 {
		return &CeilingError{Policy: p.File, Ceiling: ceiling.File, Widenings: w}
	}
	return nil
}

// Widenings compares p with ceiling field by field and returns every field
// in which p allows more. Limits a policy leaves unset count as their
// defaults (policy.Default*), or as no limit where there is no default.
// It is conservative: where it cannot prove p narrower it reports a
// widening, since the cost of a false refusal is a clear error and the
// cost of a false pass is a hole.
func Widenings(ceiling, p *policy.Policy) []Widening {
	var out []Widening
	add := func(field, format string, a ...any) {
		out = append(out, Widening{Field: field, Msg: fmt.Sprintf(format, a...)})
	}
	filesystemWidenings(ceiling.Filesystem, p.Filesystem, add)
	processWidenings(ceiling.Process, p.Process, add)
	resourceWidenings(ceiling.Resources, p.Resources, add)
	networkWidenings(ceiling.Network, p.Network, add)
	inferenceWidenings(ceiling.Inference, p.Inference, add)
	gpuWidenings(ceiling.GPU, p.GPU, add)
	return out
}

type addFunc func(field, format string, a ...any)

// within reports whether path is dir or lies under it.
func within(path, dir string) bool {
	return dir == "/" || path == dir || strings.HasPrefix(path, dir+"/")
}

func withinAny(path string, dirs []policy.PathRule) bool {
	return slices.ContainsFunc(dirs, func(r policy.PathRule) bool { return within(path, r.Path) })
}

func filesystemWidenings(c, p policy.Filesystem, add addFunc) {
	// What is writable is readable too.
	readable := slices.Concat(c.ReadOnly, c.ReadWrite)
	for _, r := range p.ReadOnly {
		if !withinAny(r.Path, readable) {
			add(r.Field, "%s is not within any path the ceiling lets the sandbox read", r.Path)
		}
	}
	for _, r := range p.ReadWrite {
		if !withinAny(r.Path, c.ReadWrite) {
			add(r.Field, "%s is not within any path the ceiling lets the sandbox write", r.Path)
		}
	}
	if p.IncludeWorkdir && !c.IncludeWorkdir {
		add("filesystem.include_workdir", "the working directory is writable; the ceiling does not include it")
	}
	limitWidening("filesystem.max_file_size_mb", c.MaxFileSizeMB, p.MaxFileSizeMB, 0, add)
	limitWidening("filesystem.max_total_size_mb", c.MaxTotalSizeMB, p.MaxTotalSizeMB, policy.DefaultTmpSizeMB, add)
	if c.BlockSymlinks && !p.BlockSymlinks {
		add("filesystem.block_symlinks", "is false; the ceiling blocks symlinks")
	}
}

// limitWidening compares a limit where 0 means def, and a def of 0 means
// no limit at all.
func limitWidening[T int64 | float64](field string, c, p, def T, add addFunc) {
	if c == 0 {
		c = def
	}
	if p == 0 {
		p = def
	}
	switch {
	case c == 0:
	case p == 0:
		add(field, "is unlimited; the ceiling's limit is %v", c)
	case p > c:
		add(field, "%v is above the ceiling's %v", p, c)
	}
}

func processWidenings(c, p policy.Process, add addFunc) {
	if p.AllowExec && !c.AllowExec {
		add("process.allow_exec", "is true; the ceiling forbids exec")
	}
	limitWidening("process.max_processes", c.MaxProcesses, p.MaxProcesses, policy.DefaultMaxProcesses, add)
	// The ceiling pins the identity only where it names one: its defaults
	// (nobody) leave the choice to the policy.
	if c.UserField != "" || c.GroupField != "" {
		if !sameID(p.User, c.User) || !sameID(p.Group, c.Group) {
			add("process.run_as_user", "runs as %s:%s; the ceiling pins %s:%s", idOr(p.User), idOr(p.Group), idOr(c.User), idOr(c.Group))
		}
	}
	seccompWidenings(c.Seccomp, p.Seccomp, add)
}

func idOr(id string) string {
	if id == "" {
		return "(primary group)"
	}
	return id
}

// sameID compares two user or group ids, numerically when both are numbers.
func sameID(a, b string) bool {
	x, errA := strconv.ParseUint(a, 10, 32)
	y, errB := strconv.ParseUint(b, 10, 32)
	if errA == nil && errB == nil {
		return x == y
	}
	return a == b
}

// allowingActions are the seccomp actions that let a syscall through.
var allowingActions = []string{"SCMP_ACT_ALLOW", "SCMP_ACT_LOG"}

func seccompWidenings(c, p *policy.Seccomp, add addFunc) {
	if c == nil || slices.Contains(allowingActions, c.DefaultAction) {
		return // openshell's own denials apply to both
	}
	if p == nil {
		add("process.seccomp", "has no syscall filter; the ceiling denies syscalls by default (%s)", c.DefaultAction)
		return
	}
	if slices.Contains(allowingActions, p.DefaultAction) {
		add(p.Field+".default_action", "%s lets every syscall through; the ceiling's is %s", p.DefaultAction, c.DefaultAction)
		return
	}
	var extra []string
	for _, s := range p.Allowed {
		if !slices.Contains(c.Allowed, s) {
			extra = append(extra, s)
		}
	}
	if len(extra) > 0 {
		add(p.Field+".allowed_syscalls", "%s not allowed by the ceiling", strings.Join(extra, ", "))
	}
}

func resourceWidenings(c, p policy.Resources, add addFunc) {
	limitWidening("resources.max_memory_mb", c.MaxMemoryMB, p.MaxMemoryMB, 0, add)
	limitWidening("resources.max_cpu_cores", c.MaxCPUCores, p.MaxCPUCores, 0, add)
	limitWidening("resources.max_execution_time_seconds", c.MaxExecutionTime.Seconds(), p.MaxExecutionTime.Seconds(), 0, add)
	limitWidening("resources.max_open_files", c.MaxOpenFiles, p.MaxOpenFiles, policy.DefaultMaxOpenFiles, add)
}

func networkWidenings(c, p policy.Network, add addFunc) {
	if c.BlockMetadata && !p.BlockMetadata {
		add("network.block_metadata_service", "is false; the ceiling blocks the metadata service")
	}
	if c.BlockPrivateRanges && !p.BlockPrivateRanges {
		add("network.block_private_ranges", "is false; the ceiling blocks private ranges")
	}
	if c.DNSFiltering && !p.DNSFiltering {
		add("network.dns_filtering", "is false; the ceiling filters DNS")
	}
	for _, r := range p.Egress {
		var wide []string
		for _, port := range r.Ports {
			if !slices.ContainsFunc(c.Egress, func(cr policy.EgressRule) bool { return ruleCovers(cr, r, port) }) {
				wide = append(wide, fmt.Sprintf("%s:%d", r.Host, port))
			}
		}
		if len(wide) > 0 {
			add(r.Field, "%s not within any egress rule of the ceiling (host, port, allowed_ips, protocol, rules, binaries and limits)", strings.Join(wide, ", "))
		}
	}
}

// ruleCovers reports whether ceiling rule c allows everything rule p
// allows on port.
func ruleCovers(c, p policy.EgressRule, port int) bool {
	if !slices.Contains(c.Ports, port) || !hostCovers(c.Host, p.Host) {
		return false
	}
	for _, pre := range p.AllowedIPs {
		if !slices.ContainsFunc(c.AllowedIPs, func(cp netip.Prefix) bool { return prefixCovers(cp, pre) }) {
			return false
		}
	}
	if c.Enforcement != policy.EnforcementAudit && p.Enforcement == policy.EnforcementAudit {
		return false
	}
	if c.Protocol == "rest" {
		if p.Protocol != "rest" || accessRank(p.Access) > accessRank(c.Access) {
			return false
		}
		if len(c.HTTPRules) > 0 && (len(p.HTTPRules) == 0 || !subset(p.HTTPRules, c.HTTPRules)) {
			return false
		}
	}
	if c.TLS != "" && p.TLS != c.TLS {
		return false
	}
	if c.TLSRequired && !p.TLSRequired {
		return false
	}
	if len(c.Binaries) > 0 && (len(p.Binaries) == 0 || !binariesCovered(p.Binaries, c.Binaries)) {
		return false
	}
	if c.RateLimit != nil && (p.RateLimit == nil || rate(p.RateLimit) > rate(c.RateLimit)) {
		return false
	}
	if c.MaxRequestKB > 0 && (p.MaxRequestKB == 0 || p.MaxRequestKB > c.MaxRequestKB) {
		return false
	}
	if c.MaxResponseMB > 0 && (p.MaxResponseMB == 0 || p.MaxResponseMB > c.MaxResponseMB) {
		return false
	}
	return true
}

// hostCovers reports whether ceiling host pattern c covers every name p
// does. A "*." wildcard is taken to cover one label more, whatever the
// gateway's own wildcard depth: that holds under both "*." semantics (any
// depth, one label), so a change of semantics can never turn a ceiling's
// check into a hole. "**." covers any depth.
func hostCovers(c, p string) bool {
	c, p = normalizeHost(c), normalizeHost(p)
	if c == p {
		return true
	}
	if rest, ok := strings.CutPrefix(c, "**."); ok {
		return strings.HasSuffix(p, "."+rest)
	}
	if rest, ok := strings.CutPrefix(c, "*."); ok {
		label, ok := strings.CutSuffix(p, "."+rest)
		return ok && label != "" && !strings.Contains(label, ".") && !strings.Contains(label, "*")
	}
	return false
}

func normalizeHost(h string) string { return strings.TrimSuffix(strings.ToLower(h), ".") }

func prefixCovers(c, p netip.Prefix) bool {
	return c.Bits() <= p.Bits() && c.Contains(p.Masked().Addr())
}

// accessRank orders the REST access levels; unset is full access.
func accessRank(a string) int {
	switch a {
	case "read-only":
		return 1
	case "read-write":
		return 2
	}
	return 3
}

func rate(r *policy.RateLimit) float64 {
	if r.Per <= 0 {
		return float64(r.Count)
	}
	return float64(r.Count) / r.Per.Seconds()
}

// binariesCovered reports whether every pattern of p is covered by one
// of the ceiling's patterns c.
func binariesCovered(p, c []string) bool {
	for _, pp := range p {
		if !slices.ContainsFunc(c, func(cp string) bool { return binaryCovers(cp, pp) }) {
			return false
		}
	}
	return true
}

// binaryCovers reports whether ceiling pattern c matches every path
// pattern p does. It is sound, not complete: the same pattern; a plain
// path c matches; or c is a plain prefix and "**" (such as /usr/**)
// and p starts with that prefix. Anything else counts as wider.
func binaryCovers(c, p string) bool {
	if c == p {
		return true
	}
	if !strings.ContainsAny(p, "*?") {
		return egress.BinaryMatch(c, p)
	}
	prefix, ok := strings.CutSuffix(c, "**")
	return ok && !strings.ContainsAny(prefix, "*?") && strings.HasPrefix(p, prefix)
}

func subset[T comparable](a, b []T) bool {
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

func gpuWidenings(c, p *policy.GPU, add addFunc) {
	if p == nil {
		return
	}
	if c == nil {
		add(p.Field, "gives the sandbox GPUs; the ceiling has no gpu section")
		return
	}
	if !slices.Contains(c.Devices, "all") {
		var extra []string
		for _, d := range p.Devices {
			if !slices.Contains(c.Devices, d) {
				extra = append(extra, d)
			}
		}
		if len(extra) > 0 {
			add(p.Field+".devices", "%s not allowed by the ceiling", strings.Join(extra, ", "))
		}
	}
	if caps := gpuCaps(c); !subset(gpuCaps(p), caps) {
		add(p.Field+".capabilities", "%s exceeds the ceiling's %s", strings.Join(gpuCaps(p), ","), strings.Join(caps, ","))
	}
	if p.AllowUnsupportedDriver && !c.AllowUnsupportedDriver {
		add(p.Field+".allow_unsupported_driver", "is true; the ceiling requires a supported driver")
	}
}

func gpuCaps(g *policy.GPU) []string {
	if len(g.Capabilities) == 0 {
		return policy.DefaultGPUCapabilities
	}
	if slices.Contains(g.Capabilities, "all") {
		return policy.GPUCapabilities
	}
	return g.Capabilities
}
