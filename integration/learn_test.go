package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/runtime"
	"github.com/openshell/openshell/runtime/egress"
)

// learnScript is a small agent: an HTTPS fetch with curl (through the
// proxy's CONNECT; the fake internet's CA is not in the image, hence -k),
// a plain HTTP one with python3 (urllib, through the proxy too) of a host
// the permissive policy does not name, and a result written to its
// workspace.
const learnScript = `set -e
curl -sS -k -m 5 -o /dev/null https://allowed.test/
python3 -c "import urllib.request; urllib.request.urlopen('http://pass.test/', timeout=5).read(); print('fetched')"
echo done > WS/out/result.txt
cat WS/out/result.txt
`

// TestLearn runs the agent under --learn with a permissive policy, has
// openshell policy suggest write a policy from what it did, and runs the
// agent again under the suggestion: it must validate, be narrower, and
// the second run must succeed with no denial in its audit log.
func TestLearn(t *testing.T) {
	e := newEgressEnv(t)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	ws := "/learn-" + hex.EncodeToString(b)
	host := filepath.Join(e.root, ws)
	if err := os.MkdirAll(filepath.Join(host, "out"), 0o777); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(host) })
	for _, d := range []string{host, filepath.Join(host, "out")} {
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	wide := `version: "1.0"
name: learn-wide
sandbox:
  filesystem:
    allowed_reads: [/var, /srv]
    allowed_writes: [/tmp, ` + ws + `]
  process: {allow_exec: true, max_processes: 128}
  network:
    allowed_egress:
      - {host: allowed.test, ports: [80, 443]}
      - {host: limited.test, port: 80}
      - {host: reload.test, port: 443}
`
	script := strings.ReplaceAll(learnScript, "WS", ws)
	run := func(pf string, extra ...string) (string, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		args := append([]string{"run", "--config", e.config, "--runsc", runscBin, "--state-dir", stateDir, "--rootfs", e.root, "--policy", pf}, extra...)
		c := exec.CommandContext(ctx, openshellBin, append(args, "--", "/bin/sh", "-c", script)...)
		var out, errb bytes.Buffer
		c.Stdout, c.Stderr = &out, &errb
		if err := c.Run(); err != nil || out.String() != "fetched\ndone\n" {
			t.Fatalf("sandbox %v: %v\n%s\n%s", extra, err, out.String(), errb.String())
		}
		assertNothingLeft(t, stateDir)
		return out.String(), errb.String()
	}
	start := time.Now()
	_, stderr := run(writePolicy(t, wide), "--learn")
	m := regexp.MustCompile(`learning mode: sandbox (\S+);`).FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("no sandbox id in %q", stderr)
	}
	learnID := m[1]
	learnEvents := e.events(t)
	for _, ev := range learnEvents {
		t.Logf("learn audit: %s %s %s:%d %s %s", ev.Decision, ev.Kind, ev.Host, ev.Port, ev.Rule, ev.Reason)
	}
	if !slices.ContainsFunc(learnEvents, func(ev egress.Event) bool {
		return ev.Host == "pass.test" && ev.Decision == egress.Audit && strings.HasPrefix(ev.Reason, egress.LearnReason)
	}) {
		t.Errorf("pass.test, which no rule names, was not let through as audit (learning)")
	}

	sugg := filepath.Join(t.TempDir(), "suggested.yaml")
	rc, out, errOut := runCmd(t, openshellBin, "policy", "suggest", "--config", e.config, learnID, "-o", sugg)
	if rc != 0 {
		t.Fatalf("policy suggest: %d\n%s\n%s", rc, out, errOut)
	}
	data, _ := os.ReadFile(sugg)
	t.Logf("suggested:\n%s\n%s", data, errOut)
	p, err := policy.Load(sugg)
	if err != nil {
		t.Fatalf("the suggestion does not validate: %v", err)
	}
	var hosts []string
	for _, r := range p.Network.Egress {
		hosts = append(hosts, r.Host)
	}
	slices.Sort(hosts)
	if !slices.Equal(hosts, []string{"allowed.test", "pass.test"}) {
		t.Errorf("suggested hosts %v, want allowed.test and pass.test", hosts)
	}
	var reads, writes []string
	for _, r := range p.Filesystem.ReadOnly {
		if !strings.Contains(r.Field, "system_paths") {
			reads = append(reads, r.Path)
		}
	}
	for _, r := range p.Filesystem.ReadWrite {
		writes = append(writes, r.Path)
	}
	if len(reads) != 0 || len(writes) != 1 || (writes[0] != ws && writes[0] != ws+"/out") {
		t.Errorf("suggested reads %v, writes %v; want only %s (or its out/)", reads, writes, ws)
	}
	// Each host was reached by one binary, which the sentry named: the
	// suggestion scopes its rule to it (and the rerun below, under
	// openshell's runsc, enforces that).
	for _, r := range p.Network.Egress {
		want := map[string]string{"allowed.test": "/usr/bin/curl", "pass.test": "/usr/bin/python3"}[r.Host]
		if len(r.Binaries) != 1 || !strings.HasPrefix(r.Binaries[0], want) {
			t.Errorf("suggested %s for binaries %v, want %s", r.Host, r.Binaries, want)
		}
	}
	if !p.Process.AllowExec || p.Process.MaxProcesses >= 128 {
		t.Errorf("suggested process %+v", p.Process)
	}
	// The learning run recorded its sandbox's memory peak: the suggestion
	// limits memory to it with headroom, and the rerun below runs under
	// that limit (its cgroup's).
	if p.Resources.MaxMemoryMB <= 0 {
		t.Errorf("suggested no max_memory_mb: %+v", p.Resources)
	}
	if m := regexp.MustCompile(`Memory: peak (\d+) MiB; max_memory_mb (\d+)`).FindSubmatch(data); m == nil {
		t.Errorf("the suggestion's header does not give the memory peak")
	} else {
		t.Logf("memory peak %s MiB; suggested max_memory_mb %s", m[1], m[2])
	}
	if !strings.Contains(errOut, "pass.test") {
		t.Errorf("suggest did not say that pass.test widens the policy: %s", errOut)
	}

	// The same agent under the suggestion: it works, and nothing is denied.
	run(sugg)
	var second []egress.Event
	for _, ev := range e.events(t) {
		if ev.Sandbox != learnID {
			second = append(second, ev)
		}
	}
	if len(second) == 0 {
		t.Fatal("no audit lines from the run under the suggestion")
	}
	for _, ev := range second {
		if ev.Decision != egress.Allow {
			t.Errorf("under the suggestion: %s %s %s:%d %s", ev.Decision, ev.Kind, ev.Host, ev.Port, ev.Reason)
		}
	}
	t.Logf("learn, suggest and rerun: %s", time.Since(start).Round(time.Millisecond))
}

