package l7

import (
	"math/rand"
	"strings"
	"testing"
	"time"
)

// refMatch is a plainly recursive reference for matchSegs: "**" takes one
// or more segments, any other pattern exactly one.
func refMatch(pats []segPat, segs []string) bool {
	if len(pats) == 0 {
		return len(segs) == 0
	}
	if pats[0].any {
		for k := 1; k <= len(segs); k++ {
			if refMatch(pats[1:], segs[k:]) {
				return true
			}
		}
		return false
	}
	return len(segs) > 0 && refSegment(pats[0].text, segs[0]) && refMatch(pats[1:], segs[1:])
}

func refSegment(p, s string) bool {
	if p == "" {
		return s == ""
	}
	if p[0] == '*' {
		for k := 0; k <= len(s); k++ {
			if refSegment(p[1:], s[k:]) {
				return true
			}
		}
		return false
	}
	return s != "" && p[0] == s[0] && refSegment(p[1:], s[1:])
}

// refPath matches a canonical path against a compiled pattern, by the
// reference.
func refPath(pats []segPat, path string) bool {
	return refMatch(pats, strings.Split(path[1:], "/"))
}

func TestMatchSegsAgreesWithReference(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	pick := func(xs []string) string { return xs[rng.Intn(len(xs))] }
	patSegs := []string{"**", "*", "a", "b", "a*", "*b", "*a*", "", "ab"}
	pathSegs := []string{"a", "b", "ab", "ba", "", "aab", "x"}
	for i := 0; i < 20000; i++ {
		var ps, ss []string
		for n := 1 + rng.Intn(4); n > 0; n-- {
			ps = append(ps, pick(patSegs))
		}
		for n := 1 + rng.Intn(5); n > 0; n-- {
			ss = append(ss, pick(pathSegs))
		}
		pats := make([]segPat, len(ps))
		for j, p := range ps {
			if p == "**" {
				pats[j] = segPat{any: true}
			} else {
				pats[j] = segPat{text: p, star: strings.Contains(p, "*")}
			}
		}
		s := strings.Join(ss, "/")
		if got, want := matchSegs(pats, s), refMatch(pats, ss); got != want {
			t.Fatalf("matchSegs(%q, %q) = %v, reference says %v", ps, s, got, want)
		}
	}
}

// The index must find exactly what a linear scan with the reference finds.
func TestIndexAgreesWithLinearScan(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	segs := []string{"a", "b", "*", "**", "a*", "c"}
	methods := []string{"GET", "POST", "*"}
	for i := 0; i < 300; i++ {
		var rules []string
		for n := 1 + rng.Intn(12); n > 0; n-- {
			var p []string
			for k := 1 + rng.Intn(4); k > 0; k-- {
				p = append(p, segs[rng.Intn(len(segs))])
			}
			rules = append(rules, methods[rng.Intn(3)]+" /"+strings.Join(p, "/"))
		}
		e, err := Compile(rest(rules...))
		if err != nil {
			continue // "**" inside a segment, etc.
		}
		for j := 0; j < 50; j++ {
			var p []string
			for k := 1 + rng.Intn(5); k > 0; k-- {
				p = append(p, []string{"a", "b", "c", "ab", ""}[rng.Intn(5)])
			}
			path := "/" + strings.Join(p, "/")
			if _, err := NormalizePath(path); err != nil {
				continue
			}
			m := []string{"GET", "POST", "HEAD"}[rng.Intn(3)]
			want := ""
			for _, g := range e.grants {
				if g.allows(m) && (g.anyPath || refPath(g.pats, path)) {
					want = g.label
					break
				}
			}
			if d := e.Decide(m, path); d.Rule != want {
				t.Fatalf("rules %q: %s %s: Rule = %q, linear scan says %q", rules, m, path, d.Rule, want)
			}
		}
	}
}

// Patterns with many stars against long paths stay polynomial.
func TestNoPathologicalBacktracking(t *testing.T) {
	pat := "/" + strings.Repeat("**/", 30) + "z"
	seg := "/" + strings.Repeat("*a", 30) + "z"
	e := mustCompile(t, rest("GET "+pat, "GET /x"+seg))
	long := "/" + strings.Repeat("a/", 1500) + "y"
	longSeg := "/x/" + strings.Repeat("a", 3000)
	start := time.Now()
	for _, p := range []string{long, longSeg} {
		if d := e.Decide("GET", p); d.Allow {
			t.Errorf("allowed %s", d.Path)
		}
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("two decisions took %v", el)
	}
}
