package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(context.Background(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestValidateBrokenPolicy(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "broken.yaml")
	data := "version: \"1.0\"\nsandbox:\n  filesystem: {allowed_writes: [/]}\n  network:\n    allowed_egress: [{host: a.example.com, port: 70000}]\n"
	if err := os.WriteFile(f, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadDir(dir)
	code, out, errs := run(t, "policy", "validate", f)
	if code != exitFailed {
		t.Errorf("exit %d, want %d", code, exitFailed)
	}
	want := []string{
		f + ":3:33: sandbox.filesystem.allowed_writes[0]: / can never be writable",
		f + ":5:50: sandbox.network.allowed_egress[0].port: 70000 is not a port (1-65535)",
	}
	if got := strings.Split(strings.TrimSpace(errs), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("stderr:\n%s\nwant:\n%s", errs, strings.Join(want, "\n"))
	}
	if out != "" {
		t.Errorf("stdout = %q, want nothing", out)
	}
	after, _ := os.ReadDir(dir)
	if len(after) != len(before) {
		t.Errorf("validate changed the directory: %v -> %v", before, after)
	}
}

func TestValidateExamples(t *testing.T) {
	files, _ := filepath.Glob("../../../examples/*.yaml")
	code, out, errs := run(t, append([]string{"policy", "validate"}, files...)...)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if n := strings.Count(out, ": valid ("); n != len(files) {
		t.Errorf("%d valid lines for %d files:\n%s", n, len(files), out)
	}
	if !strings.Contains(errs, "warning: ") {
		t.Errorf("warnings not shown:\n%s", errs)
	}
}

func TestValidateMixedExitsNonZero(t *testing.T) {
	code, out, errs := run(t, "policy", "validate", "../../../examples/seed.yaml", "/nonexistent/p.yaml")
	if code != exitFailed || !strings.Contains(out, "seed.yaml: valid") || !strings.Contains(errs, "open policy: open /nonexistent/p.yaml") {
		t.Errorf("exit %d\nstdout %s\nstderr %s", code, out, errs)
	}
}

func TestCompileJSON(t *testing.T) {
	code, out, errs := run(t, "policy", "compile", "../../../examples/coding-agent.yaml", "--json")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var got compileOutput
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	// The spec the runtime makes: its own root and the egress gateway's
	// network, at placeholder paths.
	ns := ""
	for _, n := range got.Spec.Linux.Namespaces {
		if n.Type == "network" {
			ns = n.Path
		}
	}
	if got.Spec.Root.Path != "/run/openshell/<sandbox-id>/root" || !got.Spec.Root.Readonly || got.Spec.Process.User.UID != 1000 ||
		got.TimeoutSeconds != 3600 || strings.Join(got.RunscFlags, " ") != "--oci-seccomp --network=sandbox" ||
		ns != "/run/openshell/<sandbox-id>/netns/sandbox" || !strings.Contains(strings.Join(got.Spec.Process.Env, " "), "HTTPS_PROXY=http://") {
		t.Errorf("unexpected compile output: root %s netns %q flags %v env %v", got.Spec.Root.Path, ns, got.RunscFlags, got.Spec.Process.Env)
	}
}

// TestCompileGPUWithoutHost: a GPU policy compiles on a host without
// GPUs, its device nodes a marked placeholder.
func TestCompileGPUWithoutHost(t *testing.T) {
	code, out, errs := run(t, "policy", "compile", "--config", filepath.Join(t.TempDir(), "none.toml"), "../../../examples/gpu.yaml", "--json")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var got compileOutput
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	var devs []string
	for _, d := range got.Spec.Linux.Devices {
		devs = append(devs, d.Path)
	}
	if !strings.HasPrefix(got.Spec.Annotations["io.openshell.gpu.devices-from"], "PLACEHOLDER") || !strings.Contains(strings.Join(devs, " "), "/dev/nvidiactl /dev/nvidia-uvm /dev/nvidia0") ||
		!strings.Contains(strings.Join(got.RunscFlags, " "), "--nvproxy") {
		t.Errorf("devices %v, annotations %v, flags %v", devs, got.Spec.Annotations, got.RunscFlags)
	}
}

// TestUserNames: without --rootfs or --spec a run_as_user name is a
// placed warning; with --rootfs it is looked up there, and a name the
// image lacks fails as it would at create.
func TestUserNames(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(pol, []byte("version: 1\nprocess:\n  run_as_user: agent\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := run(t, "policy", "explain", pol)
	if code != exitOK || !strings.Contains(errs, "warning: "+pol+":3:16: process.run_as_user: \"agent\" is looked up in the image's /etc/passwd") || !strings.Contains(out, "user 65534:65534") {
		t.Errorf("exit %d\n%s\n%s", code, out, errs)
	}
	root := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("agent:x:1234:1235::/home/agent:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := run(t, "policy", "explain", pol, "--rootfs", root); code != exitOK || !strings.Contains(out, "user 1234:1235") || strings.Contains(errs, "run_as_user") {
		t.Errorf("--rootfs: exit %d\n%s\n%s", code, out, errs)
	}
	if code, _, errs := run(t, "policy", "compile", pol, "--rootfs", t.TempDir()); code != exitFailed || !strings.Contains(errs, `process.run_as_user: "agent"`) {
		t.Errorf("--rootfs without the user: exit %d\n%s", code, errs)
	}
	if code, _, _ := run(t, "policy", "compile", pol, "--rootfs", root, "--spec", pol); code != exitFailed {
		t.Errorf("--rootfs and --spec: exit %d", code)
	}
}

func TestCompileDiffWithSpec(t *testing.T) {
	dir := t.TempDir()
	spec := `{"ociVersion":"1.2.1","process":{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/"},"root":{"path":"rootfs"}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := run(t, "policy", "compile", "--spec", filepath.Join(dir, "config.json"), "../../../examples/seed.yaml")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"-      \"uid\": 0,", "+      \"uid\": 65534,", "\"source\": \"" + filepath.Join(dir, "rootfs", "usr") + "\"", "runsc flags: --oci-seccomp --network=sandbox", "\"path\": \"/run/openshell/<sandbox-id>/netns/sandbox\""} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if code, _, errs := run(t, "policy", "compile", "--spec", filepath.Join(dir, "missing.json"), "../../../examples/seed.yaml"); code != exitFailed || !strings.Contains(errs, "read spec") {
		t.Errorf("missing spec: exit %d, %s", code, errs)
	}
}

func TestExplainTable(t *testing.T) {
	code, out, errs := run(t, "policy", "explain", "../../../examples/seed.yaml")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"RULE", "ENFORCED BY", "allow_exec: false", "seccomp: execve, execveat -> EPERM", "max_processes: 16", "RLIMIT_NPROC"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain lacks %q:\n%s", want, out)
		}
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"bogus"}, {"policy"}, {"policy", "validate"}, {"policy", "compile"}, {"version", "x"}} {
		if code, _, _ := run(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
	if code, out, _ := run(t, "version"); code != exitOK || !strings.HasPrefix(out, "openshell ") {
		t.Errorf("version: exit %d, %q", code, out)
	}
}

func TestAuditReadsAndFilters(t *testing.T) {
	dir := t.TempDir()
	lines := `{"time":"2026-11-24T04:00:00Z","sandbox":"sb1","policy":"p","policy_sha256":"h","kind":"dns","host":"a.example","bytes_up":0,"bytes_down":0,"decision":"allow"}
{"time":"2026-11-24T04:00:01Z","sandbox":"sb1","policy":"p","policy_sha256":"h","kind":"http","host":"evil.example","port":80,"bytes_up":0,"bytes_down":0,"decision":"deny","reason":"no rule allows evil.example:80"}
`
	if err := os.WriteFile(filepath.Join(dir, "sb1.jsonl"), []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := run(t, "audit", "sb1", "--dir", dir, "--violations-only", "--json")
	if code != exitOK || strings.Count(out, "\n") != 1 || !strings.Contains(out, `"host":"evil.example"`) {
		t.Errorf("exit %d\n%s%s", code, out, errs)
	}
	code, out, _ = run(t, "audit", "--dir", dir)
	if code != exitOK || !strings.Contains(out, "a.example") || !strings.Contains(out, "evil.example:80") {
		t.Errorf("exit %d\n%s", code, out)
	}
	if code, _, errs := run(t, "audit", "nope", "--dir", dir); code != exitFailed || !strings.Contains(errs, "no audit log for sandbox nope in "+dir) {
		t.Errorf("unknown sandbox: exit %d %s", code, errs)
	}
	if code, _, errs := run(t, "audit", "../sb1", "--dir", dir); code != exitUsage || !strings.Contains(errs, `"../sb1" is not a sandbox id`) {
		t.Errorf("path as sandbox: exit %d %s", code, errs)
	}
	if err := os.WriteFile(filepath.Join(dir, "torn.jsonl"), []byte(lines+"{\"time\":"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A torn last line (a killed gateway) is reported; the rest is shown.
	if code, out, errs := run(t, "audit", "torn", "--dir", dir); code != exitOK || !strings.Contains(errs, "torn.jsonl:3: skipped: not an audit event") || !strings.Contains(out, "evil.example:80") {
		t.Errorf("torn line: exit %d %s%s", code, out, errs)
	}
}

func TestReloadUnknownSandbox(t *testing.T) {
	dir := t.TempDir()
	code, _, errs := run(t, "policy", "reload", "--state-dir", dir, "--config", filepath.Join(dir, "none.toml"), "sb-none")
	if code != exitFailed || !strings.Contains(errs, "no sandbox sb-none in "+dir) {
		t.Errorf("exit %d %s", code, errs)
	}
}
