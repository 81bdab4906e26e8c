package runtime

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestCheckPolicyNotWritable(t *testing.T) {
	ws, elsewhere := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(ws, "repo", ".openshell"), 0o755)
	inWS := filepath.Join(ws, "repo", ".openshell", "policy.yaml")
	outside := filepath.Join(elsewhere, "policy.yaml")
	for _, f := range []string{inWS, outside} {
		os.WriteFile(f, []byte("x"), 0o644)
	}
	link := filepath.Join(elsewhere, "via-link.yaml")
	os.Symlink(inWS, link)
	// The agent's workspace holds a link to a safe directory: the agent
	// can swap the link for a directory of its own after the check.
	safe := t.TempDir()
	os.WriteFile(filepath.Join(safe, "p.yaml"), []byte("x"), 0o644)
	os.Symlink(safe, filepath.Join(ws, "policies"))
	throughWS := filepath.Join(ws, "policies", "p.yaml")
	bind := func(dst, src string, opts ...string) specs.Mount {
		return specs.Mount{Destination: dst, Type: "bind", Source: src, Options: append([]string{"rbind"}, opts...)}
	}
	for _, tc := range []struct {
		name   string
		mounts []specs.Mount
		file   string
		bad    bool
	}{
		{"inside a writable path", []specs.Mount{bind("/work", ws, "rw")}, inWS, true},
		{"through a link", []specs.Mount{bind("/work", ws, "rw")}, link, true},
		{"the file itself bound writable", []specs.Mount{bind("/p.yaml", inWS, "rw")}, inWS, true},
		{"a writable parent of the path", []specs.Mount{bind("/x", filepath.Join(ws, "repo"), "rw")}, inWS, true},
		{"through a link in a writable path", []specs.Mount{bind("/work", ws, "rw")}, throughWS, true},
		{"read-only", []specs.Mount{bind("/work", ws, "ro")}, inWS, false},
		{"elsewhere", []specs.Mount{bind("/work", ws, "rw")}, outside, false},
		{"a tmpfs", []specs.Mount{{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs"}}, inWS, false},
		{"inline", []specs.Mount{bind("/work", ws, "rw")}, "<io.openshell.policy.inline>", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkPolicyNotWritable(&specs.Spec{Mounts: tc.mounts}, tc.file)
			if tc.bad && (err == nil || !strings.Contains(err.Error(), "the sandbox can write")) {
				t.Fatalf("err %v, want a refusal", err)
			}
			if !tc.bad && err != nil {
				t.Fatal(err)
			}
		})
	}
}
