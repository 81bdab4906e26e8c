package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"
)

// FuzzParse feeds arbitrary bytes to the parser. It must never panic or
// hang, every error must be a placed FieldError, and a policy it accepts
// must satisfy the invariants validation promises. The bounds are
// properties too: parsing finishes quickly, there are at most MaxErrors
// errors and one line counting the rest, no message holds a control
// character, and accepted hosts are in their normal form.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("../../examples/*.yaml")
	more, _ := filepath.Glob("testdata/*.yaml")
	for _, file := range append(files, more...) {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"", "version: 1\n", "version: \"1.0\"\nsandbox: {}\n", "[", "version: &a [*a]\n",
		"version: \"1.0\"\nsandbox: {filesystem: {allowed_writes: [/]}}\n",
		"version: 1\nnetwork_policies: {k: {endpoints: [{host: '*.a.b', ports: [1, 65535]}]}}\n",
		"version: 1\nnetwork_policies: {k: {endpoints: [{host: '**.Bücher.example.', port: 443}]}}\n",
		"version: 1\nnetwork_policies:\n  <<: {k: {endpoints: [{host: a.com, port: 1}]}}\n",
		"version: \"1.0\"\nsandbox: {network: {allowed_egress: [{host: \"*.com.\", port: 1}]}}\n",
		"version: \"1.0\"\nsandbox: {filesystem: {allowed_writes: [\"/a\\0\", /proc, /dev/null], allowed_reads: [\"\\e[2J\"]}}\n",
		"version: 1\nfilesystem_policy: {read_only: [&a /a, *a, *a]}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		start := time.Now()
		p, err := Parse("fuzz.yaml", data)
		// Generous: the fuzzer's workers share the machine. A policy at
		// every bound validates in tens of milliseconds.
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("Parse took %v on %d bytes", took, len(data))
		}
		if err != nil {
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error %v (%T) is not a non-empty ErrorList", err, err)
			}
			if len(list) > MaxErrors+1 {
				t.Fatalf("%d errors, more than MaxErrors and a count", len(list))
			}
			for _, e := range list {
				if e.File != "fuzz.yaml" || e.Pos.Line < 1 || e.Pos.Column < 1 || e.Msg == "" {
					t.Fatalf("unplaced error %+v", e)
				}
				for _, part := range []string{e.Field, e.Msg, e.Error()} {
					if i := strings.IndexFunc(part, unprintable); i >= 0 {
						t.Fatalf("error %q holds %q", part, part[i:])
					}
				}
			}
			if lines := strings.Count(err.Error(), "\n") + 1; lines != len(list) {
				t.Fatalf("%d errors print as %d lines", len(list), lines)
			}
			if p != nil {
				t.Fatal("a policy was returned with an error")
			}
			return
		}
		for _, w := range p.Warnings {
			if strings.IndexFunc(w.Error(), unprintable) >= 0 {
				t.Fatalf("warning %q holds a control character", w.Error())
			}
		}
		if n := len(p.Filesystem.ReadOnly) + len(p.Filesystem.ReadWrite); n > MaxPaths {
			t.Fatalf("accepted %d paths", n)
		}
		if len(p.Network.Egress) > MaxEgressRules {
			t.Fatalf("accepted %d egress rules", len(p.Network.Egress))
		}
		for _, r := range p.Filesystem.ReadOnly {
			if hasControl(r.Path) {
				t.Fatalf("accepted path %q", r.Path)
			}
		}
		for _, r := range p.Filesystem.ReadWrite {
			if r.Path == "/" || r.Path == "" || r.Path[0] != '/' || hasControl(r.Path) ||
				(IsKernelPath(r.Path) && r.Path != writableDevNull) {
				t.Fatalf("accepted writable path %q", r.Path)
			}
		}
		if isRoot(p.Process.User) || isRoot(p.Process.Group) {
			t.Fatalf("accepted root user %q:%q", p.Process.User, p.Process.Group)
		}
		for _, e := range p.Network.Egress {
			if again, err := NormalizeHostPattern(e.Host); err != nil || again != e.Host {
				t.Fatalf("accepted host %q normalises to %q, %v", e.Host, again, err)
			}
			if len(e.Ports) > MaxPorts {
				t.Fatalf("accepted %d ports", len(e.Ports))
			}
			for _, port := range e.Ports {
				if port < 1 || port > 65535 {
					t.Fatalf("accepted port %d", port)
				}
			}
			for _, pfx := range e.AllowedIPs {
				if forbiddenOverlap(pfx) != "" {
					t.Fatalf("accepted allowed_ips %s", pfx)
				}
			}
		}
	})
}

func unprintable(r rune) bool { return r != ' ' && !unicode.IsPrint(r) }
