package suggest

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/openshell/openshell/policyhook/policy"
	audit "github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/runtime/monitor"
)

func TestLearn(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"ws/out", "ws/unused", "data/a", "data/b"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ws, data := filepath.Join(root, "ws"), filepath.Join(root, "data")
	yaml := `version: "1.0"
name: wide
sandbox:
  filesystem:
    allowed_reads: [` + data + `, /srv]
    allowed_writes: [` + ws + `, /tmp]
  network:
    allowed_egress:
      - {host: a.test, ports: [80, 443], rate_limit: 10/second}
      - {host: unused.test, port: 443}
  process: {max_processes: 64}
  resources: {max_memory_mb: 512}
  environment: {HOME: /tmp}
`
	p, err := policy.Parse("wide.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	ok := func(kind, host string, port int, decision string) *audit.Event {
		return &audit.Event{Kind: kind, Host: host, Port: port, Decision: decision}
	}
	in := Input{
		Sandbox: "sb", Policy: p, Root: "/",
		Audit: []*audit.Event{
			ok("dns", "a.test", 0, "allow"),
			ok("http", "a.test", 80, "allow"),
			ok("connect", "b.test", 443, "audit"),
			ok("tls", "b.test", 8443, "audit"),
			ok("connect", "denied.test", 443, "deny"),
			ok("tcp", "93.184.216.34", 22, "audit"),
			ok("dns", "lookup-only.test", 0, "audit"),
			ok("connect", "evil\n.test", 443, "audit"),
		},
		Timeline: []*monitor.Event{
			{Kind: "start", Pid: 1, PidStart: 1, Binary: "/bin/sh"},
			{Kind: "clone", Pid: 1, PidStart: 1, Child: 2, ChildStart: 2},
			{Kind: "exec", Pid: 2, PidStart: 2, Binary: "/usr/bin/python3.11"},
			{Kind: "open", Pid: 2, Path: "/usr/lib/python3.11/os.py", Flags: "O_RDONLY|O_CLOEXEC", Result: "ok"},
			{Kind: "open", Pid: 2, Path: data + "/a/in.txt", Flags: "O_RDONLY", Result: "ok"},
			{Kind: "open", Pid: 2, Path: ws + "/out/result.txt", Flags: "O_WRONLY|O_CREAT|O_TRUNC", Result: "ok"},
			{Kind: "open", Pid: 2, Path: ws + "/out/new/deep.txt", Flags: "O_WRONLY|O_CREAT", Result: "ok"},
			{Kind: "open", Pid: 2, Path: "/srv/missing", Flags: "O_RDONLY", Result: "ENOENT"},
			{Kind: "open", Pid: 2, Path: "/tmp/x/y", Flags: "O_RDWR|O_CREAT", Result: "ok"},
			{Kind: "open", Pid: 2, Path: "/proc/self/status", Flags: "O_RDONLY", Result: "ok"},
			{Kind: "open", Pid: 2, Path: data + "/../etc", Flags: "O_RDONLY", Result: "ok"},
			{Kind: "exit", Pid: 2, PidStart: 2},
			{Kind: "exit", Pid: 1, PidStart: 1},
		},
	}
	s, err := Learn(in)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Reads, []string{data + "/a"}) || !slices.Equal(s.Writes, []string{"/tmp", ws + "/out"}) {
		t.Errorf("reads %v writes %v", s.Reads, s.Writes)
	}
	if !s.AllowExec || s.PeakProcs != 2 || s.MaxProcesses != 16 {
		t.Errorf("exec %v peak %d max_processes %d", s.AllowExec, s.PeakProcs, s.MaxProcesses)
	}
	if len(s.Egress) != 2 || s.Egress[0].Host != "a.test" || !slices.Equal(s.Egress[0].Ports, []int{80}) || s.Egress[0].From == nil ||
		s.Egress[1].Host != "b.test" || !slices.Equal(s.Egress[1].Ports, []int{443, 8443}) || s.Egress[1].From != nil {
		t.Errorf("egress %+v", s.Egress)
	}
	notes := strings.Join(s.Notes, "\n")
	for _, want := range []string{`"93.184.216.34":22`, `"lookup-only.test" was resolved`, `"evil\n.test"`, `not a clean absolute path`} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	for _, format := range []string{FormatSeed, FormatOpenShell} {
		o, err := s.Write(format)
		if err != nil {
			t.Fatalf("%s: %v", format, err)
		}
		for _, line := range strings.Split(string(o.YAML), "\n") {
			if strings.Contains(line, "evil") && !strings.HasPrefix(line, "# note: ") {
				t.Errorf("%s: a sandbox string outside a note: %q", format, line)
			}
		}
		if format == FormatOpenShell {
			continue // it cannot say max_processes, resources or limits
		}
		// Narrower but for what only learning allowed (b.test).
		for _, w := range o.Widenings {
			if !strings.Contains(w.String(), "b.test") {
				t.Errorf("%s: widens %s", format, w)
			}
		}
		if len(o.Widenings) == 0 {
			t.Errorf("%s: b.test, which only learning allowed, is not reported as a widening", format)
		}
		{
			if o.Policy.Process.MaxProcesses != 16 || o.Policy.Resources.MaxMemoryMB != 512 || len(o.Policy.Env) != 1 ||
				o.Policy.Network.Egress[0].RateLimit == nil {
				t.Errorf("seed: %+v %+v %+v", o.Policy.Process, o.Policy.Resources, o.Policy.Network.Egress[0])
			}
		}
	}
	if _, err := s.Write("toml"); err == nil {
		t.Error("an unknown format was written")
	}
}

