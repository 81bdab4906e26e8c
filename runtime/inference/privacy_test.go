package inference_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/runtime/inference"
	"github.com/openshell/openshell/test/fakellm"
)

const localKey = "sk-local-key-fedcba9876543210"

// privacyEnv is a router with two fake model servers behind it, the
// cloud one (provider "prov", with testKey) and a local one, each
// recording what it received.
type privacyEnv struct {
	cloud, local     *fakellm.Server
	cloudURL, locURL string
	router           *inference.Router
	front            *httptest.Server
	mu               sync.Mutex
	events           []inference.Event
}

type privacyOpts struct {
	api           string // the cloud provider's API (default openai)
	localProvider bool   // the local endpoint is a configured provider's (with localKey)
	localModel    string
	localName     string // the policy's local.provider
	privacy       *policy.Privacy
}

func newPrivacyEnv(t *testing.T, o privacyOpts) *privacyEnv {
	t.Helper()
	e := &privacyEnv{cloud: &fakellm.Server{}, local: &fakellm.Server{}}
	cloud, local := httptest.NewServer(e.cloud), httptest.NewServer(e.local)
	t.Cleanup(cloud.Close)
	t.Cleanup(local.Close)
	e.cloudURL, e.locURL = cloud.URL+"/v1", local.URL+"/v1"
	api, auth := inference.APIOpenAI, inference.AuthBearer
	if o.api == inference.APIAnthropic {
		api, auth = inference.APIAnthropic, inference.AuthAPIKey
	}
	providers := []inference.Provider{{Name: "prov", BaseURL: e.cloudURL, API: api, Auth: auth, Credential: "env:KEY"}}
	if o.localProvider {
		providers = append(providers, inference.Provider{Name: "ollama", BaseURL: e.locURL, API: inference.APIOpenAI, Auth: inference.AuthBearer, Credential: "env:LOCAL"})
	}
	if o.privacy == nil {
		o.privacy = &policy.Privacy{Detectors: policy.PIIDetectors, Action: policy.PrivacyRouteLocal}
	}
	route := &policy.Inference{Provider: "prov", Timeout: 10 * time.Second, Privacy: o.privacy,
		Local: &policy.InferenceLocal{RoutingEndpoint: e.locURL, Provider: o.localName, Model: o.localModel}}
	r := inference.New(inference.Options{
		Route:     route,
		Providers: providers,
		Credential: func(_ context.Context, name string) (string, error) {
			switch name {
			case "prov":
				return testKey, nil
			case "ollama":
				return localKey, nil
			}
			return "", errors.New("no such provider")
		},
		Audit: func(ev *inference.Event) { e.mu.Lock(); e.events = append(e.events, *ev); e.mu.Unlock() },
	})
	t.Cleanup(r.Close)
	e.router = r
	e.front = httptest.NewServer(r)
	t.Cleanup(e.front.Close)
	return e
}

func (e *privacyEnv) post(t *testing.T, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.front.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Anthropic-Version", "2023-06-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		b.WriteString(sc.Text() + "\n")
	}
	return resp.StatusCode, b.String()
}

func (e *privacyEnv) lastEvent(t *testing.T) inference.Event {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.events) == 0 {
		t.Fatal("no audit event")
	}
	return e.events[len(e.events)-1]
}

// only checks that exactly one of the servers got exactly one request,
// and returns it.
func only(t *testing.T, got, idle *fakellm.Server, gotName string) fakellm.Request {
	t.Helper()
	if n := len(idle.Requests()); n != 0 {
		t.Fatalf("the other server received %d requests: %s", n, idle.Requests()[0].Body)
	}
	reqs := got.Requests()
	if len(reqs) != 1 {
		t.Fatalf("the %s server received %d requests, want 1", gotName, len(reqs))
	}
	return reqs[0]
}

const card = "4111 1111 1111 1111"

