package modifier

import (
	"path"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// CredentialFiles are hidden whenever the directory holding them is
// visible. runsc ignores linux.maskedPaths, so each is covered by a
// read-only bind of /dev/null instead.
var CredentialFiles = []string{"/etc/gshadow", "/etc/gshadow-", "/etc/shadow", "/etc/shadow-", "/etc/sudoers"}

type maskCredentials struct{ files []string }

var _ SpecModifier = (*maskCredentials)(nil)

// NewMaskCredentials hides files (CredentialFiles when nil) that a bind
// mount would otherwise show, listed by the policy or not: a mount at the
// file itself is replaced by the mask. It must run after the mount view
// is set.
func NewMaskCredentials(files []string) SpecModifier {
	if files == nil {
		files = CredentialFiles
	}
	return &maskCredentials{files: files}
}

func (c *maskCredentials) Modify(s *specs.Spec) error {
	for _, f := range c.files {
		visible := slices.ContainsFunc(s.Mounts, func(m specs.Mount) bool {
			return m.Type == "bind" && within(f, m.Destination)
		})
		if !visible {
			continue
		}
		s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool { return path.Clean(m.Destination) == f })
		s.Mounts = append(s.Mounts, specs.Mount{
			Destination: f,
			Type:        "bind",
			Source:      "/dev/null",
			Options:     []string{"rbind", "ro", "nosuid", "nodev", "noexec"},
		})
	}
	if s.Linux != nil {
		// Kept for runtimes that honour it; runsc does not.
		for _, f := range c.files {
			if !slices.Contains(s.Linux.MaskedPaths, f) {
				s.Linux.MaskedPaths = append(s.Linux.MaskedPaths, f)
			}
		}
	}
	return nil
}
