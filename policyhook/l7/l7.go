package l7

import (
	"errors"
	"fmt"
	"strings"

	"github.com/openshell/openshell/policyhook/policy"
)

// Presets: the methods each access value allows, on every path ("**").
// Upstream: access_preset_rules in
// crates/openshell-supervisor-network/src/l7/mod.rs (REST branch).
var presets = map[string][]string{
	"read-only":  {"GET", "HEAD", "OPTIONS"},
	"read-write": {"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH"},
	"full":       {"*"},
}

// Inspects reports whether the gateway must see r's HTTP requests: access
// set, HTTP rules listed, or tls: terminate.
func Inspects(r *policy.EgressRule) bool {
	return r != nil && (r.Access != "" || len(r.HTTPRules) > 0 || r.TLS == "terminate")
}

// Endpoint decides the HTTP requests of one egress rule. It is immutable
// once compiled and safe for concurrent use.
type Endpoint struct {
	field  string
	grants []*grant // policy order
	root   node
}

// grant allows one method (or "*") on one path pattern.
type grant struct {
	index  int    // position in policy order; the lowest match wins
	label  string // Decision.Rule
	method string // upper-case, or "*"
	pats   []segPat
	depth  int // pats[:depth] are literal and indexed by the trie
	// asterisk: the rule path "*", which matches only the request-target *
	// (OPTIONS *); every other rule matches only paths, except "**".
	asterisk bool
	anyPath  bool // the rule path "**"
}

func (g *grant) allows(method string) bool {
	// HEAD is GET without the body (RFC 9110 9.3.2); upstream's
	// method_matches in sandbox-policy.rego lets a GET rule allow it too.
	return g.method == "*" || g.method == method || (g.method == "GET" && method == "HEAD")
}

// Compile builds r's request matcher; nil, nil when r has no L7 rules (no
// access, no rules).
func Compile(r *policy.EgressRule) (*Endpoint, error) {
	if r == nil || (r.Access == "" && len(r.HTTPRules) == 0) {
		return nil, nil
	}
	e := &Endpoint{field: r.Field}
	if r.Protocol != "rest" {
		return nil, fmt.Errorf("compile L7 rules: %s.protocol: %q: must be rest when rules or access are set", r.Field, r.Protocol)
	}
	if r.Access != "" {
		if len(r.HTTPRules) > 0 {
			// Upstream's validate_l7_policies refuses the pair too: a
			// reader could not tell whether rules narrow the preset or
			// add to it.
			return nil, fmt.Errorf("compile L7 rules: %s: access and rules are mutually exclusive; list the methods as rules instead", r.Field)
		}
		methods, ok := presets[r.Access]
		if !ok {
			return nil, fmt.Errorf("compile L7 rules: %s.access: %q: must be one of read-only, read-write, full", r.Field, r.Access)
		}
		label := "access " + r.Access
		for _, m := range methods {
			e.add(&grant{label: label, method: m, pats: anyPats, anyPath: true})
		}
		return e, nil
	}
	for j, h := range r.HTTPRules {
		f := fmt.Sprintf("%s.rules[%d].allow", r.Field, j)
		g, err := compileRule(h)
		if err != nil {
			return nil, fmt.Errorf("compile L7 rules: %s: %w", f, err)
		}
		g.label = fmt.Sprintf("rules[%d] %s %s", j, g.method, h.Path)
		e.add(g)
	}
	return e, nil
}

var anyPats = []segPat{{any: true}}

func compileRule(h policy.HTTPRule) (*grant, error) {
	// The policy's method is configuration, not wire input: "get" in a
	// policy file means GET (validate.go accepts it upper-cased).
	m := strings.ToUpper(h.Method)
	if m != "*" && !isToken(m) {
		return nil, fmt.Errorf("method %q is not an HTTP method", h.Method)
	}
	g := &grant{method: m}
	switch h.Path {
	case "**":
		g.pats, g.anyPath = anyPats, true
	case "*":
		if m != "OPTIONS" {
			return nil, errors.New(`path "*" matches only the request-target of OPTIONS *; use "**" for any path`)
		}
		g.asterisk = true
	default:
		pats, err := parsePattern(h.Path)
		if err != nil {
			return nil, fmt.Errorf("path %q: %w", h.Path, err)
		}
		g.pats = pats
	}
	return g, nil
}

func (e *Endpoint) add(g *grant) {
	g.index = len(e.grants)
	e.grants = append(e.grants, g)
	if !g.asterisk {
		e.root.insert(g)
	}
}

// Decision is the verdict on one request.
type Decision struct {
	Allow  bool
	Rule   string // which grant matched, e.g. `rules[2] GET /repos/**` or `access read-only`; "" when none
	Reason string // why denied (or why allowed), one line, for an audit log and a 403 body
	Path   string // the normalised path that was matched, query stripped; "" when refused before
}

// Decide decides one request. method is as received; target is the
// request-target as received on the wire (origin-form "/a/b?q", or
// absolute-form "http://h/a", whose path part is taken). The authority of
// an absolute-form target is not checked here: that is the gateway's.
func (e *Endpoint) Decide(method, target string) Decision {
	if e == nil {
		return Decision{Reason: "the endpoint has no HTTP rules to decide by"}
	}
	if !isToken(method) {
		return Decision{Reason: "refused: the method is not an HTTP token"}
	}
	path, err := requestPath(method, target)
	if err != nil {
		return Decision{Reason: "refused: " + err.Error()}
	}
	var g *grant
	if path == "*" {
		g = e.asteriskGrant(method)
	} else {
		g = e.root.lookup(method, path)
	}
	if g == nil {
		reason := "no rule allows " + method + " " + path
		if strings.ToUpper(method) != method {
			reason += "; methods are case-sensitive and " + method + " is not " + strings.ToUpper(method)
		}
		return Decision{Reason: reason, Path: path}
	}
	reason := method + " " + path + " allowed by " + g.label
	if method == "HEAD" && g.method == "GET" {
		reason += " (HEAD is allowed wherever GET is)"
	}
	return Decision{Allow: true, Rule: g.label, Reason: reason, Path: path}
}

func (e *Endpoint) asteriskGrant(method string) *grant {
	for _, g := range e.grants {
		if (g.asterisk || g.anyPath) && g.allows(method) {
			return g
		}
	}
	return nil
}

// requestPath returns the normalised path of a request-target, or "*" for
// the asterisk-form of OPTIONS.
func requestPath(method, target string) (string, error) {
	if err := scanTarget(target); err != nil {
		return "", err
	}
	switch {
	case strings.HasPrefix(target, "/"):
		return NormalizePath(target)
	case target == "*":
		if method != "OPTIONS" {
			return "", ErrAsteriskForm
		}
		return "*", nil
	}
	// absolute-form: http://authority[/path][?query]
	scheme, rest, ok := strings.Cut(target, "://")
	if !ok || !(strings.EqualFold(scheme, "http") || strings.EqualFold(scheme, "https")) {
		return "", ErrTargetForm
	}
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	switch authority := rest[:end]; {
	case authority == "":
		return "", ErrTargetForm
	case strings.ContainsRune(authority, '@'):
		return "", ErrUserinfo
	}
	path := rest[end:]
	if !strings.HasPrefix(path, "/") {
		path = "/" + path // an empty path is "/" (RFC 9112 3.2.2)
	}
	return NormalizePath(path)
}

// isToken reports whether m is an RFC 9110 token, the only thing a method
// may be.
func isToken(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}
