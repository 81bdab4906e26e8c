package egress

import "golang.org/x/sys/unix"

// seccompAuditArch is the architecture the filter admits: a system call
// through another entry (AArch32 compat) is killed.
const seccompAuditArch = unix.AUDIT_ARCH_AARCH64

// seccompArchCalls: arm64 has only the generic table (no rename, poll or
// epoll_wait; their *at and p* forms are in the common list).
var seccompArchCalls []uintptr
