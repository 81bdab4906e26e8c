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
		{name: "invalid named", annotations: map[string]string{AnnotationPolicy: "broken"}, wantErr: filepath.Join(dir, "broken.yaml") + ":3:33: sandbox.filesystem.allowed_writes[0]: / can never be writable"},
		{name: "invalid inline", annotations: map[string]string{AnnotationPolicyInline: "version: \"1.0\"\nsandbox: {bogus: 1}\n"}, wantErr: "<io.openshell.policy.inline>:2:11: sandbox.bogus: unknown field"},
		{name: "both", annotations: map[string]string{AnnotationPolicy: "agent", AnnotationPolicyInline: "x"}, wantErr: "both set"},
		{name: "missing default", def: "gone", wantErr: `default_policy: no policy "gone"`},
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
