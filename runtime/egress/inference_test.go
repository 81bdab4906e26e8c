package egress

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	// Every question a credTTL after the last, so that each reaches the
	// keeper (TestCredClientHoldsKeyForTTL tests the holding).
	clock := time.Now()
	c := &credClient{f: child, now: func() time.Time { clock = clock.Add(credTTL); return clock }}
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

// withCA gives g a sandbox CA, as the runtime does at create, and
// returns the pool a sandbox trusting it verifies with.
func withCA(t *testing.T, g *Gateway) *x509.CertPool {
	t.Helper()
	f := filepath.Join(t.TempDir(), "ca.pem")
	certPEM, err := WriteCAFile(f, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	if g.ca, err = LoadCA(f); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	return roots
}

// TestInferenceHTTPS: https://inference.local is served with the
// sandbox's CA, through CONNECT inference.local:443 (the proxy
// variables) and captured 443 (no proxy), as http://inference.local is.
func TestInferenceHTTPS(t *testing.T) {
	llm := &fakellm.Server{}
	up := httptest.NewServer(llm)
	defer up.Close()
	base := up.URL + "/v1"
	g, _, audit := newTestGateway(t, inferencePolicy(base, "    allowed_models: [m]\n"))
	g.cfg.InferenceProviders = []inference.Provider{{Name: "local", BaseURL: base, API: "openai", Auth: "bearer", Credential: "env:K"}}
	g.inference.cred = func(context.Context, string) (string, error) { return "sk-unit-0123456789", nil }
	roots := withCA(t, g)

	proxy := httptest.NewServer(&proxyHandler{g: g})
	defer proxy.Close()
	pu, _ := url.Parse(proxy.URL)
	captured, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer captured.Close()
	go serve(captured, g.handleTLS)

	tlsConfig := &tls.Config{RootCAs: roots}
	clients := map[string]*http.Client{
		"CONNECT": {Transport: &http.Transport{Proxy: http.ProxyURL(pu), TLSClientConfig: tlsConfig}},
		"captured": {Transport: &http.Transport{TLSClientConfig: tlsConfig,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", captured.Addr().String())
			}}},
	}
	for name, c := range clients {
		for _, model := range []string{"m", "m", "other"} {
			req, _ := http.NewRequest(http.MethodPost, "https://inference.local/v1/chat/completions", strings.NewReader(`{"model":"`+model+`","messages":[]}`))
			req.Header.Set("Authorization", "Bearer sandbox-token")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := map[string]int{"m": 200, "other": 403}[model]; resp.StatusCode != want {
				t.Errorf("%s %s: %d %s", name, model, resp.StatusCode, data)
			}
		}
	}
	for _, r := range llm.Requests() {
		if h := r.Header.Get("Authorization"); h != "Bearer sk-unit-0123456789" {
			t.Errorf("upstream Authorization %q", h)
		}
	}
	if n := len(llm.Requests()); n != 4 {
		t.Errorf("%d calls reached the model server, want 4", n)
	}

	// A request for another host may not ride the connection; a gateway
	// without a CA refuses the handshake (no certificate to present).
	c := clients["captured"]
	req, _ := http.NewRequest(http.MethodGet, "https://inference.local/v1/models", nil)
	req.Host = "api.example.com"
	if resp, err := c.Do(req); err != nil || resp.StatusCode != 403 {
		t.Errorf("another Host on inference.local's connection: %v %v", resp, err)
	}
	c.CloseIdleConnections()
	g.ca = nil
	if _, err := c.Get("https://inference.local/v1/models"); err == nil {
		t.Error("a gateway without a CA served https://inference.local")
	}

	g.audit.Close()
	// One connection each way (kept alive), and the one refused.
	conns := map[string]int{}
	for _, e := range readEvents(t, audit) {
		if e.Host == InferenceHost && (e.Kind == "tls" || e.Kind == "connect") {
			conns[e.Decision]++
		}
	}
	if conns[Allow] != 2 || conns[Deny] != 1 {
		t.Errorf("TLS connections to inference.local audited: %v", conns)
	}
	// Each call's own line says the port it came on: 443.
	calls := 0
	for _, e := range readEvents(t, audit) {
		if e.Kind == "inference" {
			calls++
			if e.Port != 443 {
				t.Errorf("an HTTPS call audited on port %d: %+v", e.Port, e)
			}
		}
	}
	if calls != 6 {
		t.Errorf("%d inference calls audited, want 6", calls)
	}
}

// TestReloadRefusesSetEnv: set_env is written into the sandbox process's
// environment at create, so a reload that turns it on or off is refused
// with the reason, not accepted and dropped; a route change reloads.
func TestReloadRefusesSetEnv(t *testing.T) {
	g, _, _ := newTestGateway(t, inferencePolicy("https://api.example.com/v1", ""))
	for _, c := range []struct {
		extra string
		ok    bool
	}{
		{"    allowed_models: [m]\n", true},
		{"    set_env: true\n", false},
	} {
		if err := os.WriteFile(g.cfg.PolicyFile, []byte(inferencePolicy("https://api.example.com/v1", c.extra)), 0o644); err != nil {
			t.Fatal(err)
		}
		err := g.Reload()
		if c.ok && err != nil || !c.ok && (err == nil || !strings.Contains(err.Error(), "inference.set_env")) {
			t.Errorf("reload with %q: %v", c.extra, err)
		}
	}
}
