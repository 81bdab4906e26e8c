package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/runtime/monitor"
)

const timelinePolicy = `version: "1.0"
name: timeline-it
sandbox:
  filesystem:
    allowed_writes: [/tmp]
  process: {allow_exec: true, max_processes: 64}
  network:
    allowed_egress:
      - {host: allowed.test, ports: [80, 443]}
`

// timelineScript is the workload: a shell script that runs python3 (a
// direct connection, captured by the gateway) and then curl (through the
// proxy the sandbox's environment names).
const timelineScript = `set -e
python3 -c "import socket; s = socket.create_connection(('allowed.test', 80), timeout=5); s.close(); print('python ok')"
curl -sS -m 5 -o /dev/null http://allowed.test/ && echo curl ok
exit 7
`

// timelineOf reads the only timeline in auditDir.
func timelineOf(t *testing.T, auditDir string) (string, []*monitor.Event) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(monitor.TimelineDir(auditDir), "*.jsonl"))
	if len(files) != 1 {
		t.Fatalf("timelines: %v", files)
	}
	var evs []*monitor.Event
	if err := monitor.ReadTimeline(files[0], func(e *monitor.Event) error { evs = append(evs, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(filepath.Base(files[0]), ".jsonl"), evs
}

func TestTimeline(t *testing.T) {
	e := newEgressEnv(t)
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	token := "tok-" + hex.EncodeToString(secret)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, openshellBin, "run", "--config", e.config, "--runsc", runscBin, "--state-dir", stateDir,
		"--rootfs", e.root, "--policy", writePolicy(t, timelinePolicy), "-e", "AGENT_TOKEN="+token,
		"--", "/bin/sh", "-c", timelineScript)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 {
		t.Fatalf("sandbox: %v\n%s\n%s", err, out.String(), errb.String())
	}
	if out.String() != "python ok\ncurl ok\n" {
		t.Fatalf("output %q\n%s", out.String(), errb.String())
	}
	assertNothingLeft(t, stateDir)
	id, evs := timelineOf(t, e.audit)
	for _, ev := range evs {
		t.Logf("%s %d<-%d %s %s %v %s %s", ev.Kind, ev.Pid, ev.PPid, ev.Binary, ev.Dest, ev.Argv, ev.Result, ev.Note)
	}

	// The process tree: sh (the container's process) → python3, curl.
	at := func(pred func(*monitor.Event) bool) int {
		return slices.IndexFunc(evs, pred)
	}
	iStart := at(func(e *monitor.Event) bool { return e.Kind == monitor.KindStart })
	if iStart < 0 || evs[iStart].Binary != "/bin/sh" || evs[iStart].Sandbox != id {
		t.Fatalf("no start of /bin/sh")
	}
	sh := evs[iStart].Pid
	iPy := at(func(e *monitor.Event) bool {
		return e.Kind == monitor.KindExec && strings.HasPrefix(e.Binary, "/usr/bin/python3")
	})
	iCurl := at(func(e *monitor.Event) bool { return e.Kind == monitor.KindExec && e.Binary == "/usr/bin/curl" })
	if iPy < 0 || iCurl < 0 {
		t.Fatalf("exec of python3 (%d) or curl (%d) missing", iPy, iCurl)
	}
	py, curl := evs[iPy], evs[iCurl]
	if py.PPid != sh || curl.PPid != sh {
		t.Errorf("parents: python3's %d, curl's %d, want the shell %d", py.PPid, curl.PPid, sh)
	}
	if py.Cwd != "/" || py.UID == nil || len(py.Argv) < 3 || py.Argv[0] != "python3" || curl.Argv[len(curl.Argv)-1] != "http://allowed.test/" {
		t.Errorf("exec details: python3 %+v curl %+v", py, curl)
	}
	if !slices.Contains(curl.EnvNames, "AGENT_TOKEN") {
		t.Errorf("curl's environment names: %v", curl.EnvNames)
	}
	// Each connect is its process's, in order: python3 to allowed.test:80
	// (its address in the fake internet), curl to the gateway's proxy.
	proxy := egress.GatewayAddr.Addr().String() + ":" + strconv.Itoa(egress.ProxyPort)
	iPyConn := at(func(e *monitor.Event) bool {
		return e.Kind == monitor.KindConnect && e.Pid == py.Pid && strings.HasSuffix(e.Dest, ":80") && e.Binary == py.Binary
	})
	iCurlConn := at(func(e *monitor.Event) bool {
		return e.Kind == monitor.KindConnect && e.Pid == curl.Pid && e.Dest == proxy && e.Binary == "/usr/bin/curl"
	})
	iPyExit := at(func(e *monitor.Event) bool { return e.Kind == monitor.KindExit && e.Pid == py.Pid })
	iShExit := at(func(e *monitor.Event) bool { return e.Kind == monitor.KindExit && e.Pid == sh })
	if !(iStart < iPy && iPy < iPyConn && iPyConn < iPyExit && iPyExit < iCurl && iCurl < iCurlConn && iCurlConn < iShExit) {
		t.Errorf("order: start %d, python3 exec %d connect %d exit %d, curl exec %d connect %d, shell exit %d",
			iStart, iPy, iPyConn, iPyExit, iCurl, iCurlConn, iShExit)
	}
	if iShExit >= 0 && (evs[iShExit].ExitCode == nil || *evs[iShExit].ExitCode != 7) {
		t.Errorf("the shell's exit: %+v", evs[iShExit])
	}
	for _, ev := range evs {
		if ev.Kind == monitor.KindDropped {
			t.Errorf("events dropped: %+v", ev)
		}
	}

	// No file the runtime wrote holds the secret.
	for _, dir := range []string{e.audit, stateDir} {
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			if data, err := os.ReadFile(p); err == nil && bytes.Contains(data, []byte(token)) {
				t.Errorf("%s holds the environment's secret", p)
			}
			return nil
		})
	}

	// The replay names the tree.
	rc, rout, rerr := runCmd(t, openshellBin, "timeline", "--config", e.config, id)
	if rc != 0 || !strings.Contains(rout, "exec /usr/bin/curl") || !strings.Contains(rout, "(the egress proxy)") {
		t.Errorf("openshell timeline: %d\n%s\n%s", rc, rout, rerr)
	}
}

