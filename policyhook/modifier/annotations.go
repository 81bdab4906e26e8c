package modifier

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Annotations the runtime writes so that audit lines and `runsc` state can
// name the policy a sandbox runs under.
const (
	AnnotationPolicyName   = "io.openshell.policy.name"
	AnnotationPolicyHash   = "io.openshell.policy.sha256"
	AnnotationPolicyFormat = "io.openshell.policy.format"
)

type annotations struct{ kv map[string]string }

var _ SpecModifier = (*annotations)(nil)

// NewAnnotations records which policy a spec was compiled from.
func NewAnnotations(name, hash, format string) SpecModifier {
	return &annotations{kv: map[string]string{
		AnnotationPolicyName:   name,
		AnnotationPolicyHash:   hash,
		AnnotationPolicyFormat: format,
	}}
}

func (a *annotations) Modify(s *specs.Spec) error {
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	for k, v := range a.kv {
		s.Annotations[k] = v
	}
	return nil
}
