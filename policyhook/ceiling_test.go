package policyhook

import (
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/policyhook/policy"
)

func pathRules(field string, paths ...string) []policy.PathRule {
	out := make([]policy.PathRule, len(paths))
	for i, p := range paths {
		out[i] = policy.PathRule{Path: p, Field: field}
	}
	return out
}

// ceilingPolicy is a ceiling that pins and limits every field it can.
func ceilingPolicy() *policy.Policy {
	return &policy.Policy{
		File: "ceiling.yaml",
		Filesystem: policy.Filesystem{
			ReadOnly:       pathRules("ro", "/usr", "/etc", "/work"),
			ReadWrite:      pathRules("rw", "/work/out", "/tmp"),
			MaxFileSizeMB:  100,
			MaxTotalSizeMB: 32,
			BlockSymlinks:  true,
		},
		Process: policy.Process{
			AllowExec: false, MaxProcesses: 16,
			User: "1000", Group: "1000", UserField: "sandbox.process.run_as_user",
			Seccomp: &policy.Seccomp{DefaultAction: "SCMP_ACT_ERRNO", Allowed: []string{"read", "write", "exit"}, Field: "sandbox.process.seccomp"},
		},
		Resources: policy.Resources{MaxMemoryMB: 512, MaxCPUCores: 1, MaxExecutionTime: time.Hour, MaxOpenFiles: 256},
		Network: policy.Network{
			BlockMetadata: true, BlockPrivateRanges: true, DNSFiltering: true,
			Egress: []policy.EgressRule{
				{Field: "e[0]", Host: "*.example.com", Ports: []int{443}, Enforcement: policy.EnforcementEnforce},
				{Field: "e[1]", Host: "api.corp", Ports: []int{443, 8443}, Enforcement: policy.EnforcementEnforce,
					AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}, MaxRequestKB: 64, TLSRequired: true,
					RateLimit: &policy.RateLimit{Count: 10, Per: time.Second}, Binaries: []string{"/usr/bin/curl", "/usr/bin/python3"}},
				{Field: "e[2]", Host: "git.corp", Ports: []int{443}, Enforcement: policy.EnforcementEnforce, Protocol: "rest", Access: "read-only",
					TLS: "terminate", HTTPRules: []policy.HTTPRule{{Method: "GET", Path: "/repo/**"}, {Method: "HEAD", Path: "/repo/**"}}},
			},
		},
		Inference: &policy.Inference{RoutingEndpoint: "http://vllm:8000/v1", Field: "sandbox.inference"},
		GPU:       &policy.GPU{Devices: []string{"0", "1"}, Capabilities: []string{"compute", "utility"}, Field: "sandbox.gpu"},
	}
}

// clonePolicy copies the parts the tests change.
func clonePolicy(c *policy.Policy) *policy.Policy {
	p := *c
	p.File = "candidate.yaml"
	p.Filesystem.ReadOnly = append([]policy.PathRule(nil), c.Filesystem.ReadOnly...)
	p.Filesystem.ReadWrite = append([]policy.PathRule(nil), c.Filesystem.ReadWrite...)
	sc := *c.Process.Seccomp
	p.Process.Seccomp = &sc
	p.Network.Egress = nil
	for _, r := range c.Network.Egress {
		if r.RateLimit != nil {
			rl := *r.RateLimit
			r.RateLimit = &rl
		}
		p.Network.Egress = append(p.Network.Egress, r)
	}
	inf := *c.Inference
	p.Inference = &inf
	g := *c.GPU
	p.GPU = &g
	return &p
}

