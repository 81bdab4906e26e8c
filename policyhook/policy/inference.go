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
	Field  string // sandbox.inference
}

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
	return inf
}

// validateInference checks the route. Credentials never appear in a
// policy: the endpoint may not carry them, and no field names one.
func validateInference(inf *Inference, s *errSink) {
	f := inf.Field
	switch ep := inf.RoutingEndpoint; {
	case ep == "" && inf.Provider == "":
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
	if p := inf.Provider; p != "" && !ProviderNameOK(p) {
		s.addf(f+".provider", "%q is not a provider name (lower-case letters, digits, - and _; at most 63)", p)
	}
	checkModel := func(field, m string) bool {
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
	apis := map[string]bool{}
	for i, a := range inf.APIs {
		field := fmt.Sprintf("%s.apis[%d]", f, i)
		switch {
		case !slices.Contains(InferenceAPIs, a):
			s.addf(field, "%q is not a route (one of %s)", a, strings.Join(InferenceAPIs, ", "))
		case apis[a]:
			s.addf(field, "%q is listed twice", a)
		}
		apis[a] = true
	}
	if inf.TokenBudget < 0 || inf.TokenBudget > maxTokenBudget {
		s.addf(f+".token_budget", "%d is out of range (1-%d; leave it out for no budget)", inf.TokenBudget, int64(maxTokenBudget))
	}
	// NaN fails every comparison: it is out of range too.
	if b := inf.CostBudgetUSD; !(b >= 0 && b <= maxCostBudgetUSD) {
		s.addf(f+".cost_budget_usd", "%v is out of range (more than 0, at most %g; leave it out for no budget)", b, float64(maxCostBudgetUSD))
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
