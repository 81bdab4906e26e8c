package policy

import (
	"path"
	"strings"
)

// maxBinaryPattern bounds one binaries pattern, in bytes: matching is
// O(len(pattern)*len(path)) per connection, and no executable path a
// policy could mean is longer.
const maxBinaryPattern = 512

// checkBinaryPattern reports what is wrong with one binaries pattern:
// an absolute, clean path to an executable, with NVIDIA OpenShell's
// wildcards "*" (within a segment), "**" (across segments) and "?".
// Its glob's character classes, alternatives and escapes are refused
// rather than read differently from upstream.
func checkBinaryPattern(field, p string, s *errSink) {
	switch {
	case p == "":
		s.addf(field, "is empty: name an executable by its absolute path")
	case hasControl(p):
		s.addf(field, "%q contains a control character", p)
	case len(p) > maxBinaryPattern:
		s.addf(field, "is %d bytes long; at most %d are allowed", len(p), maxBinaryPattern)
	case !strings.HasPrefix(p, "/"):
		s.addf(field, "%q is not an absolute path", p)
	case strings.ContainsAny(p, "[]{}"):
		s.addf(field, "%q contains %q: character classes and alternatives are not supported; list each binary (wildcards: * within a path segment, ** across segments, ? one character)", p, p[strings.IndexAny(p, "[]{}")])
	case strings.Contains(p, `\`):
		s.addf(field, "%q contains a backslash: escapes are not supported; list each binary", p)
	case p == "/" || strings.HasSuffix(p, "/"):
		s.addf(field, "%q ends in /: name the executable file itself, or use /** for everything under a directory", p)
	case path.Clean(p) != p:
		s.addf(field, "%q is not a clean path (no //, . or .. segments): write %q", p, path.Clean(p))
	}
}
