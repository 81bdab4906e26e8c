package egress

import (
	"fmt"
	goruntime "runtime"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// seccompAllowed is what the serving process calls once it serves: the Go
// runtime (threads, memory, signals, timers), sockets it already holds or
// dials (TCP, UDP, the netlink dump of local addresses; splice and
// sendfile, which io.Copy between sockets uses), and reading its
// policy and writing its audit log. Everything else fails with EPERM;
// clone3 fails with ENOSYS (its flags cannot be inspected, so glibc falls
// back to clone, whose flags are checked: no new namespaces). Not here:
// execve, ptrace, mount, unshare, setns, bpf, keyctl, io_uring, and every
// *id call. EPERM rather than kill: a path we missed fails one request,
// loudly, instead of the sandbox's whole network.
var seccompAllowed = []uintptr{
	unix.SYS_READ, unix.SYS_WRITE, unix.SYS_CLOSE, unix.SYS_FSTAT, unix.SYS_NEWFSTATAT, unix.SYS_STATX,
	unix.SYS_LSEEK, unix.SYS_PREAD64, unix.SYS_PWRITE64, unix.SYS_READV, unix.SYS_WRITEV,
	unix.SYS_OPENAT, unix.SYS_GETDENTS64, unix.SYS_READLINKAT, unix.SYS_FCNTL, unix.SYS_DUP, unix.SYS_DUP3,
	unix.SYS_FTRUNCATE, unix.SYS_FSYNC, unix.SYS_FDATASYNC, unix.SYS_RENAMEAT, unix.SYS_RENAME,
	unix.SYS_MMAP, unix.SYS_MUNMAP, unix.SYS_MPROTECT, unix.SYS_MADVISE, unix.SYS_BRK, unix.SYS_MREMAP, unix.SYS_MINCORE,
	unix.SYS_RT_SIGACTION, unix.SYS_RT_SIGPROCMASK, unix.SYS_RT_SIGRETURN, unix.SYS_SIGALTSTACK,
	unix.SYS_TGKILL, unix.SYS_TKILL, unix.SYS_GETPID, unix.SYS_GETTID, unix.SYS_GETPPID,
	unix.SYS_EXIT, unix.SYS_EXIT_GROUP, unix.SYS_FUTEX, unix.SYS_SET_ROBUST_LIST, unix.SYS_RSEQ, unix.SYS_RESTART_SYSCALL,
	unix.SYS_SCHED_YIELD, unix.SYS_SCHED_GETAFFINITY, unix.SYS_NANOSLEEP, unix.SYS_CLOCK_NANOSLEEP,
	unix.SYS_CLOCK_GETTIME, unix.SYS_GETTIMEOFDAY, unix.SYS_GETRLIMIT, unix.SYS_PRLIMIT64,
	unix.SYS_GETUID, unix.SYS_GETEUID, unix.SYS_GETGID, unix.SYS_GETEGID, unix.SYS_UNAME, unix.SYS_GETRANDOM,
	unix.SYS_EPOLL_CREATE1, unix.SYS_EPOLL_CTL, unix.SYS_EPOLL_PWAIT, unix.SYS_EPOLL_WAIT, unix.SYS_EVENTFD2,
	unix.SYS_PIPE2, unix.SYS_POLL, unix.SYS_PPOLL, unix.SYS_SPLICE, unix.SYS_SENDFILE, unix.SYS_TEE,
	unix.SYS_SOCKET, unix.SYS_CONNECT, unix.SYS_ACCEPT4, unix.SYS_BIND, unix.SYS_LISTEN,
	unix.SYS_GETSOCKNAME, unix.SYS_GETPEERNAME, unix.SYS_GETSOCKOPT, unix.SYS_SETSOCKOPT,
	unix.SYS_SENDTO, unix.SYS_RECVFROM, unix.SYS_SENDMSG, unix.SYS_RECVMSG, unix.SYS_SHUTDOWN,
}

// cloneNamespaces are the clone flags that make namespaces.
const cloneNamespaces = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER |
	unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP | unix.CLONE_NEWTIME

const (
	auditArchX8664 = 0xc000003e
	x32SyscallBit  = 0x40000000
)

// seccompFilter is the serving process's filter (x86-64; another
// architecture is killed at its first system call, so a port must add
// its own table).
func seccompFilter() ([]bpf.RawInstruction, error) {
	if goruntime.GOARCH != "amd64" {
		return nil, fmt.Errorf("seccomp filter: no table for %s", goruntime.GOARCH)
	}
	const (
		retAllow = unix.SECCOMP_RET_ALLOW
		retEPERM = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
		retNOSYS = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
		retKill  = unix.SECCOMP_RET_KILL_PROCESS
	)
	n := len(seccompAllowed)
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 4, Size: 4}, // arch
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: auditArchX8664, SkipTrue: 1},
		bpf.RetConstant{Val: retKill},
		bpf.LoadAbsolute{Off: 0, Size: 4}, // nr
		// x32 system calls carry bit 30: refused.
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: x32SyscallBit, SkipTrue: uint8(n + 2)}, // to EPERM
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_CLONE3, SkipTrue: uint8(n + 7)}, // to ENOSYS
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_CLONE, SkipTrue: uint8(n + 2)},  // to the flags check
	}
	for i, nr := range seccompAllowed {
		// Allowed: jump to the allow after the list.
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(nr), SkipTrue: uint8(n - i)})
	}
	prog = append(prog,
		bpf.RetConstant{Val: retEPERM},
		bpf.RetConstant{Val: retAllow},
		// clone: flags (args[0], low word) must make no namespace.
		bpf.LoadAbsolute{Off: 16, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: cloneNamespaces, SkipTrue: 1},
		bpf.RetConstant{Val: retAllow},
		bpf.RetConstant{Val: retEPERM},
		bpf.RetConstant{Val: retNOSYS}, // clone3
	)
	if n+7 > 255 {
		return nil, fmt.Errorf("seccomp filter: %d system calls do not fit one jump", n)
	}
	return bpf.Assemble(prog)
}

// installSeccomp applies the filter to every thread of the process
// (TSYNC); no_new_privs must be set already.
func installSeccomp() error {
	raw, err := seccompFilter()
	if err != nil {
		return err
	}
	fprog := unix.SockFprog{Len: uint16(len(raw)), Filter: (*unix.SockFilter)(unsafe.Pointer(&raw[0]))}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog))); errno != 0 {
		return fmt.Errorf("seccomp filter: %w", errno)
	}
	goruntime.KeepAlive(raw)
	return nil
}
