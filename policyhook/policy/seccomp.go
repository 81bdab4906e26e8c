package policy

import "slices"

//go:generate go run ./internal/gensyscalls

// AlwaysDenied are syscalls no sandboxed agent gets, whatever its policy says:
// they change the kernel, other processes, mounts or namespaces, or read
// what the host does. A policy that allows one of them is rejected.
var AlwaysDenied = []string{
	"acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
	"delete_module", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick",
	"get_kernel_syms", "init_module", "ioperm", "iopl", "kcmp", "kexec_file_load",
	"kexec_load", "keyctl", "lookup_dcookie", "mount", "mount_setattr", "move_mount",
	"name_to_handle_at", "nfsservctl", "open_by_handle_at", "open_tree",
	"perf_event_open", "pidfd_getfd", "pivot_root", "process_vm_readv", "process_vm_writev",
	"ptrace", "query_module", "quotactl", "reboot", "request_key", "setns",
	"settimeofday", "swapoff", "swapon", "syslog", "umount2", "unshare",
	"uselib", "userfaultfd", "ustat", "vhangup", "_sysctl",
}

// ExecSyscalls are closed when a policy sets allow_exec: false.
var ExecSyscalls = []string{"execve", "execveat"}

// SeccompActions are the OCI seccomp actions a policy may name as its
// default_action.
var SeccompActions = []string{
	"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
	"SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRAP",
}

// KnownSyscall reports whether name is a Linux syscall on amd64 or arm64.
func KnownSyscall(name string) bool { return knownSyscalls[name] }

// KnownSyscalls lists every syscall name KnownSyscall accepts, sorted.
func KnownSyscalls() []string {
	out := make([]string, 0, len(knownSyscalls))
	for name := range knownSyscalls {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}
