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

// cloneNamespaceFlags are clone(2)'s flags that make new namespaces;
// unshare and setns are always denied, and clone must not be the way
// around them.
var cloneNamespaceFlags = []uint64{
	0x00020000, // CLONE_NEWNS
	0x02000000, // CLONE_NEWCGROUP
	0x04000000, // CLONE_NEWUTS
	0x08000000, // CLONE_NEWIPC
	0x10000000, // CLONE_NEWUSER
	0x20000000, // CLONE_NEWPID
	0x40000000, // CLONE_NEWNET
}

// modeArgs is where each syscall that sets a file's mode takes it
// (x86_64 and arm64 alike). A sandbox writes into host directories through
// its writable binds; a set-id bit it leaves there would run with the
// file owner's ids for any host user who runs the file.
var modeArgs = []struct {
	name  string
	index uint
}{
	{"chmod", 1}, {"fchmod", 1}, {"fchmodat", 2}, {"fchmodat2", 2},
	{"creat", 1}, {"open", 2}, {"openat", 3}, {"mknod", 1}, {"mknodat", 2},
}

// setIDBits are S_ISUID and S_ISGID.
var setIDBits = []uint64{0o4000, 0o2000}

// narrowing are the rules every sandbox gets on top of its policy's: raw
// and packet sockets, namespaces by clone flags, set-id modes. They go
// before the policy's allowlist, so they hold where it allows the syscall. Syscalls whose arguments sit behind a
// pointer (clone3's flags, openat2's mode) cannot be inspected: they
// answer ENOSYS, and libcs fall back to clone and openat.
func narrowing() []specs.LinuxSyscall {
	deny := func(name string, arg specs.LinuxSeccompArg) specs.LinuxSyscall {
		return specs.LinuxSyscall{Names: []string{name}, Action: specs.ActErrno, ErrnoRet: ptr(uint(eperm)), Args: []specs.LinuxSeccompArg{arg}}
	}
	rules := []specs.LinuxSyscall{
		deny("socket", specs.LinuxSeccompArg{Index: 1, Value: sockMask, ValueTwo: sockRaw, Op: specs.OpMaskedEqual}),
		deny("socket", specs.LinuxSeccompArg{Index: 0, Value: afPacket, Op: specs.OpEqualTo}),
		// runsc's ERRNO is always EPERM, on which glibc's pthread_create
		// gives up; TRACE with no tracer (ptrace is always denied, so
		// there never is one) answers ENOSYS, on which it falls back.
		{Names: []string{"clone3", "openat2"}, Action: specs.ActTrace},
	}
	for _, f := range cloneNamespaceFlags {
		rules = append(rules, deny("clone", specs.LinuxSeccompArg{Index: 0, Value: f, ValueTwo: f, Op: specs.OpMaskedEqual}))
	}
	for _, m := range modeArgs {
		for _, bit := range setIDBits {
			rules = append(rules, deny(m.name, specs.LinuxSeccompArg{Index: m.index, Value: bit, ValueTwo: bit, Op: specs.OpMaskedEqual}))
		}
	}
	return rules
}

type seccomp struct {
	profile *specs.LinuxSeccomp
}

var _ SpecModifier = (*seccomp)(nil)

// NewSeccomp builds the sandbox's syscall filter: the policy's own
// allowlist (or allow-all when it has none), with openshell's always-denied
// syscalls, the narrowing rules, and the extra syscalls in deny (execve
// for allow_exec: false, symlink for block_symlinks) returning EPERM on top.
// gVisor loads the entrypoint itself, so a closed execve still lets the
// entrypoint start.
//
// runsc applies it only with --oci-seccomp; the compiler adds that flag.
// It replaces any filter the engine put in the spec: the policy decides.
func NewSeccomp(sc *policy.Seccomp, deny []string) (SpecModifier, error) {
	// runsc uses the first rule that matches a call (libseccomp would let
	// an ERRNO win wherever it stands): the denials go first.
	p := &specs.LinuxSeccomp{DefaultAction: specs.ActAllow}
	p.Syscalls = append(p.Syscalls,
		specs.LinuxSyscall{Names: append(slices.Clone(policy.AlwaysDenied), deny...), Action: specs.ActErrno, ErrnoRet: ptr(uint(eperm))})
	p.Syscalls = append(p.Syscalls, narrowing()...)
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
