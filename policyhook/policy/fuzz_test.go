package policy

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the parser. It must never panic or
// hang, every error must be a placed FieldError, and a policy it accepts
// must satisfy the invariants validation promises.
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
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		if err != nil {
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error %v (%T) is not a non-empty ErrorList", err, err)
			}
			for _, e := range list {
				if e.File != "fuzz.yaml" || e.Pos.Line < 1 || e.Pos.Column < 1 || e.Msg == "" {
					t.Fatalf("unplaced error %+v", e)
				}
			}
			if p != nil {
				t.Fatal("a policy was returned with an error")
			}
			return
		}
		for _, r := range p.Filesystem.ReadWrite {
			if r.Path == "/" || r.Path == "" || r.Path[0] != '/' {
				t.Fatalf("accepted writable path %q", r.Path)
			}
		}
		if isRoot(p.Process.User) || isRoot(p.Process.Group) {
			t.Fatalf("accepted root user %q:%q", p.Process.User, p.Process.Group)
		}
		for _, e := range p.Network.Egress {
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