func TestCollapseNeverRoot(t *testing.T) {
	got := collapse("/", []access{{dir: "/"}, {dir: "/usr/lib"}, {dir: "/usr/share/x"}, {dir: "/etc"}}, "/")
	if !slices.Equal(got, []string{"/etc", "/usr"}) {
		t.Errorf("collapse under /: %v", got)
	}
}

// A host every connection to which the sentry attributed to binaries on
// read-only mounts gets those binaries; any other connection (no binary,
// or one on a writable mount) leaves its host open to every process.
func TestLearnBinaries(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte("version: \"1.0\"\nname: b\nsandbox: {network: {allowed_egress: [{host: a.test, port: 443}]}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	ev := func(host, bin string, writable bool) *audit.Event {
		return &audit.Event{Kind: "connect", Host: host, Port: 443, Decision: "audit", Binary: bin, BinaryWritable: writable}
	}
	s, err := Learn(Input{Sandbox: "sb", Policy: p, Audit: []*audit.Event{
		ev("a.test", "/usr/bin/git", false), ev("a.test", "/usr/bin/curl", false), ev("a.test", "/usr/bin/git", false),
		ev("b.test", "/usr/bin/curl", false), ev("b.test", "", false),
		ev("c.test", "/tmp/curl", true),
		ev("d.test", "/usr/bin/python3.11", false),
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"a.test": {"/usr/bin/curl", "/usr/bin/git"}, "b.test": nil, "c.test": nil, "d.test": {"/usr/bin/python3.11"}}
	for _, r := range s.Egress {
		if !slices.Equal(r.Binaries, want[r.Host]) {
			t.Errorf("%s: binaries %v, want %v", r.Host, r.Binaries, want[r.Host])
		}
	}
	for _, format := range []string{FormatSeed, FormatOpenShell} {
		out, err := s.Write(format)
		if err != nil {
			t.Fatalf("%s: %v", format, err)
		}
		got := map[string][]string{}
		for _, r := range out.Policy.Network.Egress {
			got[r.Host] = r.Binaries
		}
		for h, b := range want {
			if !slices.Equal(got[h], b) {
				t.Errorf("%s: %s binaries %v, want %v\n%s", format, h, got[h], b, out.YAML)
			}
		}
	}
}

// max_memory_mb is the recorded peak and half again, rounded up to 64 MiB,
// at least 128, never above the policy's own limit; with no peak recorded
// the policy's limit is kept.
func TestLearnMemory(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name   string
		limit  int64 // the policy's max_memory_mb
		peak   int64
		want   int64 // suggested max_memory_mb
		header string
	}{
		{"no peak, no limit", 0, 0, 0, "Memory: not recorded; the policy's limit is kept."},
		{"no peak keeps the limit", 512, 0, 512, "Memory: not recorded; the policy's limit is kept."},
		{"small peak", 0, 20 * mib, 128, "Memory: peak 20 MiB; max_memory_mb 128 (1.5x, rounded up)."},
		{"1.5x on a step", 0, 128 * mib, 192, "Memory: peak 128 MiB; max_memory_mb 192 (1.5x, rounded up)."},
		{"rounded up", 0, 200*mib + 1, 320, "Memory: peak 201 MiB; max_memory_mb 320 (1.5x, rounded up)."},
		{"under the limit", 1024, 300 * mib, 512, "Memory: peak 300 MiB; max_memory_mb 512 (1.5x, rounded up)."},
		{"never above the limit", 400, 300 * mib, 400, "Memory: peak 300 MiB; max_memory_mb 400 (the policy's: 1.5x, rounded up, would be more)."},
		{"an absurd peak", 0, 1 << 62, 3 << 29, "Memory: peak 1073741824 MiB; max_memory_mb 1610612736 (1.5x, rounded up)."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			yaml := "version: \"1.0\"\nname: m\nsandbox: {process: {max_processes: 8}}\n"
			if tc.limit > 0 {
				yaml = "version: \"1.0\"\nname: m\nsandbox: {process: {max_processes: 8}, resources: {max_memory_mb: " + strconv.FormatInt(tc.limit, 10) + "}}\n"
			}
			p, err := policy.Parse("m.yaml", []byte(yaml))
			if err != nil {
				t.Fatal(err)
			}
			s, err := Learn(Input{Sandbox: "sb", Policy: p, MemoryPeakBytes: tc.peak})
			if err != nil {
				t.Fatal(err)
			}
			o, err := s.Write(FormatSeed)
			if err != nil {
				t.Fatal(err)
			}
			if got := o.Policy.Resources.MaxMemoryMB; got != tc.want {
				t.Errorf("max_memory_mb %d, want %d\n%s", got, tc.want, o.YAML)
			}
			if !strings.Contains(string(o.YAML), tc.header) {
				t.Errorf("header lacks %q:\n%s", tc.header, o.YAML)
			}
			if len(o.Widenings) != 0 {
				t.Errorf("widens: %v", o.Widenings)
			}
		})
	}
}
