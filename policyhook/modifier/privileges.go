package modifier

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

type dropPrivileges struct{}

var _ SpecModifier = dropPrivileges{}

// NewDropPrivileges drops every capability and sets no_new_privileges, so
// nothing in the sandbox can gain a privilege after it starts.
func NewDropPrivileges() SpecModifier { return dropPrivileges{} }

func (dropPrivileges) Modify(s *specs.Spec) error {
	if s.Process == nil {
		s.Process = &specs.Process{}
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
