package policyhook

import (
	"github.com/openshell/openshell/policyhook/l7"
	"github.com/openshell/openshell/policyhook/policy"
)

// CheckHTTPRules compiles every endpoint's HTTP rules (access presets,
// method and path rules) as the egress gateway will, so that a rule it
// could not enforce is an error at its place in the file before anything
// starts, not a gateway that refuses every request of that endpoint.
func CheckHTTPRules(p *policy.Policy) error {
	var errs policy.ErrorList
	add := func(field, msg string) {
		errs = append(errs, &policy.FieldError{File: p.File, Pos: p.Position(field), Field: field, Msg: msg})
	}
	for i := range p.Network.Egress {
		r := &p.Network.Egress[i]
		hasRules := r.Access != "" || len(r.HTTPRules) > 0
		if hasRules && r.TLS == "passthrough" {
			add(r.Field+".tls", "passthrough leaves the gateway no request to read, so access and rules could not be enforced: remove tls (the gateway terminates TLS for endpoints with rules) or the rules")
			continue
		}
		if _, err := l7.Compile(r); err != nil {
			add(r.Field, err.Error())
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}
