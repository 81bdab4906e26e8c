package l7

import (
	"net/url"
	"path"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/openshell/openshell/policyhook/policy"
)

func FuzzDecide(f *testing.F) {
	for _, s := range [][3]string{
		{"GET", "/repos/**", "/repos/a/b?x=1"},
		{"GET", "/a/*/c", "/a/%2e%2e/c"},
		{"POST", "/a/*.json", "/a/x.json"},
		{"get", "/public/**", "/public/..;/admin"},
		{"HEAD", "**", "http://h/a/%C3%A9"},
		{"OPTIONS", "*", "*"},
		{"GET", "/**/z", "/a/%252e/z"},
		{"GET", "/a/b", "/a//b"},
		{"DELETE", "/a;x/**", "/a;x/%EF%BC%8E%EF%BC%8E/"},
		{"GET", "/wiki/Caf%C3%A9", "/wiki/Caf%c3%a9#x"},
		{"GET", "/x/**", "https://u@h/x/y"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	fixed := mustCompileF(f, rest("GET /fixed/*/x", "* /any/**"))
	f.Fuzz(func(t *testing.T, method, rulePath, target string) {
		e, err := Compile(&policy.EgressRule{Field: "f", Protocol: "rest", HTTPRules: []policy.HTTPRule{
			{Method: "*", Path: rulePath}, {Method: "GET", Path: "/fixed/*/x"},
		}})
		if err != nil {
			e = fixed
		}
		d := e.Decide(method, target)
		if d.Reason == "" || strings.ContainsAny(d.Reason, "\r\n") || !utf8.ValidString(d.Reason) {
			t.Fatalf("Reason %q is not one line", d.Reason)
		}
		if d.Allow {
			if d.Rule == "" {
				t.Fatal("allowed without a rule")
			}
			if d.Path != "*" {
				checkCanonical(t, d.Path)
				var g *grant
				for _, x := range e.grants {
					if x.label == d.Rule {
						g = x
						break
					}
				}
				if g == nil || !(g.anyPath || refPath(g.pats, d.Path)) {
					t.Fatalf("%s allowed %q, which its pattern does not match", d.Rule, d.Path)
				}
			}
		}
		p, err := NormalizePath(target)
		if err != nil {
			return
		}
		checkCanonical(t, p)
		// What a server sees after decoding and resolving dots is what
		// the policy saw.
		raw, _, _ := strings.Cut(target, "?")
		a, errA := url.PathUnescape(raw)
		b, errB := url.PathUnescape(p)
		if errA != nil || errB != nil {
			t.Fatalf("accepted %q, which does not unescape: %v %v", target, errA, errB)
		}
		if path.Clean(a) != path.Clean(b) {
			t.Fatalf("%q normalised to %q: a server reads %q, the policy %q", target, p, path.Clean(a), path.Clean(b))
		}
	})
}

func checkCanonical(t *testing.T, p string) {
	t.Helper()
	if again, err := NormalizePath(p); err != nil || again != p {
		t.Fatalf("NormalizePath(%q) = %q, %v: not a fixed point", p, again, err)
	}
	up := strings.ToUpper(p)
	for _, bad := range []string{"%2F", "%25", "%5C", `\`, "//", "?", "#"} {
		if strings.Contains(up, bad) {
			t.Fatalf("canonical %q contains %q", p, bad)
		}
	}
	for _, s := range strings.Split(p[1:], "/") {
		if s == "." || s == ".." {
			t.Fatalf("canonical %q has a dot segment", p)
		}
	}
}

func mustCompileF(f *testing.F, r *policy.EgressRule) *Endpoint {
	e, err := Compile(r)
	if err != nil {
		f.Fatal(err)
	}
	return e
}
