package l7

import (
	"strings"
	"sync"
	"testing"

	"github.com/openshell/openshell/policyhook/policy"
)

func rest(rules ...string) *policy.EgressRule {
	r := &policy.EgressRule{Field: "network_policies.gh.endpoints[0]", Protocol: "rest", Enforcement: policy.EnforcementEnforce}
	for _, s := range rules {
		m, p, _ := strings.Cut(s, " ")
		r.HTTPRules = append(r.HTTPRules, policy.HTTPRule{Method: m, Path: p})
	}
	return r
}

func mustCompile(t *testing.T, r *policy.EgressRule) *Endpoint {
	t.Helper()
	e, err := Compile(r)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	if e == nil {
		t.Fatal("Compile returned nil")
	}
	return e
}

func TestInspects(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    *policy.EgressRule
		want bool
	}{
		{"nil", nil, false},
		{"plain TCP", &policy.EgressRule{Host: "x"}, false},
		{"passthrough", &policy.EgressRule{TLS: "passthrough"}, false},
		{"rest without rules", &policy.EgressRule{Protocol: "rest"}, false},
		{"access", &policy.EgressRule{Protocol: "rest", Access: "read-only"}, true},
		{"rules", rest("GET /"), true},
		{"terminate", &policy.EgressRule{TLS: "terminate"}, true},
	} {
		if got := Inspects(tc.r); got != tc.want {
			t.Errorf("%s: Inspects = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestCompileNothingToDo(t *testing.T) {
	for _, r := range []*policy.EgressRule{nil, {}, {Protocol: "rest", TLS: "terminate"}} {
		if e, err := Compile(r); e != nil || err != nil {
			t.Errorf("Compile(%+v) = %v, %v; want nil, nil", r, e, err)
		}
	}
	var e *Endpoint
	if d := e.Decide("GET", "/"); d.Allow {
		t.Error("a nil Endpoint allowed a request")
	}
}

// One case per way a rule can be refused.
func TestCompileRefuses(t *testing.T) {
	both := rest("GET /a")
	both.Access = "read-only"
	badAccess := &policy.EgressRule{Protocol: "rest", Access: "read-mostly"}
	notRest := rest("GET /a")
	notRest.Protocol = ""
	for _, tc := range []struct {
		name string
		r    *policy.EgressRule
		want string
	}{
		{"access and rules", both, "mutually exclusive"},
		{"unknown access", badAccess, "must be one of"},
		{"protocol not rest", notRest, "must be rest"},
		{"method not a token", rest("G(T /a"), "not an HTTP method"},
		{"bare * without OPTIONS", rest("GET *"), `path "*" matches only`},
		{"bare * with any method", rest("* *"), `path "*" matches only`},
		{"relative path", rest("GET a/b"), "must start with /"},
		{"** within a segment", rest("GET /a/**b"), "whole segment"},
		{"** after text", rest("GET /a**"), "whole segment"},
		{"? glob", rest("GET /a?b"), "not supported"},
		{"class glob", rest("GET /a/[ab]"), "not supported"},
		{"brace glob", rest("GET /a/{b,c}"), "not supported"},
		{"fragment", rest("GET /a#b"), "fragment"},
		{"dot segment", rest("GET /a/../b"), "can never match"},
		{"dot", rest("GET /a/./b"), "can never match"},
		{"encoded slash", rest("GET /a%2Fb"), "encoded /"},
		{"double encoding", rest("GET /a%252F"), "%25"},
		{"empty segment", rest("GET /a//b"), "empty segment"},
		{"backslash", rest(`GET /a\b`), `\`},
		{"raw non-ASCII", rest("GET /café"), "non-ASCII"},
		{"too long", rest("GET /" + strings.Repeat("a", MaxPathLen)), "longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := Compile(tc.r)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Compile = %v, %v; want an error containing %q", e, err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "compile L7 rules: network_policies.gh.endpoints[0]") && tc.r.Field != "" {
				t.Errorf("error %q does not name the field", err)
			}
		})
	}
}

func TestPresets(t *testing.T) {
	all := []string{"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "TRACE", "PROPFIND"}
	for access, allowed := range map[string][]string{
		"read-only":  {"GET", "HEAD", "OPTIONS"},
		"read-write": {"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH"},
		"full":       all,
	} {
		e := mustCompile(t, &policy.EgressRule{Field: "f", Protocol: "rest", Access: access})
		for _, m := range all {
			want := false
			for _, a := range allowed {
				want = want || a == m
			}
			for _, target := range []string{"/", "/a/b/c", "/x/", "http://h"} {
				d := e.Decide(m, target)
				if d.Allow != want {
					t.Errorf("access %s: %s %s: Allow = %v, want %v (%s)", access, m, target, d.Allow, want, d.Reason)
				}
				if want && d.Rule != "access "+access {
					t.Errorf("access %s: Rule = %q", access, d.Rule)
				}
			}
		}
		// OPTIONS * where the preset allows OPTIONS (all three do).
		if d := e.Decide("OPTIONS", "*"); !d.Allow || d.Path != "*" {
			t.Errorf("access %s: OPTIONS * = %+v", access, d)
		}
	}
}

func TestGlobs(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		allow   []string
		deny    []string
	}{
		{"/repos", []string{"/repos", "/repos?x=1"}, []string{"/repos/", "/Repos", "/repos/x", "/reposx", "/"}},
		{"/repos/", []string{"/repos/"}, []string{"/repos", "/repos/x"}},
		{"/", []string{"/"}, []string{"/a"}},
		{"/repos/*", []string{"/repos/x", "/repos/", "/repos/a.b"}, []string{"/repos", "/repos/x/y", "/repos/x/"}},
		{"/repos/*/issues", []string{"/repos/x/issues"}, []string{"/repos/issues", "/repos/x/y/issues", "/repos/x/issues/1"}},
		{"/repos/**", []string{"/repos/", "/repos/x", "/repos/x/y/z", "/repos/x/"}, []string{"/repos", "/reposx/y", "/"}},
		{"/repos/**/issues", []string{"/repos/a/issues", "/repos/a/b/c/issues"}, []string{"/repos/issues", "/repos/a/issues/1"}},
		{"/**/issues", []string{"/a/issues", "/a/b/issues"}, []string{"/issues", "/a/issues/"}},
		{"/a/**/b/**", []string{"/a/x/b/y", "/a/x/y/b/z/w", "/a/b/b/c"}, []string{"/a/b/c", "/a/x/b", "/a/x/b/"[:6]}},
		{"/files/*.json", []string{"/files/a.json", "/files/.json"}, []string{"/files/a.json/x", "/files/a.jsonx", "/files/a/b.json"}},
		{"/v*/models", []string{"/v1/models", "/v/models", "/v2beta/models"}, []string{"/x1/models", "/v1/x/models"}},
		{"/*", []string{"/a", "/"}, []string{"/a/b", "/a/"}},
		{"/**", []string{"/", "/a", "/a/b/"}, nil},
		{"**", []string{"/", "/a", "/a/b/"}, nil},
		{"/wiki/Caf%c3%a9", []string{"/wiki/Caf%C3%A9", "/wiki/Caf%c3%a9"}, []string{"/wiki/Cafe", "/wiki/Caf%C3%89"}},
		{"/~user/%7Eother", []string{"/~user/~other", "/%7euser/%7Eother"}, nil},
		{"/users/@me", []string{"/users/@me"}, []string{"/users/%40me"}},
		{"/a;v=1", []string{"/a;v=1"}, []string{"/a"}},
	} {
		e := mustCompile(t, rest("GET "+tc.pattern))
		for _, p := range tc.allow {
			if d := e.Decide("GET", p); !d.Allow {
				t.Errorf("%s: GET %s denied: %s", tc.pattern, p, d.Reason)
			}
		}
		for _, p := range tc.deny {
			if d := e.Decide("GET", p); d.Allow {
				t.Errorf("%s: GET %s allowed by %s (path %s)", tc.pattern, p, d.Rule, d.Path)
			}
		}
	}
}

// Requests an attacker shapes to reach /admin through a rule for /public.
func TestNoBypass(t *testing.T) {
	e := mustCompile(t, rest("GET /public/**", "POST /public/upload"))
	for _, target := range []string{
		"/public/../admin",
		"/public/%2e%2e/admin",
		"/public/%2E%2e/admin",
		"/public/.%2e/admin",
		"/public/..%2fadmin",
		"/public/%252e%252e/admin",
		"/public/..;/admin",
		"/public/..%3B/admin",
		"/public/.../admin",
		"/public/..%20/admin",
		`/public/..\admin`,
		"/public/..%5cadmin",
		"/public/%C0%AE%C0%AE/admin",
		"/public/%EF%BC%8E%EF%BC%8E/admin",
		"/public//../admin",
		"/public/x/../../admin",
		"/public/%00/../admin",
		"/public/x#/../../admin",
		"http://h/public/../admin",
		"http://user@h/public/x",
		"h:443",
		"public/x",
		"*",
		"",
	} {
		if d := e.Decide("GET", target); d.Allow {
			t.Errorf("GET %q allowed as %s by %s", target, d.Path, d.Rule)
		} else if d.Reason == "" || strings.ContainsAny(d.Reason, "\r\n") {
			t.Errorf("GET %q: Reason %q is not one non-empty line", target, d.Reason)
		}
	}
	if d := e.Decide("GET", "/public/a/../b"); !d.Allow || d.Path != "/public/b" {
		t.Errorf("a dot segment that stays inside is resolved and allowed: %+v", d)
	}
}

func TestMethods(t *testing.T) {
	e := mustCompile(t, rest("GET /r", "post /w", "* /any", "OPTIONS *"))
	for _, tc := range []struct {
		method, target string
		allow          bool
		rule           string
	}{
		{"GET", "/r", true, "rules[0] GET /r"},
		{"HEAD", "/r", true, "rules[0] GET /r"},
		{"get", "/r", false, ""},
		{"Get", "/r", false, ""},
		{"POST", "/r", false, ""},
		{"POST", "/w", true, "rules[1] POST /w"},
		{"post", "/w", false, ""},
		{"GET", "/w", false, ""},
		{"PROPFIND", "/any", true, "rules[2] * /any"},
		{"get", "/any", true, "rules[2] * /any"},
		{"G T", "/any", false, ""},
		{"", "/any", false, ""},
		{"GET\r\n", "/any", false, ""},
		{"OPTIONS", "*", true, "rules[3] OPTIONS *"},
		{"GET", "*", false, ""},
		{"OPTIONS", "/r", false, ""},
	} {
		d := e.Decide(tc.method, tc.target)
		if d.Allow != tc.allow || d.Rule != tc.rule {
			t.Errorf("%q %s = %+v; want Allow %v Rule %q", tc.method, tc.target, d, tc.allow, tc.rule)
		}
	}
	if d := e.Decide("get", "/r"); !strings.Contains(d.Reason, "case-sensitive") {
		t.Errorf("lower-case denial does not say why: %q", d.Reason)
	}
	if d := e.Decide("HEAD", "/r"); !strings.Contains(d.Reason, "HEAD is allowed wherever GET is") {
		t.Errorf("HEAD-as-GET not explained: %q", d.Reason)
	}
}

func TestAsteriskForm(t *testing.T) {
	for _, tc := range []struct {
		rule  string
		allow bool
	}{
		{"OPTIONS *", true},
		{"OPTIONS **", true},
		{"* **", true},
		{"OPTIONS /", false},
		{"OPTIONS /**", false},
		{"GET **", false},
	} {
		e := mustCompile(t, rest(tc.rule))
		if d := e.Decide("OPTIONS", "*"); d.Allow != tc.allow {
			t.Errorf("rule %s: OPTIONS * = %+v, want Allow %v", tc.rule, d, tc.allow)
		}
	}
}

func TestFirstRuleInPolicyOrderNamesTheDecision(t *testing.T) {
	e := mustCompile(t, rest("GET /a/b/c", "GET /a/*/c", "* /a/**", "GET **", "GET /a/b/c"))
	for _, tc := range []struct{ method, target, rule string }{
		{"GET", "/a/b/c", "rules[0] GET /a/b/c"},
		{"GET", "/a/x/c", "rules[1] GET /a/*/c"},
		{"PUT", "/a/b/c", "rules[2] * /a/**"},
		{"GET", "/z", "rules[3] GET **"},
	} {
		if d := e.Decide(tc.method, tc.target); d.Rule != tc.rule {
			t.Errorf("%s %s: Rule = %q, want %q", tc.method, tc.target, d.Rule, tc.rule)
		}
	}
	// Reverse the order: the broad rule now wins everywhere.
	e = mustCompile(t, rest("GET **", "GET /a/b/c"))
	if d := e.Decide("GET", "/a/b/c"); d.Rule != "rules[0] GET **" {
		t.Errorf("Rule = %q", d.Rule)
	}
}

func TestAbsoluteForm(t *testing.T) {
	e := mustCompile(t, rest("GET /", "GET /a/**"))
	for _, tc := range []struct {
		target, path string
		allow        bool
	}{
		{"http://h", "/", true},
		{"https://h:443", "/", true},
		{"HTTP://h/a/b", "/a/b", true},
		{"http://h?q=1", "/", true},
		{"http://h/a/./b?x", "/a/b", true},
		{"http://h/a/%2e%2e/%2e%2e", "", false},
		{"ftp://h/a/b", "", false},
		{"http:///a/b", "", false},
		{"http://u:p@h/a/b", "", false},
		{"//h/a/b", "", false},
	} {
		d := e.Decide("GET", tc.target)
		if d.Allow != tc.allow || d.Path != tc.path {
			t.Errorf("GET %s = %+v; want Allow %v Path %q", tc.target, d, tc.allow, tc.path)
		}
	}
}

func TestDecisionPathAndReason(t *testing.T) {
	e := mustCompile(t, rest("GET /a"))
	d := e.Decide("GET", "/b?token=secret")
	if d.Allow || d.Path != "/b" || d.Rule != "" || d.Reason != "no rule allows GET /b" {
		t.Errorf("denial = %+v", d)
	}
	if strings.Contains(d.Reason, "secret") {
		t.Error("the query leaked into the reason")
	}
	d = e.Decide("GET", "/a%2Fb")
	if d.Allow || d.Path != "" || !strings.HasPrefix(d.Reason, "refused: ") {
		t.Errorf("refusal = %+v", d)
	}
	d = e.Decide("GET", "/a?x")
	if !d.Allow || d.Reason != "GET /a allowed by rules[0] GET /a" {
		t.Errorf("allow = %+v", d)
	}
}

func TestConcurrentDecide(t *testing.T) {
	e := mustCompile(t, rest("GET /a/*/c", "POST /b/**"))
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 1000; j++ {
				if !e.Decide("GET", "/a/x/c").Allow || e.Decide("GET", "/b/x").Allow {
					t.Error("wrong decision under concurrency")
					return
				}
			}
		}()
	}
	wg.Wait()
}