func TestPrivacyCardRoutesLocal(t *testing.T) {
	e := newPrivacyEnv(t, privacyOpts{})
	status, body := e.post(t, "/v1/chat/completions", `{"model":"gpt-x","messages":[{"role":"user","content":"charge my card `+card+` please"}]}`)
	if status != 200 || !strings.Contains(body, "hello from fake openai") {
		t.Fatalf("%d %s", status, body)
	}
	req := only(t, e.local, e.cloud, "local")
	if !strings.Contains(string(req.Body), card) {
		t.Errorf("the local server got %s, want the content unchanged", req.Body)
	}
	if a := req.Header.Get("Authorization"); a != "" {
		t.Errorf("the local server (no provider has its URL) got Authorization %q", a)
	}
	ev := e.lastEvent(t)
	if ev.Route != inference.RouteLocal || ev.Detected.CreditCard != 1 || ev.Redacted != 0 || ev.Provider != "" || ev.Credential != "" ||
		ev.UpstreamHost != strings.TrimPrefix(strings.TrimSuffix(e.locURL, "/v1"), "http://") || ev.Decision != inference.Allow {
		t.Errorf("event %+v", ev)
	}
	line, _ := json.Marshal(ev)
	if strings.Contains(string(line)+ev.Reason, "1111") {
		t.Errorf("the audit event holds the card: %s %s", line, ev.Reason)
	}
	if !strings.Contains(string(line), `"route":"local","detected":{"credit_card":1}`) || !strings.Contains(ev.Reason, "privacy: credit_card 1 → local route") {
		t.Errorf("the audit event does not name the route and detector: %s; reason %q", line, ev.Reason)
	}
}

func TestPrivacyLocalKeyOnlyForItsProvider(t *testing.T) {
	e := newPrivacyEnv(t, privacyOpts{localProvider: true, localModel: "llama3.2:1b"})
	if status, body := e.post(t, "/v1/chat/completions", `{"model":"gpt-x","messages":[{"role":"user","content":"ssn 123-45-6789"}]}`); status != 200 {
		t.Fatalf("%d %s", status, body)
	}
	req := only(t, e.local, e.cloud, "local")
	if a := req.Header.Get("Authorization"); a != "Bearer "+localKey {
		t.Errorf("the local provider got Authorization %q, want its own key", a)
	}
	var doc map[string]any
	_ = json.Unmarshal(req.Body, &doc)
	ev := e.lastEvent(t)
	if doc["model"] != "llama3.2:1b" || ev.SentModel != "llama3.2:1b" || ev.RequestedModel != "gpt-x" || ev.Provider != "ollama" || ev.Detected.SSN != 1 {
		t.Errorf("model sent %v, event %+v", doc["model"], ev)
	}
}

func TestPrivacyLocalRouteBrokenFailsClosed(t *testing.T) {
	e := newPrivacyEnv(t, privacyOpts{localName: "nosuch"})
	if lt, err := e.router.LocalTarget(); lt == nil || err == nil || !strings.Contains(err.Error(), `the local route: the policy names provider "nosuch"`) {
		t.Errorf("LocalTarget() = %v, %v", lt, err)
	}
	if _, err := e.router.Target(); err != nil {
		t.Errorf("the cloud route: %v", err)
	}
	status, body := e.post(t, "/v1/chat/completions", `{"model":"gpt-x","messages":[{"role":"user","content":"card `+card+`"}]}`)
	if status != 503 || !strings.Contains(body, "route_unavailable") || strings.Contains(body, "1111") {
		t.Fatalf("%d %s", status, body)
	}
	if n := len(e.cloud.Requests()) + len(e.local.Requests()); n != 0 {
		t.Errorf("%d requests went out", n)
	}
	// Content with nothing to hide still goes to the cloud.
	if status, body := e.post(t, "/v1/chat/completions", `{"model":"gpt-x","messages":[{"role":"user","content":"hi"}]}`); status != 200 {
		t.Fatalf("%d %s", status, body)
	}
}

