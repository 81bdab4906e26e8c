package integration

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/openshell/openshell/test/fakenet"
)

// inferenceBenchProbe measures model calls from inside a sandbox, on
// one keep-alive connection to host at addr:80 ("resolve": the sandbox's
// DNS): 300 buffered calls (the whole answer: the router reads a
// buffered answer whole before it relays it), 300 streamed calls to
// their first content event (time to first byte as a user sees it), and
// 3 streams of 20,000 events of 64 bytes of content (the relay's
// throughput; the median).
const inferenceBenchProbe = `
import http.client, json, socket, sys, time
host, addr = sys.argv[1], sys.argv[2]
if addr == "resolve":
    addr = socket.gethostbyname(host)
c = http.client.HTTPConnection(addr, 80, timeout=60)
hdr = {"Host": host, "Content-Type": "application/json"}
def body(**kw):
    return json.dumps(dict(model="bench", messages=[{"role": "user", "content": "hi"}], **kw))
buffered, ttfb = [], []
plain, streamed = body(), body(stream=True)
for i in range(320):
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", plain, hdr)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
    t1 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", streamed, hdr)
    r = c.getresponse()
    assert r.status == 200, r.status
    while not r.readline().startswith(b"data: {"):
        pass
    t2 = time.perf_counter()
    r.read()
    if i >= 20:
        buffered.append(t1 - t0); ttfb.append(t2 - t1)
def stream():
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body(stream=True, fake_chunks=20000), hdr)
    r = c.getresponse()
    n = events = 0
    while True:
        l = r.readline()
        if not l:
            break
        n += len(l)
        events += l.startswith(b"data: {")
    return n, events, time.perf_counter() - t0
runs = sorted((stream() for _ in range(3)), key=lambda x: x[0] / x[2])
n, events, d = runs[1]
pct = lambda v, p: sorted(v)[min(len(v) - 1, int(len(v) * p))] * 1000
print(json.dumps({"buf_p50": pct(buffered, .5), "buf_p99": pct(buffered, .99), "ttfb_p50": pct(ttfb, .5), "ttfb_p99": pct(ttfb, .99),
    "mbps": n / d / 1e6, "eps": events / d, "events": min(r[1] for r in runs)}))
`

// inferenceBenchPolicy routes inference.local to llm.test, any model.
const inferenceBenchPolicy = `version: "1.0"
name: inference-bench
sandbox:
  filesystem: {allowed_writes: [/tmp]}
  process: {max_processes: 64}
  inference:
    provider: a
`

type inferenceFigures struct {
	BufP50  float64 `json:"buf_p50"`
	BufP99  float64 `json:"buf_p99"`
	TTFBP50 float64 `json:"ttfb_p50"`
	TTFBP99 float64 `json:"ttfb_p99"`
	MBps    float64 `json:"mbps"`
	EPS     float64 `json:"eps"`
	Events  int     `json:"events"`
}

// TestInferenceBench compares, in one run, model calls through the
// router (inference.local: the gateway reads, checks, re-encodes, adds
// the key, counts tokens, relays event by event, audits) and from the
// same runsc sandbox routed straight to the server. It runs only when OPENSHELL_BENCH is set (make bench
// sets it).
func TestInferenceBench(t *testing.T) {
	requireBench(t)
	e := newInferenceEnv(t)
	dir := t.TempDir()
	pf := writePolicy(t, inferenceBenchPolicy)
	router := func() inferenceFigures {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		return probeFigures[inferenceFigures](t, e.runCommand(ctx, pf, "/usr/bin/python3", "-c", inferenceBenchProbe, "inference.local", "resolve"))
	}
	direct := func() inferenceFigures {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		c, done := e.directCommand(t, ctx, dir, "inference-bench-direct", "/usr/bin/python3", "-c", inferenceBenchProbe, "llm.test", fakenet.LLMAddr.String())
		defer done()
		return probeFigures[inferenceFigures](t, c)
	}
	figs := benchTable("inference: %d rounds; 300 buffered and 300 streamed calls on one keep-alive connection, 3 streams of 20,000 events (medians of the rounds)", 28,
		[]benchColumn[inferenceFigures]{
			{head: "direct", width: 10, run: direct},
			{head: "router", diffHead: "router-direct", width: 10, run: router},
		},
		[]benchMetric[inferenceFigures]{
			{"buffered call p50 (ms)", func(x inferenceFigures) float64 { return x.BufP50 }, true},
			{"buffered call p99 (ms)", func(x inferenceFigures) float64 { return x.BufP99 }, true},
			{"stream first event p50 (ms)", func(x inferenceFigures) float64 { return x.TTFBP50 }, true},
			{"stream first event p99 (ms)", func(x inferenceFigures) float64 { return x.TTFBP99 }, true},
			{"stream relay (MB/s)", func(x inferenceFigures) float64 { return x.MBps }, false},
			{"stream relay (events/s)", func(x inferenceFigures) float64 { return x.EPS }, false},
		})
	dr, rt := figs[0], figs[1]
	rounds := len(dr)
	for _, x := range slices.Concat(dr, rt) {
		if x.Events != 20000 {
			t.Errorf("a stream had %d content events, want 20000", x.Events)
		}
	}
	// The router's calls reached the server through the router: each
	// with the provider's key (the direct ones with none).
	var keyed int
	for _, r := range e.llm.Requests() {
		if r.Header.Get("Authorization") == "Bearer "+e.keyA {
			keyed++
		}
	}
	if want := rounds * (2*320 + 3); keyed != want {
		t.Errorf("%d calls carried the key, want %d (the router's)", keyed, want)
	}
}
