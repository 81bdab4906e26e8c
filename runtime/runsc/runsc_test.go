package runsc

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// fakeRunsc writes a script that records its arguments, one per line, and
// then does what $FAKE_RUNSC_DO says: print a state, fail with a message,
// or die of a signal.
func fakeRunsc(t *testing.T) (*Runsc, string) {
	t.Helper()
	dir := t.TempDir()
	argv := filepath.Join(dir, "argv")
	script := `#!/bin/sh
for a in "$@"; do printf '%s\n' "$a"; done > ` + argv + `
case "$FAKE_RUNSC_DO" in
fail) echo "boom: $2" >&2; exit 7 ;;
state) echo '{"id":"c1","pid":4242,"status":"running","bundle":"/b"}' ;;
signal) kill -TERM $$ ;;
exit3) exit 3 ;;
esac
`
	path := filepath.Join(dir, "runsc")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return &Runsc{Path: path, Root: "/run/r", Platform: "systrap", Flags: []string{"--oci-seccomp"}}, argv
}

func argvOf(t *testing.T, file string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(strings.Fields(string(data)), " ")
}

func TestArgs(t *testing.T) {
	ctx := context.Background()
	r, argv := fakeRunsc(t)
	for _, tc := range []struct {
		name string
		call func() error
		want string
	}{
		{"create", func() error {
			return r.Create(ctx, "/b", "c1", CreateOpts{PidFile: "/p", ConsoleSocket: "/s"}, Stdio{})
		}, "--root /run/r --platform=systrap --oci-seccomp create --bundle /b --pid-file /p --console-socket /s c1"},
		{"start", func() error { return r.Start(ctx, "c1") }, "--root /run/r --platform=systrap --oci-seccomp start c1"},
		{"kill all", func() error { return r.Kill(ctx, "c1", syscall.SIGKILL, true) }, "--root /run/r --platform=systrap --oci-seccomp kill --all c1 9"},
		{"delete force", func() error { return r.Delete(ctx, "c1", true) }, "--root /run/r --platform=systrap --oci-seccomp delete --force c1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); err != nil {
				t.Fatal(err)
			}
			if got := argvOf(t, argv); got != tc.want {
				t.Fatalf("argv\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestErrorsCarryStderr(t *testing.T) {
	r, _ := fakeRunsc(t)
	t.Setenv("FAKE_RUNSC_DO", "fail")
	err := r.Delete(context.Background(), "c1", false)
	if err == nil || !strings.Contains(err.Error(), "runsc delete: exit status 7: boom:") {
		t.Fatalf("error = %v", err)
	}
	if _, err := r.State(context.Background(), "c1"); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("state error = %v", err)
	}
}

func TestState(t *testing.T) {
	r, _ := fakeRunsc(t)
	t.Setenv("FAKE_RUNSC_DO", "state")
	st, err := r.State(context.Background(), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if st.Pid != 4242 || st.Status != "running" || st.Bundle != "/b" {
		t.Fatalf("%+v", st)
	}
}

func TestExitStatus(t *testing.T) {
	r, _ := fakeRunsc(t)
	for do, want := range map[string]int{"": 0, "exit3": 3, "signal": 128 + int(syscall.SIGTERM)} {
		t.Setenv("FAKE_RUNSC_DO", do)
		code, err := r.Run(context.Background(), "/b", "c1", CreateOpts{}, Stdio{}, nil)
		if err != nil || code != want {
			t.Errorf("%q: code %d err %v, want %d", do, code, err, want)
		}
	}
	// An exec's status comes through Passthrough: a SIGTERM'd exec is
	// 143, not a generic kill.
	for do, want := range map[string]int{"exit3": 3, "signal": 128 + int(syscall.SIGTERM)} {
		t.Setenv("FAKE_RUNSC_DO", do)
		if code, err := r.Passthrough(context.Background(), Stdio{}, "exec", "c1"); err != nil || code != want {
			t.Errorf("passthrough %q: %d %v, want %d", do, code, err, want)
		}
	}
}

func TestCheckMissingBinary(t *testing.T) {
	r := &Runsc{Path: filepath.Join(t.TempDir(), "none")}
	if _, err := r.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "make runsc installs it") {
		t.Fatalf("error = %v", err)
	}
}

func TestRemoveStale(t *testing.T) {
	root := t.TempDir()
	r := &Runsc{Root: root}
	id := "openshell-0123456789abcdef"
	// "x" + id is another container whose id contains this one.
	for _, f := range []string{id + "_sandbox:" + id + ".lock", "runsc-" + id + ".sock", "other_sandbox:other.state", "x" + id + "_sandbox:x" + id + ".state"} {
		os.WriteFile(filepath.Join(root, f), nil, 0o600)
	}
	cg := t.TempDir()
	for _, d := range []string{"memory/" + id, "pids/" + id, "pids/other", "busy/" + id + "/child"} {
		os.MkdirAll(filepath.Join(cg, d), 0o755)
	}
	if err := removeCgroups(cg, id); err == nil {
		t.Fatal("a cgroup with something in it was removed without error")
	}
	os.RemoveAll(filepath.Join(cg, "busy"))
	if err := r.RemoveStale(id); err != nil {
		t.Fatal(err)
	}
	if err := removeCgroups(cg, id); err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(root, "*"))
	if len(left) != 2 || filepath.Base(left[0]) != "other_sandbox:other.state" || filepath.Base(left[1]) != "x"+id+"_sandbox:x"+id+".state" {
		t.Errorf("left in root: %v", left)
	}
	for _, d := range []string{"memory/" + id, "pids/" + id} {
		if _, err := os.Stat(filepath.Join(cg, d)); !os.IsNotExist(err) {
			t.Errorf("%s not removed", d)
		}
	}
	if _, err := os.Stat(filepath.Join(cg, "pids/other")); err != nil {
		t.Error("another container's cgroup was removed")
	}
	if err := r.RemoveStale("../x"); err == nil {
		t.Error("a path as id was accepted")
	}
}
