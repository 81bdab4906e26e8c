package l7

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizePath(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"root", "/", "/"},
		{"plain", "/repos/o/r", "/repos/o/r"},
		{"trailing slash kept", "/repos/", "/repos/"},
		{"query stripped", "/a/b?x=1&y=/../..", "/a/b"},
		{"empty query", "/a?", "/a"},
		{"case of path kept", "/Repos/ABC", "/Repos/ABC"},
		{"sub-delims raw", "/a/b:c@d!$&'()*+,=", "/a/b:c@d!$&'()*+,="},
		{"semicolon param on a name", "/a;v=1/b", "/a;v=1/b"},

		// percent-decoding
		{"unreserved decoded", "/%61%62%7E%2D%2e%5F", "/ab~-._"},
		{"mixed-case escapes upper-cased", "/a%3fb/c%3bd", "/a%3Fb/c%3Bd"},
		{"reserved kept encoded", "/users/%40alice", "/users/%40alice"},
		{"space encoded", "/files/a%20b", "/files/a%20b"},
		{"raw unsafe ASCII encoded", `/a"b<c>{d}|e^f` + "`", "/a%22b%3Cc%3E%7Bd%7D%7Ce%5Ef%60"},
		{"unicode kept as upper-case escapes", "/wiki/Caf%c3%a9", "/wiki/Caf%C3%A9"},
		{"four-byte unicode", "/e/%F0%9F%98%80", "/e/%F0%9F%98%80"},
		{"unicode then ascii escape", "/%C3%A9%41", "/%C3%A9A"},

		// dot segments (RFC 3986 5.2.4)
		{"dot", "/a/./b", "/a/b"},
		{"dot at end", "/a/b/.", "/a/b/"},
		{"dot-dot", "/a/../b", "/b"},
		{"dot-dot at end", "/a/b/..", "/a/"},
		{"dot-dot to root", "/a/..", "/"},
		{"encoded dot-dot", "/public/%2e%2e/secret", "/secret"},
		{"encoded upper dot-dot", "/public/%2E%2E/secret", "/secret"},
		{"half-encoded dot-dot", "/public/.%2e/secret", "/secret"},
		{"dot then dot-dot", "/public/./../secret", "/secret"},
		{"dots in names are names", "/a/.b/c../..d/x.y", "/a/.b/c../..d/x.y"},
		{"dot-dot in query ignored", "/a?/../..", "/a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NormalizePath(tc.in)
			if err != nil || got != tc.want {
				t.Fatalf("NormalizePath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
			again, err := NormalizePath(got)
			if err != nil || again != got {
				t.Fatalf("not idempotent: NormalizePath(%q) = %q, %v", got, again, err)
			}
		})
	}
}

