package policy

import (
	"fmt"
	"slices"
	"time"
)

// seedFile is openshell's own format, `version: "1.0"`.
type seedFile struct {
	Version     string       `yaml:"version"`
	Name        string       `yaml:"name"`
	Description string       `yaml:"description"`
	Sandbox     *seedSandbox `yaml:"sandbox"`
}

type seedSandbox struct {
	Filesystem  *seedFilesystem   `yaml:"filesystem"`
	Network     *seedNetwork      `yaml:"network"`
	Process     *seedProcess      `yaml:"process"`
	Resources   *seedResources    `yaml:"resources"`
	Environment map[string]string `yaml:"environment"`
	Inference   *seedInference    `yaml:"inference"`
	GPU         *seedGPU          `yaml:"gpu"`
	Audit       *seedAudit        `yaml:"audit"`
}

type seedAudit struct {
	FileOpens bool `yaml:"file_opens"`
}

type seedGPU struct {
	Enabled                *bool    `yaml:"enabled"`
	Devices                []string `yaml:"devices"`
	Capabilities           []string `yaml:"capabilities"`
	AllowUnsupportedDriver bool     `yaml:"allow_unsupported_driver"`
}

type seedFilesystem struct {
	SystemPaths    *[]string `yaml:"system_paths"`
	AllowedReads   []string  `yaml:"allowed_reads"`
	AllowedWrites  []string  `yaml:"allowed_writes"`
	IncludeWorkdir bool      `yaml:"include_workdir"`
	MaxFileSizeMB  int64     `yaml:"max_file_size_mb"`
	MaxTotalSizeMB int64     `yaml:"max_total_size_mb"`
	BlockSymlinks  *bool     `yaml:"block_symlinks"`
}

type seedNetwork struct {
	DefaultPolicy        string       `yaml:"default_policy"`
	AllowedEgress        []seedEgress `yaml:"allowed_egress"`
	BlockMetadataService *bool        `yaml:"block_metadata_service"`
	BlockPrivateRanges   *bool        `yaml:"block_private_ranges"`
	DNSFiltering         *bool        `yaml:"dns_filtering"`
}

type seedEgress struct {
	Host              string   `yaml:"host"`
	Port              int64    `yaml:"port"`
	Ports             []int64  `yaml:"ports"`
	AllowedIPs        []string `yaml:"allowed_ips"`
	RateLimit         string   `yaml:"rate_limit"`
	MaxRequestSizeKB  int64    `yaml:"max_request_size_kb"`
	MaxResponseSizeMB int64    `yaml:"max_response_size_mb"`
	TLSRequired       bool     `yaml:"tls_required"`
	Binaries          []string `yaml:"binaries"`
}

type seedProcess struct {
	AllowExec    *bool        `yaml:"allow_exec"`
	MaxProcesses int64        `yaml:"max_processes"`
	RunAsUser    string       `yaml:"run_as_user"`
	RunAsGroup   string       `yaml:"run_as_group"`
	Seccomp      *seedSeccomp `yaml:"seccomp"`
}

type seedSeccomp struct {
	DefaultAction   string   `yaml:"default_action"`
	AllowedSyscalls []string `yaml:"allowed_syscalls"`
}

type seedResources struct {
	MaxMemoryMB             int64   `yaml:"max_memory_mb"`
	MaxCPUCores             float64 `yaml:"max_cpu_cores"`
	MaxExecutionTimeSeconds int64   `yaml:"max_execution_time_seconds"`
	MaxOpenFiles            int64   `yaml:"max_open_files"`
}