func TestPrivacyRedact(t *testing.T) {
	e := newPrivacyEnv(t, privacyOpts{privacy: &policy.Privacy{Detectors: []string{"email", "phone"}, Action: policy.PrivacyRedact}})
	status, body := e.post(t, "/v1/chat/completions", `{"model":"gpt-x","user":"ops@example.com","messages":[{"role":"assistant","tool_calls":[]},`+
		`{"role":"system","content":"reply to <jane@example.com>"},`+
		`{"role":"user","content":[{"type":"text","text":"call 415-555-2671 or jane@example.com"},{"type":"image_url","image_url":{"url":"https://x/a@b.io"}}]}]}`)
	if status != 200 {
		t.Fatalf("%d %s", status, body)
	}
	req := only(t, e.cloud, e.local, "cloud")
	sent := unescaped(t, req.Body)
	for _, want := range []string{`"reply to <[REDACTED:email]>"`, `"call [REDACTED:phone] or [REDACTED:email]"`, `"user":"ops@example.com"`, `"url":"https://x/a@b.io"`, `{"role":"assistant","tool_calls":[]}`} {
		if !strings.Contains(sent, want) {
			t.Errorf("the cloud got %s, want %s in it", sent, want)
		}
	}
	if strings.Contains(sent, "jane@") || strings.Contains(sent, "555-2671") {
		t.Errorf("the cloud got the content: %s", sent)
	}
	if req.Header.Get("Authorization") != "Bearer "+testKey {
		t.Errorf("the cloud got no key")
	}
	ev := e.lastEvent(t)
	if ev.Route != inference.RouteCloud || ev.Detected != (inference.Detections{Email: 2, Phone: 1}) || ev.Redacted != 3 {
		t.Errorf("event %+v", ev)
	}
}

// unescaped is a JSON body as JSON without HTML escapes (the router's
// encoder writes < as \u003c).
func unescaped(t *testing.T, body []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
	return b.String()
}

func TestPrivacyMixedActions(t *testing.T) {
	p := &policy.Privacy{Detectors: []string{"credit_card", "email"}, Action: policy.PrivacyRouteLocal, Actions: map[string]string{"email": policy.PrivacyRedact}}
	e := newPrivacyEnv(t, privacyOpts{privacy: p})
	// A route_local match sends the whole call, unredacted, to the local
	// route.
	e.post(t, "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"`+card+` a@b.io"}]}`)
	if req := only(t, e.local, e.cloud, "local"); !strings.Contains(string(req.Body), card+" a@b.io") {
		t.Errorf("local got %s", req.Body)
	}
	e.local.Reset()
	e.post(t, "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"a@b.io"}]}`)
	if req := only(t, e.cloud, e.local, "cloud"); !strings.Contains(string(req.Body), "[REDACTED:email]") {
		t.Errorf("cloud got %s", req.Body)
	}
}

func TestPrivacyNoMatchGoesToCloud(t *testing.T) {
	for name, text := range map[string]string{
		"plain":        "What is the capital of France?",
		"luhn-invalid": "my card is 4111 1111 1111 1112",
		"bad-ssn":      "ref 666-45-6789",
	} {
		t.Run(name, func(t *testing.T) {
			e := newPrivacyEnv(t, privacyOpts{})
			if status, body := e.post(t, "/v1/chat/completions", `{"model":"gpt-x","messages":[{"role":"user","content":"`+text+`"}]}`); status != 200 {
				t.Fatalf("%d %s", status, body)
			}
			req := only(t, e.cloud, e.local, "cloud")
			if !strings.Contains(string(req.Body), text) {
				t.Errorf("the cloud got %s", req.Body)
			}
			if ev := e.lastEvent(t); ev.Route != inference.RouteCloud || ev.Detected != (inference.Detections{}) || ev.Provider != "prov" {
				t.Errorf("event %+v", ev)
			}
		})
	}
}

// TestPrivacyContentFields: the detectors read each API's message
// contents, and nothing else of a request.
func TestPrivacyContentFields(t *testing.T) {
	for _, tc := range []struct {
		name, path, body string
		local            bool
	}{
		{"chat-string", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"` + card + `"}]}`, true},
		{"chat-part", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"` + card + `"}]}]}`, true},
		{"chat-tool", "/v1/chat/completions", `{"model":"m","messages":[{"role":"tool","tool_call_id":"1","content":"` + card + `"}]}`, true},
		{"chat-escaped", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"\u0034111111111111111"}]}`, true},
		{"model-name", "/v1/chat/completions", `{"model":"` + strings.ReplaceAll(card, " ", "") + `","messages":[{"role":"user","content":"hi"}]}`, false},
		{"other-fields", "/v1/chat/completions", `{"model":"m","user":"` + card + `","metadata":{"x":"a@b.io"},"messages":[{"role":"user","name":"a@b.io","content":"hi"}]}`, false},
		{"completions", "/v1/completions", `{"model":"m","prompt":"` + card + `"}`, true},
		{"completions-list", "/v1/completions", `{"model":"m","prompt":["hi","` + card + `"]}`, true},
		{"responses-input", "/v1/responses", `{"model":"m","input":"` + card + `"}`, true},
		{"responses-items", "/v1/responses", `{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"` + card + `"}]}]}`, true},
		{"responses-instructions", "/v1/responses", `{"model":"m","instructions":"user card ` + card + `","input":"hi"}`, true},
		{"embeddings", "/v1/embeddings", `{"model":"m","input":["a","` + card + `"]}`, true},
		{"embeddings-tokens", "/v1/embeddings", `{"model":"m","input":[4111111111111111]}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newPrivacyEnv(t, privacyOpts{})
			if status, body := e.post(t, tc.path, tc.body); status != 200 {
				t.Fatalf("%d %s", status, body)
			}
			if tc.local {
				only(t, e.local, e.cloud, "local")
			} else {
				only(t, e.cloud, e.local, "cloud")
			}
		})
	}
}

