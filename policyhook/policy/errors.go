package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxErrors is how many errors one ErrorList from Parse holds; past it a
// last entry says how many more there were. One broken policy should fit
// on a screen, and a hostile one must not fill a log.
const MaxErrors = 50

// Pos is a place in a policy file. Line and Column are 1-based; zero means
// the place is unknown (a field that was left out of the file).
type Pos struct {
	Line   int
	Column int
}

// FieldError is one problem with one field of a policy file.
type FieldError struct {
	File  string
	Pos   Pos
	Field string // the field path, e.g. sandbox.network.allowed_egress[1].port
	Msg   string
}

// Error never holds a control character: a policy's bytes are hostile,
// and its errors reach terminals and logs (see escape).
func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(escape(e.File))
	if e.Pos.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Pos.Line, e.Pos.Column)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(escape(e.Field))
		b.WriteString(": ")
	}
	b.WriteString(escape(e.Msg))
	return b.String()
}

// escape writes what a terminal or a log line would not show as itself
// (control characters, invalid UTF-8, bidi and other format characters,
// line and paragraph separators) as Go escapes (\x1b, \u202e); the rest
// is kept. Messages quote policy values with %q already; this catches the
// rest: field paths built from a file's keys, file names.
func escape(s string) string {
	clean := true
	for _, r := range s {
		if !printable(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case !printable(r):
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func printable(r rune) bool { return r == ' ' || (r != utf8.RuneError && unicode.IsPrint(r)) }

// hasControl reports whether s holds a control character (C0, DEL, C1)
// or is not valid UTF-8.
func hasControl(s string) bool {
	if !utf8.ValidString(s) {
		return true
	}
	return strings.ContainsFunc(s, unicode.IsControl)
}

// ErrorList holds every problem found in a policy, ordered by position.
// Parsing and validation collect all of them rather than stopping at the
// first, so one run of `openshell policy validate` shows everything to fix.
type ErrorList []*FieldError

func (l ErrorList) Error() string {
	msgs := make([]string, len(l))
	for i, e := range l {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Unwrap lets errors.As find the individual FieldErrors.
func (l ErrorList) Unwrap() []error {
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errs
}

func (l ErrorList) sorted() ErrorList {
	slices.SortStableFunc(l, func(a, b *FieldError) int {
		if c := cmp.Compare(a.Pos.Line, b.Pos.Line); c != 0 {
			return c
		}
		return cmp.Compare(a.Pos.Column, b.Pos.Column)
	})
	return l
}

// errSink collects FieldErrors for one file, placing each by its field path.
type errSink struct {
	file  string
	pos   map[string]Pos
	errs  ErrorList
	warns ErrorList
}

// The sink escapes what it records, so a FieldError's fields are safe to
// print however a caller prints them.
func (s *errSink) newError(pos Pos, field, format string, args []any) *FieldError {
	return &FieldError{File: escape(s.file), Pos: pos, Field: escape(field), Msg: escape(fmt.Sprintf(format, args...))}
}

func (s *errSink) addf(field, format string, args ...any) {
	s.errs = append(s.errs, s.newError(s.lookup(field), field, format, args))
}

func (s *errSink) warnf(field, format string, args ...any) {
	s.warns = append(s.warns, s.newError(s.lookup(field), field, format, args))
}

func (s *errSink) addAt(pos Pos, field, format string, args ...any) {
	s.errs = append(s.errs, s.newError(pos, field, format, args))
}

// lookup finds the position of field, or of its nearest ancestor that is in
// the file (a missing field is reported where its parent is).
func (s *errSink) lookup(field string) Pos {
	for f := field; f != ""; f = parentField(f) {
		if p, ok := s.pos[f]; ok {
			return p
		}
	}
	return Pos{Line: 1, Column: 1}
}

func (s *errSink) err() error {
	if len(s.errs) == 0 {
		return nil
	}
	return s.errs.sorted().capped()
}

// capped keeps the first MaxErrors entries of a sorted list and replaces
// the rest by one entry, placed at the first one left out, that counts them.
func (l ErrorList) capped() ErrorList {
	if len(l) <= MaxErrors {
		return l
	}
	first := l[MaxErrors]
	more := len(l) - MaxErrors
	noun := "errors"
	if more == 1 {
		noun = "error"
	}
	out := slices.Clip(l[:MaxErrors])
	return append(out, &FieldError{File: first.File, Pos: first.Pos, Msg: fmt.Sprintf("and %d more %s", more, noun)})
}

// parentField strips the last element of a field path:
// a.b[2].c -> a.b[2] -> a.b -> a -> "".
func parentField(f string) string {
	if strings.HasSuffix(f, "]") {
		if i := strings.LastIndexByte(f, '['); i >= 0 {
			return f[:i]
		}
	}
	if i := strings.LastIndexByte(f, '.'); i >= 0 {
		return f[:i]
	}
	return ""
}
