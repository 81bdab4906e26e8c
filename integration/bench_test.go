package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestCtrStartToExit times `ctr run --rm IMAGE ID /bin/true` through
// io.openshell.v1, through containerd's runc shim driving bare runsc, and
// through runc, interleaved, and prints medians and ratios. It runs only
// when OPENSHELL_BENCH is set (make bench sets it).
func TestCtrStartToExit(t *testing.T) {
	requireBench(t)
	c := startContainerd(t)
	runcBin, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("runc not installed (make deps)")
	}
	runs := benchRuns(15)
	kinds := []struct {
		name string
		args []string
	}{
		{"runc (runc shim)", []string{"--runtime", "io.containerd.runc.v2", "--runc-binary", runcBin}},
		{"bare runsc (runc shim)", []string{"--runtime", "io.containerd.runc.v2", "--runc-binary", runscBin}},
		{"openshell (io.openshell.v1)", []string{"--runtime", "io.openshell.v1"}},
	}
	times := make([][]time.Duration, len(kinds))
	n := 0
	for i := -1; i < runs; i++ { // i == -1 warms caches and is not counted
		for k, kind := range kinds {
			n++
			args := append(append([]string{"run", "--rm"}, kind.args...), testImage, "bench-"+strconv.Itoa(n), "/bin/true")
			start := time.Now()
			if r := c.ctrRun(t, args...); r.code != 0 {
				t.Fatalf("%s: exit %d: %s", kind.name, r.code, r.stderr)
			}
			if i >= 0 {
				times[k] = append(times[k], time.Since(start))
			}
		}
	}
	med := make([]float64, len(kinds))
	for k := range kinds {
		slices.Sort(times[k])
		med[k] = float64(times[k][len(times[k])/2].Microseconds()) / 1000
	}
	fmt.Printf("ctr run --rm /bin/true, %d interleaved runs each (medians)\n", runs)
	fmt.Printf("%-30s %12s %10s %16s\n", "", "median (ms)", "vs runc", "vs bare runsc")
	for k, kind := range kinds {
		fmt.Printf("%-30s %12.1f %9.2fx %15.2fx\n", kind.name, med[k], med[k]/med[0], med[k]/med[1])
	}
	c.assertClean(t)
}

// requireBench skips a benchmark unless OPENSHELL_BENCH is set.
func requireBench(t *testing.T) {
	t.Helper()
	if os.Getenv("OPENSHELL_BENCH") == "" {
		t.Skip("a benchmark: set OPENSHELL_BENCH=1 (make bench does)")
	}
}

// benchRuns is BENCH_RUNS where it is a positive number, else def.
func benchRuns(def int) int {
	if v, err := strconv.Atoi(os.Getenv("BENCH_RUNS")); err == nil && v > 0 {
		return v
	}
	return def
}

// benchRounds is how many rounds the network benchmarks run, each column
// once a round: BENCH_ROUNDS where it is a positive number, else 3
// (BENCH_RUNS is the start-time benchmarks' count, 15 in make bench,
// which would make these run for many minutes).
func benchRounds() int {
	if v, err := strconv.Atoi(os.Getenv("BENCH_ROUNDS")); err == nil && v > 0 {
		return v
	}
	return 3
}

// probeFigures runs c, a probe that prints one JSON object, and decodes
// that object.
func probeFigures[F any](t *testing.T, c *exec.Cmd) F {
	t.Helper()
	out, err := c.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("%s: %v\n%s\n%s", c.Args[0], err, out, stderr)
	}
	var f F
	if err := json.Unmarshal(out, &f); err != nil {
		t.Fatalf("probe output %q: %v", out, err)
	}
	return f
}

// medianOf is the median of f over the rounds fs (the upper of the two
// middle ones for an even count).
func medianOf[F any](fs []F, f func(F) float64) float64 {
	v := make([]float64, len(fs))
	for i, x := range fs {
		v[i] = f(x)
	}
	slices.Sort(v)
	return v[len(v)/2]
}
