package inference

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/openshell/openshell/policyhook/policy"
)

// Bounds on what one call may make the router hold.
const (
	// MaxRequestBytes bounds a request body from the sandbox (it is read
	// whole: the model it names is checked before anything is sent).
	MaxRequestBytes = 32 << 20
	// MaxResponseBytes bounds a buffered (not streamed) answer, read
	// whole to count its tokens and scrub it.
	MaxResponseBytes = 64 << 20
	// MaxErrorBytes bounds an error answer relayed from the model server.
	MaxErrorBytes = 1 << 20
	// MaxEventBytes bounds one server-sent event; MaxStreamBytes a whole
	// stream.
	MaxEventBytes  = 1 << 20
	MaxStreamBytes = 256 << 20
	// MaxInFlight bounds the calls one sandbox has open at once.
	MaxInFlight = 32
)

// Decisions of an audited call.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Event is one audited call. It names the credential's source, never its
// value; every string in it but the provider's names came from the
// sandbox or the model server and is capped by the audit log.
type Event struct {
	API              string  `json:"api,omitempty"`
	Provider         string  `json:"provider,omitempty"`
	UpstreamHost     string  `json:"upstream_host,omitempty"`
	Credential       string  `json:"credential,omitempty"`
	RequestedModel   string  `json:"requested_model,omitempty"`
	SentModel        string  `json:"sent_model,omitempty"`
	ReportedModel    string  `json:"reported_model,omitempty"`
	Stream           bool    `json:"stream,omitempty"`
	Status           int     `json:"status,omitempty"`
	TokensIn         int64   `json:"tokens_in"`
	TokensOut        int64   `json:"tokens_out"`
	CacheReadTokens  int64   `json:"cache_read_tokens,omitempty"`
	CacheWriteTokens int64   `json:"cache_write_tokens,omitempty"`
	CostUSD          float64 `json:"cost_usd,omitempty"`
	LatencyMS        int64   `json:"latency_ms"`
	TTFBMS           int64   `json:"ttfb_ms,omitempty"`
	// Route is the route taken (RouteCloud or RouteLocal), set when the
	// policy has a privacy rule or a local route.
	Route string `json:"route,omitempty"`
	// Detected counts the privacy rule's matches in the call's message
	// contents, by detector; never what matched.
	Detected Detections `json:"detected,omitzero"`
	// Redacted is how many of them were replaced before the cloud route.
	Redacted int `json:"redacted,omitempty"`

	Decision string `json:"-"`
	Reason   string `json:"-"`
	// TLS is set when the call came over TLS (https://inference.local):
	// the audit line's port is 443, else 80.
	TLS       bool  `json:"-"`
	BytesUp   int64 `json:"-"`
	BytesDown int64 `json:"-"`
}

// CredentialFunc returns the key of the named provider, read afresh.
type CredentialFunc func(ctx context.Context, provider string) (string, error)

// DialFunc dials the model server. trusted is set when the endpoint is a
// configured provider's base_url (the operator vouched for it); an
// endpoint only the policy names is held to the egress rules' address
// checks.
type DialFunc func(ctx context.Context, network, addr string, trusted bool) (net.Conn, error)

// Usage is what a sandbox has spent; it outlives a router that a policy
// reload replaces.
type Usage struct {
	tokens atomic.Int64
	mu     sync.Mutex
	cost   float64 // US dollars
}

// Tokens are the tokens spent so far.
func (u *Usage) Tokens() int64 { return u.tokens.Load() }

// CostUSD is what the calls so far cost, in US dollars, at their
// providers' costs per token.
func (u *Usage) CostUSD() float64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.cost
}

func (u *Usage) add(tokens int64, cost float64) {
	u.tokens.Add(tokens)
	if cost > 0 {
		u.mu.Lock()
		u.cost += cost
		u.mu.Unlock()
	}
}

