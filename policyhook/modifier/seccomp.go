package modifier

import (
	"fmt"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/openshell/openshell/policyhook/policy"
)

const (
	eperm    = 1  // errno returned for every denied syscall
	sockRaw  = 3  // SOCK_RAW
	sockMask = 15 // the type bits of socket(2)'s second argument (SOCK_TYPE_MASK)
	afPacket = 17 // AF_PACKET
)

type seccomp struct {
	profile *specs.LinuxSeccomp
}

var _ SpecModifier = (*seccomp)(nil)

// NewSeccomp builds the sandbox's syscall filter: the policy's own
// allowlist (or allow-all when it has none), with openshell's always-denied
// syscalls, raw and packet sockets, and the extra syscalls in deny (execve
// for allow_exec: false, symlink for block_symlinks) returning EPERM on top.
// gVisor loads the entrypoint itself, so a closed execve still lets the
// entrypoint start.
//
// runsc applies it only with --oci-seccomp; the compiler adds that flag.
// It replaces any filter the engine put in the spec: the policy decides.
func NewSeccomp(sc *policy.Seccomp, deny []string) (SpecModifier, error) {
	p := &specs.LinuxSeccomp{DefaultAction: specs.ActAllow}
	if sc != nil {
		p.DefaultAction = specs.LinuxSeccompAction(sc.DefaultAction)
		if p.DefaultAction == specs.ActErrno {
			p.DefaultErrnoRet = ptr(uint(eperm))
		}
		allowed := slices.DeleteFunc(slices.Clone(sc.Allowed), func(n string) bool { return slices.Contains(deny, n) })
		for _, n := range allowed {
			if slices.Contains(policy.AlwaysDenied, n) {
				return nil, fmt.Errorf("seccomp: %s is always denied and cannot be allowed", n)
			}
		}
		if len(allowed) > 0 {
			p.Syscalls = append(p.Syscalls, specs.LinuxSyscall{Names: allowed, Action: specs.ActAllow})
		}
	}
	p.Syscalls = append(p.Syscalls,
		specs.LinuxSyscall{Names: append(slices.Clone(policy.AlwaysDenied), deny...), Action: specs.ActErrno, ErrnoRet: ptr(uint(eperm))},
		// An ERRNO rule wins over an ALLOW for the same syscall, so these
		// hold even when the policy allows socket.
		specs.LinuxSyscall{Names: []string{"socket"}, Action: specs.ActErrno, ErrnoRet: ptr(uint(eperm)),
			Args: []specs.LinuxSeccompArg{{Index: 1, Value: sockMask, ValueTwo: sockRaw, Op: specs.OpMaskedEqual}}},
		specs.LinuxSyscall{Names: []string{"socket"}, Action: specs.ActErrno, ErrnoRet: ptr(uint(eperm)),
			Args: []specs.LinuxSeccompArg{{Index: 0, Value: afPacket, Op: specs.OpEqualTo}}},
	)
	return &seccomp{profile: p}, nil
}

func (m *seccomp) Modify(s *specs.Spec) error {
	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	p := *m.profile
	p.Syscalls = slices.Clone(m.profile.Syscalls)
	s.Linux.Seccomp = &p
	return nil
}

func ptr[T any](v T) *T { return &v }
