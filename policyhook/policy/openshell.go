package policy

import "fmt"

// Messages for OpenShell fields that openshell recognises but does not
// enforce. Each field so tagged is an error wherever it appears.
const (
	l7Unsupported         = "this L7 feature is not enforced by openshell's egress gateway yet; remove it or use protocol: rest with method/path rules"
	queryUnsupported      = "query parameter matchers are not enforced yet (openshell's gateway matches method and path only); remove query, and the rule allows every query string on its method and path, or narrow path instead"
	credentialUnsupported = "credential rewriting is not supported yet; openshell injects a credential only on inference routing (sandbox.inference, openshell's format): remove it and keep provider credentials out of the sandbox"
	signingUnsupported    = "SigV4 credential signing is not supported yet; remove credential_signing, signing_service and signing_region (the sandbox then signs its own requests), or route model calls through inference routing"
	bindingUnsupported    = "binding a provider's credentials to an endpoint is not supported yet: openshell has no credential providers and injects a credential only on inference routing; remove credential_binding"
)

// osFile is NVIDIA OpenShell's policy format, `version: 1`.
type osFile struct {
	Version            int64                    `yaml:"version"`
	FilesystemPolicy   *osFilesystem            `yaml:"filesystem_policy"`
	Landlock           *osLandlock              `yaml:"landlock"`
	Process            *osProcess               `yaml:"process"`
	NetworkPolicies    map[string]osNetworkRule `yaml:"network_policies"`
	NetworkMiddlewares Unsupported              `yaml:"network_middlewares" unsupported:"network middlewares are not implemented by openshell's egress gateway"`
	Inference          Unsupported              `yaml:"inference" unsupported:"NVIDIA OpenShell's format has no inference route; write the policy in openshell's format (version: \"1.0\") and set sandbox.inference"`
}

type osFilesystem struct {
	IncludeWorkdir bool     `yaml:"include_workdir"`
	ReadOnly       []string `yaml:"read_only"`
	ReadWrite      []string `yaml:"read_write"`
}

type osLandlock struct {
	Compatibility string `yaml:"compatibility"`
}

type osProcess struct {
	RunAsUser  string `yaml:"run_as_user"`
	RunAsGroup string `yaml:"run_as_group"`
}

type osNetworkRule struct {
	Name      string       `yaml:"name"`
	Endpoints []osEndpoint `yaml:"endpoints"`
	Binaries  []osBinary   `yaml:"binaries"`
}

// osBinary is one entry of binaries: `{path: /usr/bin/curl}`, or since
// NVIDIA OpenShell 0.1.0 the path alone, `/usr/bin/curl`.
type osBinary struct {
	Path    string `yaml:"path"`
	Harness bool   `yaml:"harness"` // deprecated upstream and ignored there too
}

func (osBinary) scalarField() string { return "path" }

type osEndpoint struct {
	Host        string   `yaml:"host"`
	Port        int64    `yaml:"port"`
	Ports       []int64  `yaml:"ports"`
	Protocol    string   `yaml:"protocol"`
	TLS         string   `yaml:"tls"`
	Enforcement string   `yaml:"enforcement"`
	Access      string   `yaml:"access"`
	Rules       []osRule `yaml:"rules"`
	AllowedIPs  []string `yaml:"allowed_ips"`

	Path                         Unsupported `yaml:"path" unsupported:"endpoint path prefixes are not enforced; use rules with method and path"`
	DenyRules                    Unsupported `yaml:"deny_rules" unsupported:"deny rules are not enforced; list only what is allowed"`
	AllowEncodedSlash            Unsupported `yaml:"allow_encoded_slash" unsupported:"l7Unsupported"`
	WebsocketCredentialRewrite   Unsupported `yaml:"websocket_credential_rewrite" unsupported:"credentialUnsupported"`
	RequestBodyCredentialRewrite Unsupported `yaml:"request_body_credential_rewrite" unsupported:"credentialUnsupported"`
	AllowUninspectedCredentials  Unsupported `yaml:"allow_uninspected_credentials" unsupported:"credentialUnsupported"`
	PersistedQueries             Unsupported `yaml:"persisted_queries" unsupported:"l7Unsupported"`
	GraphqlPersistedQueries      Unsupported `yaml:"graphql_persisted_queries" unsupported:"l7Unsupported"`
	GraphqlMaxBodyBytes          Unsupported `yaml:"graphql_max_body_bytes" unsupported:"l7Unsupported"`
	CredentialSigning            Unsupported `yaml:"credential_signing" unsupported:"signingUnsupported"`
	SigningService               Unsupported `yaml:"signing_service" unsupported:"signingUnsupported"`
	SigningRegion                Unsupported `yaml:"signing_region" unsupported:"signingUnsupported"`
	CredentialBinding            Unsupported `yaml:"credential_binding" unsupported:"bindingUnsupported"`
	JSONRPC                      Unsupported `yaml:"json_rpc" unsupported:"l7Unsupported"`
	MCP                          Unsupported `yaml:"mcp" unsupported:"l7Unsupported"`
}

