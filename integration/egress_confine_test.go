package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/runtime"
	"github.com/openshell/openshell/runtime/egress"
)

// confineProbe asks for an allowed and a denied host, then waits while
// the test looks at the gateway, then asks again.
const confineProbe = `
import subprocess, sys
def get(url):
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5", url], capture_output=True, text=True)
    return r.stdout
print("allowed", get("http://allowed.test/"), "denied", get("http://denied.test/"), flush=True)
sys.stdin.readline()
print("allowed", get("http://allowed.test/"), "denied", get("http://denied.test/"), flush=True)
`

// TestEgressGatewayConfined: the process that serves the sandbox's
// network runs as an unprivileged user with no capability in any set, no
// new privileges, a seccomp filter, and its own memory and pids cgroup;
// allowed requests still go through and denied ones do not; and the
// cgroup is gone with the sandbox.
func TestEgressGatewayConfined(t *testing.T) {
	e := newEgressEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, stdin, lines, errb := e.startPaused(t, ctx, writePolicy(t, egressPolicy), confineProbe, "allowed 200 denied 403")
	id := sandboxPid(t, "egress-it")
	_, st, err := runtime.Open(stateDir, id)
	if err != nil || st.Gateway == nil {
		t.Fatalf("state: %v", err)
	}
	serving := childOf(t, st.Gateway.Pid)
	status := procStatus(t, serving)
	for _, k := range []string{"Uid", "Gid"} {
		for _, id := range strings.Fields(status[k]) {
			if id == "0" {
				t.Errorf("%s: %s", k, status[k])
			}
		}
	}
	if g := strings.TrimSpace(status["Groups"]); g != "" {
		t.Errorf("supplementary groups: %s", g)
	}
	for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
		if v, _ := strconv.ParseUint(status[k], 16, 64); v != 0 {
			t.Errorf("%s: %s", k, status[k])
		}
	}
	if status["NoNewPrivs"] != "1" {
		t.Errorf("NoNewPrivs: %s", status["NoNewPrivs"])
	}
	if status["Seccomp"] != "2" {
		t.Errorf("Seccomp: %s", status["Seccomp"])
	}
	cgroups := egress.GatewayCgroups(id)
	for _, d := range cgroups {
		procs, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil || !strings.Contains(" "+strings.Join(strings.Fields(string(procs)), " ")+" ", fmt.Sprintf(" %d ", serving)) {
			t.Errorf("the serving process %d is not in %s: %q %v", serving, d, procs, err)
		}
	}
	for _, f := range []string{"memory.max", "memory.limit_in_bytes"} {
		if data, err := os.ReadFile(filepath.Join(cgroups[0], f)); err == nil {
			if v := strings.TrimSpace(string(data)); v != strconv.Itoa(egress.DefaultGatewayMemoryMax) {
				t.Errorf("%s: %s", f, v)
			}
			t.Logf("gateway cgroup %s: %s = %s, VmRSS %s", cgroups[0], f, strings.TrimSpace(string(data)), status["VmRSS"])
		}
	}
	if data, err := os.ReadFile(filepath.Join(cgroups[len(cgroups)-1], "pids.max")); err != nil || strings.TrimSpace(string(data)) != strconv.Itoa(egress.DefaultGatewayPidsMax) {
		t.Errorf("pids.max: %q %v", data, err)
	}
	// Its Go runtime runs on one thread at a time and collects before the
	// cgroup's bound.
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", serving))
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Split(string(environ), "\x00")
	for _, want := range []string{"GOMAXPROCS=1", fmt.Sprintf("GOMEMLIMIT=%d", egress.DefaultGatewayMemoryMax/4*3)} {
		k, _, _ := strings.Cut(want, "=")
		if i := slices.IndexFunc(env, func(kv string) bool { return strings.HasPrefix(kv, k+"=") }); i < 0 || env[i] != want {
			t.Errorf("the serving process's environment: %s is not the last %s", want, k)
		}
	}
	// The keeper holds no network socket: everything the sandbox sends
	// reaches the serving process only. Its channels to the serving
	// process (audit rotation, credentials) are Unix socket pairs.
	unixTable, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", st.Gateway.Pid))
	unixSockets := map[string]bool{}
	for _, l := range strings.Split(string(unixTable), "\n") {
		if f := strings.Fields(l); len(f) >= 7 {
			unixSockets[f[6]] = true // the Inode column
		}
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", st.Gateway.Pid))
	for _, fd := range fds {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", st.Gateway.Pid, fd.Name()))
		inode, ok := strings.CutPrefix(l, "socket:[")
		if !ok {
			continue
		}
		if !unixSockets[strings.TrimSuffix(inode, "]")] {
			t.Errorf("the keeper holds a socket that is not a Unix one: fd %s (%s)", fd.Name(), l)
		}
	}
	// The keeper keeps CAP_KILL and CAP_DAC_READ_SEARCH only, in every
	// set and on every thread, and cannot regain the rest.
	const keeperCaps = 1<<5 | 1<<2 // CAP_KILL, CAP_DAC_READ_SEARCH
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", st.Gateway.Pid))
	for _, task := range tasks {
		ks := procStatusFile(t, fmt.Sprintf("/proc/%d/task/%s/status", st.Gateway.Pid, task.Name()))
		for k, want := range map[string]uint64{"CapInh": 0, "CapPrm": keeperCaps, "CapEff": keeperCaps, "CapBnd": keeperCaps, "CapAmb": 0} {
			if v, _ := strconv.ParseUint(ks[k], 16, 64); v != want {
				t.Errorf("keeper thread %s: %s %s, want %016x", task.Name(), k, ks[k], want)
			}
		}
		if ks["NoNewPrivs"] != "1" {
			t.Errorf("keeper thread %s: NoNewPrivs %s", task.Name(), ks["NoNewPrivs"])
		}
	}
	keeper := procStatus(t, st.Gateway.Pid)
	t.Logf("keeper %d: %d threads, CapEff %s CapBnd %s NoNewPrivs %s", st.Gateway.Pid, len(tasks), keeper["CapEff"], keeper["CapBnd"], keeper["NoNewPrivs"])
	fmt.Fprintln(stdin)
	if !lines.Scan() || lines.Text() != "allowed 200 denied 403" {
		t.Errorf("after the checks: %q", lines.Text())
	}
	if err := c.Wait(); err != nil {
		t.Fatalf("sandbox: %v\n%s", err, errb.String())
	}
	for _, d := range cgroups {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("gateway cgroup left behind: %s", d)
		}
	}
	assertNothingLeft(t, stateDir)
}

// childOf is the one child of pid.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	var kids []int
	for _, en := range entries {
		p, err := strconv.Atoi(en.Name())
		if err != nil {
			continue
		}
		if s := procStatus(nil, p); s["PPid"] == strconv.Itoa(pid) {
			kids = append(kids, p)
		}
	}
	if len(kids) != 1 {
		t.Fatalf("gateway %d has children %v, want one serving process", pid, kids)
	}
	return kids[0]
}

func procStatus(t *testing.T, pid int) map[string]string {
	return procStatusFile(t, fmt.Sprintf("/proc/%d/status", pid))
}

func procStatusFile(t *testing.T, path string) map[string]string {
	data, err := os.ReadFile(path)
	if err != nil && t != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}
