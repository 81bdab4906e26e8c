package modifier

import (
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-tools/validate/capabilities"
)

type dropPrivileges struct{}

var _ SpecModifier = dropPrivileges{}

// NewDropPrivileges drops every capability and sets no_new_privileges, so
// nothing in the sandbox can gain a privilege after it starts. A spec that
// names a capability Linux does not have is refused rather than quietly
// emptied: the engine asked for something that cannot exist.
func NewDropPrivileges() SpecModifier { return dropPrivileges{} }

func (dropPrivileges) Modify(s *specs.Spec) error {
	if s.Process == nil {
		s.Process = &specs.Process{}
	}
	if c := s.Process.Capabilities; c != nil {
		for _, set := range [][]string{c.Bounding, c.Effective, c.Inheritable, c.Permitted, c.Ambient} {
			for _, name := range set {
				if err := capabilities.CapValid(name, false); err != nil {
					return fmt.Errorf("process.capabilities: %w", err)
				}
			}
		}
	}
	s.Process.NoNewPrivileges = true
	s.Process.Capabilities = &specs.LinuxCapabilities{
		Bounding:    []string{},
		Effective:   []string{},
		Inheritable: []string{},
		Permitted:   []string{},
		Ambient:     []string{},
	}
	return nil
}
