package egress

import (
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestBinaryMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, path string
		want          bool
	}{
		// Exact.
		{"/usr/bin/curl", "/usr/bin/curl", true},
		{"/usr/bin/curl", "/usr/bin/curl2", false},
		{"/usr/bin/curl", "/usr/bin/cur", false},
		{"/usr/bin/curl", "/usr/local/bin/curl", false},
		// "*" stays within one segment.
		{"/usr/bin/*", "/usr/bin/git", true},
		{"/usr/bin/*", "/usr/bin/", true},
		{"/usr/bin/*", "/usr/bin/git/x", false},
		{"/usr/*/git", "/usr/bin/git", true},
		{"/usr/*/git", "/usr/local/bin/git", false},
		{"/opt/*-agent/bin/run", "/opt/my-agent/bin/run", true},
		{"/opt/*-agent/bin/run", "/opt/a/b-agent/bin/run", false},
		{"/usr/bin/python3*", "/usr/bin/python3.11", true},
		{"/usr/bin/python3*", "/usr/bin/python3", true},
		{"/usr/bin/python3*", "/usr/bin/python2.7", false},
		{"/usr/bin/python3*", "/usr/bin/python3/x", false},
		// "**" crosses "/".
		{"/usr/**", "/usr/bin/x", true},
		{"/usr/**", "/usr/", true},
		{"/usr/**", "/usr", false},
		{"/usr/**", "/usrx/bin", false},
		{"/usr/**/git", "/usr/local/bin/git", true},
		{"/usr/**/git", "/usr/bin/git", true},
		{"/usr/**/git", "/usr/git", false},
		{"/**/bin/*", "/a/b/bin/c", true},
		{"/**/bin/*", "/a/b/bin/c/d", false},
		{"/usr/***", "/usr/a/b", true},
		{"**", "/usr/bin/x", true},
		{"**", "", true},
		{"**", "/", true},
		{"*", "/usr", false},
		{"*", "usr", true},
		// "?" is one character but "/".
		{"/usr/bin/python3.1?", "/usr/bin/python3.11", true},
		{"/usr/bin/python3.1?", "/usr/bin/python3.1", false},
		{"/usr/bin/python3.1?", "/usr/bin/python3.111", false},
		{"/usr/bin?git", "/usr/bin/git", false},
		{"/opt/?/run", "/opt/é/run", true},
		{"/opt/??/run", "/opt/é/run", false},
		{"*??", "䊬", false}, // the star must not stop inside a character
		{"*?", "䊬", true},
		// Empty path and pattern.
		{"", "", true},
		{"", "/usr/bin/x", false},
		{"/usr/bin/x", "", false},
		{"*", "", true},
		{"?", "", false},
		// Trailing slashes.
		{"/usr/bin/", "/usr/bin/x", false},
		{"/usr/bin/", "/usr/bin/", true},
		{"/usr/bin", "/usr/bin/", false},
		{"/usr/bin/x", "/usr/bin/x/", false},
		{"/usr/bin/*", "/usr/bin/x/", false},
		{"/usr/bin/**", "/usr/bin/x/", true},
		// Other glob syntax is literal here (validation refuses it).
		{"/usr/bin/[ab]", "/usr/bin/a", false},
		{"/usr/bin/[ab]", "/usr/bin/[ab]", true},
		{`/usr/bin/\*`, `/usr/bin/\x`, true},
	} {
		if got := BinaryMatch(tc.pattern, tc.path); got != tc.want {
			t.Errorf("BinaryMatch(%q, %q) = %v, want %v", tc.pattern, tc.path, got, tc.want)
		}
	}
}

// TestBinaryMatchLong is the case a backtracking matcher takes
// exponential time on; the dynamic program takes O(len*len).
func TestBinaryMatchLong(t *testing.T) {
	pattern := strings.Repeat("**a", 100) + "b"
	path := "/" + strings.Repeat("a", 4000)
	if BinaryMatch(pattern, path) {
		t.Errorf("BinaryMatch matched a path without b")
	}
	pattern = strings.Repeat("*a", 200) + "b"
	if BinaryMatch(pattern, strings.Repeat("a", 4000)) {
		t.Errorf("BinaryMatch matched a path without b")
	}
}

func FuzzBinaryMatch(f *testing.F) {
	for _, s := range [][2]string{
		{"/usr/bin/curl", "/usr/bin/curl"},
		{"/usr/bin/python3*", "/usr/bin/python3.11"},
		{"/usr/**", "/usr/bin/x"},
		{"/opt/?/run", "/opt/é/run"},
		{"**", ""},
		{"/a\xffb", "/a\xffb"},
		{"*??", "䊬"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, path string) {
		got := BinaryMatch(pattern, path)
		if !strings.ContainsAny(pattern, "*?") {
			if want := pattern == path; got != want {
				t.Errorf("BinaryMatch(%q, %q) = %v for a pattern without wildcards, want %v", pattern, path, got, want)
			}
			// A pattern without wildcards always matches itself.
			if !BinaryMatch(pattern, pattern) {
				t.Errorf("BinaryMatch(%q, itself) = false", pattern)
			}
		}
		if pattern == "**" && !got {
			t.Errorf("BinaryMatch(\"**\", %q) = false", path)
		}
		// On valid UTF-8 it agrees with the same glob as a regexp.
		if len(pattern) <= 64 && len(path) <= 256 && utf8.ValidString(pattern) && utf8.ValidString(path) {
			if want := globRegexp(pattern).MatchString(path); got != want {
				t.Errorf("BinaryMatch(%q, %q) = %v, the regexp says %v", pattern, path, got, want)
			}
		}
	})
}

// globRegexp is the reference: the glob written as an anchored regexp.
func globRegexp(pattern string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString(`(?s)\A`)
	for i := 0; i < len(pattern); {
		switch {
		case strings.HasPrefix(pattern[i:], "**"):
			b.WriteString(".*")
			for i < len(pattern) && pattern[i] == '*' {
				i++
			}
		case pattern[i] == '*':
			b.WriteString("[^/]*")
			i++
		case pattern[i] == '?':
			b.WriteString("[^/]")
			i++
		default:
			_, size := utf8.DecodeRuneInString(pattern[i:])
			b.WriteString(regexp.QuoteMeta(pattern[i : i+size]))
			i += size
		}
	}
	b.WriteString(`\z`)
	return regexp.MustCompile(b.String())
}
