package modifier

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

type user struct{ uid, gid uint32 }

var _ SpecModifier = (*user)(nil)

// NewUser runs the sandbox's processes as uid:gid, with no supplementary
// groups (an engine's extra groups could include privileged ones).
func NewUser(uid, gid uint32) SpecModifier { return &user{uid: uid, gid: gid} }

func (u *user) Modify(s *specs.Spec) error {
	if s.Process == nil {
		s.Process = &specs.Process{}
	}
	s.Process.User = specs.User{UID: u.uid, GID: u.gid}
	return nil
}
