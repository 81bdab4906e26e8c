package modifier

import (
	"cmp"
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/openshell/openshell/policyhook/policy"
)

// kernelMounts are the filesystems gVisor provides itself, by the one
// type each may have. An engine's mount there is kept only as that kernel
// filesystem (sysfs and cgroupfs forced read-only); anything else at a
// kernel path, a bind of the host's /proc, /sys or /dev above all, is not
// a kernel mount but a host directory, and the policy never shows those.
var kernelMounts = map[string][]string{
	"/proc":          {"proc"},
	"/dev":           {"tmpfs"},
	"/dev/pts":       {"devpts"},
	"/dev/shm":       {"tmpfs"},
	"/dev/mqueue":    {"mqueue"},
	"/sys":           {"sysfs"},
	"/sys/fs/cgroup": {"cgroup", "cgroup2"},
}

// shmSizeMB bounds the private /dev/shm that replaces an engine's bind
// there (the CRI shares its pod's /dev/shm by a bind of a host tmpfs).
const shmSizeMB = 64

// ViewOptions place the sandbox's mount view.
type ViewOptions struct {
	// RootDir is the empty directory that becomes the sandbox's root.
	// runsc creates mount points inside it on the host, so each sandbox
	// needs its own, owned and removed by the runtime.
	RootDir string
	// Bundle resolves a relative spec root path.
	Bundle string
}

type rootView struct {
	readOnly  []string
	readWrite []string
	workdirRW bool
	opts      ViewOptions
}

var _ SpecModifier = (*rootView)(nil)

// NewRootView makes the sandbox see exactly the listed paths of the image:
// the root becomes an empty read-only directory, and each listed path is
// bind-mounted onto it from the image root, read-only or read-write.
// Paths under /dev, /proc and /sys are gVisor's own and are not bound.
func NewRootView(fs policy.Filesystem, opts ViewOptions) (SpecModifier, error) {
	if opts.RootDir == "" || !filepath.IsAbs(opts.RootDir) {
		return nil, fmt.Errorf("filesystem view: root directory %q is not an absolute path", opts.RootDir)
	}
	v := &rootView{workdirRW: fs.IncludeWorkdir, opts: opts}
	seen := map[string]bool{}
	for _, r := range fs.ReadWrite {
		seen[r.Path] = true
		v.readWrite = append(v.readWrite, r.Path)
	}
	for _, r := range fs.ReadOnly {
		if !seen[r.Path] {
			seen[r.Path] = true
			v.readOnly = append(v.readOnly, r.Path)
		}
	}
	return v, nil
}

func (v *rootView) Modify(s *specs.Spec) error {
	image := "/"
	if s.Root != nil && s.Root.Path != "" {
		image = s.Root.Path
		if !filepath.IsAbs(image) {
			if v.opts.Bundle == "" {
				return fmt.Errorf("filesystem view: root path %q is relative and no bundle was given", image)
			}
			image = filepath.Join(v.opts.Bundle, image)
		}
	}
	s.Root = &specs.Root{Path: v.opts.RootDir, Readonly: true}

	writable := slices.Clone(v.readWrite)
	if v.workdirRW && s.Process != nil && s.Process.Cwd != "" && s.Process.Cwd != "/" {
		writable = append(writable, path.Clean(s.Process.Cwd))
	}
	allowed := func(dest string) (ok, rw bool) {
		for _, p := range writable {
			if within(dest, p) {
				return true, true
			}
		}
		for _, p := range v.readOnly {
			if within(dest, p) {
				ok = true
			}
		}
		return ok, false
	}

	var kernel, binds []specs.Mount
	// One kernel filesystem per kernel path: a later one replaces it.
	addKernel := func(m specs.Mount) {
		kernel = append(slices.DeleteFunc(kernel, func(k specs.Mount) bool { return path.Clean(k.Destination) == path.Clean(m.Destination) }), m)
	}
	engine := map[string]bool{}
	for _, m := range s.Mounts {
		m.Type = mountType(m)
		dest := path.Clean(m.Destination)
		if types, ok := kernelMounts[dest]; ok {
			switch {
			case slices.Contains(types, m.Type):
				if strings.HasPrefix(dest, "/sys") {
					m.Options = setRO(m.Options, true)
				}
				addKernel(m)
			case dest == "/dev/shm":
				addKernel(specs.Mount{
					Destination: dest, Type: "tmpfs", Source: "shm",
					Options: []string{"nosuid", "nodev", "noexec", "mode=1777", fmt.Sprintf("size=%dm", shmSizeMB)},
				})
			}
			continue
		}
		// An engine mount (a volume, Docker's /etc/hosts) stays only where
		// the policy lets the sandbox see that path, and is writable only
		// where the policy allows writes and the engine did not ask for
		// read-only: the policy only ever narrows.
		ok, rw := allowed(dest)
		if !ok || policy.IsKernelPath(dest) {
			continue
		}
		m.Options = setRO(m.Options, !rw || slices.Contains(m.Options, "ro"))
		binds = append(binds, m)
		engine[dest] = true
	}
	add := func(p string, rw bool) {
		if engine[p] || policy.IsKernelPath(p) {
			return
		}
		binds = append(binds, specs.Mount{
			Destination: p,
			Type:        "bind",
			Source:      filepath.Join(image, p),
			Options:     setRO([]string{"rbind", "nosuid", "nodev"}, !rw),
		})
	}
	for _, p := range v.readOnly {
		add(p, false)
	}
	for _, p := range writable {
		add(p, true)
	}
	// Parents must be mounted before the paths inside them, whoever made
	// them: an engine's bind at /dev/shm (the CRI's) mounted before a bind
	// of the image at / would be hidden by it, and runsc's gofer could
	// then not find its mount point.
	s.Mounts = append(kernel, binds...)
	sortByDepth(s.Mounts)
	return nil
}

// mountType is the type runsc serves a mount as: a mount of type "none"
// or "" with a bind option is a bind (runsc's MaybeConvertToBindMount),
// and every check after this one must see it as one.
func mountType(m specs.Mount) string {
	if (m.Type == "" || m.Type == "none") && slices.ContainsFunc(m.Options, func(o string) bool { return o == "bind" || o == "rbind" }) {
		return "bind"
	}
	return m.Type
}

// sortByDepth puts parents before the paths inside them, keeping the
// order of mounts at the same depth (the later one lies over the earlier).
func sortByDepth(mounts []specs.Mount) {
	slices.SortStableFunc(mounts, func(a, b specs.Mount) int {
		return cmp.Compare(depth(a.Destination), depth(b.Destination))
	})
}

// within reports whether p is dir or lies below it.
func within(p, dir string) bool {
	return p == dir || dir == "/" || strings.HasPrefix(p, dir+"/")
}

func depth(p string) int {
	if p == "/" {
		return 0
	}
	return strings.Count(path.Clean(p), "/")
}

// setRO returns opts with exactly one of ro/rw.
func setRO(opts []string, ro bool) []string {
	out := slices.DeleteFunc(slices.Clone(opts), func(o string) bool { return o == "ro" || o == "rw" })
	if ro {
		return append(out, "ro")
	}
	return append(out, "rw")
}
