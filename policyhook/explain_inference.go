package policyhook

import (
	"fmt"
	"strings"

	"github.com/openshell/openshell/policyhook/modifier"
	"github.com/openshell/openshell/policyhook/policy"
)

// inferenceRows explain the sandbox's model route: what inference.local
// leads to and what the gateway holds it to.
func inferenceRows(c *Compiled) []Row {
	inf := c.Policy.Inference
	if !c.Egress {
		return []Row{{"inference: " + inferenceRoute(inf), "NOT ACTIVE: needs the egress gateway", "inference.local (fail closed)"}}
	}
	rows := []Row{{"inference: " + inferenceRoute(inf),
		"the egress gateway serves http://inference.local/v1 and adds the provider's key from the host (only when the endpoint is that provider's base_url)",
		"the sandbox's own Authorization and x-api-key; the key never enters the sandbox"}}
	models := "any"
	switch {
	case inf.Model != "":
		models = inf.Model + " (pinned: every request is sent with it)"
	case len(inf.Models()) > 0:
		models = strings.Join(inf.Models(), ", ")
	}
	rows = append(rows, Row{"inference models: " + models, "the gateway reads each request's model", "other models (the API's own error)"})
	apis := "all of the provider's"
	if len(inf.APIs) > 0 {
		apis = strings.Join(inf.APIs, ", ")
	}
	rows = append(rows, Row{"inference routes: " + apis, "the gateway's router", "every other path"})
	if inf.SetEnv {
		var names []string
		for _, kv := range modifier.InferenceEnv {
			names = append(names, kv[0])
		}
		rows = append(rows, Row{"inference set_env: " + strings.Join(names, ", "), "the spec's environment (the keys are placeholders the gateway strips)", "nothing: it points SDKs at inference.local"})
	}
	if inf.TokenBudget > 0 {
		rows = append(rows, Row{fmt.Sprintf("token_budget: %d", inf.TokenBudget), "tokens the model server reports, summed by the gateway", "calls once the budget is spent (429)"})
	}
	if b := inf.CostBudgetUSD; b > 0 {
		rows = append(rows, Row{fmt.Sprintf("cost_budget_usd: %g", b), "tokens the model server reports at the provider's cost per token (the host's configuration), summed by the gateway", "calls once the budget is spent (429); every call, where the provider has no cost"})
	}
	if r := inf.RateLimit; r != nil {
		rows = append(rows, Row{fmt.Sprintf("inference rate_limit: %d per %s", r.Count, r.Per), "the gateway's router", "calls over the rate (429)"})
	}
	if l := inf.Local; l != nil {
		what := inferenceRoute(l.Route())
		if l.Model != "" {
			what += ", model " + l.Model + " (pinned)"
		}
		rows = append(rows, Row{"inference local route: " + what,
			"the gateway's router sends calls the privacy rule routes locally here (a key only when the endpoint is a provider's base_url)",
			"nothing of the call reaches the cloud route"})
	}
	if p := inf.Privacy; p != nil {
		var parts []string
		for _, d := range p.Detectors {
			parts = append(parts, d+" → "+p.ActionOf(d))
		}
		rows = append(rows, Row{"inference privacy: " + strings.Join(parts, ", "),
			"the gateway's router reads each call's message contents (not the model or other fields); the audit names the detectors and counts, never the content",
			"a match reaching the cloud route: routed to the local route, or replaced by [REDACTED:DETECTOR]"})
	}
	return rows
}

// inferenceRoute says where the route leads, in a few words.
func inferenceRoute(inf *policy.Inference) string {
	var parts []string
	if inf.RoutingEndpoint != "" {
		parts = append(parts, inf.RoutingEndpoint)
	}
	if inf.Provider != "" {
		parts = append(parts, "provider "+inf.Provider)
	}
	return strings.Join(parts, ", ")
}
