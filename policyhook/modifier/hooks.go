package modifier

import (
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// HookStages are the OCI hook lists, in the order a runtime runs them.
// runsc runs every one of them on the host, as the user it runs as (root
// under an engine), outside the sandbox.
var HookStages = []string{"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"}

type dropHooks struct {
	allowed []string
	dropped func(stage string, h specs.Hook)
}

var _ SpecModifier = (*dropHooks)(nil)

// NewDropHooks removes every OCI hook whose binary is not one of allowed
// (clean absolute paths, compared exactly): a hook is a command the spec's
// author has the host run as root, whatever the policy. dropped, when not
// nil, is told of each hook removed, so that the caller can warn.
//
// An allowed binary runs with the arguments and environment the spec gives
// it: naming it trusts it with any of them.
func NewDropHooks(allowed []string, dropped func(stage string, h specs.Hook)) SpecModifier {
	return &dropHooks{allowed: slices.Clone(allowed), dropped: dropped}
}

func (d *dropHooks) Modify(s *specs.Spec) error {
	if s.Hooks == nil {
		return nil
	}
	h := s.Hooks
	//lint:ignore SA1019 Prestart is deprecated, and runsc still runs it
	lists := []*[]specs.Hook{&h.Prestart, &h.CreateRuntime, &h.CreateContainer, &h.StartContainer, &h.Poststart, &h.Poststop}
	empty := true
	for i, l := range lists {
		*l = slices.DeleteFunc(*l, func(hook specs.Hook) bool {
			if slices.Contains(d.allowed, hook.Path) {
				return false
			}
			if d.dropped != nil {
				d.dropped(HookStages[i], hook)
			}
			return true
		})
		if len(*l) == 0 {
			*l = nil
		} else {
			empty = false
		}
	}
	if empty {
		s.Hooks = nil
	}
	return nil
}
