package cli

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/runtime/monitor"
)

func TestTimelineReplay(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(monitor.TimelineDir(dir), 0o750); err != nil {
		t.Fatal(err)
	}
	tl, err := monitor.OpenTimeline(monitor.TimelineFile(dir, "sb1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().Add(-time.Minute)
	code := func(c int) *int { return &c }
	for _, e := range []*monitor.Event{
		{Time: t0, Kind: monitor.KindStart, Pid: 1, Binary: "/bin/sh", Argv: []string{"/bin/sh", "run.sh"}, Cwd: "/work"},
		{Time: t0.Add(1), Kind: monitor.KindClone, Pid: 1, Child: 2, Binary: "/bin/sh"},
		{Time: t0.Add(2), Kind: monitor.KindExec, Pid: 2, PPid: 1, Binary: "/usr/bin/curl", Argv: []string{"curl", "\x1b[31mhttp://x"}},
		{Time: t0.Add(3), Kind: monitor.KindConnect, Pid: 2, PPid: 1, Dest: "169.254.213.1:3128", Result: "ok", Binary: "/usr/bin/curl"},
		{Time: t0.Add(4), Kind: monitor.KindExit, Pid: 2, PPid: 1, ExitCode: code(0), Binary: "/usr/bin/curl"},
		{Time: t0.Add(5), Kind: monitor.KindClone, Pid: 1, Child: 3, Binary: "/bin/sh"},
		{Time: t0.Add(6), Kind: monitor.KindExec, Pid: 3, PPid: 1, Binary: "/usr/bin/python3", Argv: []string{"python3", "-c", "print(1)"}},
		{Time: t0.Add(7), Kind: monitor.KindDropped, Dropped: 3, Total: 3},
		{Time: t0.Add(8), Kind: monitor.KindExit, Pid: 1, ExitCode: code(0), Binary: "/bin/sh"},
	} {
		e.Sandbox = "sb1"
		if err := tl.Write(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := tl.Close(); err != nil {
		t.Fatal(err)
	}
	c, out, errs := run(t, "timeline", "sb1", "--dir", dir)
	if c != 0 {
		t.Fatalf("exit %d: %s", c, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 9 {
		t.Fatalf("%d lines:\n%s", len(lines), out)
	}
	for i, want := range []string{
		" [1] start /bin/sh run.sh",
		" [1] fork → [2]",
		"   [2] exec /usr/bin/curl curl \\x1b[31mhttp://x",
		"   [2] connect 169.254.213.1:3128 ok (the egress proxy)  curl",
		"   [2] exit 0  curl",
		" [1] fork → [3]",
		"   [3] exec /usr/bin/python3 python3 -c print(1)",
		" ! 3 event(s) dropped",
		" [1] exit 0  sh",
	} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d = %q, want %q", i, lines[i], want)
		}
	}
	if strings.Contains(out, "\x1b") {
		t.Error("an escape sequence reached the terminal")
	}
	_, out, _ = run(t, "timeline", "sb1", "--dir", dir, "--pid", "3", "--json")
	if n := strings.Count(out, "\n"); n != 2 || !strings.Contains(out, `"child":3`) || !strings.Contains(out, "python3") {
		t.Errorf("--pid 3 --json:\n%s", out)
	}
	if c, _, _ := run(t, "timeline", "nosuch", "--dir", dir); c != exitFailed {
		t.Errorf("missing sandbox: exit %d", c)
	}
	if c, _, _ := run(t, "timeline", "../x", "--dir", dir); c != exitUsage {
		t.Errorf("bad id: exit %d", c)
	}
}
