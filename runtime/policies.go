package runtime

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/openshell/openshell/policyhook"
	"github.com/openshell/openshell/policyhook/policy"
)

// Annotations a container names its policy with.
const (
	// AnnotationPolicy is a policy name in the policy directory, or an
	// absolute path under one of the configuration's policy_paths.
	AnnotationPolicy = "io.openshell.policy"
	// AnnotationPolicyInline is the policy's YAML itself, accepted only
	// where the configuration sets allow_inline_policy.
	AnnotationPolicyInline = "io.openshell.policy.inline"
)

//go:embed builtin/default.yaml
var builtinDefault []byte

var policyName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func validPolicyName(s string) bool { return policyName.MatchString(s) }

// PolicySource is where a container's policy came from, for messages and
// for openshell audit.
type PolicySource struct {
	Kind string // "annotation", "inline", "default"
	Ref  string // the name, path or builtin:default
}

func (s PolicySource) String() string { return s.Kind + " " + s.Ref }

// ResolvePolicy finds and loads the policy for a container with the given
// annotations: the inline annotation, else the named one, else the
// configured default. It never falls back past a policy that was named but
// is missing or invalid: that is an error.
//
// Annotations are written by whoever writes the pod spec, so they only
// choose among what the operator allows: a name in policy_dir, a path
// under policy_paths, inline YAML only with allow_inline_policy, and
// always within ceiling_policy when one is set. The default_policy is the
// operator's own and is held to none of these.
func (c *Config) ResolvePolicy(annotations map[string]string) (*policy.Policy, PolicySource, error) {
	inline, hasInline := annotations[AnnotationPolicyInline]
	ref, hasRef := annotations[AnnotationPolicy]
	var (
		p   *policy.Policy
		src PolicySource
		err error
	)
	switch {
	case hasInline && hasRef:
		return nil, PolicySource{}, fmt.Errorf("annotations %s and %s both set: name one policy", AnnotationPolicy, AnnotationPolicyInline)
	case hasInline:
		src = PolicySource{Kind: "inline", Ref: "annotation " + AnnotationPolicyInline}
		if !c.AllowInlinePolicy {
			return nil, src, fmt.Errorf("annotation %s: inline policies are refused unless the runtime configuration sets %s = true", AnnotationPolicyInline, c.fieldName("allow_inline_policy"))
		}
		p, err = policy.Parse("<"+AnnotationPolicyInline+">", []byte(inline))
	case hasRef:
		src = PolicySource{Kind: "annotation", Ref: ref}
		p, err = c.loadAnnotated(ref)
	default:
		return c.defaultPolicy()
	}
	if err != nil {
		return nil, src, err
	}
	if err := c.checkCeiling(p); err != nil {
		return nil, src, fmt.Errorf("annotation %s: %w", src.annotation(), err)
	}
	return p, src, nil
}

func (s PolicySource) annotation() string {
	if s.Kind == "inline" {
		return AnnotationPolicyInline
	}
	return AnnotationPolicy
}

func (c *Config) defaultPolicy() (*policy.Policy, PolicySource, error) {
	src := PolicySource{Kind: "default", Ref: c.DefaultPolicy}
	if c.DefaultPolicy == "" || c.DefaultPolicy == BuiltinPolicy {
		src.Ref = BuiltinPolicy
		p, err := policy.Parse(BuiltinPolicy, builtinDefault)
		return p, src, err
	}
	p, err := c.loadPolicy(c.fieldName("default_policy"), c.DefaultPolicy)
	return p, src, err
}

// checkCeiling holds an annotation-chosen policy to ceiling_policy.
func (c *Config) checkCeiling(p *policy.Policy) error {
	if c.CeilingPolicy == "" {
		return nil
	}
	field := c.fieldName("ceiling_policy")
	var ceiling *policy.Policy
	var err error
	if c.CeilingPolicy == BuiltinPolicy {
		ceiling, err = policy.Parse(BuiltinPolicy, builtinDefault)
	} else {
		var path string
		if path, err = c.PolicyPath(c.CeilingPolicy); err == nil {
			ceiling, err = policy.Load(path)
		}
	}
	if err != nil {
		return fmt.Errorf("load %s: %w", field, err)
	}
	if err := policyhook.CheckCeiling(ceiling, p); err != nil {
		return fmt.Errorf("check against %s: %w", field, err)
	}
	return nil
}