func runCmd(t *testing.T, name string, args ...string) (int, string, string) {
	t.Helper()
	c := exec.Command(name, args...)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// TestTimelineBench times `openshell run -- /bin/true` with and without
// the monitor, interleaved, and prints the medians: the monitor's cost
// at start (goal: at most +20 ms). It runs only when OPENSHELL_BENCH is
// set.
func TestTimelineBench(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") == "" {
		t.Skip("a benchmark: set OPENSHELL_BENCH=1 (make bench does)")
	}
	runs := 15
	if v, err := strconv.Atoi(os.Getenv("BENCH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	pf := writePolicy(t, "version: \"1.0\"\nsandbox:\n  process: {allow_exec: true}\n")
	cfg := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfg, []byte("[egress]\naudit_dir = \""+t.TempDir()+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kinds := []string{"--timeline=false", "--timeline=true"}
	times := make([][]time.Duration, len(kinds))
	for i := -1; i < runs; i++ {
		for k, flag := range kinds {
			start := time.Now()
			c := exec.Command(openshellBin, "run", "--config", cfg, "--runsc", runscBin, "--state-dir", stateDir, "--policy", pf, flag, "--", "/bin/true")
			if out, err := c.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", flag, err, out)
			}
			if i >= 0 {
				times[k] = append(times[k], time.Since(start))
			}
		}
	}
	med := make([]time.Duration, len(kinds))
	for k := range kinds {
		slices.Sort(times[k])
		med[k] = times[k][len(times[k])/2]
		t.Logf("openshell run %s -- /bin/true: median %v of %d", kinds[k], med[k].Round(100*time.Microsecond), runs)
	}
	t.Logf("the monitor adds %v to start-to-exit (%.1f%%)", (med[1] - med[0]).Round(100*time.Microsecond), 100*float64(med[1]-med[0])/float64(med[0]))
}