// Options build a Router.
type Options struct {
	Route      *policy.Inference
	Providers  []Provider
	Credential CredentialFunc
	Audit      func(*Event)
	Dial       DialFunc // nil: a plain dialer
	RootCAs    *x509.CertPool
	Usage      *Usage // nil: a new one
}

// Router serves one sandbox's route. It is an http.Handler for requests
// to inference.local.
type Router struct {
	o        Options
	route    *policy.Inference
	cloud    *upstream
	local    *upstream // the privacy route; nil: none
	apis     []string
	limiter  *rate.Limiter
	usage    *Usage
	inflight chan struct{}
}

// upstream is one model server a call can go to: the cloud route, or
// the local one. Each has its own key rule (Resolve).
type upstream struct {
	name      string // RouteCloud or RouteLocal
	target    Target
	broken    error // it cannot be served, and why
	transport *http.Transport
}

var _ http.Handler = (*Router)(nil)

// New builds the router for o.Route. A route that cannot be served (a
// provider the host does not define, an endpoint that is not its
// provider's) still gives a router: it refuses every call, saying why.
func New(o Options) *Router {
	r := &Router{o: o, route: o.Route, usage: o.Usage, inflight: make(chan struct{}, MaxInFlight)}
	if r.usage == nil {
		r.usage = &Usage{}
	}
	r.cloud = newUpstream(o, RouteCloud, o.Route)
	if p := r.cloud.target.Provider; r.cloud.broken == nil && o.Route.CostBudgetUSD > 0 && (p == nil || p.CostPerInputToken == 0 && p.CostPerOutputToken == 0) {
		// Fail closed: a budget that cannot be counted is not a budget.
		r.cloud.broken = errors.New("the policy's cost_budget_usd needs the provider's cost_per_input_token or cost_per_output_token in the host's configuration, and this route's provider has none")
		if p == nil {
			r.cloud.broken = errors.New("the policy's cost_budget_usd needs a provider with costs in the host's configuration, and no provider has this route's endpoint")
		}
	}
	if l := o.Route.Local; l != nil {
		r.local = newUpstream(o, RouteLocal, l.Route())
	}
	r.apis = o.Route.APIs
	if len(r.apis) == 0 {
		switch {
		case r.cloud.target.Provider == nil:
			r.apis = policy.InferenceAPIs
		case r.cloud.target.Provider.API == APIAnthropic:
			r.apis = []string{policy.APIMessages, policy.APIModels}
		default:
			r.apis = slices.DeleteFunc(slices.Clone(policy.InferenceAPIs), func(a string) bool { return a == policy.APIMessages })
		}
	}
	if rl := o.Route.RateLimit; rl != nil {
		r.limiter = rate.NewLimiter(rate.Limit(float64(rl.Count)/rl.Per.Seconds()), int(rl.Count))
	}
	return r
}

// newUpstream resolves one route's target and builds its transport.
func newUpstream(o Options, name string, route *policy.Inference) *upstream {
	u := &upstream{name: name}
	u.target, u.broken = Resolve(route, o.Providers)
	if u.broken != nil && name == RouteLocal {
		u.broken = fmt.Errorf("the local route: %w", u.broken)
	}
	trusted := u.target.Provider != nil
	dial := o.Dial
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, network, addr string, _ bool) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		}
	}
	u.transport = &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dial(ctx, network, addr, trusted)
		},
		TLSClientConfig:        &tls.Config{RootCAs: o.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    15 * time.Second,
		MaxIdleConns:           16,
		MaxIdleConnsPerHost:    16,
		IdleConnTimeout:        60 * time.Second,
		MaxResponseHeaderBytes: 256 << 10,
	}
	return u
}

// Close drops the router's idle connections.
func (r *Router) Close() {
	r.cloud.transport.CloseIdleConnections()
	if r.local != nil {
		r.local.transport.CloseIdleConnections()
	}
}

// Usage is what the sandbox has spent.
func (r *Router) Usage() *Usage { return r.usage }

// Target is where the (cloud) route leads, and why it cannot be served
// (nil when it can).
func (r *Router) Target() (Target, error) { return r.cloud.target, r.cloud.broken }

