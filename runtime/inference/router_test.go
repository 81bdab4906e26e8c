package inference_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
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

const testKey = "sk-host-key-0123456789abcdef"

// env is a fake model server, a router in front of it, and what the
// router audited.
type env struct {
	llm    *fakellm.Server
	up     *httptest.Server
	router *inference.Router
	front  *httptest.Server
	mu     sync.Mutex
	events []inference.Event
}

func newEnv(t *testing.T, api string, route func(base string) *policy.Inference) *env {
	t.Helper()
	e := &env{llm: &fakellm.Server{}}
	e.up = httptest.NewServer(e.llm)
	t.Cleanup(e.up.Close)
	base := e.up.URL + "/v1"
	auth := inference.AuthBearer
	if api == inference.APIAnthropic {
		auth = inference.AuthAPIKey
	}
	providers := []inference.Provider{{Name: "prov", BaseURL: base, API: api, Auth: auth, Credential: "env:KEY",
		Headers: map[string]string{"OpenAI-Organization": "org-host"}, CostPerInputToken: 0.001, CostPerOutputToken: 0.002}}
	r := route(base)
	if r.Timeout == 0 {
		r.Timeout = 10 * time.Second
	}
	e.router = inference.New(inference.Options{
		Route:     r,
		Providers: providers,
		Credential: func(_ context.Context, name string) (string, error) {
			if name != "prov" {
				return "", errors.New("no such provider")
			}
			return testKey, nil
		},
		Audit: func(ev *inference.Event) { e.mu.Lock(); e.events = append(e.events, *ev); e.mu.Unlock() },
	})
	e.front = httptest.NewServer(e.router)
	t.Cleanup(e.front.Close)
	return e
}

func endpoint(base string) *policy.Inference { return &policy.Inference{RoutingEndpoint: base} }

// post sends what a sandbox would, with its own credentials that must
// never arrive.
func (e *env) post(t *testing.T, path, body string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.front.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sandbox-own-token")
	req.Header.Set("X-Api-Key", "sandbox-own-key")
	req.Header.Set("Cookie", "session=sandbox")
	req.Header.Set("Anthropic-Version", "2023-06-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp, string(data)
}

func (e *env) lastEvent(t *testing.T) inference.Event {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.events) == 0 {
		t.Fatal("no audit event")
	}
	return e.events[len(e.events)-1]
}

