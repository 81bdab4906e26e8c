package l7

import (
	"errors"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// MaxPathLen bounds the path part of a request-target, in bytes, before
// normalisation (upstream OpenShell's MAX_PATH_LEN is the same 4 KiB).
const MaxPathLen = 4096

// Reasons a request-target is refused. Every one of them is a request the
// policy cannot be sure it understands the way the upstream server will,
// so it is denied rather than guessed at. Callers match them with errors.Is.
var (
	ErrNotOriginForm  = errors.New("request path must start with /")
	ErrTargetForm     = errors.New("request-target is neither origin-form (/path) nor absolute-form (http://host/path)")
	ErrAsteriskForm   = errors.New("request-target * is only valid for OPTIONS")
	ErrUserinfo       = errors.New("absolute-form request-target carries userinfo (user@host)")
	ErrTooLong        = errors.New("request path is longer than 4096 bytes")
	ErrControl        = errors.New("request-target contains a control character (raw or percent-encoded)")
	ErrFragment       = errors.New("request-target contains a fragment (#)")
	ErrQuery          = errors.New("path contains ? (a query belongs after the path)")
	ErrNonASCII       = errors.New("request-target contains a raw non-ASCII byte; non-ASCII must be percent-encoded")
	ErrBadEscape      = errors.New("request path contains an invalid percent escape")
	ErrDoubleEncoding = errors.New("request path contains an encoded % (%25): double encoding is refused")
	ErrEncodedSlash   = errors.New("request path contains an encoded / (%2F)")
	ErrBackslash      = errors.New(`request path contains a \ (raw or %5C)`)
	ErrInvalidUTF8    = errors.New("request path's percent-encoded bytes are not valid UTF-8 (overlong or truncated sequence)")
	ErrConfusable     = errors.New("request path contains a non-ASCII character that Unicode compatibility normalisation (NFKC) turns into a path delimiter")
	ErrClimb          = errors.New("request path's .. climbs above the root")
	ErrEmptySegment   = errors.New("request path contains an empty segment (//)")
	ErrDotSegment     = errors.New("request path contains a segment made only of dots and spaces other than \".\" and \"..\"")
	ErrPathParam      = errors.New("request path contains a ;parameter on an empty, . or .. segment")
)

// NormalizePath returns the canonical form of an origin-form path
// ("/a/b?q"): the query is stripped, unreserved characters are decoded,
// every other escape is upper-cased, characters a path may not carry raw
// are percent-encoded, and "." and ".." segments are removed (RFC 3986
// 5.2.4). Anything the upstream server might read differently from the
// policy is an error instead; see the Err variables. The result is a
// fixed point: NormalizePath(p) == p for every p it returns.
func NormalizePath(raw string) (string, error) {
	if err := scanTarget(raw); err != nil {
		return "", err
	}
	path, _, _ := strings.Cut(raw, "?")
	if !strings.HasPrefix(path, "/") {
		return "", ErrNotOriginForm
	}
	return normalize(path, true)
}

// scanTarget refuses the bytes that are wrong anywhere in a
// request-target, query included.
func scanTarget(t string) error {
	for i := 0; i < len(t); i++ {
		switch c := t[i]; {
		case c < 0x20 || c == 0x7f:
			return ErrControl
		case c >= 0x80:
			return ErrNonASCII
		case c == '#':
			return ErrFragment
		}
	}
	return nil
}

// normalize canonicalises a path that starts with "/" and carries no query.
// With resolveDots false (rule patterns), "." and ".." segments are errors
// rather than resolved: a pattern is written by hand and must say what it
// means.
func normalize(path string, resolveDots bool) (string, error) {
	if len(path) > MaxPathLen {
		return "", ErrTooLong
	}
	if isCanonical(path) {
		return path, nil // the common case: no allocation
	}
	out := make([]byte, 1, len(path)+16)
	out[0] = '/'
	rest := path[1:]
	for {
		seg, more := rest, false
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			seg, rest, more = rest[:i], rest[i+1:], true
		}
		start := len(out)
		var err error
		if out, err = appendSegment(out, seg); err != nil {
			return "", err
		}
		s := string(out[start:])
		switch {
		case s == "." || s == "..":
			if !resolveDots {
				return "", errDotInPattern
			}
			out = out[:start]
			if s == ".." {
				if start == 1 {
					return "", ErrClimb
				}
				out = out[:strings.LastIndexByte(string(out[:start-1]), '/')+1]
			}
		case s == "" && more:
			return "", ErrEmptySegment
		case dotty(s):
			return "", ErrDotSegment
		case paramOnDotty(s):
			return "", ErrPathParam
		case more:
			out = append(out, '/')
		}
		if !more {
			if len(out) > MaxPathLen {
				// Escaping grew it; bound the result too, so that it
				// normalises again to itself.
				return "", ErrTooLong
			}
			return string(out), nil
		}
	}
}

var errDotInPattern = errors.New(`a "." or ".." segment can never match a normalised request path`)

