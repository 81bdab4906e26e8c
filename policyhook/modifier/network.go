package modifier

import (
	"fmt"

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
}

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
	if m.n.ProxyURL != "" {
		for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"} {
			SetEnv(s, k, m.n.ProxyURL)
		}
		SetEnv(s, "NO_PROXY", "localhost,127.0.0.1")
		SetEnv(s, "no_proxy", "localhost,127.0.0.1")
	}
	return nil
}