// LocalTarget is where the privacy route leads (nil when the policy has
// none), and why it cannot be served.
func (r *Router) LocalTarget() (*Target, error) {
	if r.local == nil {
		return nil, nil
	}
	return &r.local.target, r.local.broken
}

// route is one path the router serves.
type route struct {
	api    string
	method string
	path   string // under /v1
}

var routes = []route{
	{policy.APIChatCompletions, http.MethodPost, "/chat/completions"},
	{policy.APICompletions, http.MethodPost, "/completions"},
	{policy.APIResponses, http.MethodPost, "/responses"},
	{policy.APIEmbeddings, http.MethodPost, "/embeddings"},
	{policy.APIModels, http.MethodGet, "/models"},
	{policy.APIMessages, http.MethodPost, "/messages"},
}

// call is one request being served.
type call struct {
	r       *Router
	up      *upstream // where the call goes
	rt      route
	shape   string // APIOpenAI or APIAnthropic: how errors look
	ev      Event
	start   time.Time
	key     []byte // for scrubbing; never logged
	tally   tally
	stream  bool
	hideUse bool // the usage-only chunk was asked for by the router, not the client
}

func (r *Router) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	c := &call{r: r, start: time.Now(), shape: APIOpenAI}
	if p := r.cloud.target.Provider; p != nil && p.API == APIAnthropic {
		c.shape = APIAnthropic
	}
	c.goTo(r.cloud)
	c.ev.TLS = req.TLS != nil
	defer c.audit()
	sub, ok := strings.CutPrefix(req.URL.Path, "/v1")
	i := slices.IndexFunc(routes, func(rt route) bool { return rt.path == sub })
	if !ok || i < 0 {
		c.fail(w, http.StatusNotFound, "not_found_error", "unknown_url", fmt.Sprintf("inference.local serves /v1/ followed by one of: %s", routeList()))
		return
	}
	c.rt = routes[i]
	c.ev.API = c.rt.api
	if c.rt.api == policy.APIMessages {
		c.shape = APIAnthropic
	}
	switch {
	case r.cloud.broken != nil:
		c.fail(w, http.StatusServiceUnavailable, "api_error", "route_unavailable", "openshell: this sandbox's inference route cannot be served: "+r.cloud.broken.Error())
		return
	case !slices.Contains(r.apis, c.rt.api):
		c.fail(w, http.StatusNotFound, "not_found_error", "api_not_allowed", fmt.Sprintf("openshell: the sandbox's policy does not serve %s (it serves %s)", c.rt.api, strings.Join(r.apis, ", ")))
		return
	case req.Method != c.rt.method:
		c.fail(w, http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed", fmt.Sprintf("%s takes %s", req.URL.Path, c.rt.method))
		return
	}
	if c.rt.api == policy.APIModels && len(r.route.Models()) > 0 {
		c.listModels(w)
		return
	}
	var body []byte
	if c.rt.method == http.MethodPost {
		var ok bool
		if body, ok = c.readRequest(w, req); !ok {
			return
		}
	}
	select {
	case r.inflight <- struct{}{}:
		defer func() { <-r.inflight }()
	default:
		c.fail(w, http.StatusTooManyRequests, "rate_limit_error", "too_many_in_flight", fmt.Sprintf("openshell: this sandbox already has %d calls open", MaxInFlight))
		return
	}
	if b := r.route.TokenBudget; b > 0 && r.usage.Tokens() >= b {
		c.fail(w, http.StatusTooManyRequests, "insufficient_quota", "token_budget_exceeded", fmt.Sprintf("openshell: the sandbox's token_budget of %d is spent (%d used)", b, r.usage.Tokens()))
		return
	}
	if b := r.route.CostBudgetUSD; b > 0 && r.usage.CostUSD() >= b {
		c.fail(w, http.StatusTooManyRequests, "insufficient_quota", "cost_budget_exceeded", fmt.Sprintf("openshell: the sandbox's cost_budget_usd of %g is spent ($%.6f used)", b, r.usage.CostUSD()))
		return
	}
	if r.limiter != nil && !r.limiter.Allow() {
		rl := r.route.RateLimit
		c.fail(w, http.StatusTooManyRequests, "rate_limit_error", "rate_limit_exceeded", fmt.Sprintf("openshell: the sandbox's inference rate_limit of %d per %s is exceeded", rl.Count, rl.Per))
		return
	}
	if c.up.broken != nil {
		// Fail closed: a call the privacy rule keeps off the cloud
		// never falls back to it.
		c.fail(w, http.StatusServiceUnavailable, "api_error", "route_unavailable", "openshell: this call's content sends it to the sandbox's local inference route, which cannot be served: "+c.up.broken.Error())
		return
	}
	c.forward(w, req, body)
}

