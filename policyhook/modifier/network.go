package modifier

import (
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-tools/generate"
)

type isolateNetwork struct{}

var _ SpecModifier = isolateNetwork{}

// NewIsolateNetwork gives the sandbox a network namespace of its own,
// dropping any path to an existing one (the host's, or another
// container's): egress is only ever what the runtime sets up.
func NewIsolateNetwork() SpecModifier { return isolateNetwork{} }

func (isolateNetwork) Modify(s *specs.Spec) error {
	g := generate.Generator{Config: s}
	if err := g.AddOrReplaceLinuxNamespace(string(specs.NetworkNamespace), ""); err != nil {
		return fmt.Errorf("isolate network: %w", err)
	}
	return nil
}
