package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/test/fakellm"
)

// anthropicClient runs in the sandbox and speaks Anthropic's Messages
// API to http://inference.local/v1/messages with a key of its own: a
// buffered call, a streamed one, and two more, the last over the
// policy's rate limit.
const anthropicClient = `
import json, urllib.request, urllib.error
def call(stream=False):
    body = {"model": "claude-test", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    req = urllib.request.Request("http://inference.local/v1/messages", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "x-api-key": "sandbox-own-key", "anthropic-version": "2023-06-01"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
s, b = call()
print("buffered:", s, json.loads(b)["content"][0]["text"] if s == 200 else b, flush=True)
s, b = call(stream=True)
text = "".join(json.loads(l[6:]).get("delta", {}).get("text", "") for l in b.splitlines() if l.startswith("data: "))
print("stream:", s, text, flush=True)
s, b = call()
print("third:", s, flush=True)
s, b = call()
print("limited:", s, json.loads(b)["error"]["type"] if s != 200 else b, flush=True)
`

// TestInferenceAnthropic: a Python client in a runsc sandbox speaks
// Anthropic's Messages API to inference.local. The provider is
// api = "anthropic" with auth = "x-api-key": the model server gets the
// host's key in x-api-key and never the sandbox's own key or an
// Authorization; buffered and streamed answers are relayed and their
// tokens counted in the audit; the policy's rate_limit (3/minute) answers
// the fourth call with 429 in Anthropic's error shape, upstream never
// seeing it.
func TestInferenceAnthropic(t *testing.T) {
	root := debianRoot(t)
	dir := t.TempDir()
	llm, _, keyFile, config, audit := twoLLMs(t, dir, "other-llm.test", "anth", "")
	rewriteFile(t, config, "api = \"openai\"\nauth = \"bearer\"\n", "api = \"anthropic\"\nauth = \"x-api-key\"\n")
	key := randomKey(t)
	if err := os.WriteFile(keyFile, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	pf := writePolicy(t, `version: "1.0"
name: anthropic-it
sandbox:
  filesystem: {allowed_writes: [/tmp]}
  process: {max_processes: 64}
  inference:
    provider: anth
    rate_limit: "3/minute"
`)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, openshellBin, "run", "--config", config, "--runsc", runscBin, "--state-dir", stateDir,
		"--rootfs", root, "--policy", pf, "--", "/usr/bin/python3", "-u", "-c", anthropicClient).CombinedOutput()
	t.Logf("sandbox: %s", out)
	if err != nil {
		t.Fatalf("openshell run: %v", err)
	}
	for _, want := range []string{"buffered: 200 hello from fake anthropic", "stream: 200 hello from fake anthropic", "third: 200", "limited: 429 rate_limit_error"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the sandbox did not print %q", want)
		}
	}
	reqs := llm.Requests()
	if len(reqs) != 3 {
		t.Fatalf("the model server got %d calls, want 3 (the fourth is over the rate limit)", len(reqs))
	}
	for _, r := range reqs {
		if r.Path != "/v1/messages" || r.Header.Get("X-Api-Key") != key || r.Header.Get("Authorization") != "" {
			t.Errorf("the model server got %s with x-api-key %q, Authorization %q", r.Path, r.Header.Get("X-Api-Key"), r.Header.Get("Authorization"))
		}
		if strings.Contains(r.Header.Get("X-Api-Key")+string(r.Body), "sandbox-own-key") {
			t.Error("the sandbox's own key reached the model server")
		}
	}

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
	if len(calls) != 4 {
		t.Fatalf("%d inference lines in the audit, want 4: %+v", len(calls), calls)
	}
	for i, c := range calls[:3] {
		ie := c.Inference
		if c.Decision != egress.Allow || ie.API != "messages" || ie.TokensOut != fakellm.AnthropicOut || ie.CacheReadTokens != fakellm.AnthropicCacheR || ie.Credential == "" {
			t.Errorf("call %d audited as %+v %+v", i, c, ie)
		}
	}
	if last := calls[3]; last.Decision != egress.Deny || !strings.Contains(last.Reason, "rate") {
		t.Errorf("the fourth call audited as %+v", last)
	}
	searchHostForKey(t, key, keyFile, []string{stateDir, audit, dir, filepath.Dir(pf)})
	assertNothingLeft(t, stateDir)
}
