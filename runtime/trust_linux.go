package runtime

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/runtime/inroot"
)

// Where a sandbox's CA lives: the key, root-only, beside its other
// state; the certificate and the bundle in the directory the sandbox
// sees (trustDir), which never holds the key.
func caFile(dir string) string   { return filepath.Join(dir, "gateway-ca.pem") }
func trustDir(dir string) string { return filepath.Join(dir, "trust") }

// trustCandidates are where images keep the CA bundle their TLS stacks
// read: Debian, Ubuntu, Alpine and Arch; RHEL, Fedora and CentOS (two
// names); Alpine's and LibreSSL's cert.pem; openSUSE.
var trustCandidates = []string{
	"/etc/ssl/certs/ca-certificates.crt",
	"/etc/pki/tls/certs/ca-bundle.crt",
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
	"/etc/ssl/cert.pem",
	"/etc/ssl/ca-bundle.pem",
}

// maxImageBundle bounds how much of an image's CA bundle is read: the
// image is not trusted, and real bundles are ~200 KiB.
const maxImageBundle = 4 << 20

// imageTrust finds the image's CA bundles: the candidates that are
// regular files, reached without a symlink (a candidate that is a link,
// like Alpine's cert.pem, resolves inside the sandbox to one that is),
// and the content of the first, which the sandbox's bundle starts with.
// Every lookup stays inside image (runtime/inroot).
func imageTrust(image string) (targets []string, content []byte) {
	for _, p := range trustCandidates {
		data, ok := readPlainFile(image, p)
		if !ok {
			continue
		}
		targets = append(targets, p)
		if content == nil {
			content = data
		}
	}
	return targets, content
}

// readPlainFile reads p in image when every component of it is what its
// name says (directories, then a regular file: no symlink anywhere), at
// most maxImageBundle bytes of it.
func readPlainFile(image, p string) ([]byte, bool) {
	opts := inroot.Options{RootOwnedLinksOnly: image == "/"}
	dir, err := inroot.Open(image, path.Dir(p), opts)
	if err != nil {
		return nil, false
	}
	defer dir.Close()
	// The directory resolved to its own name: no link on the way.
	real, err := os.Readlink(inroot.ProcPath(dir))
	want, werr := filepath.EvalSymlinks(image)
	if err != nil || werr != nil || real != filepath.Join(want, path.Dir(p)) {
		return nil, false
	}
	fd, err := unix.Openat(int(dir.Fd()), path.Base(p), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, false
	}
	data, err := io.ReadAll(io.LimitReader(f, maxImageBundle+1))
	if err != nil || len(data) > maxImageBundle {
		return nil, false
	}
	return data, true
}

// makeTrust makes the sandbox's CA (key in caFile, root-only) and its
// trust directory: ca.crt, and ca-bundle.crt = the image's bundle and
// the CA.
func makeTrust(dir, id, image string) error {
	certPEM, err := egress.WriteCAFile(caFile(dir), id)
	if err != nil {
		return err
	}
	td := trustDir(dir)
	if err := os.Mkdir(td, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("trust dir: %w", err)
	}
	_, content := imageTrust(image)
	bundle := bytes.TrimRight(content, "\n")
	if len(bundle) > 0 {
		bundle = append(bundle, '\n')
	}
	bundle = append(bundle, certPEM...)
	for name, data := range map[string][]byte{"ca.crt": certPEM, "ca-bundle.crt": bundle} {
		if err := os.WriteFile(filepath.Join(td, name), data, 0o644); err != nil {
			return fmt.Errorf("trust dir: %w", err)
		}
	}
	return nil
}
