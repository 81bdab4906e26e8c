package runtime

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/openshell/openshell/policyhook/modifier"
	"github.com/openshell/openshell/runtime/egress"
)

// Where a sandbox's egress pieces live in its state directory.
func netnsDir(dir string) string   { return filepath.Join(dir, "netns") }
func resolvConf(dir string) string { return filepath.Join(dir, "resolv.conf") }

// gatewayNetwork is how a sandbox in dir, made from image, reaches its
// gateway and trusts its CA.
func gatewayNetwork(dir, image string) modifier.GatewayNetwork {
	targets, _ := imageTrust(image)
	return modifier.GatewayNetwork{
		Netns:        egress.TopologyAt(netnsDir(dir)).Sandbox,
		ResolvConf:   resolvConf(dir),
		ProxyURL:     egress.ProxyURL(),
		TrustDir:     trustDir(dir),
		TrustTargets: targets,
	}
}

// prepareEgress makes the sandbox's network namespaces, its resolv.conf,
// and its CA and trust bundle: what the compiled spec points at.
func (sb *Sandbox) prepareEgress(image string) error {
	if err := os.WriteFile(resolvConf(sb.Dir), []byte(egress.ResolvConf()), 0o644); err != nil {
		return fmt.Errorf("egress: %w", err)
	}
	if err := makeTrust(sb.Dir, sb.ID, image); err != nil {
		return fmt.Errorf("egress: %w", err)
	}
	if _, err := egress.CreateTopology(netnsDir(sb.Dir)); err != nil {
		return err
	}
	return nil
}

// removeEgress ends the gateway and removes the namespaces. The gateway's
// audit log stays.
func (sb *Sandbox) removeEgress() error {
	if _, st, err := Open(filepath.Dir(sb.Dir), sb.ID); err == nil && st != nil && st.Gateway != nil {
		st.Gateway.Kill()
	}
	if err := egress.RemoveGatewayCgroups(sb.ID); err != nil {
		return err
	}
	if _, err := os.Stat(netnsDir(sb.Dir)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return egress.TopologyAt(netnsDir(sb.Dir)).Remove()
}

// GatewayOptions start a sandbox's egress gateway.
type GatewayOptions struct {
	// Command runs the gateway given its config file's path. Empty: this
	// binary's own "gateway" command (openshell and openshell-runtime
	// both have one).
	Command []string
	Config  *Config
	// PolicyFile is the policy the gateway loads and watches for
	// reloads. PolicyData, when set, is written to the sandbox's state
	// directory instead (an inline or built-in policy has no file).
	PolicyFile string
	PolicyData []byte
	// DieWithParent ends the gateway with its starter.
	DieWithParent bool
	// Learn starts the gateway in learning mode (egress.Config.Learn):
	// the runtime's choice (openshell run --learn, or an engine's
	// annotation where the configuration allows it), never the policy's.
	Learn bool
}

// StartGateway starts the sandbox's egress gateway and records it, and
// the audit file it writes, in st, which it saves. A gateway whose state
// cannot be saved is ended.
func (sb *Sandbox) StartGateway(st *State, o GatewayOptions) error {
	gw, audit, err := sb.startGateway(o)
	if err != nil {
		return err
	}
	st.Gateway, st.AuditFile = &gw, audit
	if err := sb.SaveState(st); err != nil {
		gw.Kill()
		return err
	}
	return nil
}

func (sb *Sandbox) startGateway(o GatewayOptions) (Owner, string, error) {
	if sb.Compiled == nil || !sb.Compiled.Egress {
		return Owner{}, "", fmt.Errorf("sandbox %s has no egress", sb.ID)
	}
	if len(o.Command) == 0 {
		self, err := os.Executable()
		if err != nil {
			return Owner{}, "", fmt.Errorf("egress gateway: %w", err)
		}
		o.Command = []string{self, "gateway"}
	}
	policyFile := o.PolicyFile
	if o.PolicyData != nil {
		policyFile = filepath.Join(sb.Dir, "policy.yaml")
		if err := os.WriteFile(policyFile, o.PolicyData, 0o600); err != nil {
			return Owner{}, "", fmt.Errorf("egress gateway: %w", err)
		}
	}
	if !filepath.IsAbs(policyFile) {
		return Owner{}, "", fmt.Errorf("egress gateway: the policy %q is not a file the gateway can load", policyFile)
	}
	auditDir := o.Config.Egress.AuditDir
	if auditDir == "" {
		auditDir = DefaultAuditDir
	}
	if err := os.MkdirAll(auditDir, 0o750); err != nil {
		return Owner{}, "", fmt.Errorf("audit dir: %w", err)
	}
	audit := filepath.Join(auditDir, sb.ID+".jsonl")
	// The engine's network is the container's identity on the network
	// (a pod's CNI namespace, Docker's bridge): the gateway dials from
	// there, so cluster network policy still applies. Its resolver is the
	// operator's (dns_upstream) or the node's own /etc/resolv.conf, never
	// the resolv.conf the engine wrote for the container: a pod's
	// dnsConfig or docker --dns would choose the resolver that turns an
	// allowed name into any address. The sandbox stays behind the gateway.
	uplink, upstream := o.Config.Egress.UplinkNetns, o.Config.Egress.DNSUpstream
	if sb.Engine.Netns != "" {
		uplink = sb.Engine.Netns
	}
	pid, err := egress.Start(egress.StartOptions{
		Command: o.Command,
		Config: egress.Config{
			Sandbox:     sb.ID,
			PolicyFile:  policyFile,
			AuditFile:   audit,
			DNSUpstream: upstream,
			AuditMaxMB:  o.Config.Egress.AuditMaxMB,
			// Where keys are, never a key: the keeper reads them.
			InferenceProviders: o.Config.Inference.ProviderList(),
			CAFile:             caFile(sb.Dir),
			UpstreamCA:         o.Config.Egress.UpstreamCAFile,
			Learn:              o.Learn,
		},
		ConfigFile:    filepath.Join(sb.Dir, "gateway.json"),
		Topology:      egress.TopologyAt(netnsDir(sb.Dir)),
		UplinkNetns:   uplink,
		LogFile:       filepath.Join(sb.Dir, "gateway.log"),
		DieWithParent: o.DieWithParent,
		Confine:       o.Config.Egress.gatewayConfine(),
		// The sentry reports each connection's binary here (per-binary
		// rules); runsc connects to it at create.
		AttributionSocket: sb.AttributionSocket(),
	})
	if err != nil {
		return Owner{}, "", err
	}
	return OwnerOf(pid), audit, nil
}
