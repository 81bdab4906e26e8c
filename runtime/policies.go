package runtime

import (
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/openshell/openshell/policyhook/policy"
)

// Annotations a container names its policy with.
const (
	// AnnotationPolicy is a policy name in the policy directory, or an
	// absolute path.
	AnnotationPolicy = "io.openshell.policy"
	// AnnotationPolicyInline is the policy's YAML itself.
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
func (c *Config) ResolvePolicy(annotations map[string]string) (*policy.Policy, PolicySource, error) {
	inline, hasInline := annotations[AnnotationPolicyInline]
	ref, hasRef := annotations[AnnotationPolicy]
	switch {
	case hasInline && hasRef:
		return nil, PolicySource{}, fmt.Errorf("annotations %s and %s both set: name one policy", AnnotationPolicy, AnnotationPolicyInline)
	case hasInline:
		src := PolicySource{Kind: "inline", Ref: "annotation " + AnnotationPolicyInline}
		p, err := policy.Parse("<"+AnnotationPolicyInline+">", []byte(inline))
		return p, src, err
	case hasRef:
		src := PolicySource{Kind: "annotation", Ref: ref}
		p, err := c.loadPolicy(AnnotationPolicy, ref)
		return p, src, err
	}
	src := PolicySource{Kind: "default", Ref: c.DefaultPolicy}
	if c.DefaultPolicy == "" || c.DefaultPolicy == BuiltinPolicy {
		src.Ref = BuiltinPolicy
		p, err := policy.Parse(BuiltinPolicy, builtinDefault)
		return p, src, err
	}
	p, err := c.loadPolicy(c.fieldName("default_policy"), c.DefaultPolicy)
	return p, src, err
}

// PolicyPath is the file a policy reference names: an absolute path as
// it is, a name as <policy_dir>/<name>.yaml.
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

func (c *Config) fieldName(field string) string {
	if c.file == "" {
		return field
	}
	return c.file + ": " + field
}
