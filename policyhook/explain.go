package policyhook

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/openshell/openshell/nvproxy"
	"github.com/openshell/openshell/policyhook/l7"
	"github.com/openshell/openshell/policyhook/modifier"
	"github.com/openshell/openshell/policyhook/policy"
)

// Row is one line of `openshell policy explain`: a rule, what enforces it
// under gVisor, and what it stops.
type Row struct {
	Rule       string
	EnforcedBy string
	Blocks     string
}

// Explain describes how each part of a compiled policy is enforced.
func Explain(c *Compiled) []Row {
	p := c.Policy
	fs := p.Filesystem
	var rows []Row
	add := func(rule, by, blocks string) { rows = append(rows, Row{rule, by, blocks}) }

	add("read-only: "+paths(fs.ReadOnly, "(none)"), "read-only bind mounts on an empty read-only root", "writes there (EROFS); every path not listed does not exist (ENOENT)")
	rw := paths(fs.ReadWrite, "(none)")
	if fs.IncludeWorkdir {
		rw += " + working directory"
	}
	add("read-write: "+rw, "read-write bind mounts", "nothing inside them; writes reach the image or host directory")
	tmp := fs.MaxTotalSizeMB
	if tmp == 0 {
		tmp = policy.DefaultTmpSizeMB
	}
	add(fmt.Sprintf("/tmp: %d MiB", tmp), "tmpfs of the sandbox's own", "writes past the size (ENOSPC)")
	add("credential files", "/dev/null bound over "+strings.Join(modifier.CredentialFiles, ", "), "reading password hashes and sudo rules")
	add("symlinks", "resolved inside gVisor's view", "escaping the mount view through a link or ..")
	if fs.BlockSymlinks {
		add("block_symlinks", "seccomp: "+strings.Join(SymlinkSyscalls, ", ")+" -> EPERM", "creating symlinks")
	}
	if fs.MaxFileSizeMB > 0 {
		add(fmt.Sprintf("max_file_size_mb: %d", fs.MaxFileSizeMB), "RLIMIT_FSIZE", "growing a file past the limit (SIGXFSZ)")
	}

	add(fmt.Sprintf("user %d:%d", c.UID, c.GID), "OCI process.user", "running as root")
	add("privileges", "no capabilities, no_new_privileges", "chown, mknod, raw sockets, setuid binaries")
	if p.Process.AllowExec {
		add("allow_exec: true", "-", "nothing: programs may run other programs")
	} else {
		add("allow_exec: false", "seccomp: execve, execveat -> EPERM (runsc --oci-seccomp)", "running any program but the entrypoint")
	}
	if sc := p.Process.Seccomp; sc != nil {
		add(fmt.Sprintf("seccomp: %s, %d allowed", sc.DefaultAction, len(sc.Allowed)), "linux.seccomp in the gVisor kernel (runsc --oci-seccomp)", "every syscall not listed")
	}
	add(fmt.Sprintf("always denied: %d syscalls", len(policy.AlwaysDenied)), "seccomp -> EPERM", "ptrace, mount, bpf, kexec, module loading, namespaces, keyrings")
	add("raw and packet sockets", "seccomp on socket(2) arguments -> EPERM", "crafting packets, sniffing")

	procs := p.Process.MaxProcesses
	if procs == 0 {
		procs = policy.DefaultMaxProcesses
	}
	add(fmt.Sprintf("max_processes: %d", procs), "RLIMIT_NPROC, counted by the gVisor kernel", "fork bombs (EAGAIN)")
	files := p.Resources.MaxOpenFiles
	if files == 0 {
		files = policy.DefaultMaxOpenFiles
	}
	add(fmt.Sprintf("max_open_files: %d", files), "RLIMIT_NOFILE", "opening more files (EMFILE)")
	if r := p.Resources; r.MaxMemoryMB > 0 {
		add(fmt.Sprintf("max_memory_mb: %d", r.MaxMemoryMB), "cgroup memory limit on the whole sandbox", "using more memory: the sandbox is killed")
	}
	if r := p.Resources; r.MaxCPUCores > 0 {
		add(fmt.Sprintf("max_cpu_cores: %g", r.MaxCPUCores), "cgroup CPU quota", "using more CPU time: it is throttled")
	}
	if c.Timeout > 0 {
		add("max_execution_time: "+c.Timeout.String(), "the runtime, which kills the sandbox", "running longer")
	}

	rows = append(rows, explainNetwork(c)...)
	if p.Inference != nil {
		rows = append(rows, inferenceRows(c)...)
	}
	rows = append(rows, explainGPU(c)...)
	for _, e := range p.Env {
		add("env "+e.Name, "process.env", "-")
	}
	return rows
}

