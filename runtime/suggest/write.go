package suggest

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/openshell/openshell/policyhook"
	"github.com/openshell/openshell/policyhook/policy"
)

// Formats a suggestion is written in.
const (
	FormatSeed      = "seed"      // openshell's own (version "1.0")
	FormatOpenShell = "openshell" // NVIDIA OpenShell's v1
)

// Output is a written suggestion, checked.
type Output struct {
	YAML []byte
	// Policy is YAML parsed and validated, as openshell run would.
	Policy *policy.Policy
	// Widenings are where the suggestion allows more than the policy it
	// ran under: names only learning allowed.
	Widenings []policyhook.Widening
}

// Write renders s in format, then parses and validates the result (a
// suggestion that does not validate is an error, never written) and
// compares it with the policy the sandbox ran under.
func (s *Suggestion) Write(format string) (*Output, error) {
	var doc any
	var lost []string
	switch format {
	case FormatSeed, "":
		doc = s.seed()
	case FormatOpenShell:
		doc, lost = s.openshell()
	default:
		return nil, fmt.Errorf("suggest: unknown format %q (seed or openshell)", format)
	}
	var body bytes.Buffer
	enc := yaml.NewEncoder(&body)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("suggest: %w", err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Suggested by openshell policy suggest from sandbox %s, which ran in learning mode\n", quote(s.Sandbox))
	fmt.Fprintf(&b, "# under %s (sha256 %s). Review it before use.\n", quote(s.From.File), s.From.Hash)
	fmt.Fprintf(&b, "# Peak processes at once: %d. Memory: %s.\n", s.PeakProcs, s.memoryLine())
	for _, n := range append(lost, s.Notes...) {
		// Every note is one line: what came from the sandbox in it is
		// quoted ASCII (quote).
		fmt.Fprintf(&b, "# note: %s\n", strings.ReplaceAll(n, "\n", " "))
	}
	b.Write(body.Bytes())
	p, err := policy.Parse("suggested.yaml", b.Bytes())
	if err != nil {
		return nil, fmt.Errorf("suggest: the suggestion does not validate (a bug; please report it): %w", err)
	}
	return &Output{YAML: b.Bytes(), Policy: p, Widenings: policyhook.Widenings(s.From, p)}, nil
}

// memoryLine says, for the header, what the memory limit was made of.
func (s *Suggestion) memoryLine() string {
	switch {
	case s.MaxMemoryMB == 0:
		return "not recorded; the policy's limit is kept"
	case s.MemoryCapped:
		return fmt.Sprintf("peak %d MiB; max_memory_mb %d (the policy's: 1.5x, rounded up, would be more)", s.MemoryPeakMB, s.MaxMemoryMB)
	default:
		return fmt.Sprintf("peak %d MiB; max_memory_mb %d (1.5x, rounded up)", s.MemoryPeakMB, s.MaxMemoryMB)
	}
}

type seedDoc struct {
	Version string      `yaml:"version"`
	Name    string      `yaml:"name,omitempty"`
	Sandbox seedSandbox `yaml:"sandbox"`
}

type seedSandbox struct {
	Filesystem  seedFS            `yaml:"filesystem"`
	Network     *seedNet          `yaml:"network,omitempty"`
	Process     seedProcess       `yaml:"process"`
	Resources   *seedResources    `yaml:"resources,omitempty"`
	Environment map[string]string `yaml:"environment,omitempty"`
}

type seedFS struct {
	SystemPaths    *[]string `yaml:"system_paths,omitempty"`
	AllowedReads   []string  `yaml:"allowed_reads,omitempty"`
	AllowedWrites  []string  `yaml:"allowed_writes,omitempty"`
	IncludeWorkdir bool      `yaml:"include_workdir,omitempty"`
	MaxFileSizeMB  int64     `yaml:"max_file_size_mb,omitempty"`
	MaxTotalSizeMB int64     `yaml:"max_total_size_mb,omitempty"`
	BlockSymlinks  bool      `yaml:"block_symlinks,omitempty"`
}

type seedNet struct {
	AllowedEgress      []seedEgress `yaml:"allowed_egress"`
	BlockPrivateRanges *bool        `yaml:"block_private_ranges,omitempty"`
	DNSFiltering       *bool        `yaml:"dns_filtering,omitempty"`
}

type seedEgress struct {
	Host              string   `yaml:"host"`
	Port              int      `yaml:"port,omitempty"`
	Ports             []int    `yaml:"ports,omitempty,flow"`
	RateLimit         string   `yaml:"rate_limit,omitempty"`
	MaxRequestSizeKB  int64    `yaml:"max_request_size_kb,omitempty"`
	MaxResponseSizeMB int64    `yaml:"max_response_size_mb,omitempty"`
	TLSRequired       bool     `yaml:"tls_required,omitempty"`
	Binaries          []string `yaml:"binaries,omitempty,flow"`
}

type seedProcess struct {
	AllowExec    bool         `yaml:"allow_exec"`
	MaxProcesses int64        `yaml:"max_processes,omitempty"`
	RunAsUser    string       `yaml:"run_as_user,omitempty"`
	RunAsGroup   string       `yaml:"run_as_group,omitempty"`
	Seccomp      *seedSeccomp `yaml:"seccomp,omitempty"`
}

type seedSeccomp struct {
	DefaultAction   string   `yaml:"default_action"`
	AllowedSyscalls []string `yaml:"allowed_syscalls,flow"`
}

type seedResources struct {
	MaxMemoryMB             int64   `yaml:"max_memory_mb,omitempty"`
	MaxCPUCores             float64 `yaml:"max_cpu_cores,omitempty"`
	MaxExecutionTimeSeconds int64   `yaml:"max_execution_time_seconds,omitempty"`
	MaxOpenFiles            int64   `yaml:"max_open_files,omitempty"`
}

func (s *Suggestion) seed() seedDoc {
	p := s.From
	d := seedDoc{Version: "1.0", Name: suggestedName(p.Name)}
	fs := &d.Sandbox.Filesystem
	if !slices.Equal(s.SystemPaths, policy.DefaultSystemPaths) {
		sp := append([]string{}, s.SystemPaths...)
		fs.SystemPaths = &sp
	}
	fs.AllowedReads, fs.AllowedWrites = s.Reads, s.Writes
	fs.IncludeWorkdir = p.Filesystem.IncludeWorkdir
	fs.MaxFileSizeMB, fs.MaxTotalSizeMB, fs.BlockSymlinks = p.Filesystem.MaxFileSizeMB, p.Filesystem.MaxTotalSizeMB, p.Filesystem.BlockSymlinks
	if len(s.Egress) > 0 {
		n := &seedNet{}
		if !p.Network.BlockPrivateRanges {
			n.BlockPrivateRanges = new(bool)
		}
		if !p.Network.DNSFiltering {
			n.DNSFiltering = new(bool)
		}
		for _, r := range s.Egress {
			e := seedEgress{Host: r.Host}
			if len(r.Ports) == 1 {
				e.Port = r.Ports[0]
			} else {
				e.Ports = r.Ports
			}
			e.Binaries = r.Binaries
			if f := r.From; f != nil {
				if f.RateLimit != nil {
					e.RateLimit = rateString(f.RateLimit)
				}
				e.MaxRequestSizeKB, e.MaxResponseSizeMB, e.TLSRequired = f.MaxRequestKB, f.MaxResponseMB, f.TLSRequired
			}
			n.AllowedEgress = append(n.AllowedEgress, e)
		}
		d.Sandbox.Network = n
	}
	pr := &d.Sandbox.Process
	pr.AllowExec = s.AllowExec
	pr.MaxProcesses = s.MaxProcesses
	if pr.MaxProcesses == 0 {
		pr.MaxProcesses = p.Process.MaxProcesses
	}
	pr.RunAsUser, pr.RunAsGroup = p.Process.User, p.Process.Group
	if sc := p.Process.Seccomp; sc != nil {
		pr.Seccomp = &seedSeccomp{DefaultAction: sc.DefaultAction, AllowedSyscalls: sc.Allowed}
	}
	if r := p.Resources; r != (policy.Resources{}) || s.MaxMemoryMB > 0 {
		d.Sandbox.Resources = &seedResources{MaxMemoryMB: r.MaxMemoryMB, MaxCPUCores: r.MaxCPUCores,
			MaxExecutionTimeSeconds: int64(r.MaxExecutionTime.Seconds()), MaxOpenFiles: r.MaxOpenFiles}
		if s.MaxMemoryMB > 0 {
			d.Sandbox.Resources.MaxMemoryMB = s.MaxMemoryMB
		}
	}
	if len(p.Env) > 0 {
		d.Sandbox.Environment = map[string]string{}
		for _, e := range p.Env {
			d.Sandbox.Environment[e.Name] = e.Value
		}
	}
	return d
}

type osDoc struct {
	Version    int              `yaml:"version"`
	Filesystem osFS             `yaml:"filesystem_policy"`
	Process    *osProcess       `yaml:"process,omitempty"`
	Network    map[string]osNet `yaml:"network_policies,omitempty"`
}

type osFS struct {
	IncludeWorkdir bool     `yaml:"include_workdir"`
	ReadOnly       []string `yaml:"read_only,omitempty"`
	ReadWrite      []string `yaml:"read_write,omitempty"`
}

type osProcess struct {
	RunAsUser  string `yaml:"run_as_user,omitempty"`
	RunAsGroup string `yaml:"run_as_group,omitempty"`
}

type osNet struct {
	Name      string       `yaml:"name"`
	Endpoints []osEndpoint `yaml:"endpoints"`
	Binaries  []osBinary   `yaml:"binaries,omitempty"`
}

type osBinary struct {
	Path string `yaml:"path"`
}

type osEndpoint struct {
	Host  string `yaml:"host"`
	Port  int    `yaml:"port,omitempty"`
	Ports []int  `yaml:"ports,omitempty,flow"`
}

// openshell renders NVIDIA OpenShell's v1 format, which has no field for
// exec, process counts, resources, limits or environment: those are
// listed as lost.
func (s *Suggestion) openshell() (osDoc, []string) {
	p := s.From
	d := osDoc{Version: 1}
	d.Filesystem.IncludeWorkdir = p.Filesystem.IncludeWorkdir
	d.Filesystem.ReadOnly = append(append([]string{}, s.SystemPaths...), s.Reads...)
	d.Filesystem.ReadWrite = s.Writes
	if p.Process.User != "" || p.Process.Group != "" {
		d.Process = &osProcess{RunAsUser: p.Process.User, RunAsGroup: p.Process.Group}
	}
	var lost []string
	if len(s.Egress) > 0 {
		// A network policy's binaries hold for all its endpoints: one
		// policy per set of binaries, in the order first seen.
		d.Network = map[string]osNet{}
		keys := map[string]string{}
		for _, r := range s.Egress {
			set := strings.Join(r.Binaries, "\x00")
			key, ok := keys[set]
			if !ok {
				key = "learned"
				if len(keys) > 0 {
					key = fmt.Sprintf("learned-%d", len(keys)+1)
				}
				keys[set] = key
				n := osNet{Name: key}
				for _, b := range r.Binaries {
					n.Binaries = append(n.Binaries, osBinary{Path: b})
				}
				d.Network[key] = n
			}
			e := osEndpoint{Host: r.Host}
			if len(r.Ports) == 1 {
				e.Port = r.Ports[0]
			} else {
				e.Ports = r.Ports
			}
			n := d.Network[key]
			n.Endpoints = append(n.Endpoints, e)
			d.Network[key] = n
		}
	}
	lost = append(lost, fmt.Sprintf("NVIDIA OpenShell's format cannot say allow_exec: %v, max_processes: %d, resources, per-rule limits or environment: write --format seed to keep them", s.AllowExec, s.MaxProcesses))
	return d, lost
}

func suggestedName(name string) string {
	if name == "" {
		return "suggested"
	}
	return name + "-suggested"
}

func rateString(r *policy.RateLimit) string {
	per := "second"
	switch r.Per.Seconds() {
	case 60:
		per = "minute"
	case 3600:
		per = "hour"
	}
	return fmt.Sprintf("%d/%s", r.Count, per)
}
