//go:build linux && (amd64 || arm64)

package egress

import "golang.org/x/sys/unix"

// seccompAllowed is what the serving process calls once it serves: the Go
// runtime (threads, memory, signals, timers), sockets it already holds or
// dials (TCP, UDP, the netlink dump of local addresses; splice and
// sendfile, which io.Copy between sockets uses), its keeper's channels
// (sendmsg and recvmsg: a new audit file comes as a descriptor), and
// reading its policy and writing its audit log. Everything else fails
// with EPERM; clone3 fails with ENOSYS (its flags cannot be inspected, so
// glibc falls back to clone, whose flags are checked: no new namespaces).
// Not here: execve, ptrace, mount, unshare, setns, bpf, keyctl, io_uring,
// and every *id call. EPERM rather than kill: a path we missed fails one
// request, loudly, instead of the sandbox's whole network.
//
// The names are the kernel's common ones, which golang.org/x/sys/unix
// numbers for each architecture; seccompArchCalls (seccomp_linux_ARCH.go)
// adds the older calls only some architectures have.
var seccompAllowed = append([]uintptr{
	unix.SYS_READ, unix.SYS_WRITE, unix.SYS_CLOSE, unix.SYS_FSTAT, unix.SYS_NEWFSTATAT, unix.SYS_STATX,
	unix.SYS_LSEEK, unix.SYS_PREAD64, unix.SYS_PWRITE64, unix.SYS_READV, unix.SYS_WRITEV,
	unix.SYS_OPENAT, unix.SYS_GETDENTS64, unix.SYS_READLINKAT, unix.SYS_FCNTL, unix.SYS_DUP, unix.SYS_DUP3,
	unix.SYS_FTRUNCATE, unix.SYS_FSYNC, unix.SYS_FDATASYNC, unix.SYS_RENAMEAT,
	unix.SYS_MMAP, unix.SYS_MUNMAP, unix.SYS_MPROTECT, unix.SYS_MADVISE, unix.SYS_BRK, unix.SYS_MREMAP, unix.SYS_MINCORE,
	unix.SYS_RT_SIGACTION, unix.SYS_RT_SIGPROCMASK, unix.SYS_RT_SIGRETURN, unix.SYS_SIGALTSTACK,
	unix.SYS_TGKILL, unix.SYS_TKILL, unix.SYS_GETPID, unix.SYS_GETTID, unix.SYS_GETPPID,
	unix.SYS_EXIT, unix.SYS_EXIT_GROUP, unix.SYS_FUTEX, unix.SYS_SET_ROBUST_LIST, unix.SYS_RSEQ, unix.SYS_RESTART_SYSCALL,
	unix.SYS_SCHED_YIELD, unix.SYS_SCHED_GETAFFINITY, unix.SYS_NANOSLEEP, unix.SYS_CLOCK_NANOSLEEP,
	unix.SYS_CLOCK_GETTIME, unix.SYS_GETTIMEOFDAY, unix.SYS_GETRLIMIT, unix.SYS_PRLIMIT64,
	unix.SYS_GETUID, unix.SYS_GETEUID, unix.SYS_GETGID, unix.SYS_GETEGID, unix.SYS_UNAME, unix.SYS_GETRANDOM,
	unix.SYS_EPOLL_CREATE1, unix.SYS_EPOLL_CTL, unix.SYS_EPOLL_PWAIT, unix.SYS_EVENTFD2,
	unix.SYS_PIPE2, unix.SYS_PPOLL, unix.SYS_SPLICE, unix.SYS_SENDFILE, unix.SYS_TEE,
	unix.SYS_SOCKET, unix.SYS_CONNECT, unix.SYS_ACCEPT4, unix.SYS_BIND, unix.SYS_LISTEN,
	unix.SYS_GETSOCKNAME, unix.SYS_GETPEERNAME, unix.SYS_GETSOCKOPT, unix.SYS_SETSOCKOPT,
	unix.SYS_SENDTO, unix.SYS_RECVFROM, unix.SYS_SENDMSG, unix.SYS_RECVMSG, unix.SYS_SHUTDOWN,
}, seccompArchCalls...)
