package egress

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openshell/openshell/runtime/inference"
	"github.com/openshell/openshell/test/fakellm"
)

// TestInferencePrivacyThroughGateway: a call with a card number goes to
// the local route; the audit line says so, names the detector and holds
// nothing of the content.
func TestInferencePrivacyThroughGateway(t *testing.T) {
	cloud, local := &fakellm.Server{}, &fakellm.Server{}
	cu, lu := httptest.NewServer(cloud), httptest.NewServer(local)
	defer cu.Close()
	defer lu.Close()
	g, _, audit := newTestGateway(t, inferencePolicy(cu.URL+"/v1", "    local: {routing_endpoint: \""+lu.URL+"/v1\"}\n"+
		"    privacy: {detectors: [credit_card, email], action: route_local}\n"))
	g.cfg.InferenceProviders = []inference.Provider{
		{Name: "cloud", BaseURL: cu.URL + "/v1", API: "openai", Auth: "bearer", Credential: "env:K"},
		{Name: "vllm", BaseURL: lu.URL + "/v1", API: "openai", Auth: "none"},
	}
	g.inference.cred = func(_ context.Context, name string) (string, error) { return "sk-" + name + "-0123456789", nil }

	if code, body := viaProxy(t, g, `{"model":"m","messages":[{"role":"user","content":"card 4111-1111-1111-1111"}]}`); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	if code, body := viaProxy(t, g, `{"model":"m","messages":[{"role":"user","content":"hello"}]}`); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	if len(local.Requests()) != 1 || len(cloud.Requests()) != 1 || !strings.Contains(string(cloud.Requests()[0].Body), "hello") {
		t.Fatalf("local got %d, cloud %d", len(local.Requests()), len(cloud.Requests()))
	}
	if h := local.Requests()[0].Header.Get("Authorization"); h != "" {
		t.Errorf("the local route (auth none) got Authorization %q", h)
	}
	g.audit.Close()
	raw, err := os.ReadFile(audit)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "1111") {
		t.Errorf("the audit log holds the card number:\n%s", raw)
	}
	var calls []Event
	for _, e := range readEvents(t, audit) {
		if e.Kind == "inference" {
			calls = append(calls, e)
		}
	}
	if len(calls) != 2 || calls[0].Inference.Route != inference.RouteLocal || calls[0].Inference.Detected.CreditCard != 1 ||
		calls[0].Inference.Provider != "vllm" || !strings.Contains(calls[0].Reason, "privacy: credit_card 1 → local route") ||
		calls[1].Inference.Route != inference.RouteCloud || calls[1].Inference.Detected != (inference.Detections{}) {
		t.Errorf("inference events %+v", calls)
	}
}

// TestCredentialForLocalRoute: the keeper hands over the local route's
// provider's key as it does the cloud route's, and no other.
func TestCredentialForLocalRoute(t *testing.T) {
	pf := filepath.Join(t.TempDir(), "policy.yaml")
	pol := inferencePolicy("https://api.example.com/v1", "    local: {routing_endpoint: \"http://10.0.0.5:11434/v1\"}\n    privacy: {detectors: [ssn], action: route_local}\n")
	if err := os.WriteFile(pf, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	providers := []inference.Provider{
		{Name: "cloud", BaseURL: "https://api.example.com/v1", API: "openai", Auth: "bearer", Credential: "env:CLOUD"},
		{Name: "ollama", BaseURL: "http://10.0.0.5:11434/v1", API: "openai", Auth: "bearer", Credential: "env:LOCAL"},
		{Name: "other", BaseURL: "https://other.example.com/v1", API: "openai", Auth: "bearer", Credential: "env:OTHER"},
	}
	getenv := func(k string) string { return "sk-" + strings.ToLower(k) + "-0123456789" }
	cache := &policyCache{file: pf}
	for name, want := range map[string]string{"cloud": "sk-cloud-0123456789", "ollama": "sk-local-0123456789", "other": ""} {
		k, err := credentialFor(name, true, cache, providers, getenv)
		if k != want || (want == "") != (err != nil) {
			t.Errorf("credentialFor(%s) = %q, %v; want %q", name, k, err, want)
		}
	}
	// The keeper parses the policy once, and again when it changes: a
	// reload that drops the local route stops its key at once.
	if err := os.WriteFile(pf, []byte(inferencePolicy("https://api.example.com/v1", "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if k, err := credentialFor("ollama", true, cache, providers, getenv); err == nil || k != "" {
		t.Errorf("after the local route was dropped: %q, %v", k, err)
	}
	if k, err := credentialFor("cloud", true, cache, providers, getenv); err != nil || k != "sk-cloud-0123456789" {
		t.Errorf("cloud after the change: %q, %v", k, err)
	}
}

// The keeper's cached policy costs a stat per call, not a parse.
func BenchmarkCredentialFor(b *testing.B) {
	pf := filepath.Join(b.TempDir(), "policy.yaml")
	if err := os.WriteFile(pf, []byte(inferencePolicy("https://api.example.com/v1", "")), 0o600); err != nil {
		b.Fatal(err)
	}
	providers := []inference.Provider{{Name: "cloud", BaseURL: "https://api.example.com/v1", API: "openai", Auth: "bearer", Credential: "env:CLOUD"}}
	getenv := func(string) string { return "sk-0123456789" }
	for _, fresh := range []bool{false, true} {
		b.Run(map[bool]string{false: "cached", true: "parsed each call"}[fresh], func(b *testing.B) {
			cache := &policyCache{file: pf}
			for b.Loop() {
				if fresh {
					cache = &policyCache{file: pf}
				}
				if _, err := credentialFor("cloud", true, cache, providers, getenv); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
