package modifier

import (
	"path"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

type readOnlyProc struct{}

var _ SpecModifier = readOnlyProc{}

// NewReadOnlyProc mounts the sandbox's /proc read-only. A policy that
// scopes egress to binaries needs it: through a writable
// /proc/PID/mem, any process could write its own code into a running
// allowed binary (a child of its own, which it may trace), and connect
// as that binary. gVisor refuses to open a file of a read-only mount for
// writing (EROFS), /proc/PID/mem included; reading is unaffected.
func NewReadOnlyProc() SpecModifier { return readOnlyProc{} }

func (readOnlyProc) Modify(s *specs.Spec) error {
	found := false
	for i, m := range s.Mounts {
		if path.Clean(m.Destination) == "/proc" && m.Type == "proc" {
			s.Mounts[i].Options = setRO(m.Options, true)
			found = true
		}
	}
	if !found {
		// runsc would add a writable one of its own.
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev", "ro"}})
		sortByDepth(s.Mounts)
	}
	return nil
}
