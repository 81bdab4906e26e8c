package policy

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestInferenceModel(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`version: "1.0"
sandbox:
  inference:
    routing_endpoint: "https://api.openai.com/v1"
    provider: openai
    allowed_models: [gpt-4o-mini, gpt-4o]
    model_aliases: {fast: gpt-4o-mini}
    apis: [chat_completions, models]
    rate_limit: "30/minute"
    token_budget: 100000
    timeout_seconds: 30
`))
	if err != nil {
		t.Fatal(err)
	}
	want := &Inference{
		RoutingEndpoint: "https://api.openai.com/v1",
		Provider:        "openai",
		AllowedModels:   []string{"gpt-4o-mini", "gpt-4o"},
		ModelAliases:    map[string]string{"fast": "gpt-4o-mini"},
		APIs:            []string{"chat_completions", "models"},
		RateLimit:       &RateLimit{Count: 30, Per: time.Minute},
		TokenBudget:     100000,
		Timeout:         30 * time.Second,
		Field:           "sandbox.inference",
	}
	if !reflect.DeepEqual(p.Inference, want) {
		t.Errorf("got %+v\nwant %+v", p.Inference, want)
	}
	if got := p.Inference.Models(); !reflect.DeepEqual(got, []string{"fast", "gpt-4o", "gpt-4o-mini"}) {
		t.Errorf("Models() = %v", got)
	}
}

func TestInferencePrivacyModel(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`version: "1.0"
sandbox:
  inference:
    provider: openai
    local: {routing_endpoint: "http://10.0.0.5:11434/v1", provider: ollama, model: "llama3.2:1b"}
    privacy:
      detectors: [ssn, credit_card, email, phone]
      action: route_local
      actions: {email: redact}
`))
	if err != nil {
		t.Fatal(err)
	}
	inf := p.Inference
	wantLocal := &InferenceLocal{RoutingEndpoint: "http://10.0.0.5:11434/v1", Provider: "ollama", Model: "llama3.2:1b", Field: "sandbox.inference.local"}
	wantPrivacy := &Privacy{Detectors: []string{"ssn", "credit_card", "email", "phone"}, Action: "route_local", Actions: map[string]string{"email": "redact"}, Field: "sandbox.inference.privacy"}
	if !reflect.DeepEqual(inf.Local, wantLocal) || !reflect.DeepEqual(inf.Privacy, wantPrivacy) {
		t.Errorf("got %+v %+v", inf.Local, inf.Privacy)
	}
	if inf.Privacy.ActionOf("email") != PrivacyRedact || inf.Privacy.ActionOf("ssn") != PrivacyRouteLocal {
		t.Errorf("ActionOf: email %s, ssn %s", inf.Privacy.ActionOf("email"), inf.Privacy.ActionOf("ssn"))
	}
	if r := inf.Local.Route(); r.RoutingEndpoint != wantLocal.RoutingEndpoint || r.Provider != "ollama" {
		t.Errorf("Route() = %+v", r)
	}
}

