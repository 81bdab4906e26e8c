package egress

import (
	"fmt"
	goruntime "runtime"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// cloneNamespaces are the clone flags that make namespaces.
const cloneNamespaces = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER |
	unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP | unix.CLONE_NEWTIME

// x32SyscallBit marks x32 system calls on x86-64; on arm64 no system
// call number has it, so the same check costs one instruction there.
const x32SyscallBit = 0x40000000

// seccompFilter is the filter allowing only the calls in allowed (the
// serving process's: seccomp_calls_linux.go and seccomp_linux_ARCH.go)
// for the architecture it was built for: a system call made through
// another architecture's entry is killed, and an architecture without a
// table refuses to start the gateway.
func seccompFilter(allowed []uintptr) ([]bpf.RawInstruction, error) {
	if seccompAuditArch == 0 || len(allowed) == 0 {
		return nil, fmt.Errorf("seccomp filter: no table for %s", goruntime.GOARCH)
	}
	const (
		retAllow = unix.SECCOMP_RET_ALLOW
		retEPERM = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
		retNOSYS = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
		retKill  = unix.SECCOMP_RET_KILL_PROCESS
	)
	n := len(allowed)
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 4, Size: 4}, // arch
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: seccompAuditArch, SkipTrue: 1},
		bpf.RetConstant{Val: retKill},
		bpf.LoadAbsolute{Off: 0, Size: 4}, // nr
		// x32 system calls carry bit 30: refused.
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: x32SyscallBit, SkipTrue: uint8(n + 2)}, // to EPERM
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_CLONE3, SkipTrue: uint8(n + 7)}, // to ENOSYS
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_CLONE, SkipTrue: uint8(n + 2)},  // to the flags check
	}
	for i, nr := range allowed {
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

// installSeccomp applies the filter allowing allowed to every thread of
// the process (TSYNC); no_new_privs must be set already.
func installSeccomp(allowed []uintptr) error {
	raw, err := seccompFilter(allowed)
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
