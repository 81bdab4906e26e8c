package runtime

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const okPolicy = "version: \"1.0\"\nname: %s\nsandbox:\n  filesystem: {allowed_writes: [/tmp]}\n"

func TestResolvePolicy(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "agent.yaml"), []byte(strings.Replace(okPolicy, "%s", "agent", 1)), 0o600)
	os.WriteFile(filepath.Join(dir, "other.yml"), []byte(strings.Replace(okPolicy, "%s", "other", 1)), 0o600)
	os.WriteFile(filepath.Join(dir, "broken.yaml"), []byte("version: \"1.0\"\nsandbox:\n  filesystem: {allowed_writes: [/]}\n"), 0o600)
	c := DefaultConfig()
	c.PolicyDir = dir
	c.PolicyPaths = []string{dir}
	c.AllowInlinePolicy = true
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		def         string
		wantName    string
		wantErr     string
	}{
		{name: "builtin default", wantName: "builtin-default"},
		{name: "named", annotations: map[string]string{AnnotationPolicy: "agent"}, wantName: "agent"},
		{name: "named .yml", annotations: map[string]string{AnnotationPolicy: "other"}, wantName: "other"},
		{name: "absolute path", annotations: map[string]string{AnnotationPolicy: filepath.Join(dir, "agent.yaml")}, wantName: "agent"},
		{name: "inline", annotations: map[string]string{AnnotationPolicyInline: strings.Replace(okPolicy, "%s", "inl", 1)}, wantName: "inl"},
		{name: "configured default", def: "other", wantName: "other"},
		{name: "missing name", annotations: map[string]string{AnnotationPolicy: "nope"}, wantErr: `io.openshell.policy: no policy "nope" in ` + dir},
		{name: "path-like name", annotations: map[string]string{AnnotationPolicy: "../agent"}, wantErr: `"../agent" is neither an absolute path nor a policy name`},
		{name: "invalid named", annotations: map[string]string{AnnotationPolicy: "broken"}, wantErr: "annotation io.openshell.policy: policy " + filepath.Join(dir, "broken.yaml") + " does not validate (" + filepath.Join(dir, "broken.yaml") + ":3:33); the messages are withheld"},
		{name: "invalid inline", annotations: map[string]string{AnnotationPolicyInline: "version: \"1.0\"\nsandbox: {bogus: 1}\n"}, wantErr: "<io.openshell.policy.inline>:2:11: sandbox.bogus: unknown field"},
		{name: "both", annotations: map[string]string{AnnotationPolicy: "agent", AnnotationPolicyInline: "x"}, wantErr: "both set"},
		{name: "missing default", def: "gone", wantErr: `default_policy: no policy "gone"`},
		{name: "invalid default shows its messages", def: "broken", wantErr: filepath.Join(dir, "broken.yaml") + ":3:33: sandbox.filesystem.allowed_writes[0]: / can never be writable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := *c
			if tc.def != "" {
				c.DefaultPolicy = tc.def
			}
			p, _, err := c.ResolvePolicy(tc.annotations)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Name != tc.wantName {
				t.Fatalf("policy %q, want %q", p.Name, tc.wantName)
			}
		})
	}
}

func TestConfineExec(t *testing.T) {
	st := &State{
		AllowExec: true,
		Policy:    PolicyRef{Name: "p", File: "p.yaml"},
		Process: &specs.Process{
			User:    specs.User{UID: 1000, GID: 1000},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NPROC", Hard: 16, Soft: 16}},
		},
	}
	in := &specs.Process{
		Args: []string{"sh"}, Env: []string{"A=1"}, Cwd: "/w", Terminal: true,
		User:         specs.User{UID: 0, GID: 0},
		Capabilities: &specs.LinuxCapabilities{Effective: []string{"CAP_SYS_ADMIN"}, Bounding: []string{"CAP_SYS_ADMIN"}},
	}
	out, err := st.ConfineExec(in)
	if err != nil {
		t.Fatal(err)
	}
	if out.User.UID != 1000 || out.User.GID != 1000 {
		t.Errorf("user %+v, want the policy's 1000:1000", out.User)
	}
	if c := out.Capabilities; c == nil || len(c.Effective)+len(c.Bounding)+len(c.Permitted)+len(c.Inheritable)+len(c.Ambient) != 0 {
		t.Errorf("capabilities %+v, want none", c)
	}
	if !out.NoNewPrivileges || len(out.Rlimits) != 1 || out.Rlimits[0].Hard != 16 {
		t.Errorf("privileges/rlimits: %+v", out)
	}
	if out.Args[0] != "sh" || out.Cwd != "/w" || !out.Terminal || out.Env[0] != "A=1" {
		t.Errorf("the engine's command changed: %+v", out)
	}
	if in.User.UID != 0 {
		t.Error("the input was modified")
	}

	st.AllowExec = false
	if _, err := st.ConfineExec(in); err == nil || !strings.Contains(err.Error(), "allow_exec: false") {
		t.Fatalf("allow_exec false: %v", err)
	}
	st.AllowExec = true
	if _, err := st.ConfineExec(&specs.Process{}); err == nil {
		t.Fatal("empty command accepted")
	}
}

