package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/test/fakellm"
	"github.com/openshell/openshell/test/fakenet"
)

// keyPrefix starts every key the inference test makes: the sandbox looks
// for it everywhere it can read (it is never given a key).
const keyPrefix = "sk-openshell-it-"

func randomKey(t *testing.T) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return keyPrefix + hex.EncodeToString(b)
}

// twoLLMs starts a fake internet with a fake model server at llm.test
// and another at host2, and writes a runtime configuration whose one
// inference provider, llm.test, has a key file in a private directory,
// extra appended to its table. The caller writes the key:
// TestInferenceRouting's ends in a newline, which the credential reader
// must trim.
func twoLLMs(t *testing.T, dir, host2, provider, extra string) (llm, llm2 *fakellm.Server, keyFile, config, audit string) {
	t.Helper()
	n, err := fakenet.Start(dir, map[string]netip.Addr{"llm.test": fakenet.LLMAddr, host2: fakenet.LLMAddr2})
	if err != nil {
		t.Fatalf("fake internet: %v", err)
	}
	t.Cleanup(func() { _ = n.Close() })
	if llm, err = n.StartLLM(fakenet.LLMAddr); err != nil {
		t.Fatal(err)
	}
	if llm2, err = n.StartLLM(fakenet.LLMAddr2); err != nil {
		t.Fatal(err)
	}
	keyDir := filepath.Join(dir, "keys")
	if err := os.Mkdir(keyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	keyFile = filepath.Join(keyDir, "llm")
	audit = filepath.Join(dir, "audit")
	config = filepath.Join(dir, "config.toml")
	cfg := fmt.Sprintf(`[egress]
dns_upstream = %q
uplink_netns = %q
audit_dir = %q
[inference.providers.%s]
base_url = "http://llm.test/v1"
api = "openai"
auth = "bearer"
credential = "file:%s"
%s`, n.DNS.String(), n.Netns, audit, provider, keyFile, extra)
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return llm, llm2, keyFile, config, audit
}

// rewriteFile replaces old (which must be there) with new in file.
func rewriteFile(t *testing.T, file, old, new string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), old) {
		t.Fatalf("%s has no %q", file, old)
	}
	if err := os.WriteFile(file, []byte(strings.Replace(string(data), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// inferenceClient runs in the sandbox, knowing only http://inference.local/v1.
const inferenceClient = `
import json, os, sys, urllib.request, urllib.error
def call(model, stream=False, proxy=True):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    opener = urllib.request.build_opener() if proxy else urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request("http://inference.local/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer sandbox-own-token", "x-api-key": "sandbox-own-key"})
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
def code(b):
    try:
        return json.loads(b)["error"]["code"]
    except Exception:
        return b[:200].replace("\n", " ")
s, b = call("gpt-test")
print("buffered:", s, json.loads(b)["choices"][0]["message"]["content"] if s == 200 else b, flush=True)
s, b = call("gpt-test", stream=True, proxy=False)
deltas = [json.loads(l[6:]) for l in b.splitlines() if l.startswith("data: {")]
print("stream:", s, "".join(d["choices"][0]["delta"].get("content", "") for d in deltas if d.get("choices")), "done" if "data: [DONE]" in b else "cut", flush=True)
s, b = call("forbidden-model")
print("forbidden:", s, code(b), flush=True)
print("paused", flush=True)
sys.stdin.readline()
s, b = call("gpt-test")
print("rotated:", s, flush=True)
s, b = call("gpt-test")
print("budget:", s, code(b), flush=True)
# The prefix is put together here, so that this program's own text (in
# /proc/1/cmdline) does not hold it.
needle = "sk-openshell" + "-it-"
found = []
for k, v in os.environ.items():
    if needle in v:
        found.append("env " + k)
for top in ["/"]:
    for dirpath, dirs, files in os.walk(top):
        if dirpath == "/proc":
            dirs[:] = [d for d in dirs if d.isdigit() or d == "self"]
        elif dirpath.startswith("/proc/"):
            dirs[:] = []
            files = [f for f in files if f in ("environ", "cmdline", "status")]
        if dirpath.startswith("/sys") or dirpath.startswith("/dev"):
            dirs[:] = []
            continue
        for f in files:
            p = os.path.join(dirpath, f)
            try:
                if os.path.islink(p) or os.path.getsize(p) > (4 << 20) and not p.startswith("/proc"):
                    continue
                with open(p, "rb") as fh:
                    if needle.encode() in fh.read(4 << 20):
                        found.append(p)
            except Exception:
                pass
print("key-found:", found, flush=True)
`

func TestInferenceRouting(t *testing.T) {
	root := debianRoot(t)
	dir := t.TempDir()
	llm, llm2, keyFile, config, audit := twoLLMs(t, dir, "llm2.test", "fake", "cost_per_input_token = 0.000001\ncost_per_output_token = 0.000002\n")
	key := randomKey(t)
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Tokens per call: 18; the budget lets three calls start.
	pf := writePolicy(t, `version: "1.0"
name: inference-it
sandbox:
  filesystem: {allowed_writes: [/tmp]}
  process: {max_processes: 64}
  inference:
    routing_endpoint: "http://llm.test/v1"
    allowed_models: [gpt-test]
    token_budget: 50
`)
	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, openshellBin, "run", "--config", config, "--runsc", runscBin, "--state-dir", stateDir,
		"--rootfs", root, "--policy", pf, "--", "/usr/bin/python3", "-u", "-c", inferenceClient)
	stdin, _ := c.StdinPipe()
	stdout, _ := c.StdoutPipe()
	var errb bytes.Buffer
	c.Stderr = &errb
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	out := linesUntil(lines, "paused")
	t.Logf("sandbox: %q", out)
	want := []string{"buffered: 200 hello from fake openai", "stream: 200 hello from fake openai done", "forbidden: 403 model_not_allowed"}
	if strings.Join(out, "\n") != strings.Join(want, "\n") {
		t.Errorf("sandbox said\n%s\nwant\n%s\n%s", strings.Join(out, "\n"), strings.Join(want, "\n"), errb.String())
	}
	// The model server got the host's key, and never the sandbox's own.
	reqs := llm.Requests()
	if len(reqs) != 2 {
		t.Errorf("model server got %d requests, want 2", len(reqs))
	}
	for _, r := range reqs {
		if r.Header.Get("Authorization") != "Bearer "+key {
			t.Errorf("model server got Authorization %q", r.Header.Get("Authorization"))
		}
		if strings.Contains(fmt.Sprint(r.Header), "sandbox-own") {
			t.Errorf("the sandbox's own credentials reached the model server: %v", r.Header)
		}
	}
	// While it runs: the key is nowhere on the host but its file.
	searchHostForKey(t, key, keyFile, []string{stateDir, audit, dir, filepath.Dir(pf)})

	// Rotation: the next call past the second the gateway holds a key
	// (egress.credTTL) carries the new key.
	key2 := randomKey(t)
	if err := os.WriteFile(keyFile, []byte(key2), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	fmt.Fprintln(stdin, "go")
	out = waitRest(t, c, lines, &errb)
	t.Logf("sandbox: %q", out)
	want = []string{"rotated: 200", "budget: 429 token_budget_exceeded", "key-found: []"}
	if strings.Join(out, "\n") != strings.Join(want, "\n") {
		t.Errorf("sandbox said\n%s\nwant\n%s", strings.Join(out, "\n"), strings.Join(want, "\n"))
	}
	if reqs := llm.Requests(); len(reqs) != 3 || reqs[2].Header.Get("Authorization") != "Bearer "+key2 {
		t.Errorf("after rotation: %d requests, last Authorization %q", len(reqs), reqs[len(reqs)-1].Header.Get("Authorization"))
	}
	searchHostForKey(t, key2, keyFile, []string{stateDir, audit, dir, filepath.Dir(pf)})

	// The audit log has one inference line per call, and openshell
	// audit shows them.
	var calls []egress.Event
	files, _ := filepath.Glob(filepath.Join(audit, "*.jsonl"))
	for _, f := range files {
		_ = egress.ReadAuditLog(f, func(e *egress.Event) error {
			if e.Kind == "inference" {
				calls = append(calls, *e)
			}
			return nil
		})
	}
	var tokens int64
	for _, e := range calls {
		if e.Inference != nil {
			tokens += e.Inference.TokensIn + e.Inference.TokensOut
		}
	}
	if len(calls) != 5 || tokens != 3*(fakellm.OpenAIPrompt+fakellm.OpenAICompletion) {
		t.Errorf("%d inference events, %d tokens: %+v", len(calls), tokens, calls)
	}
	view, _ := exec.Command(openshellBin, "audit", "--dir", audit).CombinedOutput()
	if !strings.Contains(string(view), "inference") || !strings.Contains(string(view), "chat_completions gpt-test: 11 in, 7 out") {
		t.Errorf("openshell audit:\n%s", view)
	}
	usage, err := exec.Command(openshellBin, "inference", "usage", "--dir", audit).CombinedOutput()
	t.Logf("openshell inference usage:\n%s", usage)
	if err != nil || !strings.Contains(string(usage), "54") {
		t.Errorf("openshell inference usage: %v\n%s", err, usage)
	}

	// An endpoint no provider has: no key goes with the call.
	pf2 := writePolicy(t, "version: \"1.0\"\nsandbox:\n  inference: {routing_endpoint: \"http://llm2.test/v1\"}\n")
	ctx2, cancel2 := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel2()
	data, err := exec.CommandContext(ctx2, openshellBin, "run", "--config", config, "--runsc", runscBin, "--state-dir", stateDir,
		"--rootfs", root, "--policy", pf2, "--", "/usr/bin/python3", "-c",
		`import urllib.request; print(urllib.request.urlopen(urllib.request.Request("http://inference.local/v1/chat/completions", data=b'{"model":"x"}', headers={"Content-Type": "application/json"}), timeout=30).status)`).CombinedOutput()
	if err != nil || strings.TrimSpace(string(data)) != "200" {
		t.Errorf("no-provider route: %v %s", err, data)
	}
	if reqs := llm2.Requests(); len(reqs) != 1 || reqs[0].Header.Get("Authorization") != "" {
		t.Errorf("no-provider route: %d requests, headers %v", len(reqs), reqs)
	}
	assertNothingLeft(t, stateDir)
}

// searchHostForKey fails when key is found anywhere under dirs, in any
// process's environment or command line, but in keyFile.
func searchHostForKey(t *testing.T, key, keyFile string, dirs []string) {
	t.Helper()
	needle := []byte(key)
	check := func(p string) {
		if p == keyFile {
			return
		}
		f, err := os.Open(p)
		if err != nil {
			return
		}
		defer f.Close()
		data, _ := io.ReadAll(io.LimitReader(f, 64<<20))
		if bytes.Contains(data, needle) {
			t.Errorf("the key is in %s", p)
		}
	}
	for _, d := range dirs {
		_ = filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err == nil && e.Type().IsRegular() {
				check(p)
			}
			return nil
		})
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		check(filepath.Join(p, "environ"))
		check(filepath.Join(p, "cmdline"))
	}
}