func TestWidenings(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(p *policy.Policy)
		want   string // a substring of the one widening; "" for none
	}{
		{name: "identical"},
		{name: "narrower everywhere", change: func(p *policy.Policy) {
			p.Filesystem.ReadOnly = pathRules("ro", "/usr/lib", "/work")
			p.Filesystem.ReadWrite = pathRules("rw", "/work/out/x")
			p.Filesystem.MaxFileSizeMB, p.Filesystem.MaxTotalSizeMB = 10, 16
			p.Process.MaxProcesses = 4
			p.Process.Seccomp.Allowed = []string{"read"}
			p.Process.Seccomp.DefaultAction = "SCMP_ACT_KILL"
			p.Resources = policy.Resources{MaxMemoryMB: 256, MaxCPUCores: 0.5, MaxExecutionTime: time.Minute, MaxOpenFiles: 64}
			p.Network.Egress = []policy.EgressRule{
				{Field: "n[0]", Host: "pypi.example.com", Ports: []int{443}, Enforcement: policy.EnforcementEnforce},
				{Field: "n[1]", Host: "API.corp.", Ports: []int{8443}, Enforcement: policy.EnforcementEnforce,
					AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.1.2.0/24")}, MaxRequestKB: 8, TLSRequired: true,
					RateLimit: &policy.RateLimit{Count: 1, Per: time.Minute}, Binaries: []string{"/usr/bin/curl"}},
				{Field: "n[2]", Host: "git.corp", Ports: []int{443}, Enforcement: policy.EnforcementEnforce, Protocol: "rest", Access: "read-only",
					TLS: "terminate", HTTPRules: []policy.HTTPRule{{Method: "GET", Path: "/repo/**"}}},
			}
			p.Inference = nil
			p.GPU = &policy.GPU{Devices: []string{"1"}, Capabilities: []string{"compute"}, Field: "sandbox.gpu"}
		}},
		{name: "no gpu, no egress", change: func(p *policy.Policy) { p.GPU, p.Network.Egress = nil, nil }},

		{name: "read outside", change: func(p *policy.Policy) {
			p.Filesystem.ReadOnly = append(p.Filesystem.ReadOnly, pathRules("ro[3]", "/home")...)
		},
			want: "ro[3]: /home is not within any path the ceiling lets the sandbox read"},
		{name: "read prefix is not a parent", change: func(p *policy.Policy) { p.Filesystem.ReadOnly = pathRules("ro[0]", "/usrx") },
			want: "ro[0]: /usrx is not within"},
		{name: "read a parent", change: func(p *policy.Policy) { p.Filesystem.ReadOnly = pathRules("ro[0]", "/") },
			want: "ro[0]: / is not within"},
		{name: "write a readable path", change: func(p *policy.Policy) { p.Filesystem.ReadWrite = pathRules("rw[0]", "/work") },
			want: "rw[0]: /work is not within any path the ceiling lets the sandbox write"},
		{name: "include workdir", change: func(p *policy.Policy) { p.Filesystem.IncludeWorkdir = true },
			want: "filesystem.include_workdir"},
		{name: "file size above", change: func(p *policy.Policy) { p.Filesystem.MaxFileSizeMB = 101 },
			want: "filesystem.max_file_size_mb: 101 is above the ceiling's 100"},
		{name: "file size unlimited", change: func(p *policy.Policy) { p.Filesystem.MaxFileSizeMB = 0 },
			want: "filesystem.max_file_size_mb: is unlimited"},
		{name: "tmp size unset is the default 64", change: func(p *policy.Policy) { p.Filesystem.MaxTotalSizeMB = 0 },
			want: "filesystem.max_total_size_mb: 64 is above the ceiling's 32"},
		{name: "symlinks", change: func(p *policy.Policy) { p.Filesystem.BlockSymlinks = false },
			want: "filesystem.block_symlinks"},

		{name: "exec", change: func(p *policy.Policy) { p.Process.AllowExec = true },
			want: "process.allow_exec: is true"},
		{name: "processes unset is the default", change: func(p *policy.Policy) { p.Process.MaxProcesses = 0 },
			want: "process.max_processes: 256 is above the ceiling's 16"},
		{name: "other user", change: func(p *policy.Policy) { p.Process.User = "1001" },
			want: "process.run_as_user: runs as 1001:1000; the ceiling pins 1000:1000"},
		{name: "other group", change: func(p *policy.Policy) { p.Process.Group = "0" },
			want: "process.run_as_user: runs as 1000:0"},
		{name: "same user spelled differently", change: func(p *policy.Policy) { p.Process.User = "01000" }},
		{name: "no seccomp", change: func(p *policy.Policy) { p.Process.Seccomp = nil },
			want: "process.seccomp: has no syscall filter"},
		{name: "seccomp allows by default", change: func(p *policy.Policy) { p.Process.Seccomp.DefaultAction = "SCMP_ACT_ALLOW" },
			want: "sandbox.process.seccomp.default_action: SCMP_ACT_ALLOW lets every syscall through"},
		{name: "seccomp more syscalls", change: func(p *policy.Policy) { p.Process.Seccomp.Allowed = []string{"read", "ptrace", "bpf"} },
			want: "sandbox.process.seccomp.allowed_syscalls: ptrace, bpf not allowed"},

		{name: "memory above", change: func(p *policy.Policy) { p.Resources.MaxMemoryMB = 513 },
			want: "resources.max_memory_mb: 513 is above the ceiling's 512"},
		{name: "memory unlimited", change: func(p *policy.Policy) { p.Resources.MaxMemoryMB = 0 },
			want: "resources.max_memory_mb: is unlimited"},
		{name: "cpu above", change: func(p *policy.Policy) { p.Resources.MaxCPUCores = 1.5 },
			want: "resources.max_cpu_cores: 1.5 is above the ceiling's 1"},
		{name: "time unlimited", change: func(p *policy.Policy) { p.Resources.MaxExecutionTime = 0 },
			want: "resources.max_execution_time_seconds: is unlimited"},
		{name: "open files unset is the default", change: func(p *policy.Policy) { p.Resources.MaxOpenFiles = 0 },
			want: "resources.max_open_files: 1024 is above the ceiling's 256"},

		{name: "private ranges", change: func(p *policy.Policy) { p.Network.BlockPrivateRanges = false },
			want: "network.block_private_ranges"},
		{name: "dns filtering", change: func(p *policy.Policy) { p.Network.DNSFiltering = false },
			want: "network.dns_filtering"},
		{name: "metadata", change: func(p *policy.Policy) { p.Network.BlockMetadata = false },
			want: "network.block_metadata_service"},
		{name: "egress other host", change: func(p *policy.Policy) { p.Network.Egress[0].Host = "evil.com" },
			want: "e[0]: evil.com:443 not within any egress rule"},
		{name: "egress other port", change: func(p *policy.Policy) { p.Network.Egress[0].Ports = []int{443, 22} },
			want: "e[0]: *.example.com:22 not within"},
		{name: "egress apex under a wildcard", change: func(p *policy.Policy) { p.Network.Egress[0].Host = "example.com" },
			want: "e[0]: example.com:443"},
		{name: "egress two labels under a one-label wildcard", change: func(p *policy.Policy) { p.Network.Egress[0].Host = "a.b.example.com" },
			want: "e[0]: a.b.example.com:443"},
		{name: "egress wildcard under an exact host", change: func(p *policy.Policy) { p.Network.Egress[1].Host = "*.api.corp" },
			want: "e[1]: *.api.corp:443, *.api.corp:8443"},
		{name: "egress wider allowed_ips", change: func(p *policy.Policy) {
			p.Network.Egress[1].AllowedIPs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		}, want: "e[1]: api.corp:443, api.corp:8443"},
		{name: "egress audit", change: func(p *policy.Policy) { p.Network.Egress[0].Enforcement = policy.EnforcementAudit },
			want: "e[0]: *.example.com:443"},
		{name: "egress no rate limit", change: func(p *policy.Policy) { p.Network.Egress[1].RateLimit = nil },
			want: "e[1]:"},
		{name: "egress faster rate", change: func(p *policy.Policy) { p.Network.Egress[1].RateLimit.Count = 11 },
			want: "e[1]:"},
		{name: "egress bigger requests", change: func(p *policy.Policy) { p.Network.Egress[1].MaxRequestKB = 0 },
			want: "e[1]:"},
		{name: "egress no tls", change: func(p *policy.Policy) { p.Network.Egress[1].TLSRequired = false },
			want: "e[1]:"},
		{name: "egress any binary", change: func(p *policy.Policy) { p.Network.Egress[1].Binaries = nil },
			want: "e[1]:"},
		{name: "egress other binary", change: func(p *policy.Policy) { p.Network.Egress[1].Binaries = []string{"/bin/sh"} },
			want: "e[1]:"},
		{name: "egress fewer binaries", change: func(p *policy.Policy) { p.Network.Egress[1].Binaries = []string{"/usr/bin/curl"} }},
		{name: "egress binary glob", change: func(p *policy.Policy) { p.Network.Egress[1].Binaries = []string{"/usr/bin/python3*"} },
			want: "e[1]:"},
		{name: "egress plain tcp under rest", change: func(p *policy.Policy) { p.Network.Egress[2].Protocol = "" },
			want: "e[2]: git.corp:443"},
		{name: "egress more access", change: func(p *policy.Policy) { p.Network.Egress[2].Access = "full" },
			want: "e[2]:"},
		{name: "egress more http rules", change: func(p *policy.Policy) {
			p.Network.Egress[2].HTTPRules = append(p.Network.Egress[2].HTTPRules, policy.HTTPRule{Method: "POST", Path: "/repo/**"})
		}, want: "e[2]:"},
		{name: "egress tls passthrough", change: func(p *policy.Policy) { p.Network.Egress[2].TLS = "passthrough" },
			want: "e[2]:"},

		{name: "other inference endpoint", change: func(p *policy.Policy) { p.Inference.RoutingEndpoint = "http://evil/v1" },
			want: `sandbox.inference.routing_endpoint: "http://evil/v1" differs`},
		{name: "gpu other device", change: func(p *policy.Policy) { p.GPU.Devices = []string{"2"} },
			want: "sandbox.gpu.devices: 2 not allowed"},
		{name: "gpu all devices", change: func(p *policy.Policy) { p.GPU.Devices = []string{"all"} },
			want: "sandbox.gpu.devices: all not allowed"},
		{name: "gpu more capabilities", change: func(p *policy.Policy) { p.GPU.Capabilities = []string{"all"} },
			want: "sandbox.gpu.capabilities"},
		{name: "gpu unsupported driver", change: func(p *policy.Policy) { p.GPU.AllowUnsupportedDriver = true },
			want: "sandbox.gpu.allow_unsupported_driver"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ceilingPolicy()
			p := clonePolicy(c)
			if tc.change != nil {
				tc.change(p)
			}
			w := Widenings(c, p)
			if tc.want == "" {
				if len(w) > 0 {
					t.Fatalf("widenings %v, want none", w)
				}
				return
			}
			if len(w) != 1 || !strings.Contains(w[0].String(), tc.want) {
				t.Fatalf("widenings %v, want exactly one containing %q", w, tc.want)
			}
		})
	}
}