// goTo points the call at u: its provider, key source and host.
func (c *call) goTo(u *upstream) {
	c.up = u
	c.ev.Provider, c.ev.Credential, c.ev.UpstreamHost = "", "", ""
	if p := u.target.Provider; p != nil {
		c.ev.Provider, c.ev.Credential = p.Name, p.Credential
	}
	if pu, err := url.Parse(u.target.Endpoint); err == nil {
		c.ev.UpstreamHost = pu.Host
	}
	if c.r.route.Privacy != nil || c.r.local != nil {
		c.ev.Route = u.name
	}
}

func routeList() string {
	var s []string
	for _, rt := range routes {
		s = append(s, strings.TrimPrefix(rt.path, "/"))
	}
	return strings.Join(s, ", ")
}

// readRequest reads and checks the body: a JSON object whose model the
// policy allows. It returns the body to send, written out again from
// what was checked (a duplicate key cannot mean one thing here and
// another upstream).
func (c *call) readRequest(w http.ResponseWriter, req *http.Request) ([]byte, bool) {
	data, err := io.ReadAll(io.LimitReader(req.Body, MaxRequestBytes+1))
	c.ev.BytesUp = int64(len(data))
	switch {
	case err != nil:
		c.fail(w, http.StatusBadRequest, "invalid_request_error", "bad_body", "openshell: reading the request: "+err.Error())
		return nil, false
	case len(data) > MaxRequestBytes:
		c.fail(w, http.StatusRequestEntityTooLarge, "request_too_large", "request_too_large", fmt.Sprintf("openshell: a request body may be at most %d bytes", MaxRequestBytes))
		return nil, false
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil || doc == nil {
		c.fail(w, http.StatusBadRequest, "invalid_request_error", "bad_body", "openshell: the request body is not a JSON object")
		return nil, false
	}
	var model string
	if raw, ok := doc["model"]; ok {
		if err := json.Unmarshal(raw, &model); err != nil {
			c.fail(w, http.StatusBadRequest, "invalid_request_error", "bad_model", "openshell: model is not a string")
			return nil, false
		}
	}
	c.ev.RequestedModel = model
	sent, ok := c.r.route.AllowsModel(model)
	if !ok {
		msg := fmt.Sprintf("openshell: the sandbox's policy does not allow model %q (allowed: %s)", model, strings.Join(c.r.route.Models(), ", "))
		if model == "" {
			msg = "openshell: the request names no model (allowed: " + strings.Join(c.r.route.Models(), ", ") + ")"
		}
		c.fail(w, http.StatusForbidden, "permission_error", "model_not_allowed", msg)
		return nil, false
	}
	c.ev.SentModel = sent
	if p := c.r.route.Privacy; p != nil {
		d, err := applyPrivacy(doc, c.rt.api, p)
		if err != nil {
			c.fail(w, http.StatusBadRequest, "invalid_request_error", "bad_body", "openshell: redacting the request: "+err.Error())
			return nil, false
		}
		c.ev.Detected, c.ev.Redacted = d.found, d.redacted
		if d.local {
			c.goTo(c.r.local)
			if m := c.r.route.Local.Model; m != "" {
				sent, c.ev.SentModel = m, m
			}
		}
	}
	if sent != "" {
		doc["model"], _ = json.Marshal(sent)
	}
	if raw, ok := doc["stream"]; ok {
		_ = json.Unmarshal(raw, &c.stream)
	}
	c.ev.Stream = c.stream
	if c.stream && (c.rt.api == policy.APIChatCompletions || c.rt.api == policy.APICompletions) {
		// Tokens are reported in a streamed answer only when asked
		// for; the router asks, and keeps the extra chunk from a client
		// that did not.
		var so map[string]json.RawMessage
		if raw, ok := doc["stream_options"]; ok {
			_ = json.Unmarshal(raw, &so)
		}
		var asked bool
		if so != nil {
			_ = json.Unmarshal(so["include_usage"], &asked)
		} else {
			so = map[string]json.RawMessage{}
		}
		if !asked {
			so["include_usage"] = json.RawMessage("true")
			doc["stream_options"], _ = json.Marshal(so)
			c.hideUse = true
		}
	}
	out, err := json.Marshal(doc)
	if err != nil {
		c.fail(w, http.StatusBadRequest, "invalid_request_error", "bad_body", "openshell: "+err.Error())
		return nil, false
	}
	return out, true
}

// requestHeaders pass from the sandbox to the model server; every other
// header (Authorization, x-api-key, cookies, proxy headers, the
// client's organisation or project) is dropped.
var requestHeaders = []string{"Content-Type", "Accept", "User-Agent", "Anthropic-Version", "Anthropic-Beta", "Openai-Beta", "Idempotency-Key", "X-Request-Id"}

// responseHeaders pass from the model server to the sandbox.
var responseHeaders = []string{"Content-Type", "Cache-Control", "Retry-After", "Retry-After-Ms", "X-Request-Id", "Request-Id", "Openai-Processing-Ms", "Openai-Version"}

func passRequestHeader(k string) bool {
	return slices.Contains(requestHeaders, k) || strings.HasPrefix(k, "X-Stainless-")
}

func passResponseHeader(k string) bool {
	lk := strings.ToLower(k)
	return slices.Contains(responseHeaders, k) || strings.HasPrefix(lk, "x-ratelimit-") || strings.HasPrefix(lk, "anthropic-ratelimit-")
}

// forward sends the checked call on and relays the answer.
func (c *call) forward(w http.ResponseWriter, req *http.Request, body []byte) {
	r, up := c.r, c.up
	target := up.target.Endpoint + c.rt.path
	if req.URL.RawQuery != "" {
		target += "?" + req.URL.RawQuery
	}
	// The call goes on when the sandbox hangs up: what it cost is still
	// counted. The watchdog ends it when the model server is quiet for
	// the route's timeout.
	ctx, cancel := context.WithCancel(context.WithoutCancel(req.Context()))
	defer cancel()
	wd := newWatchdog(r.route.Timeout, cancel)
	defer wd.stop()
	out, err := http.NewRequestWithContext(ctx, c.rt.method, target, bytes.NewReader(body))
	if err != nil {
		c.fail(w, http.StatusBadGateway, "api_error", "bad_route", "openshell: "+err.Error())
		return
	}
	if body == nil {
		out.Body, out.ContentLength = http.NoBody, 0
	}
	for k, vs := range req.Header {
		if passRequestHeader(k) {
			out.Header[k] = slices.Clone(vs)
		}
	}
	if p := up.target.Provider; p != nil {
		for k, v := range p.Headers {
			out.Header.Set(k, v)
		}
		if p.Auth != AuthNone {
			key, err := r.o.Credential(ctx, p.Name)
			if err != nil {
				c.fail(w, http.StatusServiceUnavailable, "api_error", "credential_unavailable", "openshell: provider "+p.Name+"'s credential: "+err.Error())
				return
			}
			c.key = []byte(key)
			if p.Auth == AuthBearer {
				out.Header.Set("Authorization", "Bearer "+key)
			} else {
				out.Header.Set("X-Api-Key", key)
			}
		}
	}
	if body != nil {
		out.Header.Set("Content-Type", "application/json")
	}
	// From here the call is the policy's to make: what fails is the
	// model server's, recorded as allowed with the reason.
	c.ev.Decision = Allow
	resp, err := up.transport.RoundTrip(out)
	if err != nil {
		why := err.Error()
		if wd.fired() {
			why = fmt.Sprintf("no answer within timeout_seconds (%s)", r.route.Timeout)
		}
		c.fail(w, http.StatusBadGateway, "api_error", "upstream_unavailable", "openshell: the model server at "+c.ev.UpstreamHost+": "+c.scrub(why))
		return
	}
	defer resp.Body.Close()
	wd.touch()
	c.ev.Status = resp.StatusCode
	h := w.Header()
	for k, vs := range resp.Header {
		if passResponseHeader(k) {
			for _, v := range vs {
				h.Add(k, c.scrub(v))
			}
		}
	}
	rd := &watchedReader{r: resp.Body, wd: wd, first: &c.ev.TTFBMS, start: c.start}
	switch {
	case resp.StatusCode/100 != 2:
		c.relayBuffered(w, resp.StatusCode, rd, MaxErrorBytes, false)
		c.ev.Reason = fmt.Sprintf("the model server answered %d", resp.StatusCode)
	case strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream"):
		c.relayStream(w, rd)
	default:
		c.relayBuffered(w, resp.StatusCode, rd, MaxResponseBytes, true)
	}
}

// relayBuffered reads a whole answer (at most max bytes), counts its
// tokens, scrubs it and writes it.
func (c *call) relayBuffered(w http.ResponseWriter, status int, body io.Reader, max int64, count bool) {
	data, err := io.ReadAll(io.LimitReader(body, max+1))
	c.ev.BytesDown = int64(len(data))
	switch {
	case int64(len(data)) > max:
		c.fail(w, http.StatusBadGateway, "api_error", "response_too_large", fmt.Sprintf("openshell: the model server's answer is larger than %d bytes", max))
		return
	case err != nil:
		c.fail(w, http.StatusBadGateway, "api_error", "upstream_truncated", "openshell: reading the model server's answer: "+c.scrub(err.Error()))
		return
	}
	if count {
		var doc usageDoc
		if json.Unmarshal(data, &doc) == nil {
			c.tally.see(&doc, c.rt.api)
		}
	}
	data = c.scrubBytes(data)
	w.Header().Set("Content-Length", fmt.Sprint(len(data)))
	w.WriteHeader(status)
	_, _ = w.Write(data)
}

// listModels answers /v1/models from the policy when it restricts them:
// the client sees the names it may use.
func (c *call) listModels(w http.ResponseWriter) {
	models := c.r.route.Models()
	var v any
	if c.shape == APIAnthropic {
		type m struct {
			Type        string `json:"type"`
			ID          string `json:"id"`
			DisplayName string `json:"display_name"`
			CreatedAt   string `json:"created_at"`
		}
		data := make([]m, len(models))
		for i, id := range models {
			data[i] = m{"model", id, id, "1970-01-01T00:00:00Z"}
		}
		v = map[string]any{"data": data, "has_more": false, "first_id": models[0], "last_id": models[len(models)-1]}
	} else {
		type m struct {
			ID      string `json:"id"`
			Object  string `json:"object"`
			Created int64  `json:"created"`
			OwnedBy string `json:"owned_by"`
		}
		data := make([]m, len(models))
		for i, id := range models {
			data[i] = m{id, "model", 0, "openshell"}
		}
		v = map[string]any{"object": "list", "data": data}
	}
	c.ev.Decision, c.ev.Reason = Allow, "answered from the policy's models"
	c.ev.Status = http.StatusOK
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// fail answers with an error in the API's own shape and records the
// denial.
func (c *call) fail(w http.ResponseWriter, status int, typ, code, msg string) {
	msg = c.scrub(msg)
	if c.ev.Decision == "" {
		c.ev.Decision = Deny
	}
	c.ev.Status, c.ev.Reason = status, msg
	writeError(w, c.shape, status, typ, code, msg)
}

func writeError(w http.ResponseWriter, shape string, status int, typ, code, msg string) {
	var v any
	if shape == APIAnthropic {
		switch typ {
		case "insufficient_quota":
			typ = "rate_limit_error"
		case "invalid_request_error", "not_found_error", "permission_error", "rate_limit_error", "api_error", "request_too_large":
		default:
			typ = "api_error"
		}
		v = map[string]any{"type": "error", "error": map[string]string{"type": typ, "message": msg}}
	} else {
		v = map[string]any{"error": map[string]any{"message": msg, "type": typ, "code": code, "param": nil}}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// audit counts the call's tokens against the budget and records it.
func (c *call) audit() {
	t := c.tally
	c.ev.TokensIn, c.ev.TokensOut = t.in(), t.out
	c.ev.CacheReadTokens, c.ev.CacheWriteTokens = t.cacheRead, t.cacheWrite
	c.ev.ReportedModel = t.model
	if p := c.up.target.Provider; p != nil {
		c.ev.CostUSD = float64(c.ev.TokensIn)*p.CostPerInputToken + float64(c.ev.TokensOut)*p.CostPerOutputToken
	}
	c.r.usage.add(c.ev.TokensIn+c.ev.TokensOut, c.ev.CostUSD)
	c.ev.LatencyMS = time.Since(c.start).Milliseconds()
	if c.ev.Decision == "" {
		c.ev.Decision = Deny
	}
	for _, n := range []string{c.up.target.Note, c.privacyNote()} {
		if n != "" && c.ev.Reason == "" {
			c.ev.Reason = n
		} else if n != "" {
			c.ev.Reason += "; " + n
		}
	}
	c.ev.Reason = c.scrub(c.ev.Reason)
	c.key = nil
	if c.r.o.Audit != nil {
		c.r.o.Audit(&c.ev)
	}
}

// redacted replaces a key a model server echoed.
const redacted = "[REDACTED by openshell]"

// minScrubbed: a key shorter than this is not searched for (it would
// match ordinary text); real keys are far longer.
const minScrubbed = 8

func (c *call) scrubBytes(b []byte) []byte {
	if len(c.key) < minScrubbed || !bytes.Contains(b, c.key) {
		return b
	}
	return bytes.ReplaceAll(b, c.key, []byte(redacted))
}

func (c *call) scrub(s string) string {
	if len(c.key) < minScrubbed {
		return s
	}
	return strings.ReplaceAll(s, string(c.key), redacted)
}

// watchdog calls cancel when it is not touched for d.
type watchdog struct {
	t    *time.Timer
	d    time.Duration
	done atomic.Bool
}

func newWatchdog(d time.Duration, cancel func()) *watchdog {
	if d <= 0 {
		d = policy.DefaultInferenceTimeout
	}
	wd := &watchdog{d: d}
	wd.t = time.AfterFunc(d, func() { wd.done.Store(true); cancel() })
	return wd
}

func (wd *watchdog) touch()      { wd.t.Reset(wd.d) }
func (wd *watchdog) stop()       { wd.t.Stop() }
func (wd *watchdog) fired() bool { return wd.done.Load() }

// watchedReader touches the watchdog on every read that brings bytes,
// and notes when the first arrived.
type watchedReader struct {
	r     io.Reader
	wd    *watchdog
	first *int64
	start time.Time
	seen  bool
}

func (w *watchedReader) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	if n > 0 {
		w.wd.touch()
		if !w.seen {
			w.seen = true
			*w.first = max(time.Since(w.start).Milliseconds(), 0)
		}
	}
	if err != nil && w.wd.fired() && !errors.Is(err, io.EOF) {
		err = fmt.Errorf("the model server was quiet for timeout_seconds (%s)", w.wd.d)
	}
	return n, err
}
