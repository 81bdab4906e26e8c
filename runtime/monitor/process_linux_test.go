package monitor

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestSeccompAllowed: the monitor's allowlist names each call once and
// none that reaches a file by name, the network, another process or new
// privileges.
func TestSeccompAllowed(t *testing.T) {
	seen := map[uintptr]bool{}
	for _, nr := range seccompAllowed {
		if seen[nr] {
			t.Errorf("system call %d is listed twice", nr)
		}
		seen[nr] = true
	}
	for name, nr := range map[string]uintptr{
		"openat": unix.SYS_OPENAT, "socket": unix.SYS_SOCKET, "connect": unix.SYS_CONNECT, "bind": unix.SYS_BIND,
		"execve": unix.SYS_EXECVE, "renameat": unix.SYS_RENAMEAT, "unlinkat": unix.SYS_UNLINKAT, "ptrace": unix.SYS_PTRACE,
		"kill": unix.SYS_KILL, "setuid": unix.SYS_SETUID, "process_vm_readv": unix.SYS_PROCESS_VM_READV,
	} {
		if seen[nr] {
			t.Errorf("%s is allowed", name)
		}
	}
}