// isCanonical reports whether path is already in normalize's output form
// and made only of characters that need no decision.
func isCanonical(path string) bool {
	segStart := 1
	for i := 1; i <= len(path); i++ {
		if i < len(path) && path[i] != '/' {
			if !plain[path[i]] {
				return false
			}
			continue
		}
		seg := path[segStart:i]
		if (seg == "" && i < len(path)) || dotty(seg) || seg == "." || seg == ".." {
			return false
		}
		segStart = i + 1
	}
	return true
}

// appendSegment appends the canonical form of one raw segment to out.
func appendSegment(out []byte, seg string) ([]byte, error) {
	utf := make([]byte, 0, 64) // decoded bytes of one run of %HH >= 0x80
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		switch {
		case c == '%':
			v, ok := unhex(seg, i)
			if !ok {
				return nil, ErrBadEscape
			}
			if v >= 0x80 {
				// A run of escaped bytes that must decode, together, to
				// valid UTF-8.
				utf = utf[:0]
				for ; i < len(seg) && seg[i] == '%'; i += 3 {
					v, ok := unhex(seg, i)
					if !ok {
						return nil, ErrBadEscape
					}
					if v < 0x80 {
						break
					}
					utf = append(utf, v)
				}
				i--
				if err := checkUTF8(utf); err != nil {
					return nil, err
				}
				for _, b := range utf {
					out = appendEscape(out, b)
				}
				continue
			}
			i += 2
			switch {
			case v == '/':
				return nil, ErrEncodedSlash
			case v == '\\':
				return nil, ErrBackslash
			case v == '%':
				return nil, ErrDoubleEncoding
			case v < 0x20 || v == 0x7f:
				return nil, ErrControl
			case unreserved(v):
				out = append(out, v)
			default:
				out = appendEscape(out, v)
			}
		case c == '\\':
			return nil, ErrBackslash
		case c == '?':
			return nil, ErrQuery
		case c == '#':
			return nil, ErrFragment
		case c < 0x20 || c == 0x7f:
			return nil, ErrControl
		case c >= 0x80:
			return nil, ErrNonASCII
		case pchar[c]:
			out = append(out, c)
		default:
			// Printable ASCII a path may not carry raw (space, ", <, >,
			// [, ], ^, `, {, |, }): every server reads it as its escape.
			out = appendEscape(out, c)
		}
	}
	return out, nil
}

// checkUTF8 refuses invalid UTF-8 (Go's decoder also refuses overlong
// forms such as %C0%AE for ".") and characters a server that applies
// Unicode compatibility normalisation (NFKC) would turn into a delimiter:
// fullwidth "．．" becomes "..".
func checkUTF8(b []byte) error {
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r == utf8.RuneError && n <= 1 {
			return ErrInvalidUTF8
		}
		if r < 0xa0 { // C1 controls U+0080..U+009F
			return ErrControl
		}
		if strings.ContainsAny(norm.NFKC.String(string(r)), "/\\.%;?#") {
			return ErrConfusable
		}
		b = b[n:]
	}
	return nil
}

// dotty reports whether s is made only of dots and (encoded) spaces and is
// not "", "." or "..": Windows servers strip trailing dots and spaces, so
// "..." or "..%20" may be read as "..".
func dotty(s string) bool {
	if s == "" || s == "." || s == ".." {
		return false
	}
	for s != "" {
		switch {
		case s[0] == '.':
			s = s[1:]
		case strings.HasPrefix(s, "%20"):
			s = s[3:]
		default:
			return false
		}
	}
	return true
}

// paramOnDotty reports whether s carries a ;parameter (raw or %3B) after
// an empty, dot or dotty prefix: servers that strip path parameters
// (Tomcat's ;jsessionid) would read "..;x" as "..".
func paramOnDotty(s string) bool {
	i := strings.IndexByte(s, ';')
	if j := strings.Index(s, "%3B"); j >= 0 && (i < 0 || j < i) {
		i = j
	}
	if i < 0 {
		return false
	}
	p := s[:i]
	return p == "" || p == "." || p == ".." || dotty(p)
}

func unhex(s string, i int) (byte, bool) {
	if i+2 >= len(s) {
		return 0, false
	}
	hi, ok1 := hexVal(s[i+1])
	lo, ok2 := hexVal(s[i+2])
	return hi<<4 | lo, ok1 && ok2
}

func hexVal(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func appendEscape(out []byte, b byte) []byte {
	const hex = "0123456789ABCDEF"
	return append(out, '%', hex[b>>4], hex[b&15])
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// pchar: the characters RFC 3986 lets a path segment carry raw, less "%"
// (escapes are handled apart). plain: those isCanonical accepts without a
// closer look (pchar less ";", whose neighbours need checking).
var pchar, plain [256]bool

func init() {
	for c := 0; c < 256; c++ {
		b := byte(c)
		pchar[c] = unreserved(b) || strings.IndexByte("!$&'()*+,;=:@", b) >= 0
		plain[c] = pchar[c] && b != ';'
	}
}
