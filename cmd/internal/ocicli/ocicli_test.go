package ocicli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/runtime-spec/specs-go/features"

	"github.com/openshell/openshell/runtime"
)

// runMain runs openshell-runtime in-process with files for its streams
// and returns the exit status, stdout and stderr.
func runMain(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	dir := t.TempDir()
	out, _ := os.Create(filepath.Join(dir, "out"))
	errf, _ := os.Create(filepath.Join(dir, "err"))
	defer out.Close()
	defer errf.Close()
	code := Main(context.Background(), args, Stdio{Out: out, Err: errf})
	o, _ := os.ReadFile(out.Name())
	e, _ := os.ReadFile(errf.Name())
	return code, string(o), string(e)
}

func TestFeatures(t *testing.T) {
	code, out, errs := runMain(t, "--config", "/nonexistent", "features")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var f features.Features
	if err := json.Unmarshal([]byte(out), &f); err != nil {
		t.Fatal(err)
	}
	if f.OCIVersionMax == "" || f.Linux == nil || f.Linux.Seccomp == nil || !*f.Linux.Seccomp.Enabled || len(f.Linux.Capabilities) != 0 {
		t.Fatalf("features: %s", out)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "usage: openshell-runtime"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"--bogus", "state", "x"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"--config", "/nonexistent", "--log-format", "xml", "state", "x"}, 1, `--log-format "xml": want text or json`},
		{[]string{"--config", "/nonexistent", "create", "a", "b"}, 1, "want exactly one container id, got 2"},
		{[]string{"--config", "/nonexistent", "create", "--preserve-fds", "3", "a"}, 1, "--preserve-fds is not supported"},
	} {
		code, _, errs := runMain(t, tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errs, tc.code, tc.want)
		}
	}
}

func TestBadConfigStartsNothing(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte("root = \"/x\"\nplatfrom = \"kvm\"\n"), 0o600)
	root := filepath.Join(dir, "root")
	code, _, errs := runMain(t, "--root", root, "--config", cfg, "create", "--bundle", dir, "c1")
	if code != 1 || !strings.Contains(errs, cfg+":2:1: platfrom: unknown field") {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Fatalf("root created: %v", err)
	}
}

func TestCreateBadPolicyLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	os.MkdirAll(filepath.Join(bundle, "rootfs"), 0o755)
	spec := `{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":["true"],"cwd":"/"},` +
		`"annotations":{"io.openshell.policy.inline":"version: \"1.0\"\nsandbox:\n  filesystem: {allowed_writes: [/]}\n"}}`
	os.WriteFile(filepath.Join(bundle, "config.json"), []byte(spec), 0o600)
	// A runsc that must never be called.
	runsc := filepath.Join(dir, "runsc")
	called := filepath.Join(dir, "called")
	os.WriteFile(runsc, []byte("#!/bin/sh\ntouch "+called+"\n"), 0o755)
	t.Setenv("OPENSHELL_RUNSC", runsc)
	root := filepath.Join(dir, "root")
	log := filepath.Join(dir, "log.json")
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte("allow_inline_policy = true\n"), 0o600)
	code, _, errs := runMain(t, "--root", root, "--log", log, "--log-format", "json", "--config", cfg, "create", "--bundle", bundle, "c1")
	want := "<io.openshell.policy.inline>:3:33: sandbox.filesystem.allowed_writes[0]: / can never be writable"
	if code != 1 || !strings.Contains(errs, want) {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	// containerd's shim reports the last "error" entry of the JSON log.
	data, _ := os.ReadFile(log)
	var entry struct{ Level, Msg string }
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(&entry); err != nil || entry.Level != "error" || !strings.Contains(entry.Msg, want) {
		t.Fatalf("log entry %+v (%v) in %s", entry, err, data)
	}
	after, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
	if string(after) != spec {
		t.Fatal("bundle changed")
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "openshell")); len(ents) != 0 {
		t.Fatalf("state left: %v", ents)
	}
	if _, err := os.Stat(called); err == nil {
		t.Fatal("runsc was called")
	}
}

