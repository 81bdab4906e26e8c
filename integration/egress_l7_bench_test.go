package integration

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/openshell/openshell/test/fakenet"
)

// httpsBenchProbe measures HTTPS inside the sandbox: 500 requests on one
// keep-alive connection (the latency each adds), and 100 MB downloads
// (the median of three). cafile "default" trusts what the sandbox
// trusts (its CA, where the gateway terminates); a PEM argument is the
// fake internet's CA (direct, and passthrough, where the sandbox talks
// to the server itself).
const httpsBenchProbe = `
import http.client, json, socket, ssl, sys, time
host, ip, ca = sys.argv[1], sys.argv[2], sys.argv[3]
if ip == "resolve":
    ip = socket.gethostbyname(host)
ctx = ssl.create_default_context() if ca == "default" else ssl.create_default_context(cadata=ca)
def conn():
    c = http.client.HTTPConnection(host)
    c.sock = ctx.wrap_socket(socket.create_connection((ip, 443)), server_hostname=host)
    return c
c = conn()
lat = []
for i in range(520):
    t0 = time.perf_counter()
    c.request("GET", "/x")
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
    if i >= 20:
        lat.append(time.perf_counter() - t0)
c.close()
size = 100 << 20
def download():
    c = conn()
    t0 = time.perf_counter()
    c.request("GET", "/bytes?n=%d" % size)
    r = c.getresponse(); total = 0
    while True:
        b = r.read(1 << 20)
        if not b:
            break
        total += len(b)
    d = time.perf_counter() - t0
    c.close()
    return total, d
runs = [download() for _ in range(3)]
lat.sort()
pct = lambda v, p: v[min(len(v) - 1, int(len(v) * p))] * 1000
print(json.dumps({"p50": pct(lat, .5), "p99": pct(lat, .99), "mbps": sorted(r[0] / r[1] / 1e6 for r in runs)[1], "bytes": min(r[0] for r in runs)}))
`

const l7BenchPolicy = `version: 1
filesystem_policy:
  read_only: [/usr, /lib, /lib64, /bin, /etc, /sbin]
  read_write: [/tmp]
network_policies:
  terminated:
    endpoints:
      - {host: rules.test, port: 443, protocol: rest, access: read-only}
  passthrough:
    endpoints:
      - {host: pass.test, port: 443}
`

type httpsFigures struct {
	P50   float64 `json:"p50"`
	P99   float64 `json:"p99"`
	MBps  float64 `json:"mbps"`
	Bytes int64   `json:"bytes"`
}

// TestEgressL7Bench compares, in one run, HTTPS through an endpoint
// whose TLS the gateway terminates (each request decided), through a
// passthrough endpoint (SNI decided, bytes spliced), and the same runsc
// sandbox routed straight to the server. It runs only when
// OPENSHELL_BENCH is set (make bench sets it).
func TestEgressL7Bench(t *testing.T) {
	requireBench(t)
	e := newEgressEnv(t)
	dir := t.TempDir()
	pf := writePolicy(t, l7BenchPolicy)
	ca := string(e.net.CAPEM)
	gateway := func(host, cafile string) httpsFigures {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		return probeFigures[httpsFigures](t, e.runCommand(ctx, pf, "/usr/bin/python3", "-c", httpsBenchProbe, host, "resolve", cafile))
	}
	direct := func() httpsFigures {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		c, done := e.directCommand(t, ctx, dir, "egress-l7-bench-direct", "/usr/bin/python3", "-c", httpsBenchProbe, "pass.test", fakenet.WebA.String(), ca)
		defer done()
		return probeFigures[httpsFigures](t, c)
	}
	figs := benchTable("egress HTTPS: %d rounds, 500 keep-alive requests and 3 downloads of 100 MB each (medians of the rounds)", 24,
		[]benchColumn[httpsFigures]{
			{head: "direct", width: 10, run: direct},
			{head: "passthrough", diffHead: "pass-direct", width: 12, run: func() httpsFigures { return gateway("pass.test", ca) }},
			{head: "terminated", diffHead: "term-direct", width: 12, run: func() httpsFigures { return gateway("rules.test", "default") }},
		},
		[]benchMetric[httpsFigures]{
			{"request p50 (ms)", func(x httpsFigures) float64 { return x.P50 }, true},
			{"request p99 (ms)", func(x httpsFigures) float64 { return x.P99 }, true},
			{"100 MB (MB/s)", func(x httpsFigures) float64 { return x.MBps }, false},
		})
	dr, ps, tm := figs[0], figs[1], figs[2]
	fmt.Printf("terminated / passthrough throughput: %.2fx\n", medianOf(tm, func(x httpsFigures) float64 { return x.MBps })/medianOf(ps, func(x httpsFigures) float64 { return x.MBps }))
	for _, x := range slices.Concat(dr, ps, tm) {
		if x.Bytes < 100<<20 {
			t.Errorf("a download got %d bytes, want %d", x.Bytes, 100<<20)
		}
	}
}

// benchColumn is one way a benchmark's probe reaches its server; the
// first column of a table is the baseline the others are set against.
type benchColumn[F any] struct {
	head     string
	diffHead string // over the column's difference from the baseline
	width    int
	run      func() F
}

// benchMetric is one row of a table: diff for a latency, set against the
// baseline by difference (ms), else a rate, set against it by ratio.
type benchMetric[F any] struct {
	name string
	f    func(F) float64
	diff bool
}

// benchTable runs every column once a round, in turn, so that a change
// in the host's load during the benchmark falls on all of them alike.
// It then prints title (a format for the number of rounds) and a table:
// per metric, the median of the rounds in each column, and each column
// but the baseline against the baseline. It returns the figures, a
// slice per column, for the caller's own checks.
func benchTable[F any](title string, nameWidth int, cols []benchColumn[F], metrics []benchMetric[F]) [][]F {
	rounds := benchRounds()
	figs := make([][]F, len(cols))
	for range rounds {
		for i, c := range cols {
			figs[i] = append(figs[i], c.run())
		}
	}
	fmt.Printf(title+"\n", rounds)
	fmt.Printf("%-*s", nameWidth, "")
	for _, c := range cols {
		fmt.Printf(" %*s", c.width, c.head)
	}
	for _, c := range cols[1:] {
		fmt.Printf(" %16s", c.diffHead)
	}
	fmt.Println()
	for _, m := range metrics {
		v := make([]float64, len(cols))
		fmt.Printf("%-*s", nameWidth, m.name)
		for i, c := range cols {
			v[i] = medianOf(figs[i], m.f)
			if m.diff {
				fmt.Printf(" %*.3f", c.width, v[i])
			} else {
				fmt.Printf(" %*.1f", c.width, v[i])
			}
		}
		for _, x := range v[1:] {
			if m.diff {
				fmt.Printf(" %+13.3f ms", x-v[0])
			} else {
				fmt.Printf(" %15.2fx", x/v[0])
			}
		}
		fmt.Println()
	}
	return figs
}
