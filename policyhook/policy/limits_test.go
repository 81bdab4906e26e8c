package policy

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func seedPaths(body string) string {
	return "version: \"1.0\"\nsandbox:\n  filesystem: {" + body + "}\n"
}

// TestPathRejections: control characters in paths, and writable kernel
// paths, in both formats.
func TestPathRejections(t *testing.T) {
	runRejections(t, []rejection{
		{"nul", seedPaths(`allowed_reads: ["/data\0/x"]`), `p.yaml:3:32: sandbox.filesystem.allowed_reads[0]: "/data\x00/x" contains a control character`},
		{"newline", seedPaths(`allowed_writes: ["/out\n/etc"]`), `p.yaml:3:33: sandbox.filesystem.allowed_writes[0]: "/out\n/etc" contains a control character`},
		{"escape-v1", "version: 1\nfilesystem_policy: {read_only: [\"/a\\e]0;pwned\\a\"]}\n", `p.yaml:2:33: filesystem_policy.read_only[0]: "/a\x1b]0;pwned\a" contains a control character`},
		{"c1-control", seedPaths(`system_paths: ["/usr\u009b"]`), `p.yaml:3:31: sandbox.filesystem.system_paths[0]: "/usr\u009b" contains a control character`},
		{"binary-path-v1", "version: 1\nnetwork_policies:\n  k: {endpoints: [{host: a.com, port: 1}], binaries: [{path: \"/bin/x\\n\"}]}\n", `p.yaml:3:62: network_policies.k.binaries[0].path: "/bin/x\n" contains a control character`},
		{"http-path-v1", "version: 1\nnetwork_policies:\n  k: {endpoints: [{host: a.com, port: 1, protocol: rest, rules: [{allow: {method: GET, path: \"/a\\r\\nX: y\"}}]}]}\n", `p.yaml:3:94: network_policies.k.endpoints[0].rules[0].allow.path: "/a\r\nX: y" contains a control character`},
		{"policy-name-v1", "version: 1\nnetwork_policies:\n  k: {name: \"a\\x1bb\", endpoints: [{host: a.com, port: 1}]}\n", `p.yaml:3:13: network_policies.k.name: "a\x1bb" contains a control character`},
		{"name-seed", "version: \"1.0\"\nname: \"a\\tb\"\nsandbox: {}\n", `p.yaml:2:7: name: "a\tb" contains a control character`},
		{"writable-proc", seedPaths(`allowed_writes: [/proc]`), `p.yaml:3:33: sandbox.filesystem.allowed_writes[0]: /proc is under /proc, /sys or /dev, which can never be writable`},
		{"writable-sys-below", seedPaths(`allowed_writes: [/sys/fs/cgroup]`), `p.yaml:3:33: sandbox.filesystem.allowed_writes[0]: /sys/fs/cgroup is under /proc, /sys or /dev, which can never be writable`},
		{"writable-dev-shm", seedPaths(`allowed_writes: [/dev/shm]`), `p.yaml:3:33: sandbox.filesystem.allowed_writes[0]: /dev/shm is under /proc, /sys or /dev, which can never be writable`},
		{"writable-dev-v1", "version: 1\nfilesystem_policy: {read_write: [/dev]}\n", `p.yaml:2:34: filesystem_policy.read_write[0]: /dev is under /proc, /sys or /dev, which can never be writable`},
	})
}

// TestKernelPathsReadable: /proc and /dev/urandom may be read, and
// /dev/null written, as NVIDIA OpenShell's own default policy does.
func TestKernelPathsReadable(t *testing.T) {
	doc := "version: 1\nfilesystem_policy: {read_only: [/proc, /dev/urandom, /sys], read_write: [/tmp, /dev/null]}\n"
	if _, err := Parse("p.yaml", []byte(doc)); err != nil {
		t.Fatal(err)
	}
}

// TestYAMLRejections: anchors, aliases and merge keys are refused where
// they are, with file, line and field.
func TestYAMLRejections(t *testing.T) {
	runRejections(t, []rejection{
		{"merge-key-v1", "version: 1\nnetwork_policies:\n  <<: {k: {endpoints: [{host: a.com, port: 1}]}}\n", "p.yaml:3:3: network_policies.<<: is a merge key (<<): YAML anchors, aliases and merge keys are not allowed in a policy; write the value out"},
		{"merge-key-seed", "version: \"1.0\"\nsandbox:\n  <<: {process: {}}\n", "p.yaml:3:3: sandbox.<<: is a merge key (<<): YAML anchors, aliases and merge keys are not allowed in a policy; write the value out"},
		{"anchor", "version: 1\nfilesystem_policy: {read_only: [&x /usr], read_write: [*x]}\n", "p.yaml:2:33: filesystem_policy.read_only[0]: has an anchor (&x): YAML anchors, aliases and merge keys are not allowed in a policy; write the value out"},
		{"alias-key", "version: 1\nnetwork_policies:\n  &k a: {endpoints: [{host: a.com, port: 1}]}\n  *k : {endpoints: [{host: b.com, port: 1}]}\n", "p.yaml:3:3: network_policies.a: has an anchor (&k): YAML anchors, aliases and merge keys are not allowed in a policy; write the value out"},
		{"alias-version", "x: &v 1\nversion: *v\n", "p.yaml:2:10: version: YAML anchors, aliases and merge keys are not allowed in a policy; write the value out"},
	})
}

