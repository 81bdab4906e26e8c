package egress

import (
	"slices"
	"testing"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// TestSeccompFilter runs the filter in the BPF VM over seccomp_data.
func TestSeccompFilter(t *testing.T) {
	if seccompAuditArch == 0 {
		t.Skip("no seccomp table for this architecture: the gateway refuses to start")
	}
	raw, err := seccompFilter(seccompAllowed)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uintptr]bool{}
	for _, nr := range seccompAllowed {
		if seen[nr] {
			t.Errorf("system call %d is listed twice", nr)
		}
		seen[nr] = true
	}
	var prog []bpf.Instruction
	for _, r := range raw {
		prog = append(prog, r.Disassemble())
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	run := func(arch uint32, nr uint32, arg0 uint64) uint32 {
		data := make([]byte, 64)
		// seccomp_data is native-endian; the VM loads big-endian: write
		// what a big-endian load of the native bytes reads.
		put32 := func(off int, v uint32) {
			data[off], data[off+1], data[off+2], data[off+3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
		}
		put32(0, nr)
		put32(4, arch)
		put32(16, uint32(arg0))
		v, err := vm.Run(data)
		if err != nil {
			t.Fatal(err)
		}
		return uint32(v)
	}
	eperm := unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	for _, c := range []struct {
		name     string
		arch, nr uint32
		arg0     uint64
		want     uint32
	}{
		{"read", seccompAuditArch, unix.SYS_READ, 0, unix.SECCOMP_RET_ALLOW},
		{"connect", seccompAuditArch, unix.SYS_CONNECT, 0, unix.SECCOMP_RET_ALLOW},
		{"shutdown (last in the list)", seccompAuditArch, unix.SYS_SHUTDOWN, 0, unix.SECCOMP_RET_ALLOW},
		{"thread clone", seccompAuditArch, unix.SYS_CLONE, unix.CLONE_VM | unix.CLONE_THREAD, unix.SECCOMP_RET_ALLOW},
		{"clone into a new user namespace", seccompAuditArch, unix.SYS_CLONE, unix.CLONE_NEWUSER, eperm},
		{"clone3", seccompAuditArch, unix.SYS_CLONE3, 0, unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
		{"execve", seccompAuditArch, unix.SYS_EXECVE, 0, eperm},
		{"unshare", seccompAuditArch, unix.SYS_UNSHARE, 0, eperm},
		{"setns", seccompAuditArch, unix.SYS_SETNS, 0, eperm},
		{"ptrace", seccompAuditArch, unix.SYS_PTRACE, 0, eperm},
		{"mount", seccompAuditArch, unix.SYS_MOUNT, 0, eperm},
		{"setuid", seccompAuditArch, unix.SYS_SETUID, 0, eperm},
		{"x32 read", seccompAuditArch, unix.SYS_READ | x32SyscallBit, 0, eperm},
		{"i386", 0x40000003, 3, 0, unix.SECCOMP_RET_KILL_PROCESS},
	} {
		if got := run(c.arch, c.nr, c.arg0); got != c.want {
			t.Errorf("%s: got %#x, want %#x", c.name, got, c.want)
		}
	}
}

func TestHandledFS(t *testing.T) {
	if got := handledFS(1); got != 0x1fff {
		t.Errorf("ABI 1: %#x", got)
	}
	if got := handledFS(7); got != 0xffff {
		t.Errorf("ABI 7: %#x", got)
	}
}

func TestConfineDefaults(t *testing.T) {
	c := Confine{}.WithDefaults()
	if c.UID != 65534 || c.GID != 65534 || c.MemoryMax != 256<<20 || c.PidsMax != 256 || c.Procs != 1 {
		t.Errorf("defaults: %+v", c)
	}
	if got, want := c.goRuntimeEnv(), []string{"GOMAXPROCS=1", "GOMEMLIMIT=201326592"}; !slices.Equal(got, want) {
		t.Errorf("Go runtime bounds: %q, want %q", got, want)
	}
	if got := (Confine{Procs: 4, MemoryMax: 64 << 20}).goRuntimeEnv(); !slices.Equal(got, []string{"GOMAXPROCS=4", "GOMEMLIMIT=50331648"}) {
		t.Errorf("Go runtime bounds: %q", got)
	}
	if c := (Confine{UID: 1000, GID: 1000, MemoryMax: 1 << 30}).WithDefaults(); c.UID != 1000 || c.MemoryMax != 1<<30 {
		t.Errorf("kept: %+v", c)
	}
}
