package integration

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/policyhook/modifier"
	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/test/fakellm"
	"github.com/openshell/openshell/test/fakenet"
)

// inferenceEnv is the fake internet with two model servers, llm.test
// (provider a) and llm2.test (provider b), each with its own key file,
// and a runtime configuration naming both (inline policies allowed, for
// the engines).
type inferenceEnv struct {
	*egressEnv
	llm, llm2  *fakellm.Server
	keyA, keyB string
	keyFiles   []string
}

func newInferenceEnv(t *testing.T) *inferenceEnv {
	t.Helper()
	root := debianRoot(t)
	dir := t.TempDir()
	n, err := fakenet.Start(dir, map[string]netip.Addr{"llm.test": fakenet.LLMAddr, "llm2.test": fakenet.LLMAddr2})
	if err != nil {
		t.Fatalf("fake internet: %v", err)
	}
	t.Cleanup(func() { _ = n.Close() })
	e := &inferenceEnv{egressEnv: &egressEnv{net: n, config: filepath.Join(dir, "config.toml"), audit: filepath.Join(dir, "audit"), root: root}}
	if e.llm, err = n.StartLLM(fakenet.LLMAddr); err != nil {
		t.Fatal(err)
	}
	if e.llm2, err = n.StartLLM(fakenet.LLMAddr2); err != nil {
		t.Fatal(err)
	}
	keyDir := filepath.Join(dir, "keys")
	if err := os.Mkdir(keyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	e.keyA, e.keyB = randomKey(t), randomKey(t)
	cfg := fmt.Sprintf("allow_inline_policy = true\n[egress]\ndns_upstream = %q\nuplink_netns = %q\naudit_dir = %q\n", n.DNS.String(), n.Netns, e.audit)
	for _, p := range []struct{ name, host, key string }{{"a", "llm.test", e.keyA}, {"b", "llm2.test", e.keyB}} {
		f := filepath.Join(keyDir, p.name)
		if err := os.WriteFile(f, []byte(p.key+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		e.keyFiles = append(e.keyFiles, f)
		cfg += fmt.Sprintf("[inference.providers.%s]\nbase_url = \"http://%s/v1\"\napi = \"openai\"\nauth = \"bearer\"\ncredential = \"file:%s\"\ncost_per_input_token = 0.000001\ncost_per_output_token = 0.000002\n", p.name, p.host, f)
	}
	if err := os.WriteFile(e.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

// routePolicy routes to provider (a or b), allowing only model.
func routePolicy(name, provider, model string) string {
	return fmt.Sprintf(`version: "1.0"
name: %s
sandbox:
  filesystem: {allowed_writes: [/tmp]}
  process: {max_processes: 64}
  inference:
    provider: %s
    allowed_models: [%s]
    set_env: true
`, name, provider, model)
}

// routeClient calls inference.local every way a sandbox can: the first
// call, then (after a line on stdin) plain HTTP through the proxy,
// HTTPS through the proxy (CONNECT inference.local:443), HTTPS captured
// (no proxy), the URL set_env gave, and another sandbox's model. HTTPS
// is Python's default context: the sandbox's CA is trusted with no flag.
const routeClient = `
import json, os, sys, urllib.request, urllib.error
MODEL, OTHER = sys.argv[1], sys.argv[2]
def call(url, model, proxy=True):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    opener = urllib.request.build_opener() if proxy else urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url + "/chat/completions", data=body, headers={"Content-Type": "application/json", "Authorization": "Bearer " + os.environ.get("OPENAI_API_KEY", "")})
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, json.loads(r.read())["choices"][0]["message"]["content"]
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["error"]["code"]
    except Exception as e:
        return "error", repr(e)[:200]
print("first:", *call("http://inference.local/v1", MODEL), flush=True)
print("paused", flush=True)
sys.stdin.readline()
for name, url, proxy in [("http", "http://inference.local/v1", True), ("https-connect", "https://inference.local/v1", True),
        ("https-captured", "https://inference.local/v1", False), ("set-env", os.environ.get("OPENAI_BASE_URL", "unset"), True)]:
    print(name + ":", *call(url, MODEL, proxy), flush=True)
print("other-model:", *call("http://inference.local/v1", OTHER), flush=True)
`

// TestInferenceTwoSandboxes: two sandboxes with different routes run at
// once; each reaches its own model server with its own provider's key,
// never the other's, over HTTP and HTTPS (the sandbox's CA, no flags),
// and set_env's variables lead there too (the placeholder key is
// stripped).
func TestInferenceTwoSandboxes(t *testing.T) {
	e := newInferenceEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
	defer cancel()
	start := func(name, provider, model, other string) (func(string), func() []string) {
		c := e.runCommand(ctx, writePolicy(t, routePolicy(name, provider, model)), "/usr/bin/python3", "-u", "-c", routeClient, model, other)
		stdin, _ := c.StdinPipe()
		stdout, _ := c.StdoutPipe()
		var errb strings.Builder
		c.Stderr = &errb
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		lines := bufio.NewScanner(stdout)
		first := linesUntil(lines, "paused")
		if want := []string{"first: 200 hello from fake openai"}; strings.Join(first, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s: %q, want %q\n%s", name, first, want, errb.String())
		}
		release := func(s string) { fmt.Fprintln(stdin, s) }
		rest := func() []string {
			out := linesUntil(lines, "")
			if err := c.Wait(); err != nil {
				t.Errorf("%s: %v\n%s", name, err, errb.String())
			}
			return out
		}
		return release, rest
	}
	// Both are up, each has called, before either goes on.
	releaseA, restA := start("route-a", "a", "model-a", "model-b")
	releaseB, restB := start("route-b", "b", "model-b", "model-a")
	releaseB("go")
	releaseA("go")
	want := strings.Join([]string{"http: 200 hello from fake openai", "https-connect: 200 hello from fake openai",
		"https-captured: 200 hello from fake openai", "set-env: 200 hello from fake openai", "other-model: 403 model_not_allowed"}, "\n")
	for name, got := range map[string][]string{"route-a": restA(), "route-b": restB()} {
		if strings.Join(got, "\n") != want {
			t.Errorf("%s said\n%s\nwant\n%s", name, strings.Join(got, "\n"), want)
		}
	}
	for _, s := range []struct {
		name, key, model string
		llm              *fakellm.Server
	}{{"llm.test", e.keyA, "model-a", e.llm}, {"llm2.test", e.keyB, "model-b", e.llm2}} {
		reqs := s.llm.Requests()
		if len(reqs) != 5 {
			t.Errorf("%s got %d calls, want 5", s.name, len(reqs))
		}
		for _, r := range reqs {
			if got := r.Header.Get("Authorization"); got != "Bearer "+s.key {
				t.Errorf("%s got Authorization %q, want its own provider's key", s.name, got)
			}
			if !strings.Contains(string(r.Body), `"model":"`+s.model+`"`) {
				t.Errorf("%s got another sandbox's call: %s", s.name, r.Body)
			}
		}
	}
	// The placeholder never left the gateway.
	for _, r := range append(e.llm.Requests(), e.llm2.Requests()...) {
		if strings.Contains(fmt.Sprint(r.Header), "placeholder") {
			t.Errorf("the placeholder key reached a model server: %v", r.Header)
		}
	}
	var tls int
	for _, ev := range e.events(t) {
		if ev.Host == egress.InferenceHost && (ev.Kind == "tls" || ev.Kind == "connect") && ev.Port == 443 && ev.Decision == egress.Allow {
			tls++
		}
	}
	if tls != 4 {
		t.Errorf("%d TLS connections to inference.local audited, want 4 (two a sandbox)", tls)
	}
	assertNothingLeft(t, stateDir)
}

// engineClient is what the engine tests run: one call to the URL
// set_env gave, and the placeholder key's prefix.
const engineClient = `
import json, os, urllib.request
req = urllib.request.Request(os.environ["OPENAI_BASE_URL"] + "/chat/completions", data=b'{"model":"model-a"}', headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=30) as r:
    print("engine:", r.status, json.loads(r.read())["choices"][0]["message"]["content"], os.environ["OPENAI_API_KEY"][:13])
`

// TestInferenceThroughOpenshellRuntime: the same route under
// openshell-runtime (the OCI CLI an engine calls), the policy inline.
func TestInferenceThroughOpenshellRuntime(t *testing.T) {
	e := newInferenceEnv(t)
	bundle := t.TempDir()
	g := inlineSpec(t, e.root, routePolicy("route-runtime", "a", "model-a"), "/usr/bin/python3", "-c", engineClient)
	g.AddProcessEnv("OPENAI_API_KEY", "sk-from-the-engine")
	writeBundleSpec(t, bundle, g.Config)
	id := "inference-" + strconv.Itoa(os.Getpid())
	data, runErr := runtimeRun(t, e.config, bundle, id)
	if runErr != nil {
		t.Fatalf("openshell-runtime run: %v\n%s", runErr, data)
	}
	if want := "engine: 200 hello from fake openai " + modifier.InferenceOpenAIKey[:13]; !strings.Contains(string(data), want) {
		t.Errorf("missing %q in:\n%s", want, data)
	}
	if reqs := e.llm.Requests(); len(reqs) != 1 || reqs[0].Header.Get("Authorization") != "Bearer "+e.keyA {
		t.Errorf("llm.test got %d calls: %+v", len(reqs), reqs)
	}
	searchHostForKey(t, e.keyA, e.keyFiles[0], []string{runtimeRoot(), e.audit, bundle})
	assertRuntimeClean(t)
}

// TestInferenceThroughCtr: the same route under containerd's shim (ctr
// run with io.openshell.v1), from busybox: its nc speaks HTTP to the
// proxy, with the base URL set_env gave.
func TestInferenceThroughCtr(t *testing.T) {
	e := newInferenceEnv(t)
	c := startContainerd(t)
	body := `{"model":"model-a"}`
	script := fmt.Sprintf(`echo "base=$OPENAI_BASE_URL"; printf 'POST %%s/chat/completions HTTP/1.0\r\nHost: inference.local\r\nContent-Type: application/json\r\nAuthorization: Bearer %%s\r\nContent-Length: %d\r\n\r\n%s' "$OPENAI_BASE_URL" "$OPENAI_API_KEY" | nc -w 10 169.254.213.1 3128`, len(body), body)
	r := c.ctrRun(t, "run", "--rm", "--runtime", "io.openshell.v1", "--runtime-config-path", e.config,
		"--annotation", "io.openshell.policy.inline="+routePolicy("route-ctr", "a", "model-a"), testImage, "inference-ctr", "/bin/sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("ctr run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "base="+modifier.InferenceOpenAIBaseURL) || !strings.Contains(r.stdout, "200 OK") || !strings.Contains(r.stdout, "hello from fake openai") {
		t.Errorf("output:\n%q\n%q", r.stdout, r.stderr)
	}
	if reqs := e.llm.Requests(); len(reqs) != 1 || reqs[0].Header.Get("Authorization") != "Bearer "+e.keyA {
		t.Errorf("llm.test got %d calls: %+v", len(reqs), reqs)
	}
	c.assertClean(t)
	if p := processesMentioning("inference-ctr/gateway.json"); len(p) > 0 {
		t.Errorf("gateway left: %v", p)
	}
}

// linesUntil reads lines up to the one that is stop (not returned), or
// to the end.
func linesUntil(s *bufio.Scanner, stop string) []string {
	var out []string
	for s.Scan() && (stop == "" || s.Text() != stop) {
		out = append(out, s.Text())
	}
	return out
}