// fromSeed builds the model from a decoded seed file. Range and format
// checks are validate's job; here only what is needed to build the model
// is looked at (numbers that cannot be converted are reported by validate).
func fromSeed(f *seedFile, s *errSink) *Policy {
	p := newPolicy(FormatSeed)
	p.Name = f.Name
	if f.Sandbox == nil {
		s.addf("sandbox", "is required")
		return p
	}
	sb := f.Sandbox
	const root = "sandbox"

	fs := sb.Filesystem
	if fs == nil {
		fs = &seedFilesystem{}
	}
	const fsf = root + ".filesystem"
	if fs.SystemPaths != nil {
		p.Filesystem.ReadOnly = pathRules(*fs.SystemPaths, fsf+".system_paths")
	} else {
		for _, d := range DefaultSystemPaths {
			p.Filesystem.ReadOnly = append(p.Filesystem.ReadOnly, PathRule{Path: d, Field: fsf + ".system_paths"})
		}
	}
	p.Filesystem.ReadOnly = append(p.Filesystem.ReadOnly, pathRules(fs.AllowedReads, fsf+".allowed_reads")...)
	p.Filesystem.ReadWrite = pathRules(fs.AllowedWrites, fsf+".allowed_writes")
	p.Filesystem.IncludeWorkdir = fs.IncludeWorkdir
	p.Filesystem.MaxFileSizeMB = fs.MaxFileSizeMB
	p.Filesystem.MaxTotalSizeMB = fs.MaxTotalSizeMB
	if fs.BlockSymlinks != nil {
		p.Filesystem.BlockSymlinks = *fs.BlockSymlinks
	}

	if n := sb.Network; n != nil {
		const nf = root + ".network"
		if n.DefaultPolicy != "" && n.DefaultPolicy != "deny" {
			s.addf(nf+".default_policy", "must be \"deny\": egress is denied unless a rule allows it, and that cannot be turned off")
		}
		if n.BlockMetadataService != nil && !*n.BlockMetadataService {
			s.addf(nf+".block_metadata_service", "cannot be false: the cloud metadata service is never reachable from a sandbox")
		}
		if n.BlockPrivateRanges != nil {
			p.Network.BlockPrivateRanges = *n.BlockPrivateRanges
		}
		if n.DNSFiltering != nil {
			p.Network.DNSFiltering = *n.DNSFiltering
		}
		for i, e := range n.AllowedEgress {
			field := fmt.Sprintf("%s.allowed_egress[%d]", nf, i)
			r := EgressRule{
				Field:         field,
				Name:          e.Host,
				Host:          e.Host,
				Enforcement:   EnforcementEnforce,
				MaxRequestKB:  e.MaxRequestSizeKB,
				MaxResponseMB: e.MaxResponseSizeMB,
				TLSRequired:   e.TLSRequired,
			}
			r.Ports = ports(e.Port, e.Ports, field, s)
			r.AllowedIPs = prefixes(e.AllowedIPs, field+".allowed_ips", s)
			if e.RateLimit != "" {
				r.RateLimit = rateLimit(e.RateLimit, field+".rate_limit", s)
			}
			for j, b := range e.Binaries {
				checkBinaryPattern(fmt.Sprintf("%s.binaries[%d]", field, j), b, s)
			}
			if len(e.Binaries) > 0 {
				r.Binaries = e.Binaries
			}
			p.Network.Egress = append(p.Network.Egress, r)
		}
	}

	if pr := sb.Process; pr != nil {
		const pf = root + ".process"
		if pr.AllowExec != nil {
			p.Process.AllowExec = *pr.AllowExec
		}
		p.Process.MaxProcesses = pr.MaxProcesses
		setUser(p, pr.RunAsUser, pr.RunAsGroup, pf)
		if sc := pr.Seccomp; sc != nil {
			p.Process.Seccomp = &Seccomp{DefaultAction: sc.DefaultAction, Allowed: sc.AllowedSyscalls, Field: pf + ".seccomp"}
		}
	}

	if r := sb.Resources; r != nil {
		p.Resources = Resources{
			MaxMemoryMB:      r.MaxMemoryMB,
			MaxCPUCores:      r.MaxCPUCores,
			MaxExecutionTime: time.Duration(r.MaxExecutionTimeSeconds) * time.Second,
			MaxOpenFiles:     r.MaxOpenFiles,
		}
		if r.MaxExecutionTimeSeconds < 0 {
			p.Resources.MaxExecutionTime = -1
		}
	}

	for _, k := range sortedKeys(sb.Environment) {
		p.Env = append(p.Env, EnvVar{Name: k, Value: sb.Environment[k], Field: root + ".environment." + k})
	}

	if sb.Inference != nil {
		p.Inference = fromSeedInference(sb.Inference, root+".inference", s)
	}

	if a := sb.Audit; a != nil {
		p.Audit.FileOpens = a.FileOpens
	}
	if g := sb.GPU; g != nil {
		const gf = root + ".gpu"
		switch {
		case g.Enabled == nil:
			s.addf(gf+".enabled", "is required: write enabled: true to give the sandbox GPUs (or drop the section)")
		case *g.Enabled:
			p.GPU = &GPU{Devices: g.Devices, Capabilities: g.Capabilities, AllowUnsupportedDriver: g.AllowUnsupportedDriver, Field: gf}
			if len(p.GPU.Devices) == 0 {
				p.GPU.Devices = []string{"all"}
			}
			if len(p.GPU.Capabilities) == 0 {
				p.GPU.Capabilities = slices.Clone(DefaultGPUCapabilities)
			}
		case len(g.Devices) > 0 || len(g.Capabilities) > 0 || g.AllowUnsupportedDriver:
			s.addf(gf+".enabled", "is false, but devices, capabilities or allow_unsupported_driver are set")
		}
	}
	return p
}

// newPolicy returns a policy holding the defaults both formats share.
func newPolicy(f Format) *Policy {
	return &Policy{
		Format: f,
		Process: Process{
			AllowExec: true,
			User:      DefaultUser,
			Group:     DefaultGroup,
		},
		Network: Network{BlockMetadata: true, BlockPrivateRanges: true, DNSFiltering: true},
	}
}

func setUser(p *Policy, user, group, field string) {
	if user != "" {
		p.Process.User, p.Process.UserField = user, field+".run_as_user"
		if group == "" {
			// A named user without a group runs with that user's own group,
			// not with the default's.
			p.Process.Group = ""
		}
	}
	if group != "" {
		p.Process.Group, p.Process.GroupField = group, field+".run_as_group"
	}
}

func pathRules(paths []string, field string) []PathRule {
	rules := make([]PathRule, len(paths))
	for i, path := range paths {
		rules[i] = PathRule{Path: path, Field: fmt.Sprintf("%s[%d]", field, i)}
	}
	return rules
}