// TestAliasedErrorOnce: one bad value behind aliases was one error per
// use (28,000 lines from a small file); now each anchor and alias is one
// error, and nothing behind them is expanded.
func TestAliasedErrorOnce(t *testing.T) {
	doc := "version: \"1.0\"\nsandbox:\n  environment: {A: &a [x, x, x, x, x, x, x, x, x, x]}\n" +
		"  filesystem:\n    allowed_reads: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n" +
		"    allowed_writes: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
	list := parseErrors(t, doc)
	if lines := strings.Count(list.Error(), "\n") + 1; lines != 12 {
		t.Errorf("%d lines of errors, want 12 (2 anchors, 10 aliases; what an anchor holds is not looked into):\n%v", lines, list)
	}
}

// TestErrorCap: at most MaxErrors errors, then one line counting the rest,
// placed at the first one left out.
func TestErrorCap(t *testing.T) {
	var paths []string
	for i := range 200 {
		paths = append(paths, fmt.Sprintf("rel%d", i))
	}
	list := parseErrors(t, seedPaths("allowed_reads: ["+strings.Join(paths, ", ")+"]"))
	if len(list) != MaxErrors+1 {
		t.Fatalf("%d errors, want %d", len(list), MaxErrors+1)
	}
	last := list[MaxErrors]
	if got, want := last.Error(), fmt.Sprintf("p.yaml:3:%d: and 150 more errors", list[MaxErrors-1].Pos.Column+len(paths[MaxErrors-1])+2); got != want {
		t.Errorf("last line = %q, want %q", got, want)
	}
}