func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	sb := &Sandbox{ID: "c", Dir: filepath.Join(dir, "c")}
	os.Mkdir(sb.Dir, 0o700)
	if err := sb.SaveState(&State{ID: "c", Bundle: "/b", AllowExec: true}); err != nil {
		t.Fatal(err)
	}
	got, st, err := Open(dir, "c")
	if err != nil || st == nil || !st.AllowExec || got.Bundle != "/b" {
		t.Fatalf("Open: %+v %+v %v", got, st, err)
	}
	if _, _, err := Open(dir, "missing"); !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("missing: %v", err)
	}
	if _, _, err := Open(dir, "../c"); err == nil {
		t.Fatal("../c opened")
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

// secretFile is a host file that is not a policy; its bytes must never
// reach an error an annotation's author sees (pod events, engine errors).
const secretFile = "root:$6$s3cr3t-salt$HASHED-PASSWORD:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"

func TestResolvePolicyAnnotationPaths(t *testing.T) {
	base := t.TempDir()
	policies := filepath.Join(base, "policies")
	extra := filepath.Join(base, "extra")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{policies, extra, outside} {
		os.Mkdir(d, 0o700)
	}
	ok := strings.Replace(okPolicy, "%s", "extra", 1)
	os.WriteFile(filepath.Join(extra, "agent.yaml"), []byte(ok), 0o600)
	os.WriteFile(filepath.Join(outside, "agent.yaml"), []byte(ok), 0o600)
	os.WriteFile(filepath.Join(outside, "shadow"), []byte(secretFile), 0o600)
	os.WriteFile(filepath.Join(extra, "shadow"), []byte(secretFile), 0o600)
	os.WriteFile(filepath.Join(extra, "keys.yaml"), []byte("version: \"1.0\"\nsandbox: {}\napi_token: sk-SECRETVALUE\n"), 0o600)
	os.Symlink(filepath.Join(outside, "agent.yaml"), filepath.Join(extra, "link.yaml"))
	os.Symlink(outside, filepath.Join(extra, "linkdir"))
	os.WriteFile(filepath.Join(policies, "shadow.yaml"), []byte(secretFile), 0o600)

	c := DefaultConfig()
	c.PolicyDir = policies
	withPaths := *c
	withPaths.PolicyPaths = []string{extra}
	for _, tc := range []struct {
		name     string
		c        *Config
		ref      string
		wantName string
		wantErr  string
	}{
		{name: "absolute path refused by default", c: c, ref: filepath.Join(extra, "agent.yaml"),
			wantErr: "annotation io.openshell.policy: refuse policy path \"" + filepath.Join(extra, "agent.yaml") + "\": the runtime configuration lists no directory in policy_paths"},
		{name: "host file refused by default", c: c, ref: "/etc/shadow", wantErr: "lists no directory in policy_paths"},
		{name: "under policy_paths", c: &withPaths, ref: filepath.Join(extra, "agent.yaml"), wantName: "extra"},
		{name: "outside policy_paths", c: &withPaths, ref: filepath.Join(outside, "agent.yaml"),
			wantErr: "is not under a directory of policy_paths (" + extra + ")"},
		{name: "dot-dot out of policy_paths", c: &withPaths, ref: extra + "/../outside/agent.yaml", wantErr: "it is not under a directory of policy_paths"},
		{name: "the directory itself", c: &withPaths, ref: extra, wantErr: "it is not under a directory of policy_paths"},
		{name: "symlinked file out of policy_paths", c: &withPaths, ref: filepath.Join(extra, "link.yaml"),
			wantErr: "the file it resolves to, " + filepath.Join(outside, "agent.yaml") + ", is not under"},
		{name: "symlinked dir out of policy_paths", c: &withPaths, ref: filepath.Join(extra, "linkdir", "shadow"),
			wantErr: "the file it resolves to, " + filepath.Join(outside, "shadow") + ", is not under"},
		{name: "non-policy file under policy_paths", c: &withPaths, ref: filepath.Join(extra, "shadow"),
			wantErr: "policy " + filepath.Join(extra, "shadow") + " does not validate (" + filepath.Join(extra, "shadow") + ":1:1); the messages are withheld"},
		{name: "secret value in a policy-like file", c: &withPaths, ref: filepath.Join(extra, "keys.yaml"), wantErr: "the messages are withheld"},
		{name: "non-policy file in policy_dir", c: c, ref: "shadow", wantErr: "does not validate (" + filepath.Join(policies, "shadow.yaml") + ":1:1)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _, err := tc.c.ResolvePolicy(map[string]string{AnnotationPolicy: tc.ref})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want %q", err, tc.wantErr)
				}
				for _, secret := range []string{"s3cr3t", "HASHED", "daemon", "SECRETVALUE", "api_token"} {
					if strings.Contains(err.Error(), secret) {
						t.Fatalf("the error echoes the file: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Name != tc.wantName {
				t.Fatalf("policy %q, want %q", p.Name, tc.wantName)
			}
		})
	}
}

