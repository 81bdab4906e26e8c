package runtime

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/runtime/inroot"
)

// bindsDir holds, below a sandbox's state directory, one mount per path
// the policy takes from the image: the object that was resolved inside
// the image, which is what runsc then binds.
const bindsDir = "binds"

// stageBinds resolves the source of every bind the policy takes from the
// image inside the image, and hands runsc a mount of exactly the object
// that was resolved. runsc follows symlinks in a source on the host, so
// an image's /lib64 -> / (or a link an agent planted in its workspace for
// a later sandbox) would otherwise bind the host's root.
//
// A bind is the policy's when its source is the image path of its
// destination; an engine's volumes come from elsewhere and are its own.
// Sources missing from the image are dropped and returned (a policy may
// list /lib64 where the image has none), as are credential masks over
// files the image does not have. A source that leaves the image is an
// error: nothing starts.
func (sb *Sandbox) stageBinds(s *specs.Spec, image string) (pruned []string, err error) {
	opts := inroot.Options{RootOwnedLinksOnly: image == "/"}
	n := 0
	kept := s.Mounts[:0]
	for _, m := range s.Mounts {
		if m.Type != "bind" {
			kept = append(kept, m)
			continue
		}
		mask := m.Source == "/dev/null" // a credential mask: only over a file the image has
		if !mask && m.Source != filepath.Join(image, m.Destination) {
			kept = append(kept, m) // the engine's own volume
			continue
		}
		f, err := inroot.Open(image, m.Destination, opts)
		if errors.Is(err, fs.ErrNotExist) {
			pruned = append(pruned, m.Destination)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("policy path %s: %w", m.Destination, err)
		}
		if !mask {
			m.Source, err = sb.mountStaged(f, n)
			n++
		}
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("policy path %s: %w", m.Destination, err)
		}
		kept = append(kept, m)
	}
	s.Mounts = kept
	return pruned, nil
}

// mountStaged bind-mounts the object f holds at binds/<n>. The binds
// directory is a private mount of its own, so nothing staged there
// propagates to the host's other mount namespaces.
func (sb *Sandbox) mountStaged(f *os.File, n int) (string, error) {
	dir := filepath.Join(sb.Dir, bindsDir)
	if n == 0 {
		if err := os.Mkdir(dir, 0o711); err != nil {
			return "", fmt.Errorf("create %s: %w", dir, err)
		}
		if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
			return "", fmt.Errorf("mount %s: %w", dir, err)
		}
		if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
			return "", fmt.Errorf("make %s private: %w", dir, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return "", fmt.Errorf("stat: %w", err)
	}
	target := filepath.Join(dir, strconv.Itoa(n))
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if err := os.Mkdir(target, 0o700); err != nil {
			return "", fmt.Errorf("create mount point: %w", err)
		}
	} else if err := os.WriteFile(target, nil, 0o600); err != nil {
		return "", fmt.Errorf("create mount point: %w", err)
	}
	if err := unix.Mount(inroot.ProcPath(f), target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return "", fmt.Errorf("bind the resolved object: %w", err)
	}
	return target, nil
}

// unstageBinds unmounts what stageBinds mounted. Detaching the binds
// directory's own mount takes every staged mount below it along.
func (sb *Sandbox) unstageBinds() error {
	dir := filepath.Join(sb.Dir, bindsDir)
	mounted, err := mountsBelow(dir)
	if err != nil {
		return err
	}
	if !slices.Contains(mounted, dir) {
		return nil
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// checkPolicyNotWritable refuses a policy file that the sandbox could
// rewrite or replace: one inside (or bound as) any of its writable binds,
// or one reached through a directory the sandbox can write, where a link
// on the way could be swapped for the agent's own directory. The gateway
// reloads the file by the path it was given, so an agent that edits a
// repository's .openshell/policy.yaml would otherwise grant itself egress.
// Directories are compared as objects (device and inode), so no link or
// second path to the same directory hides one. A policy that is no file
// (inline, built in) has nothing to check.
func checkPolicyNotWritable(s *specs.Spec, file string) error {
	if !filepath.IsAbs(file) {
		return nil
	}
	real, err := filepath.EvalSymlinks(file)
	if err != nil {
		return fmt.Errorf("policy %s: %w", file, err)
	}
	// Every directory the path is looked up in, as given and as resolved,
	// and the file itself.
	var chain []os.FileInfo
	add := func(p string) {
		if st, err := os.Stat(p); err == nil {
			chain = append(chain, st)
		}
	}
	for _, p := range []string{filepath.Clean(file), real} {
		for ; ; p = filepath.Dir(p) {
			add(p)
			if p == "/" {
				break
			}
		}
	}
	for _, m := range s.Mounts {
		if m.Type != "bind" || slices.Contains(m.Options, "ro") {
			continue
		}
		src, err := os.Stat(m.Source)
		if err != nil {
			continue
		}
		for _, st := range chain {
			if os.SameFile(st, src) {
				return fmt.Errorf("policy %s lies in %s, which the sandbox can write: the agent could rewrite its own rules; keep the policy where the sandbox cannot write (e.g. /etc/openshell/policies)", file, m.Destination)
			}
		}
	}
	return nil
}