func TestTranslateShortFlags(t *testing.T) {
	for _, tc := range []struct {
		sub  string
		in   []string
		want string
	}{
		{"ps", []string{"-f", "json", "c"}, "--format json c"},
		{"ps", []string{"-f=json", "c"}, "--format=json c"},
		{"kill", []string{"-a", "c", "KILL"}, "--all c KILL"},
		{"state", []string{"-f", "c"}, "-f c"},
	} {
		if got := strings.Join(translate(tc.sub, tc.in), " "); got != tc.want {
			t.Errorf("%s %v: %q, want %q", tc.sub, tc.in, got, tc.want)
		}
	}
}

// TestCreateJoinNeedsOurSandbox: the CRI annotations that have runsc put
// a container into another's sandbox (and its egress) are refused when
// that sandbox is not one of ours; runsc is never called, nothing is left.
func TestCreateJoinNeedsOurSandbox(t *testing.T) {
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	os.MkdirAll(filepath.Join(bundle, "rootfs"), 0o755)
	spec := `{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":["true"],"cwd":"/"},` +
		`"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"victim"}}`
	os.WriteFile(filepath.Join(bundle, "config.json"), []byte(spec), 0o600)
	runsc := filepath.Join(dir, "runsc")
	called := filepath.Join(dir, "called")
	os.WriteFile(runsc, []byte("#!/bin/sh\ntouch "+called+"\n"), 0o755)
	t.Setenv("OPENSHELL_RUNSC", runsc)
	root := filepath.Join(dir, "root")
	code, _, errs := runMain(t, "--root", root, "--config", "/nonexistent", "create", "--bundle", bundle, "c1")
	want := `join sandbox \"victim\" (annotation io.kubernetes.cri.sandbox-id): no sandbox of this runtime by that id`
	if code != 1 || !strings.Contains(errs, want) {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "openshell")); len(ents) != 0 {
		t.Fatalf("state left: %v", ents)
	}
	if _, err := os.Stat(called); err == nil {
		t.Fatal("runsc was called")
	}
}

func TestCheckJoin(t *testing.T) {
	e := &env{g: global{root: t.TempDir()}}
	save := func(id string, st *runtime.State) {
		sb := &runtime.Sandbox{ID: id, Dir: filepath.Join(e.stateDir(), id)}
		if err := os.MkdirAll(sb.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if st != nil {
			if err := sb.SaveState(st); err != nil {
				t.Fatal(err)
			}
		}
	}
	save("pod", &runtime.State{ID: "pod", Policy: runtime.PolicyRef{Name: "agent", Hash: "aaaa"}})
	save("member", &runtime.State{ID: "member", Policy: runtime.PolicyRef{Name: "agent", Hash: "aaaa"}, Subcontainer: true})
	save("preparing", nil)
	join := func(id string) map[string]string {
		return map[string]string{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": id}
	}
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		hash        string
		want        bool
		wantErr     string
	}{
		{name: "no annotations", hash: "bbbb"},
		{name: "a pod's sandbox", annotations: map[string]string{"io.kubernetes.cri.container-type": "sandbox"}, hash: "bbbb"},
		{name: "same policy", annotations: join("pod"), hash: "aaaa", want: true},
		{name: "CRI-O", annotations: map[string]string{"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": "pod"}, hash: "aaaa", want: true},
		{name: "other policy", annotations: join("pod"), hash: "bbbb",
			wantErr: `join sandbox "pod" (annotation io.kubernetes.cri.sandbox-id): it runs policy agent (sha256 aaaa), this container policy wide (sha256 bbbb); a container joins only a sandbox with the same policy`},
		{name: "unknown sandbox", annotations: join("elsewhere"), hash: "aaaa", wantErr: "no sandbox of this runtime by that id"},
		{name: "path as sandbox id", annotations: join("../pod"), hash: "aaaa", wantErr: "not a valid id"},
		{name: "joined container", annotations: join("member"), hash: "aaaa", wantErr: "is a container that joined a sandbox"},
		{name: "no state yet", annotations: join("preparing"), hash: "aaaa", wantErr: "has no recorded policy yet"},
		{name: "no sandbox id", annotations: map[string]string{"io.kubernetes.cri.container-type": "container"}, hash: "aaaa",
			wantErr: "annotation io.kubernetes.cri.sandbox-id names no sandbox"},
		// runsc reads containerd's type first: a CRI-O "container" under a
		// containerd "sandbox" is a new sandbox to runsc, and so to us.
		{name: "containerd type wins", annotations: map[string]string{"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": "x"}, hash: "bbbb"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.checkJoin(tc.annotations, "wide", tc.hash)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("join = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
