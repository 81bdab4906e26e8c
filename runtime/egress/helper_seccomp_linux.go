//go:build linux && (amd64 || arm64)

package egress

import "slices"

// InstallSeccomp shuts every thread of the calling process, which must
// have no_new_privs, behind a filter that allows the calls in allowed
// (the kernel's common names) and this architecture's older forms of the
// calls the Go runtime makes; any other fails with EPERM, clone3 with
// ENOSYS, a clone that makes a namespace with EPERM, a call through
// another architecture's entry kills the process.
func InstallSeccomp(allowed []uintptr) error {
	return installSeccomp(append(slices.Clone(allowed), seccompArchCalls...))
}
