package egress

import "golang.org/x/sys/unix"

// seccompAuditArch is the architecture the filter admits: a system call
// through another entry (i386's int 0x80) is killed.
const seccompAuditArch = unix.AUDIT_ARCH_X86_64

// seccompArchCalls are the x86-64 calls the Go runtime and libc still
// make that newer architectures only have in their *at and p* forms.
var seccompArchCalls = []uintptr{unix.SYS_RENAME, unix.SYS_POLL, unix.SYS_EPOLL_WAIT}