func TestInferenceEndpointAlone(t *testing.T) {
	p, err := Parse("p.yaml", []byte("version: \"1.0\"\nsandbox:\n  inference: {routing_endpoint: \"http://vllm.internal:8000/v1\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Inference.Timeout != DefaultInferenceTimeout || p.Inference.Models() != nil {
		t.Errorf("defaults: %+v", p.Inference)
	}
	if m, ok := p.Inference.AllowsModel("anything"); !ok || m != "anything" {
		t.Errorf("an unrestricted route refused or rewrote a model: %q %v", m, ok)
	}
}

func TestInferenceAllowsModel(t *testing.T) {
	restricted := &Inference{AllowedModels: []string{"a"}, ModelAliases: map[string]string{"fast": "b"}}
	pinned := &Inference{Model: "p"}
	for _, tc := range []struct {
		inf      *Inference
		in, sent string
		ok       bool
	}{
		{restricted, "a", "a", true},
		{restricted, "fast", "b", true},
		{restricted, "b", "", false}, // an alias's target is not itself allowed
		{restricted, "", "", false},
		{pinned, "other", "p", true},
		{pinned, "", "p", true},
	} {
		sent, ok := tc.inf.AllowsModel(tc.in)
		if sent != tc.sent || ok != tc.ok {
			t.Errorf("%+v AllowsModel(%q) = %q %v, want %q %v", tc.inf, tc.in, sent, ok, tc.sent, tc.ok)
		}
	}
}

func TestInferenceRejections(t *testing.T) {
	seed := func(body string) string { return "version: \"1.0\"\nsandbox:\n  inference:\n" + body }
	for _, tc := range []struct{ name, yaml, want string }{
		{"no-endpoint", seed("    token_budget: 5\n"), "p.yaml:4:5: sandbox.inference.routing_endpoint: is required (or name a provider from the host's configuration)"},
		{"query", seed("    routing_endpoint: \"http://a/v1?key=x\"\n"), `p.yaml:4:23: sandbox.inference.routing_endpoint: "http://a/v1?key=x": a base URL has no query or fragment`},
		{"provider-name", seed("    provider: \"Open AI\"\n"), `p.yaml:4:15: sandbox.inference.provider: "Open AI" is not a provider name (lower-case letters, digits, - and _; at most 63)`},
		{"pin-and-allow", seed("    provider: x\n    model: m\n    allowed_models: [m]\n"), `p.yaml:6:21: sandbox.inference.allowed_models: cannot be combined with model: model pins every request to "m"`},
		{"dup-model", seed("    provider: x\n    allowed_models: [m, m]\n"), `p.yaml:5:25: sandbox.inference.allowed_models[1]: "m" is listed twice`},
		{"alias-twice", seed("    provider: x\n    allowed_models: [m]\n    model_aliases: {m: n}\n"), `p.yaml:6:24: sandbox.inference.model_aliases.m: "m" is also in allowed_models: a name is either sent as named or as an alias's target`},
		{"model-space", seed("    provider: x\n    model: \"a b\"\n"), `p.yaml:5:12: sandbox.inference.model: "a b" contains a space or a control character`},
		{"api", seed("    provider: x\n    apis: [chat]\n"), `p.yaml:5:12: sandbox.inference.apis[0]: "chat" is not a route (one of chat_completions, completions, responses, embeddings, models, messages)`},
		{"budget", seed("    provider: x\n    token_budget: -1\n"), "p.yaml:5:19: sandbox.inference.token_budget: -1 is out of range (1-1125899906842624; leave it out for no budget)"},
		{"cost-budget", seed("    provider: x\n    cost_budget_usd: -0.5\n"), "p.yaml:5:22: sandbox.inference.cost_budget_usd: -0.5 is out of range (more than 0, at most 1e+09; leave it out for no budget)"},
		{"cost-budget-nan", seed("    provider: x\n    cost_budget_usd: .nan\n"), "p.yaml:5:22: sandbox.inference.cost_budget_usd: .nan is not a finite number"},
		{"timeout", seed("    provider: x\n    timeout_seconds: 99999\n"), "p.yaml:5:22: sandbox.inference.timeout_seconds: 99999 is out of range (1-3600)"},
		{"rate", seed("    provider: x\n    rate_limit: lots\n"), `p.yaml:5:17: sandbox.inference.rate_limit: "lots" is not a rate: write COUNT/second, COUNT/minute or COUNT/hour, e.g. "5/minute"`},
		{"key-field", seed("    provider: x\n    api_key: sk-123\n"), "p.yaml:5:5: sandbox.inference.api_key: unknown field (known fields here: routing_endpoint, provider, model, allowed_models, model_aliases, apis, rate_limit, token_budget, cost_budget_usd, timeout_seconds, set_env, local, privacy)"},
		{"local-no-endpoint", seed("    provider: x\n    local: {model: m}\n    privacy: {detectors: [ssn], action: route_local}\n"), "p.yaml:5:12: sandbox.inference.local.routing_endpoint: is required (or name a provider from the host's configuration)"},
		{"local-credentials", seed("    provider: x\n    local: {routing_endpoint: \"http://u:p@h/v1\"}\n    privacy: {detectors: [ssn], action: route_local}\n"), "p.yaml:5:31: sandbox.inference.local.routing_endpoint: must not carry credentials; the runtime injects them from the host"},
		{"local-model", seed("    provider: x\n    local: {routing_endpoint: \"http://h/v1\", model: \"a b\"}\n    privacy: {detectors: [ssn], action: route_local}\n"), `p.yaml:5:53: sandbox.inference.local.model: "a b" contains a space or a control character`},
		{"privacy-no-detectors", seed("    provider: x\n    privacy: {action: redact}\n"), "p.yaml:5:14: sandbox.inference.privacy.detectors: is required: one or more of ssn, credit_card, email, phone"},
		{"privacy-detector", seed("    provider: x\n    privacy:\n      detectors: [ssn, iban]\n      action: redact\n"), `p.yaml:6:24: sandbox.inference.privacy.detectors[1]: "iban" is not a detector (one of ssn, credit_card, email, phone)`},
		{"privacy-twice", seed("    provider: x\n    privacy:\n      detectors: [ssn, ssn]\n      action: redact\n"), `p.yaml:6:24: sandbox.inference.privacy.detectors[1]: "ssn" is listed twice`},
		{"privacy-no-action", seed("    provider: x\n    privacy:\n      detectors: [ssn]\n"), "p.yaml:6:7: sandbox.inference.privacy.action: is required: route_local or redact"},
		{"privacy-bad-action", seed("    provider: x\n    privacy:\n      detectors: [ssn]\n      action: drop\n"), `p.yaml:7:15: sandbox.inference.privacy.action: "drop" is not an action (route_local or redact)`},
		{"route-local-needs-local", seed("    provider: x\n    privacy:\n      detectors: [ssn]\n      action: route_local\n"), "p.yaml:7:15: sandbox.inference.privacy.action: route_local needs a local route: set sandbox.inference.local"},
		{"actions-unknown", seed("    provider: x\n    privacy:\n      detectors: [ssn]\n      action: redact\n      actions: {email: redact}\n"), `p.yaml:8:24: sandbox.inference.privacy.actions.email: "email" is not one of this rule's detectors`},
		{"actions-needs-local", seed("    provider: x\n    privacy:\n      detectors: [ssn, email]\n      action: redact\n      actions: {ssn: route_local}\n"), "p.yaml:8:22: sandbox.inference.privacy.actions.ssn: route_local needs a local route: set sandbox.inference.local"},
		{"privacy-field", seed("    provider: x\n    privacy:\n      detectors: [ssn]\n      action: redact\n      patterns: [x]\n"), "p.yaml:8:7: sandbox.inference.privacy.patterns: unknown field (known fields here: detectors, action, actions)"},
		{"openshell-format-privacy", "version: 1\ninference:\n  privacy: {detectors: [ssn], action: redact}\n", `p.yaml:2:1: inference: not supported: NVIDIA OpenShell's format has no inference route; write the policy in openshell's format (version: "1.0") and set sandbox.inference`},
		{"openshell-format", "version: 1\ninference: {routing_endpoint: \"http://a/v1\"}\n", `p.yaml:2:1: inference: not supported: NVIDIA OpenShell's format has no inference route; write the policy in openshell's format (version: "1.0") and set sandbox.inference`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tc.yaml))
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("error %v is not an ErrorList", err)
			}
			if got := list[0].Error(); got != tc.want {
				t.Errorf("first error:\n got %s\nwant %s\n(all: %v)", got, tc.want, err)
			}
		})
	}
}

// TestInferenceLocalUnused: a local route no rule routes to is a warning.
func TestInferenceLocalUnused(t *testing.T) {
	p, err := Parse("p.yaml", []byte("version: \"1.0\"\nsandbox:\n  inference:\n    provider: x\n    local: {routing_endpoint: \"http://h/v1\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Warnings) != 1 || p.Warnings[0].Error() != "p.yaml:5:12: sandbox.inference.local: no privacy rule routes a call here: the local route is never used" {
		t.Errorf("warnings %v", p.Warnings)
	}
	// Nor does a rule that only redacts.
	p, err = Parse("p.yaml", []byte("version: \"1.0\"\nsandbox:\n  inference:\n    provider: x\n    local: {routing_endpoint: \"http://h/v1\"}\n    privacy: {detectors: [ssn], action: redact}\n"))
	if err != nil || len(p.Warnings) != 1 {
		t.Errorf("redact only: %v, warnings %v", err, p.Warnings)
	}
}