// TestLearnThroughRuntime: an engine asks for learning mode with the
// io.openshell.learn annotation, which the operator's allow_learn lets
// through; openshell policy suggest then reads that container's run.
// Without allow_learn the annotation is refused at create.
func TestLearnThroughRuntime(t *testing.T) {
	e := newEgressEnv(t)
	wide := `version: "1.0"
name: learn-engine
sandbox:
  filesystem: {allowed_writes: [/tmp]}
  process: {allow_exec: true, max_processes: 64}
  network:
    allowed_egress:
      - {host: allowed.test, ports: [80, 443]}
`
	script := `curl -sS -k -m 5 -o /dev/null https://allowed.test/ && python3 -c "import urllib.request; urllib.request.urlopen('http://pass.test/', timeout=5).read(); print('fetched')"`
	g := inlineSpec(t, e.root, wide, "/bin/sh", "-c", script)
	g.AddAnnotation(runtime.AnnotationLearn, "true")
	bundle := t.TempDir()
	writeBundleSpec(t, bundle, g.Config)
	id := "learn-" + strconv.Itoa(os.Getpid())

	if out, err := runtimeRun(t, e.config, bundle, id); err == nil || !strings.Contains(string(out), "allow_learn") {
		t.Fatalf("learning without allow_learn: %v\n%s", err, out)
	}
	cfg, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	learnCfg := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(learnCfg, append([]byte("allow_learn = true\n"), cfg...), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runtimeRun(t, learnCfg, bundle, id); err != nil || !strings.Contains(string(out), "fetched") {
		t.Fatalf("learning run: %v\n%s", err, out)
	}
	sugg := filepath.Join(t.TempDir(), "suggested.yaml")
	rc, out, errOut := runCmd(t, openshellBin, "policy", "suggest", "--config", learnCfg, id, "-o", sugg)
	if rc != 0 {
		t.Fatalf("policy suggest: %d\n%s\n%s", rc, out, errOut)
	}
	p, err := policy.Load(sugg)
	if err != nil {
		t.Fatalf("the suggestion does not validate: %v", err)
	}
	got := map[string][]string{}
	for _, r := range p.Network.Egress {
		got[r.Host] = r.Binaries
	}
	if len(got) != 2 || !slices.Equal(got["allowed.test"], []string{"/usr/bin/curl"}) || len(got["pass.test"]) != 1 || !strings.HasPrefix(got["pass.test"][0], "/usr/bin/python3") {
		data, _ := os.ReadFile(sugg)
		t.Errorf("suggested egress %v\n%s", got, data)
	}
}
