// Package modifier holds openshell's OCI spec modifiers: small values that
// each enforce one part of a policy by changing a *specs.Spec.
//
// A modifier is pure: it reads nothing and starts nothing, so the same
// policy always yields the same spec. Constructors return nil when there is
// nothing to do; List skips nil entries.
package modifier

import (
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// SpecModifier changes a spec to enforce one thing.
type SpecModifier interface {
	Modify(*specs.Spec) error
}

// List is a modifier that applies its members in order.
type List []SpecModifier

var _ SpecModifier = List(nil)

// Modify applies every non-nil member in order and stops at the first error.
func (l List) Modify(s *specs.Spec) error {
	if s == nil {
		return fmt.Errorf("modify spec: spec is nil")
	}
	for _, m := range l {
		if m == nil {
			continue
		}
		if err := m.Modify(s); err != nil {
			return err
		}
	}
	return nil
}

// Append adds the non-nil modifiers to l.
func (l List) Append(ms ...SpecModifier) List {
	for _, m := range ms {
		if m != nil {
			l = append(l, m)
		}
	}
	return l
}
