// Package inroot opens a path inside a directory tree that an attacker
// controls (an image root, an agent's workspace) as the object it names
// there, and never as anything outside it.
//
// Every component is opened relative to the one before it with
// O_NOFOLLOW; a symlink is read through the handle that was opened, not
// by name, so no rename or link swap between a check and the open can
// redirect it. Symlinks resolve as the sandbox would see them: an absolute
// target starts again at the root. A ".." that would climb above the root
// is refused, not clamped: such a link is an attack, not a layout.
//
// It must never return a handle to anything outside the root, and never
// follow a link by name.
//
// Written by hand rather than with filepath-securejoin: the runtime needs
// a per-link decision (on the host's own root, a symlink that root does not
// own was planted by someone else and is refused), which securejoin's
// OpenInRoot has no hook for.
package inroot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// MaxLinks is how many symlinks one resolution follows, as the kernel's
// own limit for a path walk.
const MaxLinks = 40

// ErrEscape is returned when a path, through its symlinks or "..",
// would leave the root.
var ErrEscape = errors.New("leaves its root")

// ErrUntrustedLink is returned for a symlink whose owner is not trusted.
var ErrUntrustedLink = errors.New("is a symlink owned by an untrusted user")

// Options change how links are followed.
type Options struct {
	// RootOwnedLinksOnly refuses any symlink not owned by uid 0. It is for
	// the host's own root, where every link an agent could plant in a
	// writable path is owned by the agent's (never root) uid.
	RootOwnedLinksOnly bool
}

// Open resolves p inside root and returns an O_PATH handle to the object
// it names. A component that does not exist is an error wrapping
// fs.ErrNotExist; a path that leaves root wraps ErrEscape.
func Open(root, p string, o Options) (*os.File, error) {
	rootFd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open root %s: %w", root, err)
	}
	fd, err := walk(rootFd, p, o)
	if err != nil {
		return nil, fmt.Errorf("resolve %q in %s: %w", p, root, err)
	}
	return os.NewFile(uintptr(fd), filepath.Join(root, p)), nil
}

// walk consumes rootFd. The stack holds the handle of each directory
// entered, the root at the bottom, so ".." is a pop and never a lookup.
func walk(rootFd int, p string, o Options) (int, error) {
	stack := []int{rootFd}
	closeAll := func() {
		for _, fd := range stack {
			unix.Close(fd)
		}
	}
	todo := split(p)
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) == 1 {
				closeAll()
				return -1, ErrEscape
			}
			unix.Close(stack[len(stack)-1])
			stack = stack[:len(stack)-1]
			continue
		}
		fd, err := unix.Openat(stack[len(stack)-1], c, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			closeAll()
			if errors.Is(err, unix.ENOENT) {
				return -1, os.ErrNotExist
			}
			return -1, fmt.Errorf("open %q: %w", c, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			closeAll()
			return -1, fmt.Errorf("stat %q: %w", c, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			target, err := readLink(fd)
			unix.Close(fd)
			if err != nil {
				closeAll()
				return -1, fmt.Errorf("read link %q: %w", c, err)
			}
			if o.RootOwnedLinksOnly && st.Uid != 0 {
				closeAll()
				return -1, fmt.Errorf("%q (uid %d) %w", c, st.Uid, ErrUntrustedLink)
			}
			if links++; links > MaxLinks {
				closeAll()
				return -1, fmt.Errorf("%q: %w", c, unix.ELOOP)
			}
			if strings.HasPrefix(target, "/") {
				for _, fd := range stack[1:] {
					unix.Close(fd)
				}
				stack = stack[:1]
			}
			todo = append(split(target), todo...)
		case unix.S_IFDIR:
			stack = append(stack, fd)
		default:
			if hasMore(todo) {
				unix.Close(fd)
				closeAll()
				return -1, fmt.Errorf("%q: %w", c, unix.ENOTDIR)
			}
			stack = append(stack, fd)
		}
	}
	top := stack[len(stack)-1]
	for _, fd := range stack[:len(stack)-1] {
		unix.Close(fd)
	}
	return top, nil
}

func readLink(fd int) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(fd, "", buf)
	if err != nil {
		return "", err
	}
	if n >= len(buf) {
		return "", unix.ENAMETOOLONG
	}
	return string(buf[:n]), nil
}

func split(p string) []string { return strings.Split(p, "/") }

// hasMore reports whether a component other than an empty one is left:
// "file/." names a non-directory as a directory.
func hasMore(todo []string) bool {
	for _, c := range todo {
		if c != "" {
			return true
		}
	}
	return false
}

// ProcPath is the name under which the kernel opens exactly the object f
// holds: a bind mount from it mounts that object, whatever has been
// renamed or relinked since.
func ProcPath(f *os.File) string { return fmt.Sprintf("/proc/self/fd/%d", f.Fd()) }
