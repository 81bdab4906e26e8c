package modifier

import (
	"fmt"
	"path"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

type tmpMount struct {
	sizeMB   int64
	writable bool
}

var _ SpecModifier = (*tmpMount)(nil)

// NewTmp mounts a size-limited tmpfs on /tmp. It is always there: when a
// spec has no /tmp mount runsc adds an unlimited one of its own, which a
// policy could not bound.
func NewTmp(sizeMB int64, writable bool) (SpecModifier, error) {
	if sizeMB <= 0 {
		return nil, fmt.Errorf("tmp mount: size %d MiB is not positive", sizeMB)
	}
	return &tmpMount{sizeMB: sizeMB, writable: writable}, nil
}

func (t *tmpMount) Modify(s *specs.Spec) error {
	s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool { return path.Clean(m.Destination) == "/tmp" })
	opts := []string{"nosuid", "nodev", "mode=1777", fmt.Sprintf("size=%dm", t.sizeMB)}
	s.Mounts = append(s.Mounts, specs.Mount{
		Destination: "/tmp",
		Type:        "tmpfs",
		Source:      "tmpfs",
		Options:     setRO(opts, !t.writable),
	})
	// Before what the engine mounts inside /tmp (a volume at /tmp/data),
	// which the tmpfs would otherwise hide.
	sortByDepth(s.Mounts)
	return nil
}