// Each refusal is a defence; removing it makes its row fail.
func TestNormalizePathRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     error
	}{
		{"empty", "", ErrNotOriginForm},
		{"relative", "a/b", ErrNotOriginForm},
		{"overlong path", "/" + strings.Repeat("a", MaxPathLen), ErrTooLong},
		{"overlong after escaping", "/" + strings.Repeat("%22", 1400), ErrTooLong},
		{"NUL", "/a\x00b", ErrControl},
		{"encoded NUL", "/a%00b", ErrControl},
		{"encoded CR LF", "/a%0d%0aHost:%20x", ErrControl},
		{"encoded tab", "/a%09", ErrControl},
		{"encoded DEL", "/a%7F", ErrControl},
		{"raw DEL", "/a\x7f", ErrControl},
		{"control in query", "/a?b\nc", ErrControl},
		{"C1 control", "/a%C2%85", ErrControl},
		{"fragment", "/a#b", ErrFragment},
		{"fragment in query", "/a?b#c", ErrFragment},
		{"raw non-ASCII", "/caf\xc3\xa9", ErrNonASCII},
		{"truncated escape", "/a%4", ErrBadEscape},
		{"escape at end", "/a%", ErrBadEscape},
		{"non-hex escape", "/a%zz", ErrBadEscape},
		{"IIS %u escape", "/a/%u002e%u002e/b", ErrBadEscape},
		{"bad escape inside a unicode run", "/%C3%G9", ErrBadEscape},
		{"encoded slash", "/a%2fb", ErrEncodedSlash},
		{"encoded slash upper", "/public/..%2Fsecret", ErrEncodedSlash},
		{"double encoding", "/a/%252e%252e/b", ErrDoubleEncoding},
		{"double-encoded slash", "/a%252Fb", ErrDoubleEncoding},
		{"encoded percent alone", "/100%25", ErrDoubleEncoding},
		{"percent built from decoded digits", "/%25%32%46", ErrDoubleEncoding},
		{"raw backslash", `/a\..\b`, ErrBackslash},
		{"encoded backslash", "/a/..%5cb", ErrBackslash},
		{"overlong UTF-8 dot", "/a/%C0%AE%C0%AE/b", ErrInvalidUTF8},
		{"overlong UTF-8 slash", "/a%C0%AFb", ErrInvalidUTF8},
		{"lone continuation byte", "/a%80", ErrInvalidUTF8},
		{"truncated sequence", "/a%E2%82", ErrInvalidUTF8},
		{"surrogate", "/a%ED%A0%80", ErrInvalidUTF8},
		{"fullwidth dots", "/a/%EF%BC%8E%EF%BC%8E/b", ErrConfusable},
		{"fullwidth solidus", "/a%EF%BC%8Fb", ErrConfusable},
		{"fullwidth reverse solidus", "/a%EF%BC%BCb", ErrConfusable},
		{"one dot leader", "/a/%E2%80%A4%E2%80%A4/b", ErrConfusable},
		{"climb", "/..", ErrClimb},
		{"climb twice", "/a/../..", ErrClimb},
		{"encoded climb", "/a/%2e%2e/%2E%2E/etc", ErrClimb},
		{"empty segment", "/a//b", ErrEmptySegment},
		{"leading double slash", "//evil.example/a", ErrEmptySegment},
		{"double slash at end", "/a//", ErrEmptySegment},
		{"empty segment after dot-dot", "/a/..//b", ErrEmptySegment},
		{"three dots", "/public/.../admin", ErrDotSegment},
		{"dots and space", "/public/..%20/admin", ErrDotSegment},
		{"dot-dot semicolon", "/public/..;/admin", ErrPathParam},
		{"dot-dot param", "/public/..;jsessionid=x/admin", ErrPathParam},
		{"dot param", "/public/.;x/admin", ErrPathParam},
		{"encoded semicolon on dot-dot", "/public/..%3b/admin", ErrPathParam},
		{"encoded dots and semicolon", "/public/%2e%2e;/admin", ErrPathParam},
		{"param on empty segment", "/a/;x/b", ErrPathParam},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NormalizePath(tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("NormalizePath(%q) = %q, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

// The fast path must not let through what the full path refuses or
// rewrites.
func TestIsCanonicalAgreesWithNormalize(t *testing.T) {
	for _, p := range []string{"/", "/a", "/a/", "/a/b.c", "/.", "/..", "/a/.", "/...", "/a//b", "//", "/a;b", "/a%41", "/~user/x"} {
		if !isCanonical(p) {
			continue
		}
		if got, err := normalize(p, true); err != nil || got != p {
			t.Errorf("isCanonical(%q) but normalize = %q, %v", p, got, err)
		}
	}
	for _, p := range []string{"/.", "/..", "/a/..", "/...", "/a//b", "//", "/a;b", "/a%41"} {
		if isCanonical(p) {
			t.Errorf("isCanonical(%q) = true", p)
		}
	}
}

func TestNormalizePathNoAllocOnCanonicalInput(t *testing.T) {
	n := testing.AllocsPerRun(100, func() {
		if _, err := NormalizePath("/repos/openshell/openshell/issues/42?page=2"); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Errorf("NormalizePath allocates %v times on a canonical path", n)
	}
}
