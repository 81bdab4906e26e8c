package l7

import (
	"errors"
	"fmt"
	"strings"
)

// segPat matches one path segment, or with any set, one or more.
type segPat struct {
	text string // canonical form; "*" within it matches any run of bytes
	star bool   // text contains "*"
	any  bool   // the segment "**": one or more whole segments
}

// parsePattern turns a rule path into segment patterns. The bare "**"
// (any path) and "*" (the request-target * only) are handled by the
// caller.
func parsePattern(p string) ([]segPat, error) {
	if !strings.HasPrefix(p, "/") {
		return nil, errors.New("must start with /, or be ** (any path)")
	}
	if i := strings.IndexAny(p, "?[]{}"); i >= 0 {
		return nil, fmt.Errorf("glob character %q is not supported: only * (within a segment) and ** (whole segments) are", p[i])
	}
	if strings.ContainsRune(p, '#') {
		return nil, ErrFragment
	}
	if err := scanTarget(p); err != nil {
		return nil, err
	}
	// The literal parts are canonicalised exactly as request paths are, so
	// that "/wiki/Caf%c3%a9" and "/wiki/Café"-as-escapes compare equal; "*"
	// is a sub-delimiter and passes through unchanged.
	c, err := normalize(p, false)
	if err != nil {
		return nil, err
	}
	segs := strings.Split(c[1:], "/")
	pats := make([]segPat, len(segs))
	for i, s := range segs {
		switch {
		case s == "**":
			pats[i] = segPat{any: true}
		case strings.Contains(s, "**"):
			return nil, errors.New(`** must be a whole segment ("/a/**", "/a/**/b"); use * within a segment`)
		default:
			pats[i] = segPat{text: s, star: strings.Contains(s, "*")}
		}
	}
	return pats, nil
}

// matchSegment matches one segment against a pattern where "*" stands for
// any run of bytes. Greedy with one backtrack point: O(len(p)*len(s)).
func matchSegment(p, s string) bool {
	pi, si, starP, starS := 0, 0, -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && p[pi] == '*':
			starP, starS = pi, si
			pi++
		case pi < len(p) && p[pi] == s[si]:
			pi++
			si++
		case starP >= 0:
			starS++
			pi, si = starP+1, starS
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// matchSegs matches s, one or more "/"-separated segments ("" is one empty
// segment), against pats. "**" is one segment followed by a star over
// whole segments, so the classic greedy wildcard algorithm applies with
// segments as its units: no recursion, O(len(pats)*segments(s)).
func matchSegs(pats []segPat, s string) bool {
	pi, pos := 0, 0
	starP, starPos := -1, 0
	// next returns the end of the segment at pos and the position after it
	// (len(s)+1 once every segment is consumed).
	next := func(pos int) (int, int) {
		if i := strings.IndexByte(s[pos:], '/'); i >= 0 {
			return pos + i, pos + i + 1
		}
		return len(s), len(s) + 1
	}
	for pos <= len(s) || pi < len(pats) {
		if pos > len(s) {
			return false // patterns left, each needs a segment
		}
		end, after := next(pos)
		switch {
		case pi < len(pats) && pats[pi].any:
			pi++
			pos = after
			starP, starPos = pi, pos
		case pi < len(pats) && matchOne(pats[pi], s[pos:end]):
			pi++
			pos = after
		case starP >= 0 && starPos <= len(s):
			_, starPos = next(starPos)
			pi, pos = starP, starPos
		default:
			return false
		}
	}
	return true
}

func matchOne(p segPat, seg string) bool {
	if !p.star {
		return p.text == seg
	}
	return matchSegment(p.text, seg)
}

// node is one level of the index: grants whose patterns begin with the
// same literal segments share the path to their node.
type node struct {
	children map[string]*node
	// rest: grants whose pattern continues, at this depth, with a
	// wildcard segment; matched against the remaining path.
	rest []*grant
	// exact: grants whose pattern is wholly literal and ends here.
	exact []*grant
}

func (n *node) insert(g *grant) {
	for d, p := range g.pats {
		if p.any || p.star {
			g.depth = d
			n.rest = append(n.rest, g)
			return
		}
		c := n.children[p.text]
		if c == nil {
			if n.children == nil {
				n.children = map[string]*node{}
			}
			c = &node{}
			n.children[p.text] = c
		}
		n = c
	}
	n.exact = append(n.exact, g)
}

// lookup returns the first grant, in policy order, that allows method on
// the canonical path p, or nil.
func (n *node) lookup(method, p string) *grant {
	var best *grant
	consider := func(g *grant, tail string) {
		if (best == nil || g.index < best.index) && g.allows(method) &&
			matchSegs(g.pats[g.depth:], tail) {
			best = g
		}
	}
	pos := 1 // p[pos:] is the path below n
	for {
		for _, g := range n.rest {
			consider(g, p[pos:])
		}
		seg, more := p[pos:], false
		if i := strings.IndexByte(seg, '/'); i >= 0 {
			seg, more = seg[:i], true
		}
		c := n.children[seg]
		if c == nil {
			return best
		}
		n = c
		if !more {
			for _, g := range n.exact {
				if (best == nil || g.index < best.index) && g.allows(method) {
					best = g
				}
			}
			return best
		}
		pos += len(seg) + 1
	}
}
