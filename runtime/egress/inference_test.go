package egress

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/openshell/openshell/runtime/inference"
	"github.com/openshell/openshell/test/fakellm"
)

func inferencePolicy(endpoint, extra string) string {
	return testPolicy + "  inference:\n    routing_endpoint: \"" + endpoint + "\"\n" + extra
}

// viaProxy sends a sandbox's request for inference.local through the
// gateway's explicit proxy.
func viaProxy(t *testing.T, g *Gateway, body string) (int, string) {
	t.Helper()
	srv := httptest.NewServer(&proxyHandler{g: g})
	defer srv.Close()
	pu, _ := url.Parse(srv.URL)
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
	req, _ := http.NewRequest(http.MethodPost, "http://inference.local/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer sandbox-token")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

func TestInferenceThroughGateway(t *testing.T) {
	llm := &fakellm.Server{}
	up := httptest.NewServer(llm)
	defer up.Close()
	base := up.URL + "/v1"
	g, _, audit := newTestGateway(t, inferencePolicy(base, "    allowed_models: [m]\n"))
	g.cfg.InferenceProviders = []inference.Provider{{Name: "local", BaseURL: base, API: "openai", Auth: "bearer", Credential: "env:K"}}
	g.inference.cred = func(context.Context, string) (string, error) { return "sk-unit-0123456789", nil }

	if rcode, addrs := query(t, g, "inference.local", dnsmessage.TypeA); rcode != dnsmessage.RCodeSuccess || len(addrs) != 1 || addrs[0] != GatewayAddr.Addr().String() {
		t.Errorf("inference.local: %s %v", rcode, addrs)
	}
	code, body := viaProxy(t, g, `{"model":"m","messages":[]}`)
	if code != 200 || !strings.Contains(body, "fake openai") {
		t.Fatalf("%d %s", code, body)
	}
	if h := llm.Requests()[0].Header; h.Get("Authorization") != "Bearer sk-unit-0123456789" {
		t.Errorf("upstream Authorization %q", h.Get("Authorization"))
	}
	if code, body = viaProxy(t, g, `{"model":"other"}`); code != 403 || !strings.Contains(body, "model_not_allowed") {
		t.Errorf("other model: %d %s", code, body)
	}
	g.audit.Close()
	var calls []Event
	for _, e := range readEvents(t, audit) {
		if e.Kind == "inference" {
			calls = append(calls, e)
		}
		if data, _ := json.Marshal(e); strings.Contains(string(data), "sk-unit") {
			t.Errorf("the key is in the audit log: %s", data)
		}
	}
	if len(calls) != 2 || calls[0].Inference == nil || calls[0].Inference.TokensIn != fakellm.OpenAIPrompt || calls[0].Decision != Allow ||
		calls[1].Decision != Deny || calls[1].Inference.RequestedModel != "other" {
		t.Errorf("inference events %+v", calls)
	}
}

func TestInferenceEndpointHeldToEgressChecks(t *testing.T) {
	llm := &fakellm.Server{}
	up := httptest.NewServer(llm)
	defer up.Close()
	// No provider has this base_url: it is the policy's alone, and a
	// loopback address is never dialled for it.
	g, _, _ := newTestGateway(t, inferencePolicy(up.URL+"/v1", ""))
	code, body := viaProxy(t, g, `{"model":"m"}`)
	if code != 502 || !strings.Contains(body, "loopback") || len(llm.Requests()) != 0 {
		t.Errorf("%d %s", code, body)
	}
}

func TestInferenceNoRoute(t *testing.T) {
	g, up, _ := newTestGateway(t, testPolicy)
	if rcode, _ := query(t, g, "inference.local", dnsmessage.TypeA); rcode != dnsmessage.RCodeNameError {
		t.Errorf("inference.local without a route: %s", rcode)
	}
	for _, q := range up.questions() {
		if strings.Contains(q, "inference") {
			t.Errorf("upstream asked %q", q)
		}
	}
}

func TestCredentialChannel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: credential files must be root-owned")
	}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	if err := os.WriteFile(keyFile, []byte("sk-first-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pf := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pf, []byte(inferencePolicy("https://api.example.com/v1", "")), 0o600); err != nil {
		t.Fatal(err)
	}
	pc := processConfig{Config: Config{PolicyFile: pf, InferenceProviders: []inference.Provider{
		{Name: "routed", BaseURL: "https://api.example.com/v1", API: "openai", Auth: "bearer", Credential: "file:" + keyFile},
		{Name: "other", BaseURL: "https://other.example.com/v1", API: "openai", Auth: "bearer", Credential: "env:OTHER_KEY"},
	}}}
	cmd := exec.Command("/bin/true")
	cmd.Env = []string{"PATH=/bin", "OTHER_KEY=sk-other-0123456789"}
	closer, err := startCredentials(pc, cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	for _, kv := range cmd.Env {
		if strings.HasPrefix(kv, "OTHER_KEY=") {
			t.Errorf("an env: credential stays in the serving process's environment")
		}
	}
	child := cmd.ExtraFiles[len(cmd.ExtraFiles)-1]
	c := &credClient{f: child}
	ctx := context.Background()
	if k, err := c.get(ctx, "routed"); err != nil || k != "sk-first-0123456789" {
		t.Fatalf("get = %q, %v", k, err)
	}
	if err := os.WriteFile(keyFile, []byte("sk-rotated-0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	if k, err := c.get(ctx, "routed"); err != nil || k != "sk-rotated-0123456789" {
		t.Errorf("after rotation get = %q, %v", k, err)
	}
	if k, err := c.get(ctx, "other"); err == nil || k != "" || !strings.Contains(err.Error(), "does not lead to provider other") {
		t.Errorf("a provider the route does not lead to: %q, %v", k, err)
	}
	_ = os.Chmod(keyFile, 0o644)
	if _, err := c.get(ctx, "routed"); err == nil || !strings.Contains(err.Error(), "mode 0644") || strings.Contains(err.Error(), "sk-") {
		t.Errorf("world-readable file: %v", err)
	}
}