type osRule struct {
	Allow osAllow `yaml:"allow"`
}

type osAllow struct {
	Method string `yaml:"method"`
	Path   string `yaml:"path"`

	Command       Unsupported `yaml:"command" unsupported:"l7Unsupported"`
	Query         Unsupported `yaml:"query" unsupported:"queryUnsupported"`
	OperationType Unsupported `yaml:"operation_type" unsupported:"l7Unsupported"`
	OperationName Unsupported `yaml:"operation_name" unsupported:"l7Unsupported"`
	Fields        Unsupported `yaml:"fields" unsupported:"l7Unsupported"`
	Tool          Unsupported `yaml:"tool" unsupported:"l7Unsupported"`
	Params        Unsupported `yaml:"params" unsupported:"l7Unsupported"`
}

// unsupportedMessages resolves the named messages used in struct tags
// (a tag cannot refer to a constant).
var unsupportedMessages = map[string]string{
	"l7Unsupported":         l7Unsupported,
	"queryUnsupported":      queryUnsupported,
	"credentialUnsupported": credentialUnsupported,
	"signingUnsupported":    signingUnsupported,
	"bindingUnsupported":    bindingUnsupported,
}

func fromOpenShell(f *osFile, s *errSink) *Policy {
	p := newPolicy(FormatOpenShellV1)
	if fs := f.FilesystemPolicy; fs != nil {
		p.Filesystem.ReadOnly = pathRules(fs.ReadOnly, "filesystem_policy.read_only")
		p.Filesystem.ReadWrite = pathRules(fs.ReadWrite, "filesystem_policy.read_write")
		p.Filesystem.IncludeWorkdir = fs.IncludeWorkdir
	}
	if ll := f.Landlock; ll != nil {
		const field = "landlock.compatibility"
		switch ll.Compatibility {
		case "", "best_effort", "hard_requirement":
			// Both are satisfied: the mount view enforces filesystem_policy
			// whether or not Landlock exists, and inside gVisor it does not.
			s.warnf(field, "Landlock does not exist inside gVisor; filesystem_policy is enforced by the sandbox's mount view instead (paths not listed do not exist)")
		default:
			s.addf(field, "must be best_effort or hard_requirement, not %q", ll.Compatibility)
		}
	}
	if pr := f.Process; pr != nil {
		setUser(p, pr.RunAsUser, pr.RunAsGroup, "process")
	}
	for _, key := range sortedKeys(f.NetworkPolicies) {
		np := f.NetworkPolicies[key]
		gf := "network_policies." + key
		name := np.Name
		if name == "" {
			name = key
		} else if hasControl(name) {
			s.addf(gf+".name", "%q contains a control character", name)
		}
		// Every endpoint of the policy is then reachable only from a
		// listed executable; the gateway decides that per connection.
		var bins []string
		for i, b := range np.Binaries {
			checkBinaryPattern(fmt.Sprintf("%s.binaries[%d].path", gf, i), b.Path, s)
			bins = append(bins, b.Path)
		}
		if len(np.Endpoints) == 0 {
			s.addf(gf+".endpoints", "is empty: a network policy must list at least one endpoint")
		}
		for i, e := range np.Endpoints {
			field := fmt.Sprintf("%s.endpoints[%d]", gf, i)
			r := EgressRule{
				Field:       field,
				Group:       key,
				Name:        name,
				Host:        e.Host,
				Protocol:    e.Protocol,
				TLS:         e.TLS,
				Enforcement: Enforcement(e.Enforcement),
				Access:      e.Access,
				Binaries:    bins,
			}
			if r.Enforcement == "" {
				r.Enforcement = EnforcementEnforce
			}
			r.Ports = ports(e.Port, e.Ports, field, s)
			r.AllowedIPs = prefixes(e.AllowedIPs, field+".allowed_ips", s)
			for _, rule := range e.Rules {
				r.HTTPRules = append(r.HTTPRules, HTTPRule{Method: rule.Allow.Method, Path: rule.Allow.Path})
			}
			if r.Protocol == "" && allowsEverything(r.Access, r.HTTPRules) {
				// Without a protocol NVIDIA OpenShell does not inspect the
				// endpoint: access and rules are not applied there, and
				// these allow every request anyway. Plain TCP is the same.
				r.Access, r.HTTPRules = "", nil
			}
			p.Network.Egress = append(p.Network.Egress, r)
		}
	}
	return p
}

// allowsEverything reports whether an access preset or HTTP rules allow
// every request: access: full, or a rule for any method on every path.
func allowsEverything(access string, rules []HTTPRule) bool {
	if access == "full" && len(rules) == 0 {
		return true
	}
	if access != "" {
		return false
	}
	for _, h := range rules {
		if h.Method == "*" && (h.Path == "/**" || h.Path == "**") {
			return true
		}
	}
	return false
}
