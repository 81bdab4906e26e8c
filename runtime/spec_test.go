package runtime

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/openshell/openshell/policyhook"
	"github.com/openshell/openshell/policyhook/modifier"
	"github.com/openshell/openshell/policyhook/policy"
)

type setHostname string

func (h setHostname) Modify(s *specs.Spec) error { s.Hostname = string(h); return nil }

type failing struct{}

func (failing) Modify(*specs.Spec) error { return errors.New("no") }

func writeSpec(t *testing.T, dir string, s *specs.Spec) string {
	t.Helper()
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "config.json")
	if err := os.WriteFile(p, data, 0o640); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFileSpecLoadModifyFlush(t *testing.T) {
	p := writeSpec(t, t.TempDir(), &specs.Spec{Version: "1.0.2", Hostname: "a"})
	fs := NewFileSpec(p)
	if err := fs.Modify(setHostname("b")); err == nil {
		t.Fatal("Modify before Load succeeded")
	}
	s, err := fs.Load()
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := fs.Load(); again != s {
		t.Fatal("a second Load returned another spec")
	}
	if err := fs.Modify(setHostname("b")); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(p)
	if !bytes.Contains(before, []byte(`"hostname":"a"`)) {
		t.Fatalf("Modify wrote the file: %s", before)
	}
	out := filepath.Join(t.TempDir(), "config.json")
	if err := fs.Flush(out); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(out)
	if !bytes.Contains(after, []byte(`"hostname": "b"`)) {
		t.Fatalf("Flush did not write: %s", after)
	}
	if unchanged, _ := os.ReadFile(p); !bytes.Equal(unchanged, before) {
		t.Fatal("the source changed")
	}
	if st, _ := os.Stat(out); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".config.json-*")); len(left) > 0 {
		t.Fatalf("temp files left: %v", left)
	}
}

func TestFileSpecErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewFileSpec(filepath.Join(dir, "none.json")).Load(); err == nil {
		t.Fatal("missing file loaded")
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte("{"), 0o600)
	if _, err := NewFileSpec(bad).Load(); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("bad JSON: %v", err)
	}
	if err := NewFileSpec(bad).Flush(filepath.Join(dir, "out.json")); err == nil {
		t.Fatal("Flush before Load succeeded")
	}
}

func TestMemorySpec(t *testing.T) {
	s := &specs.Spec{}
	ms := NewMemorySpec(s)
	got, err := ms.Load()
	if err != nil || got != s {
		t.Fatal(got, err)
	}
	if err := ms.Modify(modifier.List{setHostname("x")}); err != nil || s.Hostname != "x" {
		t.Fatal(s.Hostname, err)
	}
	if err := ms.Modify(failing{}); err == nil {
		t.Fatal("failing modifier succeeded")
	}
	if _, err := NewMemorySpec(nil).Load(); err == nil {
		t.Fatal("nil spec loaded")
	}
}

func compileWith(p *policy.Policy) CompileFunc {
	return func(rootDir, bundle, image string) (*policyhook.Compiled, error) {
		return policyhook.Compile(p, policyhook.WithRootDir(rootDir), policyhook.WithBundle(bundle))
	}
}

func TestPrepareEngineBundle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("Prepare mounts each policy path it resolved in the image: needs root")
	}
	bundle, state := t.TempDir(), t.TempDir()
	os.Mkdir(filepath.Join(bundle, "rootfs"), 0o755)
	os.MkdirAll(filepath.Join(bundle, "rootfs", "tmp"), 0o755)
	p := writeSpec(t, bundle, &specs.Spec{Version: "1.0.2", Root: &specs.Root{Path: "rootfs"}, Process: &specs.Process{Args: []string{"sh"}, Cwd: "/"}})
	pol, err := policy.Parse("p.yaml", []byte("version: \"1.0\"\nsandbox:\n  filesystem: {system_paths: [], allowed_reads: [/], allowed_writes: [/tmp]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	sb, err := Prepare(PrepareOptions{StateDir: state, ID: "c1", Spec: NewFileSpec(p), Bundle: bundle, Compile: compileWith(pol)})
	if err != nil {
		t.Fatal(err)
	}
	var s specs.Spec
	data, _ := os.ReadFile(filepath.Join(sb.Bundle, "config.json"))
	json.Unmarshal(data, &s)
	if orig, _ := os.ReadFile(p); bytes.Contains(orig, []byte(sb.RootDir)) {
		t.Fatal("the engine's bundle was written")
	}
	if s.Root.Path != sb.RootDir || !s.Root.Readonly {
		t.Fatalf("root %+v, want the sandbox's own %s", s.Root, sb.RootDir)
	}
	if s.Process.User.UID != 65534 {
		t.Fatalf("user %+v", s.Process.User)
	}
	var bound bool
	image, _ := os.Stat(filepath.Join(bundle, "rootfs"))
	for _, m := range s.Mounts {
		// The image root, resolved and mounted in the sandbox's state.
		if st, err := os.Stat(m.Source); err == nil && m.Destination == "/" && os.SameFile(st, image) && strings.HasPrefix(m.Source, sb.Dir+"/") {
			bound = true
		}
	}
	if !bound {
		t.Fatalf("image not bound at /: %+v", s.Mounts)
	}
	if _, err := Prepare(PrepareOptions{StateDir: state, ID: "c1", Spec: NewFileSpec(p), Bundle: bundle, Compile: compileWith(pol)}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second Prepare of c1: %v", err)
	}
	if err := sb.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sb.Dir); !os.IsNotExist(err) {
		t.Fatalf("state dir left: %v", err)
	}
}

func TestPrepareFailureLeavesNothing(t *testing.T) {
	bundle, state := t.TempDir(), t.TempDir()
	p := writeSpec(t, bundle, &specs.Spec{Version: "1.0.2", Root: &specs.Root{Path: "rootfs"}})
	before, _ := os.ReadFile(p)
	failCompile := func(string, string, string) (*policyhook.Compiled, error) { return nil, errors.New("bad policy") }
	for _, id := range []string{"c1", "../x", ""} {
		if _, err := Prepare(PrepareOptions{StateDir: state, ID: id, Spec: NewFileSpec(p), Bundle: bundle, Compile: failCompile}); err == nil {
			t.Fatalf("Prepare %q succeeded", id)
		}
	}
	after, _ := os.ReadFile(p)
	if !bytes.Equal(before, after) {
		t.Fatal("the bundle changed")
	}
	if ents, _ := os.ReadDir(state); len(ents) != 0 {
		t.Fatalf("state left: %v", ents)
	}
}
