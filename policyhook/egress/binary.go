package egress

import "unicode/utf8"

// BinaryMatch reports whether the executable path matches a binaries
// pattern, with NVIDIA OpenShell's semantics (its rule is
// glob.match(pattern, ["/"], exe)): "*" matches any run of characters
// but "/", so it stays within one path segment; "**" matches any run,
// "/" included; "?" matches one character but "/"; every other byte
// matches itself. A character is a UTF-8 sequence, or one byte of
// invalid UTF-8. A run of three or more stars is "**".
//
// Policy validation refuses "[", "]", "{", "}" and "\" in a pattern, so
// the glob's character classes, alternatives and escapes never arise;
// here they are plain bytes.
//
// The match is a dynamic program over pattern tokens and path offsets,
// O(len(pattern)*len(path)) time and O(len(path)) memory: a hostile
// pattern cannot make it backtrack exponentially.
func BinaryMatch(pattern, path string) bool {
	// cur[j] holds whether the pattern read so far matches path[:j].
	cur := make([]bool, len(path)+1)
	next := make([]bool, len(path)+1)
	cur[0] = true
	for i := 0; i < len(pattern); {
		clear(next)
		alive := false
		switch c := pattern[i]; {
		case c == '*':
			stars := 1
			for i+stars < len(pattern) && pattern[i+stars] == '*' {
				stars++
			}
			i += stars
			// A star advances a whole character at a time, so that a
			// "?" after it never starts inside one.
			for j := range next {
				next[j] = next[j] || cur[j]
				if !next[j] {
					continue
				}
				alive = true
				if j < len(path) && (stars > 1 || path[j] != '/') {
					_, size := utf8.DecodeRuneInString(path[j:])
					next[j+size] = true
				}
			}
		case c == '?':
			i++
			for j := 0; j < len(path); j++ {
				if !cur[j] || path[j] == '/' {
					continue
				}
				_, size := utf8.DecodeRuneInString(path[j:])
				next[j+size] = true
				alive = true
			}
		default:
			i++
			for j := 0; j < len(path); j++ {
				if cur[j] && path[j] == c {
					next[j+1] = true
					alive = true
				}
			}
		}
		if !alive {
			return false
		}
		cur, next = next, cur
	}
	return cur[len(path)]
}
