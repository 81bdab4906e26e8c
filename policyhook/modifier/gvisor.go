package modifier

import (
	"fmt"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// GVisorAnnotationPrefix is gVisor's own annotation namespace. runsc reads
// these from the spec and acts on them: dev.gvisor.internal.seccomp.<c>
// with io.kubernetes.cri.container-name drops the spec's whole seccomp
// filter; others turn on nvproxy, override runsc's flags or change how
// mounts are served.
const GVisorAnnotationPrefix = "dev.gvisor."

type refuseGVisorAnnotations struct{ allowed []string }

var _ SpecModifier = (*refuseGVisorAnnotations)(nil)

// NewRefuseGVisorAnnotations refuses a spec whose annotations (the
// engine's, so the pod author's or docker --annotation's) speak to runsc
// directly, except the names in allowed, which a later modifier decides
// (nvproxy's, which only a gpu policy accepts). openshell writes what
// runsc needs itself; this must run before any modifier that does.
func NewRefuseGVisorAnnotations(allowed ...string) SpecModifier {
	return &refuseGVisorAnnotations{allowed: allowed}
}

func (r *refuseGVisorAnnotations) Modify(s *specs.Spec) error {
	var bad []string
	for k := range s.Annotations {
		if strings.HasPrefix(strings.ToLower(k), GVisorAnnotationPrefix) && !slices.Contains(r.allowed, k) {
			bad = append(bad, fmt.Sprintf("%q", k))
		}
	}
	if len(bad) == 0 {
		return nil
	}
	slices.Sort(bad)
	return fmt.Errorf("annotations %s: gVisor's own annotations change how runsc enforces the sandbox (its seccomp filter, nvproxy, its flags, its mounts); openshell sets what runsc needs from the policy and refuses them from the engine", strings.Join(bad, ", "))
}
