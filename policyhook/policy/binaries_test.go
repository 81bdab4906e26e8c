package policy

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestBinariesForms: both formats fill EgressRule.Binaries, NVIDIA
// OpenShell's from {path: ...} and from a scalar path, with no warning.
func TestBinariesForms(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"v1-object", "version: 1\nnetwork_policies:\n  k: {endpoints: [{host: a.com, port: 443}], binaries: [{path: /usr/bin/curl}, {path: /usr/bin/git, harness: true}]}\n",
			[]string{"/usr/bin/curl", "/usr/bin/git"}},
		{"v1-scalar", "version: 1\nnetwork_policies:\n  k: {endpoints: [{host: a.com, port: 443}], binaries: [/usr/bin/curl, \"/usr/lib/node/**\"]}\n",
			[]string{"/usr/bin/curl", "/usr/lib/node/**"}},
		{"v1-mixed", "version: 1\nnetwork_policies:\n  k:\n    endpoints: [{host: a.com, port: 443}]\n    binaries:\n      - /usr/bin/python3*\n      - path: /usr/bin/pip\n",
			[]string{"/usr/bin/python3*", "/usr/bin/pip"}},
		{"v1-empty", "version: 1\nnetwork_policies:\n  k: {endpoints: [{host: a.com, port: 443}], binaries: []}\n", nil},
		{"seed", "version: \"1.0\"\nsandbox:\n  network:\n    allowed_egress:\n      - {host: a.com, port: 443, binaries: [/usr/bin/git, \"/opt/*/bin/agent\"]}\n",
			[]string{"/usr/bin/git", "/opt/*/bin/agent"}},
		{"seed-none", "version: \"1.0\"\nsandbox:\n  network:\n    allowed_egress:\n      - {host: a.com, port: 443, binaries: []}\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Warnings) != 0 {
				t.Errorf("warnings: %v", p.Warnings)
			}
			if len(p.Network.Egress) != 1 {
				t.Fatalf("%d egress rules, want 1", len(p.Network.Egress))
			}
			if got := p.Network.Egress[0].Binaries; !slices.Equal(got, tc.want) || (tc.want == nil) != (got == nil) {
				t.Errorf("Binaries = %#v, want %#v", got, tc.want)
			}
		})
	}
}