func TestPrivacyAnthropic(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		local      bool
	}{
		{"system", `{"model":"c","max_tokens":5,"system":"the user's ssn is 123-45-6789","messages":[{"role":"user","content":"hi"}]}`, true},
		{"system-blocks", `{"model":"c","max_tokens":5,"system":[{"type":"text","text":"ssn 123-45-6789"}],"messages":[{"role":"user","content":"hi"}]}`, true},
		{"content-block", `{"model":"c","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":"ssn 123-45-6789"}]}]}`, true},
		{"tool-result", `{"model":"c","max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"ssn 123-45-6789"}]}]}`, true},
		{"metadata", `{"model":"c","max_tokens":5,"metadata":{"user_id":"123-45-6789"},"messages":[{"role":"user","content":"hi"}]}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newPrivacyEnv(t, privacyOpts{api: inference.APIAnthropic})
			if status, body := e.post(t, "/v1/messages", tc.body); status != 200 || !strings.Contains(body, "message") {
				t.Fatalf("%d %s", status, body)
			}
			if tc.local {
				only(t, e.local, e.cloud, "local")
			} else {
				only(t, e.cloud, e.local, "cloud")
			}
		})
	}
}

func TestPrivacyLocalStream(t *testing.T) {
	e := newPrivacyEnv(t, privacyOpts{})
	status, body := e.post(t, "/v1/chat/completions", `{"model":"gpt-x","stream":true,"messages":[{"role":"user","content":"mail jane@example.com"}]}`)
	if status != 200 || !strings.Contains(body, `"content":"openai"`) || !strings.HasSuffix(strings.TrimSpace(body), "data: [DONE]") {
		t.Fatalf("%d %s", status, body)
	}
	only(t, e.local, e.cloud, "local")
	if ev := e.lastEvent(t); ev.Route != inference.RouteLocal || !ev.Stream || ev.TokensOut == 0 || ev.Detected.Email != 1 {
		t.Errorf("event %+v", ev)
	}
}
