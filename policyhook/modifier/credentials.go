package modifier

import (
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
// mount would otherwise show. It must run after the mount view is set.
func NewMaskCredentials(files []string) SpecModifier {
	if files == nil {
		files = CredentialFiles
	}
	return &maskCredentials{files: files}
}

func (c *maskCredentials) Modify(s *specs.Spec) error {
	for _, f := range c.files {
		visible, covered := false, false
		for _, m := range s.Mounts {
			visible = visible || (m.Type == "bind" && within(f, m.Destination))
			covered = covered || m.Destination == f
		}
		if !visible || covered {
			continue
		}
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
