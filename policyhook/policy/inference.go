package policy

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Inference is the sandbox's model route: what the egress gateway serves
// at http://inference.local/v1. The route is the sandbox's own; nothing
// in it is a credential (keys live in the host's configuration and are
// attached only when the endpoint is a configured provider's base_url).
type Inference struct {
	// RoutingEndpoint is the model server's base URL, version prefix
	// included ("https://api.openai.com/v1"): a request for
	// inference.local/v1/<route> goes to RoutingEndpoint/<route>. Empty
	// when Provider is set: the provider's base_url then.
	RoutingEndpoint string
	// Provider names an [inference.providers.NAME] table of the host's
	// configuration. Empty: the provider whose base_url is
	// RoutingEndpoint, if any; none means no credential is attached.
	Provider string
	// Model pins the model: every request is sent with it, whatever it
	// names. It excludes AllowedModels and ModelAliases.
	Model string
	// AllowedModels are the models a request may name, sent as named.
	// With no ModelAliases either (and no Model), any model passes.
	AllowedModels []string
	// ModelAliases are names a request may use, each sent as its target.
	ModelAliases map[string]string
	// APIs are the routes served (InferenceAPIs); empty: every route of
	// the provider's API.
	APIs []string
	// RateLimit bounds the calls (requests) sent upstream.
	RateLimit *RateLimit
	// TokenBudget bounds the tokens (in plus out, as the model server
	// reports them) the sandbox may use in its lifetime; 0: no bound.
	TokenBudget int64
	// CostBudgetUSD bounds what the sandbox's calls cost, in US dollars,
	// at the provider's cost per token (the host's configuration); 0: no
	// bound. A route whose provider has no cost refuses every call.
	CostBudgetUSD float64
	// Timeout bounds the wait for the response to start and every quiet
	// gap in it; DefaultInferenceTimeout when the policy is silent.
	Timeout time.Duration
	// SetEnv asks for the SDKs' variables in the sandbox
	// (OPENAI_BASE_URL and the like, pointing at inference.local, with a
	// placeholder key the gateway strips): modifier.NewInferenceEnv.
	SetEnv bool
	// Local is the privacy route: a second model server (a local one)
	// that calls whose content Privacy's route_local detectors match go
	// to instead. nil: none.
	Local *InferenceLocal
	// Privacy is the rule that reads each call's message contents for
	// personal data; nil: none.
	Privacy *Privacy
	Field   string // sandbox.inference
}

// InferenceLocal is the privacy route's model server. Its key rule is the
// cloud route's: a key is attached only when the endpoint is a configured
// provider's base_url.
type InferenceLocal struct {
	RoutingEndpoint string // base URL, version prefix included
	Provider        string // a provider of the host's configuration
	// Model, when set, is the model every call sent here is sent with
	// (the cloud's model names rarely exist on a local server).
	Model string
	Field string // sandbox.inference.local
}

// Route is the local route as a route of its own (endpoint and
// provider): what inference.Resolve takes.
func (l *InferenceLocal) Route() *Inference {
	return &Inference{RoutingEndpoint: l.RoutingEndpoint, Provider: l.Provider, Field: l.Field}
}

// Privacy is the PII rule: the detectors run over a call's message
// contents, and what is done when one matches.
type Privacy struct {
	// Detectors are the PIIDetectors turned on.
	Detectors []string
	// Action is what a match of any detector does (PrivacyRouteLocal or
	// PrivacyRedact), unless Actions names another for that detector.
	Action  string
	Actions map[string]string
	Field   string // sandbox.inference.privacy
}

// RoutesLocal reports whether a match of any detector sends a call to
// the local route; false for a nil rule.
func (p *Privacy) RoutesLocal() bool {
	if p == nil {
		return false
	}
	return slices.ContainsFunc(p.Detectors, func(d string) bool { return p.ActionOf(d) == PrivacyRouteLocal })
}

// ActionOf is what a match of detector d does.
func (p *Privacy) ActionOf(d string) string {
	if a, ok := p.Actions[d]; ok {
		return a
	}
	return p.Action
}

// The PII detectors (runtime/inference/pii.go says what each matches).
const (
	DetectSSN        = "ssn"
	DetectCreditCard = "credit_card"
	DetectEmail      = "email"
	DetectPhone      = "phone"
)

// PIIDetectors are the detectors a privacy rule may name.
var PIIDetectors = []string{DetectSSN, DetectCreditCard, DetectEmail, DetectPhone}

// What a privacy rule does with a match.
const (
	// PrivacyRouteLocal sends the whole call to the local route.
	PrivacyRouteLocal = "route_local"
	// PrivacyRedact replaces each match before the cloud route.
	PrivacyRedact = "redact"
)

// The routes a policy's apis may name. The OpenAI ones are served under
// inference.local/v1/ as OpenAI names them (chat/completions, ...); the
// Anthropic one is v1/messages.
const (
	APIChatCompletions = "chat_completions"
	APICompletions     = "completions"
	APIResponses       = "responses"
	APIEmbeddings      = "embeddings"
	APIModels          = "models"
	APIMessages        = "messages"
)