// TestErrorsEscapeControlCharacters: no error carries a raw control
// character, whichever part of the file it came from (keys become field
// paths, and were echoed raw).
func TestErrorsEscapeControlCharacters(t *testing.T) {
	for _, doc := range []string{
		"version: 1\nnetwork_policies:\n  \"k\\e[31m\\u202e\": {endpoints: []}\n",
		"version: \"1.0\"\nsandbox:\n  \"\\e]0;x\\a\": {}\n",
		"version: \"1.0\"\nsandbox: {environment: {\"A\\nB\": x}}\n",
		"version: \"1.0\"\nsandbox: {filesystem: {allowed_reads: [\"/a\\0\", \"/a\\0\"]}}\n",
		"version: \"1.0\"\nsandbox: {network: {allowed_egress: [{host: \"a.com\\u2028\", port: 1}]}}\n",
	} {
		list := parseErrors(t, doc)
		msg := list.Error()
		for _, e := range list {
			for _, s := range []string{e.File, e.Field, e.Msg} {
				if i := strings.IndexFunc(s, unprintable); i >= 0 {
					t.Errorf("%q holds %q", s, s[i:])
				}
			}
		}
		if strings.Count(msg, "\n") != len(list)-1 {
			t.Errorf("%d errors printed on %d lines:\n%s", len(list), strings.Count(msg, "\n")+1, msg)
		}
		if !strings.Contains(msg, `\`) {
			t.Errorf("nothing escaped in %q", msg)
		}
	}
	// A file name comes from an annotation too.
	if _, err := Parse("a\x1b[2J.yaml", []byte("x: 1\n")); err == nil || !strings.HasPrefix(err.Error(), `a\x1b[2J.yaml:1:1: `) {
		t.Errorf("file name not escaped: %q", err)
	}
}

// boundPolicy is a seed policy with paths filesystem paths in all (the
// six default system paths included) and rules egress rules.
func boundPolicy(paths, rules int) []byte {
	var b strings.Builder
	b.WriteString("version: \"1.0\"\nsandbox:\n  filesystem:\n    allowed_reads: [")
	for i := range paths - len(DefaultSystemPaths) {
		fmt.Fprintf(&b, "/d/p%d,", i)
	}
	b.WriteString("]\n  network:\n    allowed_egress:\n")
	for i := range rules {
		fmt.Fprintf(&b, "      - {host: h%d.example.com, ports: [443, 8443]}\n", i)
	}
	return []byte(b.String())
}

// TestBoundValidatesFast: a policy at every bound at once validates in
// well under a second (75,000 paths used to take 19 s: the work is now
// linear and bounded).
func TestBoundValidatesFast(t *testing.T) {
	data := boundPolicy(MaxPaths, MaxEgressRules)
	if len(data) > MaxFileSize {
		t.Fatalf("the bound policy is %d bytes, over MaxFileSize", len(data))
	}
	start := time.Now()
	p, err := Parse("p.yaml", data)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Filesystem.ReadOnly) != MaxPaths || len(p.Network.Egress) != MaxEgressRules {
		t.Fatalf("%d paths, %d rules", len(p.Filesystem.ReadOnly), len(p.Network.Egress))
	}
	if took > 500*time.Millisecond {
		t.Errorf("validating a policy at the bounds took %v", took)
	}
}

// TestOverBounds: one past each bound is refused naming the field and the
// bound, quickly, and without one error per item.
func TestOverBounds(t *testing.T) {
	list := func(n int, item func(int) string) string {
		items := make([]string, n)
		for i := range items {
			items[i] = item(i)
		}
		return "[" + strings.Join(items, ", ") + "]"
	}
	path := func(i int) string { return fmt.Sprintf("/p%d", i) }
	v1Endpoints := func(groups, each int) string {
		var b strings.Builder
		b.WriteString("version: 1\nnetwork_policies:\n")
		for g := range groups {
			fmt.Fprintf(&b, "  g%d: {endpoints: %s}\n", g, list(each, func(i int) string { return fmt.Sprintf("{host: h%d.g%d.example.com, port: 443}", i, g) }))
		}
		return b.String()
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"paths-one-list", seedPaths("system_paths: " + list(MaxPaths+1, path)), "p.yaml:3:30: sandbox.filesystem.system_paths: has 4097 entries; at most 4096 are allowed"},
		{"paths-in-all", seedPaths("system_paths: " + list(MaxPaths, path) + ", allowed_writes: [/w]"), "p.yaml:3:"},
		{"paths-v1", "version: 1\nfilesystem_policy: {read_only: " + list(75000, path) + "}\n", "p.yaml:2:32: filesystem_policy.read_only: has 75000 entries; at most 4096 are allowed"},
		{"egress-one-list", "version: \"1.0\"\nsandbox:\n  network: {allowed_egress: " + list(MaxEgressRules+1, func(i int) string { return fmt.Sprintf("{host: h%d.com, port: 1}", i) }) + "}\n", "p.yaml:3:29: sandbox.network.allowed_egress: has 4097 entries; at most 4096 are allowed"},
		{"egress-in-all-v1", v1Endpoints(2, MaxEgressRules/2+1), "p.yaml:4:"},
		{"ports", v1Endpoint("a.com") + "  j: {endpoints: [{host: b.com, ports: " + list(MaxPorts+1, func(i int) string { return fmt.Sprint(i + 1) }) + "}]}\n", "p.yaml:4:40: network_policies.j.endpoints[0].ports: has 1025 entries; at most 1024 are allowed"},
		{"syscalls", "version: \"1.0\"\nsandbox:\n  process: {seccomp: {default_action: SCMP_ACT_ERRNO, allowed_syscalls: " + list(MaxSyscalls+1, func(int) string { return "read" }) + "}}\n", "p.yaml:3:73: sandbox.process.seccomp.allowed_syscalls: has 1025 entries; at most 1024 are allowed"},
		{"allowed-ips", "version: \"1.0\"\nsandbox:\n  network: {allowed_egress: [{host: a.com, port: 1, allowed_ips: " + list(MaxListItems+1, func(i int) string { return fmt.Sprintf("10.0.%d.%d", i/256, i%256) }) + "}]}\n", "p.yaml:3:66: sandbox.network.allowed_egress[0].allowed_ips: has 1025 entries; at most 1024 are allowed"},
		{"environment", "version: \"1.0\"\nsandbox:\n  environment: {" + strings.Trim(list(MaxListItems+1, func(i int) string { return fmt.Sprintf("V%d: x", i) }), "[]") + "}\n", "p.yaml:3:16: sandbox.environment: has 1025 entries; at most 1024 are allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			errs := parseErrors(t, tc.yaml)
			if took := time.Since(start); took > 500*time.Millisecond {
				t.Errorf("refusing took %v", took)
			}
			if len(errs) != 1 {
				t.Errorf("%d errors, want 1: %v", len(errs), errs[0])
			}
			if got := errs[0].Error(); !strings.HasPrefix(got, tc.want) || !strings.Contains(got, "at most") {
				t.Errorf("error = %s\nwant %s...", got, tc.want)
			}
		})
	}
}
