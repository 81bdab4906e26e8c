// Package inference is the model router a sandbox's egress gateway serves
// at http://inference.local: it takes the sandbox's OpenAI- or
// Anthropic-style calls, holds them to the sandbox's policy (routes,
// models, rate, token budget), adds the provider's credential from the
// host, forwards them to the policy's endpoint, relays the answer
// (streamed as it arrives), counts the tokens and audits each call.
//
// It never holds a key longer than one call, never writes one anywhere
// (not in a log, an audit event or an error), never sends one to any URL
// but its provider's own base_url, and never passes the sandbox's own
// Authorization or x-api-key on. Every size it reads from the sandbox or
// the model server is bounded.
package inference

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/openshell/openshell/policyhook/policy"
)

// APIs a provider speaks.
const (
	APIOpenAI    = "openai"
	APIAnthropic = "anthropic"
)

// How a provider's key is sent.
const (
	AuthBearer  = "bearer"    // Authorization: Bearer KEY
	AuthAPIKey  = "x-api-key" // x-api-key: KEY
	AuthNone    = "none"
	sourceFile  = "file:"
	sourceEnv   = "env:"
	maxKeyBytes = 16 << 10
)

// Provider is one model provider of the host's configuration
// ([inference.providers.NAME]). It names where its key comes from, never
// the key.
type Provider struct {
	Name    string `json:"name" toml:"-"`
	BaseURL string `json:"base_url" toml:"base_url"`
	API     string `json:"api" toml:"api"`
	Auth    string `json:"auth" toml:"auth"`
	// Credential is "file:/abs/path" (root-owned, mode 0600 or
	// narrower, read at every call) or "env:NAME" (the runtime's
	// environment when the gateway starts). Empty with auth none.
	Credential string `json:"credential,omitempty" toml:"credential"`
	// Headers are sent on every call to the provider, after the
	// sandbox's (e.g. anthropic-version, OpenAI-Organization).
	Headers map[string]string `json:"headers,omitempty" toml:"headers"`
	// Costs in US dollars per token: openshell inference usage and a
	// policy's cost_budget_usd count in them.
	CostPerInputToken  float64 `json:"cost_per_input_token,omitempty" toml:"cost_per_input_token"`
	CostPerOutputToken float64 `json:"cost_per_output_token,omitempty" toml:"cost_per_output_token"`
}

var (
	headerNameRE = regexp.MustCompile("^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
	envNameRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// reservedHeaders are set by the router alone: a provider's headers may
// not name them.
var reservedHeaders = []string{"authorization", "x-api-key", "host", "content-length", "transfer-encoding", "connection", "proxy-authorization"}

// Validate checks one provider's definition; errors name the field.
func (p *Provider) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("inference.providers.%s.%s: %s", p.Name, field, fmt.Sprintf(format, a...)))
	}
	if !policy.ProviderNameOK(p.Name) {
		errs = append(errs, fmt.Errorf("inference.providers.%q: not a provider name (lower-case letters, digits, - and _; at most 63)", p.Name))
	}
	if _, err := NormalizeURL(p.BaseURL); err != nil {
		bad("base_url", "%s", err)
	}
	if !slices.Contains([]string{APIOpenAI, APIAnthropic}, p.API) {
		bad("api", "%q is not openai or anthropic", p.API)
	}
	switch p.Auth {
	case AuthBearer, AuthAPIKey:
		if _, _, err := ParseSource(p.Credential); err != nil {
			bad("credential", "%s", err)
		}
	case AuthNone:
		if p.Credential != "" {
			bad("credential", "is set, but auth is none")
		}
	default:
		bad("auth", "%q is not bearer, x-api-key or none", p.Auth)
	}
	for k, v := range p.Headers {
		switch {
		case !headerNameRE.MatchString(k):
			bad("headers", "%q is not a header name", k)
		case slices.Contains(reservedHeaders, strings.ToLower(k)):
			bad("headers", "%s is set by the router itself", k)
		case strings.ContainsAny(v, "\r\n\x00"):
			bad("headers."+k, "contains a line break or NUL")
		}
	}
	if p.CostPerInputToken < 0 || p.CostPerOutputToken < 0 {
		bad("cost_per_input_token", "costs may not be negative")
	}
	return errors.Join(errs...)
}

