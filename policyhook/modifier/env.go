package modifier

import (
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

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
	for _, v := range e.vars {
		SetEnv(s, v.Name, v.Value)
	}
	return nil
}

// SetEnv sets name=value in the process environment, removing every
// other value of name. runtime-tools' generator does this only through
// an index it builds wrongly (keyed by "name=value"), so a spec it did
// not create gets duplicates; an environment is small enough to scan.
func SetEnv(s *specs.Spec, name, value string) {
	if s.Process == nil {
		s.Process = &specs.Process{}
	}
	prefix := name + "="
	i := slices.IndexFunc(s.Process.Env, func(e string) bool { return strings.HasPrefix(e, prefix) })
	if i < 0 {
		s.Process.Env = append(s.Process.Env, prefix+value)
		return
	}
	// The first keeps its place, as the generator did; later ones go.
	s.Process.Env[i] = prefix + value
	rest := slices.DeleteFunc(s.Process.Env[i+1:], func(e string) bool { return strings.HasPrefix(e, prefix) })
	s.Process.Env = s.Process.Env[:i+1+len(rest)]
}
