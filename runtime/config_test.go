package runtime

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadConfigMissingFileIsDefaults(t *testing.T) {
	c, err := LoadConfig(filepath.Join(t.TempDir(), "none.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Root != "/run/openshell" || c.DefaultPolicy != BuiltinPolicy || c.PolicyDir != "/etc/openshell/policies" {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig("c.toml", []byte(`
runsc = "/usr/local/bin/runsc"
root = "/var/run/os"
platform = "ptrace"
default_policy = "agent"
policy_dir = "/srv/policies"
runsc_flags = ["--debug", "--debug-log=/tmp/runsc/"]
policy_paths = ["/etc/openshell/extra"]
allow_inline_policy = true
ceiling_policy = "ceiling"
allowed_hooks = ["/usr/bin/nvidia-container-runtime-hook"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.PolicyPaths) != 1 || !c.AllowInlinePolicy || c.CeilingPolicy != "ceiling" || len(c.AllowedHooks) != 1 {
		t.Fatalf("parsed: %+v", c)
	}
	if c.Runsc != "/usr/local/bin/runsc" || c.Root != "/var/run/os" || c.PlatformOrDefault() != "ptrace" ||
		c.DefaultPolicy != "agent" || c.PolicyDir != "/srv/policies" || len(c.RunscFlags) != 2 || c.File() != "c.toml" {
		t.Fatalf("parsed: %+v", c)
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"unknown field", "root = \"/x\"\nplatfrom = \"kvm\"\n", "c.toml:2:1: platfrom: unknown field"},
		{"wrong type", "root = 3\n", "c.toml:1:8:"},
		{"syntax", "root = \"/x\n", "c.toml:1:"},
		{"relative root", `root = "run"`, `c.toml: root: "run" is not an absolute path`},
		{"empty root", `root = ""`, `c.toml: root: must not be empty`},
		{"bad platform", `platform = "xen"`, `c.toml: platform: "xen" is not one of systrap, ptrace, kvm`},
		{"bad default policy", `default_policy = "../etc/x"`, `c.toml: default_policy: "../etc/x" is neither builtin:default`},
		{"managed flag", `runsc_flags = ["--network=host"]`, "c.toml: runsc_flags: --network is set by openshell from the policy"},
		{"not a flag", `runsc_flags = ["debug"]`, `c.toml: runsc_flags: "debug" is not a flag`},
		{"bad dns upstream", "[egress]\ndns_upstream = \"dns.example\"\n", `c.toml: egress.dns_upstream: "dns.example" is not IP:port`},
		{"relative CDI dir", "[gpu]\ncdi_spec_dirs = [\"/etc/cdi\", \"cdi\"]\n", `c.toml: gpu.cdi_spec_dirs[1]: "cdi" is not an absolute path`},
		{"relative driver root", "[gpu]\ndriver_root = \"drivers\"\n", `c.toml: gpu.driver_root: "drivers" is not an absolute path`},
		{"relative uplink", "[egress]\nuplink_netns = \"netns/x\"\n", `c.toml: egress.uplink_netns: "netns/x" is not an absolute path`},
		{"unknown egress key", "[egress]\naudit = \"/x\"\n", "c.toml:2:1: egress.audit: unknown field"},
		{"audit bound too small", "[egress]\naudit_max_mb = 1\n", `c.toml: egress.audit_max_mb: 1 is not between 2 and 2048 (MiB)`},
		{"audit bound zero", "[egress]\naudit_max_mb = 0\n", `c.toml: egress.audit_max_mb: 0 is not between 2 and 2048 (MiB)`},
		{"audit bound too large", "[egress]\naudit_max_mb = 4096\n", `c.toml: egress.audit_max_mb: 4096 is not between`},
		{"audit bound not a number", "[egress]\naudit_max_mb = \"64M\"\n", "c.toml:2:"},
		{"relative policy path", `policy_paths = ["extra"]`, `c.toml: policy_paths[0]: "extra" is not an absolute path`},
		{"root as policy path", `policy_paths = ["/etc", "//"]`, `c.toml: policy_paths[1]: / would let an annotation name any file on the host`},
		{"relative hook", `allowed_hooks = ["nvidia-container-runtime-hook"]`, `c.toml: allowed_hooks[0]: "nvidia-container-runtime-hook" is not a clean absolute path`},
		{"unclean hook", `allowed_hooks = ["/usr/bin/../bin/hook"]`, `c.toml: allowed_hooks[0]: "/usr/bin/../bin/hook" is not a clean absolute path`},
		{"bad ceiling", `ceiling_policy = "../x"`, `c.toml: ceiling_policy: "../x" is neither builtin:default`},
		{"inline not a bool", `allow_inline_policy = "yes"`, "c.toml:1:"},
		{"managed nvproxy flag", `runsc_flags = ["--nvproxy-driver-version=latest"]`, "c.toml: runsc_flags: --nvproxy-driver-version is set by openshell"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("c.toml", []byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestParseConfigAuditMaxMB(t *testing.T) {
	if c := DefaultConfig(); c.Egress.AuditMaxMB != DefaultAuditMaxMB {
		t.Errorf("default audit_max_mb = %d", c.Egress.AuditMaxMB)
	}
	c, err := ParseConfig("c.toml", []byte("[egress]\naudit_max_mb = 256\n"))
	if err != nil || c.Egress.AuditMaxMB != 256 {
		t.Fatalf("audit_max_mb = 256: %+v, %v", c, err)
	}
}

func TestLoadConfigUnreadable(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadConfig(dir); err == nil || !strings.Contains(err.Error(), "read config") {
		t.Fatalf("a directory as config: %v", err)
	}
}

func TestRunscPathPrefersConfig(t *testing.T) {
	c := DefaultConfig()
	c.Runsc = "/opt/runsc"
	if got := c.RunscPath(); got != "/opt/runsc" {
		t.Fatal(got)
	}
	c.Runsc = ""
	t.Setenv("OPENSHELL_RUNSC", "/env/runsc")
	if got := c.RunscPath(); got != "/env/runsc" {
		t.Fatal(got)
	}
}

func TestDeployConfigParses(t *testing.T) {
	c, err := LoadConfig("../deploy/openshell/config.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.DefaultPolicy != BuiltinPolicy || c.PolicyDir != "/etc/openshell/policies" || c.Egress.AuditMaxMB != DefaultAuditMaxMB {
		t.Fatalf("%+v", c)
	}
	// The shipped file keeps the secure defaults.
	if len(c.PolicyPaths) != 0 || c.AllowInlinePolicy || c.CeilingPolicy != "" || len(c.AllowedHooks) != 0 {
		t.Fatalf("the shipped config widens a default: %+v", c)
	}
}

func TestDefaultsAreSecure(t *testing.T) {
	c := DefaultConfig()
	if len(c.PolicyPaths) != 0 || c.AllowInlinePolicy || len(c.AllowedHooks) != 0 {
		t.Fatalf("defaults: %+v", c)
	}
}
