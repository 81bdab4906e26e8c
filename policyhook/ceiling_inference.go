package policyhook

import (
	"slices"

	"github.com/openshell/openshell/policyhook/policy"
)

// inferenceWidenings: a policy's model route must be the ceiling's
// (endpoint and provider), name no model, route or rate the ceiling does
// not allow, and spend no more tokens or dollars.
func inferenceWidenings(c, p *policy.Inference, add addFunc) {
	switch {
	case p == nil:
		return
	case c == nil:
		add(p.Field, "inference routing is set; the ceiling has none")
		return
	}
	if p.RoutingEndpoint != c.RoutingEndpoint {
		add(p.Field+".routing_endpoint", "%q differs from the ceiling's %q", p.RoutingEndpoint, c.RoutingEndpoint)
	}
	if p.Provider != c.Provider {
		add(p.Field+".provider", "%q differs from the ceiling's %q", p.Provider, c.Provider)
	}
	// Every model p lets through, sent as, must be one c lets through
	// under the same name and sends the same way.
	cModels := c.Models()
	switch pm := p.Models(); {
	case cModels == nil:
	case pm == nil:
		add(p.Field+".allowed_models", "any model is allowed; the ceiling allows only %v", cModels)
	default:
		for _, m := range pm {
			ps, _ := p.AllowsModel(m)
			cs, ok := c.AllowsModel(m)
			if !ok || cs != ps {
				add(p.Field+".allowed_models", "%q (sent as %q) is not allowed by the ceiling", m, ps)
			}
		}
	}
	if len(c.APIs) > 0 {
		if len(p.APIs) == 0 {
			add(p.Field+".apis", "every route is served; the ceiling serves only %v", c.APIs)
		}
		for _, a := range p.APIs {
			if !slices.Contains(c.APIs, a) {
				add(p.Field+".apis", "%q is not a route the ceiling serves", a)
			}
		}
	}
	if c.TokenBudget > 0 && (p.TokenBudget == 0 || p.TokenBudget > c.TokenBudget) {
		add(p.Field+".token_budget", "%d exceeds the ceiling's %d (0 is no budget)", p.TokenBudget, c.TokenBudget)
	}
	if c.CostBudgetUSD > 0 && (p.CostBudgetUSD == 0 || p.CostBudgetUSD > c.CostBudgetUSD) {
		add(p.Field+".cost_budget_usd", "%g exceeds the ceiling's %g (0 is no budget)", p.CostBudgetUSD, c.CostBudgetUSD)
	}
	if cr := c.RateLimit; cr != nil {
		if pr := p.RateLimit; pr == nil || float64(pr.Count)/pr.Per.Seconds() > float64(cr.Count)/cr.Per.Seconds() {
			add(p.Field+".rate_limit", "is above the ceiling's %d per %s", cr.Count, cr.Per)
		}
	}
	if p.Timeout > c.Timeout {
		add(p.Field+".timeout_seconds", "%s exceeds the ceiling's %s", p.Timeout, c.Timeout)
	}
	privacyWidenings(c, p, add)
}

// privacyWidenings: a local route is a second destination, so a policy's
// must be the ceiling's (endpoint, provider and pinned model); a ceiling's
// privacy rule is required, and each of its detectors must stay on.
// Either action keeps a match off the cloud route, so a policy may choose
// route_local or redact for a detector whatever the ceiling chose (a
// route_local still needs the ceiling's local route).
func privacyWidenings(c, p *policy.Inference, add addFunc) {
	switch pl, cl := p.Local, c.Local; {
	case pl == nil:
	case cl == nil:
		add(pl.Field, "a local route is set; the ceiling has none")
	case pl.RoutingEndpoint != cl.RoutingEndpoint || pl.Provider != cl.Provider || pl.Model != cl.Model:
		add(pl.Field, "endpoint %q, provider %q, model %q differ from the ceiling's %q, %q, %q",
			pl.RoutingEndpoint, pl.Provider, pl.Model, cl.RoutingEndpoint, cl.Provider, cl.Model)
	}
	cp := c.Privacy
	if cp == nil {
		return
	}
	if p.Privacy == nil {
		add(p.Field+".privacy", "is required by the ceiling (detectors %v)", cp.Detectors)
		return
	}
	for _, d := range cp.Detectors {
		if !slices.Contains(p.Privacy.Detectors, d) {
			add(p.Privacy.Field+".detectors", "%q is on in the ceiling and may not be dropped", d)
		}
	}
}