// TestBinariesRejections holds one case per refused pattern: the
// message with its place and field path, in both formats.
func TestBinariesRejections(t *testing.T) {
	v1 := func(bins string) string {
		return "version: 1\nnetwork_policies:\n  github:\n    endpoints: [{host: a.com, port: 443}]\n    binaries: " + bins + "\n"
	}
	seed := func(bins string) string {
		return "version: \"1.0\"\nsandbox:\n  network:\n    allowed_egress:\n      - host: a.com\n        port: 443\n        binaries: " + bins + "\n"
	}
	long := "/usr/" + strings.Repeat("a", 520)
	cases := []struct{ name, yaml, want string }{
		{"relative", v1("[node]"), `p.yaml:5:16: network_policies.github.binaries[0].path: "node" is not an absolute path`},
		{"relative-object", v1("[{path: bin/node}]"), `p.yaml:5:23: network_policies.github.binaries[0].path: "bin/node" is not an absolute path`},
		{"empty", v1("[{path: \"\"}]"), `p.yaml:5:23: network_policies.github.binaries[0].path: is empty: name an executable by its absolute path`},
		{"no-path", v1("[{harness: true}]"), `p.yaml:5:16: network_policies.github.binaries[0].path: is empty: name an executable by its absolute path`},
		{"control", v1(`["/bin/x\u0007"]`), `p.yaml:5:16: network_policies.github.binaries[0].path: "/bin/x\a" contains a control character`},
		{"too-long", v1("[" + long + "]"), `p.yaml:5:16: network_policies.github.binaries[0].path: is 525 bytes long; at most 512 are allowed`},
		{"class", v1(`["/usr/bin/python[23]"]`), `p.yaml:5:16: network_policies.github.binaries[0].path: "/usr/bin/python[23]" contains '[': character classes and alternatives are not supported; list each binary (wildcards: * within a path segment, ** across segments, ? one character)`},
		{"alternative", v1(`["/usr/bin/{curl,wget}"]`), `p.yaml:5:16: network_policies.github.binaries[0].path: "/usr/bin/{curl,wget}" contains '{': character classes and alternatives are not supported; list each binary (wildcards: * within a path segment, ** across segments, ? one character)`},
		{"close-bracket", v1(`["/usr/bin/a]"]`), `p.yaml:5:16: network_policies.github.binaries[0].path: "/usr/bin/a]" contains ']': character classes and alternatives are not supported; list each binary (wildcards: * within a path segment, ** across segments, ? one character)`},
		{"backslash", v1(`['/usr/bin/\*']`), `p.yaml:5:16: network_policies.github.binaries[0].path: "/usr/bin/\\*" contains a backslash: escapes are not supported; list each binary`},
		{"trailing-slash", v1("[/usr/bin/]"), `p.yaml:5:16: network_policies.github.binaries[0].path: "/usr/bin/" ends in /: name the executable file itself, or use /** for everything under a directory`},
		{"root", v1("[/]"), `p.yaml:5:16: network_policies.github.binaries[0].path: "/" ends in /: name the executable file itself, or use /** for everything under a directory`},
		{"double-slash", v1("[/usr//bin/git]"), `p.yaml:5:16: network_policies.github.binaries[0].path: "/usr//bin/git" is not a clean path (no //, . or .. segments): write "/usr/bin/git"`},
		{"dot", v1("[/usr/./bin/git]"), `p.yaml:5:16: network_policies.github.binaries[0].path: "/usr/./bin/git" is not a clean path (no //, . or .. segments): write "/usr/bin/git"`},
		{"dot-dot", v1("[/usr/lib/../bin/git]"), `p.yaml:5:16: network_policies.github.binaries[0].path: "/usr/lib/../bin/git" is not a clean path (no //, . or .. segments): write "/usr/bin/git"`},
		{"trailing-dot-dot", v1("[/usr/bin/..]"), `p.yaml:5:16: network_policies.github.binaries[0].path: "/usr/bin/.." is not a clean path (no //, . or .. segments): write "/usr"`},
		{"wrong-type", v1("[[/usr/bin/git]]"), `p.yaml:5:16: network_policies.github.binaries[0]: must be a mapping or a string (path), not a list`},
		{"wrong-scalar", v1("[true]"), `p.yaml:5:16: network_policies.github.binaries[0].path: must be a string, not the boolean true`},
		{"unknown-key", v1("[{path: /usr/bin/git, sha256: abc}]"), `p.yaml:5:37: network_policies.github.binaries[0].sha256: unknown field (known fields here: path, harness)`},
		{"seed-relative", seed("[/usr/bin/git, git]"), `p.yaml:7:34: sandbox.network.allowed_egress[0].binaries[1]: "git" is not an absolute path`},
		{"seed-class", seed(`["/usr/bin/python[23]"]`), `p.yaml:7:20: sandbox.network.allowed_egress[0].binaries[0]: "/usr/bin/python[23]" contains '[': character classes and alternatives are not supported; list each binary (wildcards: * within a path segment, ** across segments, ? one character)`},
		{"seed-object", seed("[{path: /usr/bin/git}]"), `p.yaml:7:20: sandbox.network.allowed_egress[0].binaries[0]: must be a string, not a mapping`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tc.yaml))
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("Parse = %v, want %q", err, tc.want)
			}
			if got := list[0].Error(); got != tc.want {
				t.Errorf("first error:\n got %s\nwant %s\n(all: %v)", got, tc.want, err)
			}
		})
	}
}
