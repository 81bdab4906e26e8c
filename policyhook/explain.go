package policyhook

import (
	"fmt"
	"strings"

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

	if len(p.Network.Egress) == 0 {
		add("network: no egress rules", "runsc --network=none: loopback only", "every connection out")
	}
	for _, r := range p.Network.Egress {
		add(fmt.Sprintf("egress %s:%s", r.Host, joinInts(r.Ports)), "NOT ACTIVE: needs the egress gateway; runsc --network=none", "this connection too (fail closed)")
	}
	add("cloud metadata, link-local, private ranges", "runsc --network=none", "169.254.169.254, fd00:ec2::254, 10/8, 172.16/12, 192.168/16")
	if p.Inference != nil {
		add("inference: "+p.Inference.RoutingEndpoint, "NOT ACTIVE: needs the egress gateway", "inference.local (fail closed)")
	}
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
