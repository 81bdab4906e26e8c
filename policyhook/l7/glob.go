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

// node is one level of the index, a trie over pattern segments: grants
// whose patterns begin with the same segments share the path to their
// node. Literal segments are looked up; segments with "*" are edges tried
// in turn; "**" ends the walk down the trie.
type node struct {
	lit  map[string]*node
	wild []wildEdge
	// rest: grants whose pattern continues, at this depth, with "**";
	// matched against the remaining path. Those whose last segment is
	// literal are kept apart, by it, since only a path ending in that
	// segment can match them ("/**/setup.py").
	rest   []*grant
	byLast map[string][]*grant
	// exact: grants whose pattern ends here.
	exact []*grant
}

type wildEdge struct {
	pat   string // one segment pattern containing "*"
	child *node
}

func (n *node) insert(g *grant) {
	for d, p := range g.pats {
		switch {
		case p.any:
			g.depth = d
			if last := g.pats[len(g.pats)-1]; !last.any && !last.star {
				if n.byLast == nil {
					n.byLast = map[string][]*grant{}
				}
				n.byLast[last.text] = append(n.byLast[last.text], g)
			} else {
				n.rest = append(n.rest, g)
			}
			return
		case p.star:
			n = n.wildChild(p.text)
		default:
			c := n.lit[p.text]
			if c == nil {
				if n.lit == nil {
					n.lit = map[string]*node{}
				}
				c = &node{}
				n.lit[p.text] = c
			}
			n = c
		}
	}
	n.exact = append(n.exact, g)
}

func (n *node) wildChild(pat string) *node {
	for _, e := range n.wild {
		if e.pat == pat {
			return e.child
		}
	}
	c := &node{}
	n.wild = append(n.wild, wildEdge{pat, c})
	return c
}

// walker finds the first grant, in policy order, that allows method on
// the canonical path. Each trie node is visited at most once: a node sits
// at one depth and is reached only through its parent.
type walker struct {
	method, path string
	last         string // the path's last segment
	best         *grant
}

func (w *walker) better(g *grant) bool {
	return (w.best == nil || g.index < w.best.index) && g.allows(w.method)
}

// walk visits n with w.path[pos:] (one or more segments) still to match.
func (w *walker) walk(n *node, pos int) {
	tail := w.path[pos:]
	for _, g := range n.rest {
		if w.better(g) && matchSegs(g.pats[g.depth:], tail) {
			w.best = g
		}
	}
	for _, g := range n.byLast[w.last] {
		if w.better(g) && matchSegs(g.pats[g.depth:], tail) {
			w.best = g
		}
	}
	seg, more := tail, false
	if i := strings.IndexByte(tail, '/'); i >= 0 {
		seg, more = tail[:i], true
	}
	if c := n.lit[seg]; c != nil {
		w.visit(c, more, pos+len(seg)+1)
	}
	for _, e := range n.wild {
		if matchSegment(e.pat, seg) {
			w.visit(e.child, more, pos+len(seg)+1)
		}
	}
}

func (w *walker) visit(c *node, more bool, next int) {
	if more {
		w.walk(c, next)
		return
	}
	for _, g := range c.exact {
		if w.better(g) {
			w.best = g
		}
	}
	// A pattern ending in "**" needs one more segment; none is left.
}

// lookup returns the first grant, in policy order, that allows method on
// the canonical path p, or nil.
func (n *node) lookup(method, p string) *grant {
	w := walker{method: method, path: p, last: p[strings.LastIndexByte(p, '/')+1:]}
	w.walk(n, 1)
	return w.best
}