// InferenceAPIs are the routes the router serves.
var InferenceAPIs = []string{APIChatCompletions, APICompletions, APIResponses, APIEmbeddings, APIModels, APIMessages}

// Bounds and defaults of the inference section.
const (
	DefaultInferenceTimeout = 120 * time.Second
	MaxInferenceTimeout     = time.Hour
	maxTokenBudget          = 1 << 50
	maxCostBudgetUSD        = 1e9
	maxModelName            = 256
)

var providerNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ProviderNameOK reports whether name may name a provider: the host's
// configuration holds its providers to the same rule.
func ProviderNameOK(name string) bool { return providerNameRE.MatchString(name) }

type seedInference struct {
	RoutingEndpoint string            `yaml:"routing_endpoint"`
	Provider        string            `yaml:"provider"`
	Model           string            `yaml:"model"`
	AllowedModels   []string          `yaml:"allowed_models"`
	ModelAliases    map[string]string `yaml:"model_aliases"`
	APIs            []string          `yaml:"apis"`
	RateLimit       string            `yaml:"rate_limit"`
	TokenBudget     int64             `yaml:"token_budget"`
	CostBudgetUSD   float64           `yaml:"cost_budget_usd"`
	TimeoutSeconds  int64             `yaml:"timeout_seconds"`
	SetEnv          bool              `yaml:"set_env"`
	Local           *seedLocal        `yaml:"local"`
	Privacy         *seedPrivacy      `yaml:"privacy"`
}

type seedLocal struct {
	RoutingEndpoint string `yaml:"routing_endpoint"`
	Provider        string `yaml:"provider"`
	Model           string `yaml:"model"`
}

type seedPrivacy struct {
	Detectors []string          `yaml:"detectors"`
	Action    string            `yaml:"action"`
	Actions   map[string]string `yaml:"actions"`
}

// fromSeedInference builds the model's Inference from the seed section.
func fromSeedInference(si *seedInference, field string, s *errSink) *Inference {
	inf := &Inference{
		RoutingEndpoint: si.RoutingEndpoint,
		Provider:        si.Provider,
		Model:           si.Model,
		AllowedModels:   si.AllowedModels,
		ModelAliases:    si.ModelAliases,
		APIs:            si.APIs,
		TokenBudget:     si.TokenBudget,
		CostBudgetUSD:   si.CostBudgetUSD,
		Timeout:         time.Duration(si.TimeoutSeconds) * time.Second,
		SetEnv:          si.SetEnv,
		Field:           field,
	}
	if si.TimeoutSeconds == 0 {
		inf.Timeout = DefaultInferenceTimeout
	} else if si.TimeoutSeconds < 0 || si.TimeoutSeconds > int64(MaxInferenceTimeout/time.Second) {
		s.addf(field+".timeout_seconds", "%d is out of range (1-%d)", si.TimeoutSeconds, int64(MaxInferenceTimeout/time.Second))
	}
	if si.RateLimit != "" {
		inf.RateLimit = rateLimit(si.RateLimit, field+".rate_limit", s)
	}
	if l := si.Local; l != nil {
		inf.Local = &InferenceLocal{RoutingEndpoint: l.RoutingEndpoint, Provider: l.Provider, Model: l.Model, Field: field + ".local"}
	}
	if p := si.Privacy; p != nil {
		inf.Privacy = &Privacy{Detectors: p.Detectors, Action: p.Action, Actions: p.Actions, Field: field + ".privacy"}
	}
	return inf
}

// validateInference checks the route. Credentials never appear in a
// policy: the endpoint may not carry them, and no field names one.
func validateInference(inf *Inference, s *errSink) {
	f := inf.Field
	validateEndpoint(f, inf.RoutingEndpoint, inf.Provider, s)
	checkModel := func(field, m string) bool { return checkModelName(field, m, s) }
	if inf.Model != "" {
		checkModel(f+".model", inf.Model)
		if len(inf.AllowedModels) > 0 {
			s.addf(f+".allowed_models", "cannot be combined with model: model pins every request to %q", inf.Model)
		}
		if len(inf.ModelAliases) > 0 {
			s.addf(f+".model_aliases", "cannot be combined with model: model pins every request to %q", inf.Model)
		}
	}
	seen := map[string]bool{}
	for i, m := range inf.AllowedModels {
		field := fmt.Sprintf("%s.allowed_models[%d]", f, i)
		if checkModel(field, m) {
			if seen[m] {
				s.addf(field, "%q is listed twice", m)
			}
			seen[m] = true
		}
	}
	for _, alias := range sortedKeys(inf.ModelAliases) {
		field := f + ".model_aliases." + alias
		if checkModel(field, alias) && checkModel(field, inf.ModelAliases[alias]) && seen[alias] {
			s.addf(field, "%q is also in allowed_models: a name is either sent as named or as an alias's target", alias)
		}
	}
	checkListed(s, f+".apis", inf.APIs, InferenceAPIs, "a route")
	if inf.TokenBudget < 0 || inf.TokenBudget > maxTokenBudget {
		s.addf(f+".token_budget", "%d is out of range (1-%d; leave it out for no budget)", inf.TokenBudget, int64(maxTokenBudget))
	}
	// NaN fails every comparison: it is out of range too.
	if b := inf.CostBudgetUSD; !(b >= 0 && b <= maxCostBudgetUSD) {
		s.addf(f+".cost_budget_usd", "%v is out of range (more than 0, at most %g; leave it out for no budget)", b, float64(maxCostBudgetUSD))
	}
	if l := inf.Local; l != nil {
		validateEndpoint(l.Field, l.RoutingEndpoint, l.Provider, s)
		if l.Model != "" {
			checkModelName(l.Field+".model", l.Model, s)
		}
	}
	if p := inf.Privacy; p != nil {
		validatePrivacy(p, inf.Local != nil, s)
	}
	if inf.Local != nil && !inf.Privacy.RoutesLocal() {
		s.warnf(inf.Local.Field, "no privacy rule routes a call here: the local route is never used")
	}
}

