package egress

import (
	"net/netip"

	"github.com/openshell/openshell/policyhook/policy"
)

// Learning mode (Config.Learn; `openshell run --learn`): the gateway
// answers every name the sandbox asks for and allows every connection, so
// that `openshell policy suggest` can propose the rules the sandbox
// needed. What the policy's own rules allow is allowed and logged as
// usual, with every rule in audit mode (its limits and HTTP rules record
// what they would refuse instead of refusing it); what no rule allows is
// let through on the learning rule and logged with decision `audit` and
// reason "learning". What is never a destination stays refused: the
// metadata addresses, link-local, loopback, 0.0.0.0/8, multicast, the
// uplink's own addresses (checkIP at each decision and each dial), and
// the private ranges while the policy's block_private_ranges holds.
//
// The switch is the runtime's, never the policy's: a policy is tenant
// input (an annotation may choose it), and a policy field that opened
// every name would let a tenant write itself an open network. The runtime
// sets Learn for `openshell run --learn`, or for an engine's container
// only where the operator's configuration allows learning.

// LearnReason is the reason on the audit lines of what only learning
// allowed.
const LearnReason = "learning"

// learnField names the learning rule in audit lines: no rule of a policy
// has it as its field (theirs are paths such as
// sandbox.network.allowed_egress[0], or group/host).
const learnField = "learning"

// learningPolicy is p with every egress rule in audit mode; p is not
// changed (the file's own rules stay what they are for reloads).
func learningPolicy(p *policy.Policy) *policy.Policy {
	c := *p
	c.Network.Egress = make([]policy.EgressRule, len(p.Network.Egress))
	copy(c.Network.Egress, p.Network.Egress)
	for i := range c.Network.Egress {
		c.Network.Egress[i].Enforcement = policy.EnforcementAudit
	}
	return &c
}

// learnRule is the rule that allows, in learning mode, what no rule of the
// policy does: any port, no limits, no HTTP rules (so TLS passes through).
func learnRule() *policy.EgressRule {
	return &policy.EgressRule{Field: learnField, Enforcement: policy.EnforcementAudit}
}

// match is every rule allowing name on port; in learning mode, the
// learning rule for a name no rule allows (a name that is not a valid
// host name never matches).
func (rs *rules) match(name string, port int) []*policy.EgressRule {
	if r := rs.m.MatchAll(name, port); len(r) > 0 || rs.learn == nil {
		return r
	}
	if _, err := policy.NormalizeHost(name); err != nil {
		return nil
	}
	return []*policy.EgressRule{rs.learn}
}

// matchIP is every rule whose allowed_ips hold addr on port; in learning
// mode, the learning rule for any other address (checkIP still refuses
// what is never a destination).
func (rs *rules) matchIP(addr netip.Addr, port int) []*policy.EgressRule {
	if r := rs.m.MatchIPAll(addr, port); len(r) > 0 || rs.learn == nil {
		return r
	}
	return []*policy.EgressRule{rs.learn}
}

// name is the rules covering name on any port (the DNS server's
// question); in learning mode, the learning rule where none does.
func (rs *rules) name(name string) []*policy.EgressRule {
	if r := rs.m.Name(name); len(r) > 0 || rs.learn == nil {
		return r
	}
	if _, err := policy.NormalizeHost(name); err != nil {
		return nil
	}
	return []*policy.EgressRule{rs.learn}
}

// learned marks what only the learning rule allowed: an allowed event on
// it becomes `audit`, reason "learning" (before any reason of its own).
func learned(e *Event) {
	if e.Rule != learnField || e.Decision != Allow {
		return
	}
	e.Decision = Audit
	if e.Reason == "" {
		e.Reason = LearnReason
	} else {
		e.Reason = LearnReason + ": " + e.Reason
	}
}