func TestWideningsWithoutCeilingSections(t *testing.T) {
	c := ceilingPolicy()
	c.Inference, c.GPU = nil, nil
	p := ceilingPolicy()
	w := Widenings(c, p)
	got := make([]string, len(w))
	for i, x := range w {
		got[i] = x.String()
	}
	if len(w) != 2 || !strings.Contains(got[0], "sandbox.inference: inference routing is set; the ceiling has none") ||
		!strings.Contains(got[1], "sandbox.gpu: gives the sandbox GPUs; the ceiling has no gpu section") {
		t.Fatalf("widenings %q", got)
	}
	// A ceiling that pins no user lets the policy choose one.
	c = ceilingPolicy()
	c.Process.UserField = ""
	p = clonePolicy(c)
	p.Process.User = "4242"
	if w := Widenings(c, p); len(w) != 0 {
		t.Fatalf("unpinned user: %v", w)
	}
}

func TestCheckCeilingListsEveryField(t *testing.T) {
	c := ceilingPolicy()
	p := clonePolicy(c)
	p.Process.AllowExec = true
	p.Resources.MaxMemoryMB = 4096
	p.Filesystem.ReadWrite = pathRules("sandbox.filesystem.allowed_writes[0]", "/etc")
	err := CheckCeiling(c, p)
	var ce *CeilingError
	if !errors.As(err, &ce) || len(ce.Widenings) != 3 {
		t.Fatalf("error %v, want a CeilingError with 3 widenings", err)
	}
	for _, want := range []string{"policy candidate.yaml widens the ceiling ceiling.yaml in 3 field(s)", "process.allow_exec", "resources.max_memory_mb", "sandbox.filesystem.allowed_writes[0]: /etc"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if err := CheckCeiling(nil, p); err != nil {
		t.Fatalf("no ceiling: %v", err)
	}
	if err := CheckCeiling(c, clonePolicy(c)); err != nil {
		t.Fatalf("identical: %v", err)
	}
}

// Every example policy lies within itself: the comparison agrees with the
// parser's defaults in both formats.
func TestCeilingOfItself(t *testing.T) {
	files, _ := filepath.Glob("../examples/*.yaml")
	if len(files) == 0 {
		t.Skip("no examples")
	}
	for _, f := range files {
		p, err := policy.Load(f)
		if err != nil {
			t.Fatal(err)
		}
		if w := Widenings(p, p); len(w) != 0 {
			t.Errorf("%s widens itself: %v", f, w)
		}
	}
}

func TestBinaryCovers(t *testing.T) {
	for _, tc := range []struct {
		c, p string
		want bool
	}{
		{"/usr/bin/git", "/usr/bin/git", true},
		{"/usr/bin/git", "/usr/bin/gh", false},
		{"/usr/bin/*", "/usr/bin/git", true},
		{"/usr/bin/*", "/usr/bin/x/git", false},
		{"/usr/bin/python3*", "/usr/bin/python3.11", true},
		{"/usr/bin/python3*", "/usr/bin/python3*", true},
		{"/usr/bin/python3*", "/usr/bin/python3.1?", false}, // covered, but not provably here: counts as wider
		{"/usr/bin/*", "/usr/bin/**", false},
		{"/usr/**", "/usr/bin/*", true},
		{"/usr/**", "/usr/lib/**/node", true},
		{"/usr/**", "/usrx/*", false},
		{"/usr/**", "/**", false},
		{"/usr/*/**", "/usr/bin/*", false},
		{"/usr/bin/git", "/usr/bin/*", false},
	} {
		if got := binaryCovers(tc.c, tc.p); got != tc.want {
			t.Errorf("binaryCovers(%q, %q) = %v, want %v", tc.c, tc.p, got, tc.want)
		}
	}
}
