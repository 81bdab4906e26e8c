package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/runtime/inference"
)

// privacyClient runs in the sandbox: one call with a card number in it,
// one without, both to http://inference.local/v1.
const privacyClient = `
import json, urllib.request
def call(text):
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": text}]}
    req = urllib.request.Request("http://inference.local/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read())["choices"][0]["message"]["content"]
print("card:", *call("charge 4111 1111 1111 1111 for the order"), flush=True)
print("plain:", *call("what is the capital of France?"), flush=True)
`

// privacyPolicy routes calls whose messages hold personal data to the
// local model server, the rest to the cloud provider.
const privacyPolicy = `version: "1.0"
name: privacy-it
sandbox:
  filesystem: {allowed_writes: [/tmp]}
  process: {max_processes: 64}
  inference:
    provider: cloud
    local: {routing_endpoint: "http://local-llm.test/v1", model: local-model}
    privacy: {detectors: [ssn, credit_card, email, phone], action: route_local}
`

// TestInferencePrivacy: a Python client in a runsc sandbox calls
// inference.local; the call holding a Luhn-valid card number reaches the
// local model server only (with no key: no provider has its URL), the
// other the cloud one (with the host's key), and the audit log names the
// route and the detector, never the number.
func TestInferencePrivacy(t *testing.T) {
	testInferencePrivacy(t, func(root, config string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
		defer cancel()
		return exec.CommandContext(ctx, openshellBin, "run", "--config", config, "--runsc", runscBin, "--state-dir", stateDir,
			"--rootfs", root, "--policy", writePolicy(t, privacyPolicy), "--", "/usr/bin/python3", "-u", "-c", privacyClient).CombinedOutput()
	})
	assertNothingLeft(t, stateDir)
}

// TestInferencePrivacyThroughOpenshellRuntime: the same privacy route
// under openshell-runtime, the policy inline in the bundle's spec.
func TestInferencePrivacyThroughOpenshellRuntime(t *testing.T) {
	testInferencePrivacy(t, func(root, config string) ([]byte, error) {
		bundle := t.TempDir()
		writeBundleSpec(t, bundle, inlineSpec(t, root, privacyPolicy, "/usr/bin/python3", "-u", "-c", privacyClient).Config)
		return runtimeRun(t, config, bundle, "privacy-"+strconv.Itoa(os.Getpid()))
	})
	assertRuntimeClean(t)
}

// testInferencePrivacy runs privacyClient under privacyPolicy with run
// (given the root file system and the runtime's config) and checks where
// each call went and what the audit log says of them.
func testInferencePrivacy(t *testing.T, run func(root, config string) ([]byte, error)) {
	t.Helper()
	root := debianRoot(t)
	dir := t.TempDir()
	cloud, local, keyFile, config, audit := twoLLMs(t, dir, "local-llm.test", "cloud", "")
	key := randomKey(t)
	if err := os.WriteFile(keyFile, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	// The engines take the policy inline, which the operator allows.
	rewriteFile(t, config, "[egress]\n", "allow_inline_policy = true\n[egress]\n")
	out, err := run(root, config)
	t.Logf("sandbox: %s", out)
	if err != nil || !strings.Contains(string(out), "card: 200 hello from fake openai") || !strings.Contains(string(out), "plain: 200 hello from fake openai") {
		t.Fatalf("sandbox: %v\n%s", err, out)
	}

	lr, cr := local.Requests(), cloud.Requests()
	if len(lr) != 1 || len(cr) != 1 {
		t.Fatalf("the local server got %d requests, the cloud %d; want 1 each", len(lr), len(cr))
	}
	if b := string(lr[0].Body); !strings.Contains(b, "4111 1111 1111 1111") || !strings.Contains(b, `"model":"local-model"`) {
		t.Errorf("the local server got %s", b)
	}
	if a := lr[0].Header.Get("Authorization"); a != "" {
		t.Errorf("the local server got Authorization %q: the cloud's key went to another URL", a)
	}
	if b := string(cr[0].Body); strings.Contains(b, "4111") || !strings.Contains(b, "capital of France") {
		t.Errorf("the cloud server got %s", b)
	}
	if a := cr[0].Header.Get("Authorization"); a != "Bearer "+key {
		t.Errorf("the cloud server got Authorization %q", a)
	}

	var calls []egress.Event
	files, _ := filepath.Glob(filepath.Join(audit, "*.jsonl"))
	for _, f := range files {
		raw, _ := os.ReadFile(f)
		if strings.Contains(string(raw), "4111") {
			t.Errorf("the audit log %s holds the card number", f)
		}
		_ = egress.ReadAuditLog(f, func(e *egress.Event) error {
			if e.Kind == "inference" {
				calls = append(calls, *e)
			}
			return nil
		})
	}
	if len(calls) != 2 || calls[0].Inference.Route != inference.RouteLocal || calls[0].Inference.Detected.CreditCard != 1 ||
		calls[1].Inference.Route != inference.RouteCloud || calls[1].Inference.Detected != (inference.Detections{}) {
		t.Errorf("inference events: %+v", calls)
	}
	view, _ := exec.Command(openshellBin, "audit", "--dir", audit).CombinedOutput()
	t.Logf("openshell audit:\n%s", view)
	if !strings.Contains(string(view), "privacy: credit_card 1 → local route") {
		t.Errorf("openshell audit:\n%s", view)
	}
}
