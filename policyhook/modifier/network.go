package modifier

import (
	"fmt"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-tools/generate"
)

type isolateNetwork struct{}

var _ SpecModifier = isolateNetwork{}

// NewIsolateNetwork gives the sandbox a network namespace of its own,
// dropping any path to an existing one (the host's, or another
// container's): egress is only ever what the runtime sets up.
func NewIsolateNetwork() SpecModifier { return isolateNetwork{} }

func (isolateNetwork) Modify(s *specs.Spec) error {
	g := generate.Generator{Config: s}
	if err := g.AddOrReplaceLinuxNamespace(string(specs.NetworkNamespace), ""); err != nil {
		return fmt.Errorf("isolate network: %w", err)
	}
	return nil
}

// GatewayNetwork is how a sandbox reaches its egress gateway.
type GatewayNetwork struct {
	Netns      string // the sandbox's network namespace, which the runtime made
	ResolvConf string // a file naming the gateway as the only nameserver
	ProxyURL   string // the gateway's explicit proxy
	// TrustDir, when set, is a host directory holding the sandbox CA's
	// certificate (ca.crt) and the image's CA bundle with it appended
	// (ca-bundle.crt): mounted read-only at TrustMount, named by the
	// variables TLS stacks read, and laid over each of TrustTargets (the
	// image's own bundles), so that a client trusts the certificates the
	// gateway presents where it terminates TLS, with no flag.
	TrustDir     string
	TrustTargets []string
}

// TrustMount is where a sandbox sees its trust directory.
const TrustMount = "/.openshell"

// trustVars are the variables TLS stacks take a CA bundle from: OpenSSL
// (curl, Python's ssl, Ruby), Python requests, curl, git. Node adds
// NODE_EXTRA_CA_CERTS to its own store.
var trustVars = []string{"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"}

type gatewayNetwork struct{ n GatewayNetwork }

var _ SpecModifier = gatewayNetwork{}

// NewGatewayNetwork puts the sandbox in the namespace whose only link
// leads to its egress gateway, makes the gateway its resolver, and points
// the usual proxy variables at it. Programs that ignore them still only
// reach the gateway: TCP 80 and 443 are captured there, the rest refused.
func NewGatewayNetwork(n GatewayNetwork) SpecModifier { return gatewayNetwork{n: n} }

func (m gatewayNetwork) Modify(s *specs.Spec) error {
	if m.n.Netns == "" || m.n.ResolvConf == "" {
		return fmt.Errorf("gateway network: namespace and resolv.conf are required")
	}
	g := generate.Generator{Config: s}
	if err := g.AddOrReplaceLinuxNamespace(string(specs.NetworkNamespace), m.n.Netns); err != nil {
		return fmt.Errorf("gateway network: %w", err)
	}
	// Appended last, so it lies over whatever /etc the view mounted.
	s.Mounts = append(s.Mounts, specs.Mount{
		Destination: "/etc/resolv.conf",
		Type:        "bind",
		Source:      m.n.ResolvConf,
		Options:     []string{"rbind", "ro", "nosuid", "nodev", "noexec"},
	})
	if m.n.TrustDir != "" {
		ro := []string{"rbind", "ro", "nosuid", "nodev", "noexec"}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: TrustMount, Type: "bind", Source: m.n.TrustDir, Options: ro})
		bundle := filepath.Join(m.n.TrustDir, "ca-bundle.crt")
		for _, t := range m.n.TrustTargets {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: t, Type: "bind", Source: bundle, Options: ro})
		}
		for _, k := range trustVars {
			SetEnv(s, k, TrustMount+"/ca-bundle.crt")
		}
		SetEnv(s, "NODE_EXTRA_CA_CERTS", TrustMount+"/ca.crt")
	}
	if m.n.ProxyURL != "" {
		for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"} {
			SetEnv(s, k, m.n.ProxyURL)
		}
		SetEnv(s, "NO_PROXY", "localhost,127.0.0.1")
		SetEnv(s, "no_proxy", "localhost,127.0.0.1")
	}
	return nil
}