// validateEndpoint checks a route's base URL and provider name (the cloud
// route's or the local one's): at least one, no credentials in the URL.
func validateEndpoint(f, ep, provider string, s *errSink) {
	switch {
	case ep == "" && provider == "":
		s.addf(f+".routing_endpoint", "is required (or name a provider from the host's configuration)")
	case ep != "":
		u, err := url.Parse(ep)
		switch {
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "":
			s.addf(f+".routing_endpoint", "%q is not an http:// or https:// URL", ep)
		case u.User != nil:
			s.addf(f+".routing_endpoint", "must not carry credentials; the runtime injects them from the host")
		case u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(ep, "?") || strings.HasSuffix(ep, "#"):
			s.addf(f+".routing_endpoint", "%q: a base URL has no query or fragment", ep)
		case hasControl(ep):
			s.addf(f+".routing_endpoint", "%q contains a control character", ep)
		}
	}
	if provider != "" && !ProviderNameOK(provider) {
		s.addf(f+".provider", "%q is not a provider name (lower-case letters, digits, - and _; at most 63)", provider)
	}
}

func checkModelName(field, m string, s *errSink) bool {
	switch {
	case m == "":
		s.addf(field, "is empty")
	case len(m) > maxModelName:
		s.addf(field, "is longer than %d bytes", maxModelName)
	case hasControl(m) || strings.ContainsAny(m, " \t"):
		s.addf(field, "%q contains a space or a control character", m)
	default:
		return true
	}
	return false
}

// checkListed reports each of items (field[i]) that is not one of known
// (what names the kind), or that is listed twice.
func checkListed(s *errSink, field string, items, known []string, what string) {
	seen := map[string]bool{}
	for i, it := range items {
		fi := fmt.Sprintf("%s[%d]", field, i)
		switch {
		case !slices.Contains(known, it):
			s.addf(fi, "%q is not %s (one of %s)", it, what, strings.Join(known, ", "))
		case seen[it]:
			s.addf(fi, "%q is listed twice", it)
		}
		seen[it] = true
	}
}

// validatePrivacy checks the PII rule: known detectors, each once, and
// actions that can be carried out (route_local needs a local route).
func validatePrivacy(p *Privacy, hasLocal bool, s *errSink) {
	f := p.Field
	if len(p.Detectors) == 0 {
		s.addf(f+".detectors", "is required: one or more of %s", strings.Join(PIIDetectors, ", "))
	}
	checkListed(s, f+".detectors", p.Detectors, PIIDetectors, "a detector")
	checkAction := func(field, a string) {
		switch a {
		case PrivacyRedact:
		case PrivacyRouteLocal:
			if !hasLocal {
				s.addf(field, "route_local needs a local route: set %s.local", strings.TrimSuffix(f, ".privacy"))
			}
		case "":
			s.addf(field, "is required: route_local or redact")
		default:
			s.addf(field, "%q is not an action (route_local or redact)", a)
		}
	}
	checkAction(f+".action", p.Action)
	for _, d := range sortedKeys(p.Actions) {
		field := f + ".actions." + d
		if !slices.Contains(p.Detectors, d) {
			s.addf(field, "%q is not one of this rule's detectors", d)
			continue
		}
		checkAction(field, p.Actions[d])
	}
}

// AllowsModel reports whether a request naming model may go ahead, and
// the model it is sent with. An empty model (a request that names none)
// passes only when the policy pins one, or restricts nothing.
func (inf *Inference) AllowsModel(model string) (sent string, ok bool) {
	switch {
	case inf.Model != "":
		return inf.Model, true
	case len(inf.AllowedModels) == 0 && len(inf.ModelAliases) == 0:
		return model, true
	case model == "":
		return "", false
	case slices.Contains(inf.AllowedModels, model):
		return model, true
	}
	if t, ok := inf.ModelAliases[model]; ok {
		return t, true
	}
	return "", false
}

// Models are the names a request may use: the pinned model, else the
// allowed models and the aliases, sorted; nil when any model passes.
func (inf *Inference) Models() []string {
	if inf.Model != "" {
		return []string{inf.Model}
	}
	out := slices.Clone(inf.AllowedModels)
	out = append(out, sortedKeys(inf.ModelAliases)...)
	slices.Sort(out)
	return slices.Compact(out)
}