func paths(rules []policy.PathRule, none string) string {
	if len(rules) == 0 {
		return none
	}
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.Path
	}
	return strings.Join(out, ", ")
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, ",")
}

// explainNetwork describes the network as the runtime sets it up: no
// network at all, or the egress gateway and each rule it holds.
func explainNetwork(c *Compiled) []Row {
	n := c.Policy.Network
	var rows []Row
	add := func(rule, by, blocks string) { rows = append(rows, Row{rule, by, blocks}) }
	switch {
	case c.Egress && c.Gateway != nil:
	case len(n.Egress) == 0:
		add("network: no egress rules", "runsc --network=none: loopback only", "every connection out")
		add("cloud metadata, link-local, private ranges", "runsc --network=none", "169.254.169.254, fd00:ec2::254, 10/8, 172.16/12, 192.168/16")
		return rows
	default:
		for _, r := range n.Egress {
			add(fmt.Sprintf("egress %s:%s", r.Host, joinInts(r.Ports)), "NOT ACTIVE: needs the egress gateway; runsc --network=none", "this connection too (fail closed)")
		}
		add("cloud metadata, link-local, private ranges", "runsc --network=none", "169.254.169.254, fd00:ec2::254, 10/8, 172.16/12, 192.168/16")
		return rows
	}
	g := c.Gateway
	add("network: egress gateway", "own network namespace "+g.Netns+", whose only link leads to the sandbox's egress gateway (runsc --network=sandbox)", "every connection the rules below do not allow")
	dns := "names no rule allows (NXDOMAIN): DNS cannot carry data out"
	if !n.DNSFiltering {
		dns = "nothing: dns_filtering is off, every name resolves (connections are still checked)"
	}
	add("DNS", "/etc/resolv.conf bound read-only from "+g.ResolvConf+": the gateway's resolver only", dns)
	if g.ProxyURL != "" {
		add("proxy variables", "HTTP_PROXY, HTTPS_PROXY, http_proxy, https_proxy = "+g.ProxyURL+"; NO_PROXY = localhost,127.0.0.1", "-")
	}
	add("TCP 80 and 443", "transparent capture by the gateway (Host header, TLS SNI)", "programs that ignore the proxy variables still reach only the gateway")
	add("every other port and protocol", "refused at the gateway's end of the link (nftables, outside gVisor)", "connections that bypass the proxy; UDP but DNS to the gateway")
	for _, r := range n.Egress {
		rows = append(rows, explainEndpoint(r, n.Egress)...)
	}
	add("cloud metadata, link-local, loopback", "the gateway, whatever a rule or a DNS answer says", "169.254.169.254, fd00:ec2::254, 100.100.100.200, 127/8, 169.254/16, fe80::/10, multicast")
	if n.BlockPrivateRanges {
		add("private ranges", "the gateway, unless a rule's allowed_ips lists them", "10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7")
	} else {
		add("private ranges", "block_private_ranges: false: reachable where a rule allows the name", "-")
	}
	return rows
}