func TestResolvePolicyInlineNeedsConfig(t *testing.T) {
	c := DefaultConfig()
	c.file = "/etc/openshell/config.toml"
	inline := map[string]string{AnnotationPolicyInline: strings.Replace(okPolicy, "%s", "inl", 1)}
	_, _, err := c.ResolvePolicy(inline)
	want := "annotation io.openshell.policy.inline: inline policies are refused unless the runtime configuration sets /etc/openshell/config.toml: allow_inline_policy = true"
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v, want %q", err, want)
	}
	c.AllowInlinePolicy = true
	if p, src, err := c.ResolvePolicy(inline); err != nil || p.Name != "inl" || src.Kind != "inline" {
		t.Fatalf("allowed: %v %v %v", p, src, err)
	}
}

func TestResolvePolicyCeiling(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(body), 0o600)
	}
	write("ceiling", "version: \"1.0\"\nname: ceiling\nsandbox:\n  filesystem: {allowed_reads: [/work], allowed_writes: [/tmp, /work/out]}\n  process: {allow_exec: false}\n  resources: {max_memory_mb: 512}\n")
	write("narrow", "version: \"1.0\"\nname: narrow\nsandbox:\n  filesystem: {allowed_writes: [/work/out/x]}\n  process: {allow_exec: false}\n  resources: {max_memory_mb: 256}\n")
	write("wide", "version: \"1.0\"\nname: wide\nsandbox:\n  filesystem: {allowed_reads: [/home], allowed_writes: [/tmp]}\n  resources: {max_memory_mb: 4096}\n")
	c := DefaultConfig()
	c.PolicyDir = dir
	c.AllowInlinePolicy = true
	c.CeilingPolicy = "ceiling"
	c.DefaultPolicy = "wide"

	if p, _, err := c.ResolvePolicy(map[string]string{AnnotationPolicy: "narrow"}); err != nil || p.Name != "narrow" {
		t.Fatalf("narrow: %v", err)
	}
	for name, ann := range map[string]map[string]string{
		"named":  {AnnotationPolicy: "wide"},
		"inline": {AnnotationPolicyInline: "version: \"1.0\"\nname: wide\nsandbox:\n  filesystem: {allowed_reads: [/home], allowed_writes: [/tmp]}\n  resources: {max_memory_mb: 4096}\n"},
	} {
		_, _, err := c.ResolvePolicy(ann)
		if err == nil {
			t.Fatalf("%s: a widening policy was accepted", name)
		}
		for _, want := range []string{"check against ceiling_policy:", "widens the ceiling " + filepath.Join(dir, "ceiling.yaml") + " in 3 field(s)",
			"sandbox.filesystem.allowed_reads[0]: /home is not within", "process.allow_exec", "resources.max_memory_mb: 4096 is above the ceiling's 512"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error %q lacks %q", name, err, want)
			}
		}
	}
	// The operator's own default is not held to the ceiling.
	if p, _, err := c.ResolvePolicy(nil); err != nil || p.Name != "wide" {
		t.Fatalf("default: %v", err)
	}
	// A ceiling that does not load refuses every annotation: fail closed.
	c.CeilingPolicy = "missing"
	if _, _, err := c.ResolvePolicy(map[string]string{AnnotationPolicy: "narrow"}); err == nil || !strings.Contains(err.Error(), `load ceiling_policy: no policy "missing"`) {
		t.Fatalf("missing ceiling: %v", err)
	}
	c.CeilingPolicy = BuiltinPolicy
	if _, _, err := c.ResolvePolicy(map[string]string{AnnotationPolicy: "narrow"}); err == nil || !strings.Contains(err.Error(), "widens the ceiling builtin:default") {
		t.Fatalf("builtin ceiling: %v", err)
	}
}
