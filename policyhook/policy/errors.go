package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

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

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Pos.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Pos.Line, e.Pos.Column)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
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

func (s *errSink) addf(field, format string, args ...any) {
	s.errs = append(s.errs, &FieldError{File: s.file, Pos: s.lookup(field), Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (s *errSink) warnf(field, format string, args ...any) {
	s.warns = append(s.warns, &FieldError{File: s.file, Pos: s.lookup(field), Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (s *errSink) addAt(pos Pos, field, format string, args ...any) {
	s.errs = append(s.errs, &FieldError{File: s.file, Pos: pos, Field: field, Msg: fmt.Sprintf(format, args...)})
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
	return s.errs.sorted()
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