// explainEndpoint is one egress rule: where it goes, how the gateway
// holds it, and what of it is not enforced.
func explainEndpoint(r policy.EgressRule, all []policy.EgressRule) []Row {
	var rows []Row
	add := func(rule, by, blocks string) { rows = append(rows, Row{rule, by, blocks}) }
	rule := fmt.Sprintf("egress %s:%s", r.Host, joinInts(r.Ports))
	if r.Name != "" && r.Name != r.Host {
		rule += " (" + r.Name + ")"
	}
	audit := r.Enforcement == policy.EnforcementAudit
	if audit {
		rule += " [audit-only]"
	}
	inspected := l7.Inspects(&r)
	by := "egress gateway: TLS passthrough (SNI checked, bytes spliced)"
	blocks := "other hosts and ports"
	if inspected {
		by = "egress gateway: terminates TLS and decides each HTTP request"
		blocks = "other hosts and ports; requests the access preset and rules below do not allow"
	}
	if audit {
		blocks = "nothing: what this rule would deny is recorded as would-deny and let through"
	}
	add(rule, by, blocks)
	per := "gateway, per HTTP request"
	if audit {
		per += " (audit-only: recorded, not enforced)"
	}
	if r.Access != "" {
		add("  access: "+r.Access, per, "requests the "+r.Access+" preset does not allow")
	}
	for _, h := range r.HTTPRules {
		add("  allow "+strings.ToUpper(h.Method)+" "+h.Path, per, "-")
	}
	if len(r.AllowedIPs) > 0 {
		ips := make([]string, len(r.AllowedIPs))
		for i, a := range r.AllowedIPs {
			ips[i] = a.String()
		}
		add("  allowed_ips: "+strings.Join(ips, ", "), "gateway: the addresses the name may resolve to or be dialled at", "-")
	}
	if lim := limits(r); lim != "" {
		how := "gateway"
		blocks := "traffic past them"
		if audit {
			how, blocks = "gateway (audit-only: recorded, not enforced)", "nothing"
		}
		add("  "+lim, how, blocks)
	}
	if len(r.Binaries) > 0 {
		// The gateway asks the sandbox's sentry which executable opened
		// the connection; a copy on a writable mount is never a match, or
		// the agent could name its own program /usr/bin/git.
		how := "gateway, per connection: the executable the sandbox's sentry reports for the connecting process (openshell's runsc)"
		blocks := "connections from other executables, and from copies on writable paths"
		if audit {
			how, blocks = how+" (audit-only: recorded, not enforced)", "nothing"
		}
		// Rules add up: one without binaries for the same host and a
		// port of this one lets every executable through there.
		if o := openOverlap(r, all); o != nil {
			blocks = fmt.Sprintf("nothing on %s: %s allows every executable there", joinInts(sharedPorts(r, *o)), o.Field)
		}
		add("  only from binaries: "+strings.Join(r.Binaries, ", ")+" (on a read-only mount)", how, blocks)
	}
	return rows
}

// limits lists a rule's rate and size limits, "" when it has none.
func limits(r policy.EgressRule) string {
	var out []string
	if rl := r.RateLimit; rl != nil {
		per := map[time.Duration]string{time.Second: "second", time.Minute: "minute", time.Hour: "hour"}[rl.Per]
		if per == "" {
			per = rl.Per.String()
		}
		out = append(out, fmt.Sprintf("rate_limit %d/%s", rl.Count, per))
	}
	if r.MaxRequestKB > 0 {
		out = append(out, fmt.Sprintf("max_request_size_kb %d", r.MaxRequestKB))
	}
	if r.MaxResponseMB > 0 {
		out = append(out, fmt.Sprintf("max_response_size_mb %d", r.MaxResponseMB))
	}
	if r.TLSRequired {
		out = append(out, "tls_required")
	}
	return strings.Join(out, ", ")
}

// explainGPU describes a gpu section: what nvproxy exposes, and where
// the device nodes come from (found when the sandbox is created; compile
// reads nothing on the host).
func explainGPU(c *Compiled) []Row {
	g := c.Policy.GPU
	if g == nil {
		return []Row{{"gpu: none", "the runtime refuses a spec that asks for GPUs (devices, hooks, CDI or nvproxy annotations)", "GPU access"}}
	}
	return []Row{
		{fmt.Sprintf("gpu: devices %s, capabilities %s", strings.Join(g.Devices, ","), strings.Join(nvproxy.Capabilities(g), ",")),
			"runsc " + strings.Join(nvproxy.Flags(g), " ") + "; only nvidiactl, nvidia-uvm and the named nvidia# nodes are kept",
			"other GPUs, other NVIDIA and DRI devices, driver capabilities not listed"},
		{"gpu device nodes", "found by the runtime when the sandbox is created (the engine's, else the host's CDI specs, else /dev/nvidia*); compiling reads nothing on the host", "-"},
	}
}

// openOverlap is a rule without binaries that allows a name r covers (or
// all of r's names) on one of r's ports, or nil.
func openOverlap(r policy.EgressRule, all []policy.EgressRule) *policy.EgressRule {
	for i, o := range all {
		if len(o.Binaries) > 0 || o.Host == "" || len(sharedPorts(r, o)) == 0 {
			continue
		}
		if hostCovers(o.Host, r.Host) || hostCovers(r.Host, o.Host) {
			return &all[i]
		}
	}
	return nil
}

func sharedPorts(a, b policy.EgressRule) []int {
	var out []int
	for _, p := range a.Ports {
		if slices.Contains(b.Ports, p) {
			out = append(out, p)
		}
	}
	return out
}