// ParseSource splits a credential source into its kind ("file" or "env")
// and its path or variable name.
func ParseSource(src string) (kind, name string, err error) {
	switch {
	case strings.HasPrefix(src, sourceFile):
		name = strings.TrimPrefix(src, sourceFile)
		if !path.IsAbs(name) || path.Clean(name) != name {
			return "", "", fmt.Errorf("%q: file: needs a clean absolute path", src)
		}
		return "file", name, nil
	case strings.HasPrefix(src, sourceEnv):
		name = strings.TrimPrefix(src, sourceEnv)
		if !envNameRE.MatchString(name) {
			return "", "", fmt.Errorf("%q: env: needs a variable name", src)
		}
		return "env", name, nil
	case src == "":
		return "", "", errors.New(`is required: "file:/path" or "env:NAME"`)
	}
	return "", "", fmt.Errorf(`%q is neither "file:/path" nor "env:NAME"`, src)
}

// NormalizeURL is the form base URLs are compared in: scheme and host
// lower case, the scheme's default port dropped, the path cleaned and
// without a trailing slash. A URL with credentials, a query or a
// fragment is refused.
func NormalizeURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "":
		return "", fmt.Errorf("%q is not an http:// or https:// URL", raw)
	case u.User != nil:
		return "", fmt.Errorf("%q carries credentials", raw)
	case u.RawQuery != "" || u.Fragment != "" || strings.ContainsAny(raw, "?#"):
		return "", fmt.Errorf("%q: a base URL has no query or fragment", raw)
	}
	host := strings.ToLower(u.Hostname())
	port := u.Port()
	if (u.Scheme == "http" && port == "80") || (u.Scheme == "https" && port == "443") {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		host += ":" + port
	}
	p := ""
	if u.Path != "" && u.Path != "/" {
		p = path.Clean(u.Path)
	}
	return u.Scheme + "://" + host + strings.TrimSuffix(p, "/"), nil
}

// Target is where a route leads: the endpoint, and the provider whose
// key goes with it (nil: none is attached).
type Target struct {
	Endpoint string // normalized
	Provider *Provider
	// Note says why no key is attached, when none is.
	Note string
}

// Resolve finds the route's target among the host's providers. A key is
// only ever attached when the endpoint is the provider's own base_url: a
// policy that names a provider and another endpoint is refused, and an
// endpoint no provider has gets no key.
func Resolve(route *policy.Inference, providers []Provider) (Target, error) {
	var ep string
	if route.RoutingEndpoint != "" {
		var err error
		if ep, err = NormalizeURL(route.RoutingEndpoint); err != nil {
			return Target{}, fmt.Errorf("routing_endpoint: %w", err)
		}
	}
	if route.Provider != "" {
		i := slices.IndexFunc(providers, func(p Provider) bool { return p.Name == route.Provider })
		if i < 0 {
			return Target{}, fmt.Errorf("the policy names provider %q, which this host's configuration does not define", route.Provider)
		}
		p := &providers[i]
		base, err := NormalizeURL(p.BaseURL)
		if err != nil {
			return Target{}, fmt.Errorf("provider %s: %w", p.Name, err)
		}
		if ep != "" && ep != base {
			return Target{}, fmt.Errorf("the policy's routing_endpoint %s is not provider %s's base_url %s: a provider's key goes only to its own base_url", ep, p.Name, base)
		}
		return Target{Endpoint: base, Provider: p}, nil
	}
	for i := range providers {
		if base, err := NormalizeURL(providers[i].BaseURL); err == nil && base == ep {
			return Target{Endpoint: ep, Provider: &providers[i]}, nil
		}
	}
	return Target{Endpoint: ep, Note: "no provider in the host's configuration has this base_url: no key attached"}, nil
}