// PolicyPath is the file a policy reference names: an absolute path as
// it is, a name as <policy_dir>/<name>.yaml. It is for the operator's own
// references (default_policy, ceiling_policy, openshell's commands); an
// annotation's goes through loadAnnotated.
func (c *Config) PolicyPath(ref string) (string, error) {
	if filepath.IsAbs(ref) {
		return filepath.Clean(ref), nil
	}
	if !validPolicyName(ref) {
		return "", fmt.Errorf("%q is neither an absolute path nor a policy name (letters, digits, '.', '_', '-')", ref)
	}
	for _, ext := range []string{".yaml", ".yml"} {
		p := filepath.Join(c.PolicyDir, ref+ext)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no policy %q in %s (looked for %s.yaml and %s.yml)", ref, c.PolicyDir, ref, ref)
}

func (c *Config) loadPolicy(from, ref string) (*policy.Policy, error) {
	path, err := c.PolicyPath(ref)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", from, err)
	}
	return policy.Load(path)
}

// loadAnnotated loads the policy the io.openshell.policy annotation names:
// a name in policy_dir, or an absolute path that lies, once cleaned and
// with its symlinks resolved, under a directory of policy_paths. Its
// errors give the file and the places of the problems, never the file's
// contents: the annotation's author chose the file, and must not be able
// to read a host file through the errors of one that is not a policy.
func (c *Config) loadAnnotated(ref string) (*policy.Policy, error) {
	path := ref
	if filepath.IsAbs(ref) {
		var err error
		if path, err = c.confinePath(ref); err != nil {
			return nil, fmt.Errorf("annotation %s: %w", AnnotationPolicy, err)
		}
	} else {
		var err error
		if path, err = c.PolicyPath(ref); err != nil {
			return nil, fmt.Errorf("%s: %w", AnnotationPolicy, err)
		}
	}
	p, err := policy.Load(path)
	if err != nil {
		return nil, fmt.Errorf("annotation %s: %w", AnnotationPolicy, withheld(path, err))
	}
	return p, nil
}

// confinePath returns the file an absolute path names once it is cleaned
// and its symlinks resolved, provided both lie under a directory of
// policy_paths. Nothing outside them is even looked at, so the refusal
// does not tell whether a file exists.
func (c *Config) confinePath(ref string) (string, error) {
	field := c.fieldName("policy_paths")
	clean := filepath.Clean(ref)
	refuse := func(what string) error {
		if len(c.PolicyPaths) == 0 {
			return fmt.Errorf("refuse policy path %q: the runtime configuration lists no directory in %s; name a policy in %s instead", ref, field, c.PolicyDir)
		}
		return fmt.Errorf("refuse policy path %q: %s is not under a directory of %s (%s)", ref, what, field, strings.Join(c.PolicyPaths, ", "))
	}
	if !underAny(clean, c.PolicyPaths, filepath.Clean) {
		return "", refuse("it")
	}
	resolved, err := filepath.EvalSymlinks(clean)
	if err != nil {
		return "", fmt.Errorf("resolve policy path %q: %w", ref, err)
	}
	if !underAny(resolved, c.PolicyPaths, func(d string) string {
		r, err := filepath.EvalSymlinks(d)
		if err != nil {
			return "" // matches nothing
		}
		return r
	}) {
		return "", refuse("the file it resolves to, " + resolved + ",")
	}
	return resolved, nil
}

// underAny reports whether path lies strictly under one of dirs, each
// mapped by norm first ("" matches nothing).
func underAny(path string, dirs []string, norm func(string) string) bool {
	for _, d := range dirs {
		d = norm(d)
		if d != "" && d != "/" && strings.HasPrefix(path, d+string(filepath.Separator)) {
			return true
		}
	}
	return false
}

// withheldLimit is how many problem positions a withheld error lists.
const withheldLimit = 5

// withheld replaces a policy's validation errors by their positions: the
// messages quote the file (a value, a key, a whole line of a file that
// is not YAML at all).
func withheld(file string, err error) error {
	var list policy.ErrorList
	if !errors.As(err, &list) {
		return err // open and read errors name the path only
	}
	var at []string
	for i, e := range list {
		if i == withheldLimit {
			at = append(at, fmt.Sprintf("and %d more", len(list)-withheldLimit))
			break
		}
		at = append(at, fmt.Sprintf("%s:%d:%d", e.File, e.Pos.Line, e.Pos.Column))
	}
	return fmt.Errorf("policy %s does not validate (%s); the messages are withheld because an annotation chose the file: run openshell policy validate %s on the host", file, strings.Join(at, ", "), file)
}

func (c *Config) fieldName(field string) string {
	if c.file == "" {
		return field
	}
	return c.file + ": " + field
}
