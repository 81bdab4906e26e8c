package inroot

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tree makes an image root and, beside it, a "host" directory with a
// secret that no resolution inside the root may reach.
func tree(t *testing.T) (root, host string) {
	t.Helper()
	base := t.TempDir()
	root, host = filepath.Join(base, "image"), filepath.Join(base, "host")
	for _, d := range []string{root + "/usr/lib", root + "/etc", root + "/work", host} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(root+"/etc/hostname", "image")
	write(root+"/usr/lib/libc", "image libc")
	write(host+"/secret", "host secret")
	link := func(target, at string) {
		if err := os.Symlink(target, filepath.Join(root, at)); err != nil {
			t.Fatal(err)
		}
	}
	link("usr/lib", "lib")                        // Debian's merged /usr, relative
	link("/usr/lib", "lib64")                     // absolute, as the sandbox sees it
	link("/", "rootlink")                         // the image's own root
	link(host, "hostabs")                         // an absolute host path: inside, it is a name in the image
	link("../../../../..", "dotdot")              // climbs above the root
	link("../../"+filepath.Base(host), "work/up") // one level too many
	link("work/up", "chain")
	link("loop2", "loop1")
	link("loop1", "loop2")
	return root, host
}

func TestOpen(t *testing.T) {
	root, host := tree(t)
	for _, tc := range []struct {
		path    string
		want    string // the object's content or, for a directory, "dir"
		wantErr error
	}{
		{path: "/etc/hostname", want: "image"},
		{path: "/lib/libc", want: "image libc"},
		{path: "/lib64/libc", want: "image libc"},
		{path: "/rootlink/etc/hostname", want: "image"},
		{path: "/", want: "dir"},
		{path: "/etc/../etc/hostname", want: "image"},
		{path: "/hostabs/secret", wantErr: fs.ErrNotExist}, // resolved in the image, where it does not exist
		{path: "/dotdot", wantErr: ErrEscape},
		{path: "/dotdot/" + filepath.Base(host) + "/secret", wantErr: ErrEscape},
		{path: "/work/up/secret", wantErr: ErrEscape},
		{path: "/chain/secret", wantErr: ErrEscape},
		{path: "/../" + filepath.Base(host), wantErr: ErrEscape},
		{path: "/missing", wantErr: fs.ErrNotExist},
		{path: "/loop1", wantErr: nil}, // checked below: ELOOP
	} {
		t.Run(tc.path, func(t *testing.T) {
			f, err := Open(root, tc.path, Options{})
			if tc.path == "/loop1" {
				if err == nil || !strings.Contains(err.Error(), "too many levels") {
					t.Fatalf("loop: err %v, want ELOOP", err)
				}
				return
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			real, err := os.Readlink(ProcPath(f))
			if err != nil {
				t.Fatal(err)
			}
			if real != root && !strings.HasPrefix(real, root+"/") {
				t.Fatalf("resolved to %s, outside %s", real, root)
			}
			if tc.want == "dir" {
				if st, err := os.Stat(real); err != nil || !st.IsDir() {
					t.Fatalf("%s: not a directory", real)
				}
				return
			}
			b, err := os.ReadFile(ProcPath(f))
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.want {
				t.Fatalf("read %q, want %q", b, tc.want)
			}
		})
	}
}

func TestOpenNotADirectory(t *testing.T) {
	root, _ := tree(t)
	if _, err := Open(root, "/etc/hostname/x", Options{}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("err %v, want ENOTDIR", err)
	}
}

// TestRootOwnedLinksOnly: on the host's own root a link owned by anyone
// but root (what an agent plants in its workspace) is refused.
func TestRootOwnedLinksOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown a symlink; `make unit` runs as root on CI")
	}
	root, host := tree(t)
	planted := filepath.Join(root, "work", "cache")
	if err := os.Symlink(host, planted); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(planted, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(root, "/work/cache", Options{RootOwnedLinksOnly: true}); !errors.Is(err, ErrUntrustedLink) {
		t.Fatalf("agent's link: err %v, want ErrUntrustedLink", err)
	}
	f, err := Open(root, "/lib/libc", Options{RootOwnedLinksOnly: true})
	if err != nil {
		t.Fatalf("root's link: %v", err)
	}
	f.Close()
}
