package policyhook

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/policyhook/policy"
)

func TestInferenceWidenings(t *testing.T) {
	ceiling := func() *policy.Inference {
		return &policy.Inference{
			RoutingEndpoint: "https://api.openai.com/v1", Provider: "openai",
			AllowedModels: []string{"gpt-4o-mini"}, ModelAliases: map[string]string{"fast": "gpt-4o-mini"},
			APIs: []string{"chat_completions"}, TokenBudget: 1000, CostBudgetUSD: 5, RateLimit: &policy.RateLimit{Count: 10, Per: time.Minute},
			Timeout: time.Minute, Field: "sandbox.inference",
		}
	}
	for _, tc := range []struct {
		name   string
		change func(p *policy.Inference)
		want   string
	}{
		{"same", func(*policy.Inference) {}, ""},
		{"narrower", func(p *policy.Inference) {
			p.ModelAliases, p.TokenBudget, p.CostBudgetUSD, p.RateLimit = nil, 10, 0.5, &policy.RateLimit{Count: 1, Per: time.Minute}
		}, ""},
		{"endpoint", func(p *policy.Inference) { p.RoutingEndpoint = "http://evil/v1" }, `sandbox.inference.routing_endpoint: "http://evil/v1" differs`},
		{"provider", func(p *policy.Inference) { p.Provider = "other" }, `sandbox.inference.provider: "other" differs`},
		{"any-model", func(p *policy.Inference) { p.AllowedModels, p.ModelAliases = nil, nil }, "sandbox.inference.allowed_models: any model is allowed"},
		{"other-model", func(p *policy.Inference) { p.AllowedModels = []string{"gpt-4o"} }, `"gpt-4o" (sent as "gpt-4o") is not allowed`},
		{"alias-elsewhere", func(p *policy.Inference) { p.ModelAliases = map[string]string{"fast": "gpt-4o"} }, `"fast" (sent as "gpt-4o") is not allowed`},
		{"pinned-other", func(p *policy.Inference) { p.AllowedModels, p.ModelAliases, p.Model = nil, nil, "o1" }, `"o1" (sent as "o1") is not allowed`},
		{"apis", func(p *policy.Inference) { p.APIs = nil }, "sandbox.inference.apis: every route is served"},
		{"budget", func(p *policy.Inference) { p.TokenBudget = 0 }, "sandbox.inference.token_budget: 0 exceeds"},
		{"no-cost-budget", func(p *policy.Inference) { p.CostBudgetUSD = 0 }, "sandbox.inference.cost_budget_usd: 0 exceeds the ceiling's 5"},
		{"cost-budget", func(p *policy.Inference) { p.CostBudgetUSD = 5.01 }, "sandbox.inference.cost_budget_usd: 5.01 exceeds"},
		{"rate", func(p *policy.Inference) { p.RateLimit = &policy.RateLimit{Count: 1, Per: time.Second} }, "sandbox.inference.rate_limit: is above"},
		{"timeout", func(p *policy.Inference) { p.Timeout = time.Hour }, "sandbox.inference.timeout_seconds: 1h0m0s exceeds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := ceiling()
			tc.change(p)
			var got []string
			inferenceWidenings(ceiling(), p, func(field, format string, a ...any) {
				got = append(got, field+": "+fmt.Sprintf(format, a...))
			})
			switch {
			case tc.want == "" && len(got) > 0:
				t.Errorf("widenings %v, want none", got)
			case tc.want != "" && (len(got) != 1 || !strings.Contains(got[0], tc.want)):
				t.Errorf("widenings %v, want one containing %q", got, tc.want)
			}
		})
	}
}

func TestPrivacyWidenings(t *testing.T) {
	local := func() *policy.InferenceLocal {
		return &policy.InferenceLocal{RoutingEndpoint: "http://10.0.0.5:11434/v1", Model: "llama3.2:1b", Field: "sandbox.inference.local"}
	}
	withPrivacy := func() *policy.Inference {
		return &policy.Inference{Provider: "openai", Timeout: time.Minute, Field: "sandbox.inference", Local: local(),
			Privacy: &policy.Privacy{Detectors: []string{"ssn", "credit_card"}, Action: "route_local", Field: "sandbox.inference.privacy"}}
	}
	plain := func() *policy.Inference {
		return &policy.Inference{Provider: "openai", Timeout: time.Minute, Field: "sandbox.inference"}
	}
	for _, tc := range []struct {
		name    string
		ceiling func() *policy.Inference
		change  func(p *policy.Inference)
		want    string
	}{
		{"same", withPrivacy, func(*policy.Inference) {}, ""},
		{"more-detectors", withPrivacy, func(p *policy.Inference) { p.Privacy.Detectors = append(p.Privacy.Detectors, "email") }, ""},
		{"redact-instead", withPrivacy, func(p *policy.Inference) { p.Privacy.Action, p.Local = "redact", nil }, ""},
		{"privacy-without-ceiling", plain, func(p *policy.Inference) {
			p.Privacy = &policy.Privacy{Detectors: []string{"ssn"}, Action: "redact", Field: "sandbox.inference.privacy"}
		}, ""},
		{"dropped", withPrivacy, func(p *policy.Inference) { p.Privacy = nil }, "sandbox.inference.privacy: is required by the ceiling"},
		{"detector-dropped", withPrivacy, func(p *policy.Inference) { p.Privacy.Detectors = []string{"ssn"} }, `sandbox.inference.privacy.detectors: "credit_card" is on in the ceiling`},
		{"local-elsewhere", withPrivacy, func(p *policy.Inference) { p.Local.RoutingEndpoint = "http://evil/v1" }, `sandbox.inference.local: endpoint "http://evil/v1"`},
		{"local-model", withPrivacy, func(p *policy.Inference) { p.Local.Model = "other" }, `model "other" differ`},
		{"local-not-in-ceiling", plain, func(p *policy.Inference) { p.Local = local() }, "sandbox.inference.local: a local route is set; the ceiling has none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.ceiling()
			tc.change(p)
			var got []string
			inferenceWidenings(tc.ceiling(), p, func(field, format string, a ...any) {
				got = append(got, field+": "+fmt.Sprintf(format, a...))
			})
			switch {
			case tc.want == "" && len(got) > 0:
				t.Errorf("widenings %v, want none", got)
			case tc.want != "" && (len(got) != 1 || !strings.Contains(got[0], tc.want)):
				t.Errorf("widenings %v, want one containing %q", got, tc.want)
			}
		})
	}
}
