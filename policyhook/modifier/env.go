package modifier

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-tools/generate"

	"github.com/openshell/openshell/policyhook/policy"
)

type env struct{ vars []policy.EnvVar }

var _ SpecModifier = (*env)(nil)

// NewEnv sets the policy's environment variables, replacing the engine's
// value of the same name. It returns nil when the policy sets none.
func NewEnv(vars []policy.EnvVar) SpecModifier {
	if len(vars) == 0 {
		return nil
	}
	return &env{vars: vars}
}

func (e *env) Modify(s *specs.Spec) error {
	g := generate.Generator{Config: s}
	for _, v := range e.vars {
		g.AddProcessEnv(v.Name, v.Value)
	}
	return nil
}