func (e *env) upstreamBody(t *testing.T) map[string]any {
	t.Helper()
	reqs := e.llm.Requests()
	if len(reqs) == 0 {
		t.Fatal("the model server got nothing")
	}
	var m map[string]any
	if err := json.Unmarshal(reqs[len(reqs)-1].Body, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestChatKeyAttachedClientCredentialsDropped(t *testing.T) {
	e := newEnv(t, inference.APIOpenAI, endpoint)
	resp, body := e.post(t, "/v1/chat/completions", `{"model":"gpt-x","messages":[{"role":"user","content":"hi"}]}`)
	if resp.StatusCode != 200 || !strings.Contains(body, "hello from fake openai") {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	h := e.llm.Requests()[0].Header
	if got := h.Get("Authorization"); got != "Bearer "+testKey {
		t.Errorf("upstream Authorization %q, want the host key", got)
	}
	for _, k := range []string{"X-Api-Key", "Cookie"} {
		if h.Get(k) != "" {
			t.Errorf("the sandbox's %s reached the model server: %q", k, h.Get(k))
		}
	}
	if h.Get("Openai-Organization") != "org-host" {
		t.Errorf("provider header missing: %v", h)
	}
	ev := e.lastEvent(t)
	want := inference.Event{API: "chat_completions", Provider: "prov", UpstreamHost: strings.TrimPrefix(e.up.URL, "http://"), Credential: "env:KEY",
		RequestedModel: "gpt-x", SentModel: "gpt-x", ReportedModel: "gpt-x", Status: 200,
		TokensIn: fakellm.OpenAIPrompt, TokensOut: fakellm.OpenAICompletion, CacheReadTokens: fakellm.OpenAICached, Decision: inference.Allow}
	want.CostUSD = float64(want.TokensIn)*0.001 + float64(want.TokensOut)*0.002
	got := ev
	got.LatencyMS, got.TTFBMS, got.BytesUp, got.BytesDown = 0, 0, 0, 0
	if got != want {
		t.Errorf("audit\n got %+v\nwant %+v", got, want)
	}
	if strings.Contains(ev.Reason, testKey) {
		t.Error("the key is in the audit reason")
	}
}

// sse reads a streamed answer's data lines as they arrive.
func sse(t *testing.T, url, body string) (lines []string, firstAfter time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			if len(lines) == 0 {
				firstAfter = time.Since(start)
			}
			lines = append(lines, d)
		}
	}
	return lines, firstAfter
}

func TestChatStreamCountsUsageItAskedFor(t *testing.T) {
	e := newEnv(t, inference.APIOpenAI, endpoint)
	lines, _ := sse(t, e.front.URL+"/v1/chat/completions", `{"model":"m","stream":true,"messages":[]}`)
	if n := len(lines); n != 5 || lines[4] != "[DONE]" {
		t.Fatalf("client got %d lines: %q", n, lines)
	}
	for _, l := range lines {
		if strings.Contains(l, `"usage"`) {
			t.Errorf("the usage chunk the router asked for reached a client that did not: %s", l)
		}
	}
	so, _ := e.upstreamBody(t)["stream_options"].(map[string]any)
	if so["include_usage"] != true {
		t.Errorf("upstream stream_options %v", so)
	}
	if ev := e.lastEvent(t); ev.TokensIn != fakellm.OpenAIPrompt || ev.TokensOut != fakellm.OpenAICompletion || !ev.Stream || ev.Reason != "" {
		t.Errorf("audit %+v", ev)
	}
	// A client that asked gets the chunk.
	lines, _ = sse(t, e.front.URL+"/v1/chat/completions", `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`)
	if len(lines) != 6 || !strings.Contains(lines[4], `"prompt_tokens":11`) {
		t.Errorf("client that asked for usage got %q", lines)
	}
}

func TestAnthropicMessages(t *testing.T) {
	e := newEnv(t, inference.APIAnthropic, endpoint)
	resp, body := e.post(t, "/v1/messages", `{"model":"claude-x","max_tokens":5,"messages":[]}`)
	if resp.StatusCode != 200 || !strings.Contains(body, "fake anthropic") {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	h := e.llm.Requests()[0].Header
	if h.Get("X-Api-Key") != testKey || h.Get("Authorization") != "" || h.Get("Anthropic-Version") != "2023-06-01" {
		t.Errorf("upstream headers %v", h)
	}
	wantIn := int64(fakellm.AnthropicIn + fakellm.AnthropicCacheW + fakellm.AnthropicCacheR)
	ev := e.lastEvent(t)
	if ev.TokensIn != wantIn || ev.TokensOut != fakellm.AnthropicOut || ev.CacheReadTokens != fakellm.AnthropicCacheR || ev.CacheWriteTokens != fakellm.AnthropicCacheW {
		t.Errorf("buffered audit %+v", ev)
	}
	lines, _ := sse(t, e.front.URL+"/v1/messages", `{"model":"claude-x","stream":true}`)
	if len(lines) != 9 || !strings.Contains(lines[8], "message_stop") {
		t.Errorf("stream %q", lines)
	}
	ev = e.lastEvent(t)
	if ev.TokensIn != wantIn || ev.TokensOut != fakellm.AnthropicOut || ev.ReportedModel != "claude-x" {
		t.Errorf("streamed audit %+v", ev)
	}
}

func TestResponsesAndEmbeddings(t *testing.T) {
	e := newEnv(t, inference.APIOpenAI, endpoint)
	lines, _ := sse(t, e.front.URL+"/v1/responses", `{"model":"m","stream":true,"input":"x"}`)
	if len(lines) != 3 {
		t.Errorf("responses stream %q", lines)
	}
	if ev := e.lastEvent(t); ev.TokensIn != fakellm.ResponsesIn || ev.TokensOut != fakellm.ResponsesOut || ev.CacheReadTokens != 1 {
		t.Errorf("responses audit %+v", ev)
	}
	if _, ok := e.upstreamBody(t)["stream_options"]; ok {
		t.Error("stream_options added to a responses call")
	}
	resp, _ := e.post(t, "/v1/embeddings", `{"model":"emb","input":"x"}`)
	if ev := e.lastEvent(t); resp.StatusCode != 200 || ev.TokensIn != fakellm.EmbeddingTokens || ev.TokensOut != 0 {
		t.Errorf("embeddings %d audit %+v", resp.StatusCode, ev)
	}
}

func TestModelPolicy(t *testing.T) {
	e := newEnv(t, inference.APIOpenAI, func(base string) *policy.Inference {
		return &policy.Inference{RoutingEndpoint: base, AllowedModels: []string{"small"}, ModelAliases: map[string]string{"fast": "small-2024"}}
	})
	resp, body := e.post(t, "/v1/chat/completions", `{"model":"big","messages":[]}`)
	var oe struct {
		Error struct{ Type, Code, Message string }
	}
	_ = json.Unmarshal([]byte(body), &oe)
	if resp.StatusCode != 403 || oe.Error.Code != "model_not_allowed" || !strings.Contains(oe.Error.Message, `"big"`) {
		t.Errorf("disallowed model: %d %s", resp.StatusCode, body)
	}
	if len(e.llm.Requests()) != 0 {
		t.Error("a refused call reached the model server")
	}
	if ev := e.lastEvent(t); ev.Decision != inference.Deny || ev.RequestedModel != "big" {
		t.Errorf("audit %+v", ev)
	}
	// A duplicate key cannot smuggle a model past the check.
	resp, _ = e.post(t, "/v1/chat/completions", `{"model":"small","model":"big"}`)
	if resp.StatusCode != 403 {
		t.Errorf("duplicate model key: %d", resp.StatusCode)
	}
	resp, _ = e.post(t, "/v1/chat/completions", `{"model":"fast"}`)
	if got := e.upstreamBody(t)["model"]; resp.StatusCode != 200 || got != "small-2024" {
		t.Errorf("alias: %d sent %v", resp.StatusCode, got)
	}
	if ev := e.lastEvent(t); ev.RequestedModel != "fast" || ev.SentModel != "small-2024" {
		t.Errorf("alias audit %+v", ev)
	}
	resp, body = e.post(t, "/v1/models", "")
	if resp.StatusCode != 405 {
		t.Errorf("POST /v1/models: %d %s", resp.StatusCode, body)
	}
	r, err := http.Get(e.front.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if !strings.Contains(string(data), `"id":"fast"`) || !strings.Contains(string(data), `"id":"small"`) || strings.Contains(string(data), "fake-model") {
		t.Errorf("models list %s", data)
	}
}

func TestAnthropicErrorShape(t *testing.T) {
	e := newEnv(t, inference.APIAnthropic, func(base string) *policy.Inference {
		return &policy.Inference{RoutingEndpoint: base, Model: "claude-pinned"}
	})
	resp, _ := e.post(t, "/v1/messages", `{"model":"other"}`)
	if got := e.upstreamBody(t)["model"]; resp.StatusCode != 200 || got != "claude-pinned" {
		t.Errorf("pinned: %d sent %v", resp.StatusCode, got)
	}
	resp, body := e.post(t, "/v1/chat/completions", `{"model":"x"}`)
	var ae struct {
		Type  string
		Error struct{ Type, Message string }
	}
	_ = json.Unmarshal([]byte(body), &ae)
	if resp.StatusCode != 404 || ae.Type != "error" || ae.Error.Type != "not_found_error" {
		t.Errorf("route an anthropic provider does not serve: %d %s", resp.StatusCode, body)
	}
}

func TestBudgetAndRate(t *testing.T) {
	e := newEnv(t, inference.APIOpenAI, func(base string) *policy.Inference {
		return &policy.Inference{RoutingEndpoint: base, TokenBudget: 20}
	})
	for i, want := range []int{200, 200, 429} {
		resp, body := e.post(t, "/v1/chat/completions", `{"model":"m"}`)
		if resp.StatusCode != want {
			t.Fatalf("call %d: %d %s", i, resp.StatusCode, body)
		}
		if want == 429 && !strings.Contains(body, `"type":"insufficient_quota"`) {
			t.Errorf("budget error shape %s", body)
		}
	}
	if n := len(e.llm.Requests()); n != 2 {
		t.Errorf("model server got %d calls, want 2", n)
	}
	if u := e.router.Usage().Tokens(); u != 2*(fakellm.OpenAIPrompt+fakellm.OpenAICompletion) {
		t.Errorf("usage %d", u)
	}

	e = newEnv(t, inference.APIAnthropic, func(base string) *policy.Inference {
		return &policy.Inference{RoutingEndpoint: base, RateLimit: &policy.RateLimit{Count: 2, Per: time.Minute}}
	})
	for i, want := range []int{200, 200, 429} {
		resp, body := e.post(t, "/v1/messages", `{"model":"m"}`)
		if resp.StatusCode != want {
			t.Fatalf("call %d: %d %s", i, resp.StatusCode, body)
		}
		if want == 429 && !strings.Contains(body, `"type":"rate_limit_error"`) {
			t.Errorf("rate error shape %s", body)
		}
	}
}

// TestCostBudget: calls start while the sandbox's spend, at the
// provider's cost per token, is under cost_budget_usd; then 429 in the
// API's shape. Streamed calls count, and what was spent outlives a
// router a reload replaces.
func TestCostBudget(t *testing.T) {
	// newEnv's provider: $0.001 an input token, $0.002 an output token.
	perCall := fakellm.OpenAIPrompt*0.001 + fakellm.OpenAICompletion*0.002
	e := newEnv(t, inference.APIOpenAI, func(base string) *policy.Inference {
		return &policy.Inference{RoutingEndpoint: base, CostBudgetUSD: 1.5 * perCall}
	})
	for i, c := range []struct {
		body string
		want int
	}{
		{`{"model":"m"}`, 200},
		{`{"model":"m","stream":true}`, 200},
		{`{"model":"m"}`, 429},
	} {
		resp, body := e.post(t, "/v1/chat/completions", c.body)
		if resp.StatusCode != c.want {
			t.Fatalf("call %d: %d %s", i, resp.StatusCode, body)
		}
		if c.want == 429 && (!strings.Contains(body, `"type":"insufficient_quota"`) || !strings.Contains(body, `"code":"cost_budget_exceeded"`)) {
			t.Errorf("budget error shape %s", body)
		}
	}
	if n := len(e.llm.Requests()); n != 2 {
		t.Errorf("model server got %d calls, want 2", n)
	}
	if got := e.router.Usage().CostUSD(); got < 2*perCall*0.999 || got > 2*perCall*1.001 {
		t.Errorf("cost %v, want %v", got, 2*perCall)
	}
	if ev := e.lastEvent(t); ev.Decision != inference.Deny || !strings.Contains(ev.Reason, "cost_budget_usd") {
		t.Errorf("audit %+v", ev)
	}

	// Anthropic's shape, and the spend carried into a new router (a
	// reload) over the same Usage.
	a := newEnv(t, inference.APIAnthropic, func(base string) *policy.Inference {
		return &policy.Inference{RoutingEndpoint: base, CostBudgetUSD: 0.01}
	})
	if resp, body := a.post(t, "/v1/messages", `{"model":"m"}`); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	base := a.up.URL + "/v1"
	again := inference.New(inference.Options{
		Route:      &policy.Inference{RoutingEndpoint: base, CostBudgetUSD: 0.01, Timeout: time.Second},
		Providers:  []inference.Provider{{Name: "prov", BaseURL: base, API: inference.APIAnthropic, Auth: inference.AuthAPIKey, Credential: "env:KEY", CostPerInputToken: 0.001}},
		Credential: func(context.Context, string) (string, error) { return testKey, nil },
		Usage:      a.router.Usage(),
	})
	w := httptest.NewRecorder()
	again.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/messages", strings.NewReader(`{"model":"m"}`)))
	if w.Code != 429 || !strings.Contains(w.Body.String(), `"type":"rate_limit_error"`) {
		t.Errorf("after a reload: %d %s", w.Code, w.Body)
	}

	// A budget that cannot be counted refuses every call: no provider
	// (an endpoint no provider has), or a provider with no costs.
	e = newEnv(t, inference.APIOpenAI, func(base string) *policy.Inference {
		return &policy.Inference{RoutingEndpoint: base + "/other", CostBudgetUSD: 1}
	})
	if resp, body := e.post(t, "/v1/chat/completions", `{"model":"m"}`); resp.StatusCode != 503 || !strings.Contains(body, "cost_budget_usd") || len(e.llm.Requests()) != 0 {
		t.Errorf("no provider: %d %s, %d calls sent", resp.StatusCode, body, len(e.llm.Requests()))
	}
	free := inference.New(inference.Options{
		Route:     &policy.Inference{RoutingEndpoint: base, CostBudgetUSD: 1, Timeout: time.Second},
		Providers: []inference.Provider{{Name: "free", BaseURL: base, API: inference.APIOpenAI, Auth: inference.AuthNone}},
	})
	if _, err := free.Target(); err == nil || !strings.Contains(err.Error(), "cost_per_input_token") {
		t.Errorf("a provider with no costs: %v", err)
	}
}

func TestKeyGoesOnlyToItsProvider(t *testing.T) {
	// An endpoint no provider has: forwarded with no key.
	e := newEnv(t, inference.APIOpenAI, func(base string) *policy.Inference {
		return &policy.Inference{RoutingEndpoint: base + "/other"}
	})
	e.post(t, "/v1/chat/completions", `{"model":"m"}`)
	reqs := e.llm.Requests()
	if len(reqs) != 1 || reqs[0].Path != "/v1/other/chat/completions" {
		t.Fatalf("requests %+v", reqs)
	}
	if h := reqs[0].Header; h.Get("Authorization") != "" || h.Get("X-Api-Key") != "" {
		t.Errorf("a key went to an endpoint no provider has: %v", h)
	}
	if ev := e.lastEvent(t); ev.Credential != "" || !strings.Contains(ev.Reason, "no key attached") {
		t.Errorf("audit %+v", ev)
	}
	// A provider named with another endpoint: refused whole.
	e = newEnv(t, inference.APIOpenAI, func(string) *policy.Inference {
		return &policy.Inference{RoutingEndpoint: "http://evil.example/v1", Provider: "prov"}
	})
	resp, body := e.post(t, "/v1/chat/completions", `{"model":"m"}`)
	if resp.StatusCode != 503 || !strings.Contains(body, "goes only to its own base_url") || len(e.llm.Requests()) != 0 {
		t.Errorf("%d %s", resp.StatusCode, body)
	}
}

func TestEchoedKeyScrubbed(t *testing.T) {
	e := newEnv(t, inference.APIOpenAI, endpoint)
	resp, body := e.post(t, "/v1/chat/completions", `{"model":"m","messages":[{"content":"ECHO_KEY"}]}`)
	if resp.StatusCode != 401 || strings.Contains(body, testKey) || !strings.Contains(body, "REDACTED") {
		t.Errorf("%d %s", resp.StatusCode, body)
	}
	for k, vs := range resp.Header {
		if strings.Contains(strings.Join(vs, " "), testKey) {
			t.Errorf("key in response header %s", k)
		}
	}
	if ev := e.lastEvent(t); ev.Status != 401 || strings.Contains(ev.Reason, testKey) {
		t.Errorf("audit %+v", ev)
	}
}

func TestStreamTruncatedAndIdle(t *testing.T) {
	e := newEnv(t, inference.APIOpenAI, endpoint)
	lines, _ := sse(t, e.front.URL+"/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"content":"TRUNCATE"}]}`)
	if len(lines) != 2 || !strings.Contains(lines[1], `"code":"stream_truncated"`) {
		t.Errorf("truncated stream: %q", lines)
	}
	if ev := e.lastEvent(t); !strings.HasPrefix(ev.Reason, "stream truncated") {
		t.Errorf("audit %+v", ev)
	}

	e = newEnv(t, inference.APIAnthropic, func(base string) *policy.Inference {
		return &policy.Inference{RoutingEndpoint: base, Timeout: time.Second}
	})
	start := time.Now()
	lines, first := sse(t, e.front.URL+"/v1/messages", `{"model":"m","stream":true,"messages":[{"content":"STALL"}]}`)
	took := time.Since(start)
	if first > 500*time.Millisecond {
		t.Errorf("the first event took %s: not relayed as it arrived", first)
	}
	if took > 2500*time.Millisecond || len(lines) < 2 || !strings.Contains(lines[len(lines)-1], `"type":"api_error"`) {
		t.Errorf("stalled stream after %s: %q", took, lines)
	}
	if ev := e.lastEvent(t); ev.TokensIn == 0 || !strings.Contains(ev.Reason, "quiet") {
		t.Errorf("audit %+v", ev)
	}
}

func TestBounds(t *testing.T) {
	e := newEnv(t, inference.APIOpenAI, endpoint)
	big := `{"model":"m","x":"` + strings.Repeat("a", inference.MaxRequestBytes) + `"}`
	resp, _ := e.post(t, "/v1/chat/completions", big)
	if resp.StatusCode != 413 || len(e.llm.Requests()) != 0 {
		t.Errorf("oversized request: %d", resp.StatusCode)
	}
	for _, tc := range []struct{ path, body string }{{"/v1/nope", "{}"}, {"/v2/chat/completions", "{}"}, {"/v1/chat/completions", "[1]"}, {"/v1/chat/completions", `{"model":5}`}} {
		if resp, body := e.post(t, tc.path, tc.body); resp.StatusCode/100 != 4 {
			t.Errorf("%s %s: %d %s", tc.path, tc.body, resp.StatusCode, body)
		}
	}
	if n := len(e.llm.Requests()); n != 0 {
		t.Errorf("%d bad requests reached the model server", n)
	}
}

// BenchmarkRouterChat is one buffered chat call through the router to a
// local fake, against the same call straight to the fake: the router's
// own cost per call (read, check, re-encode, key, relay, count, audit).
func BenchmarkRouterChat(b *testing.B) {
	llm := httptest.NewServer(&fakellm.Server{})
	defer llm.Close()
	base := llm.URL + "/v1"
	r := inference.New(inference.Options{
		Route:      &policy.Inference{RoutingEndpoint: base, Timeout: 10 * time.Second},
		Providers:  []inference.Provider{{Name: "p", BaseURL: base, API: inference.APIOpenAI, Auth: inference.AuthBearer, Credential: "env:K"}},
		Credential: func(context.Context, string) (string, error) { return testKey, nil },
		Audit:      func(*inference.Event) {},
	})
	front := httptest.NewServer(r)
	defer front.Close()
	body := `{"model":"m","messages":[{"role":"user","content":"hi"}]}`
	for _, bc := range []struct{ name, url string }{{"direct", base}, {"router", front.URL + "/v1"}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				resp, err := http.Post(bc.url+"/chat/completions", "application/json", strings.NewReader(body))
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}
