// Package runtime prepares sandboxes for runsc: it applies a compiled
// policy to a bundle, gives each sandbox its own empty root directory, and
// removes what it made afterwards.
//
// It must never leave a sandbox's state behind, and never remove anything
// it did not create: a directory with a mount below it is not removed.
package runtime

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/openshell/openshell/policyhook"
)

// Sandbox is one prepared sandbox: its id, state directory, bundle and the
// policy compiled for it.
type Sandbox struct {
	ID       string
	Dir      string // <state>/<id>; removed by Cleanup
	Bundle   string // Dir/bundle, holding config.json
	RootDir  string // Dir/root: the empty root of the mount view
	Compiled *policyhook.Compiled
	Pruned   []string // mounts dropped because their source does not exist in the image
}

// NewID returns a random sandbox id.
func NewID() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("sandbox id: %w", err)
	}
	return "openshell-" + hex.EncodeToString(b), nil
}

// Prepare creates the sandbox's state directory and writes spec, with the
// policy applied, as its bundle's config.json. image is the directory the
// policy's paths are taken from ("/" for the host). On error nothing is
// left behind.
func Prepare(stateDir, id, image string, spec *specs.Spec, compile func(rootDir, bundle string) (*policyhook.Compiled, error)) (sb *Sandbox, err error) {
	dir := filepath.Join(stateDir, id)
	if err := os.MkdirAll(stateDir, 0o711); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create sandbox dir: %w", err)
	}
	sb = &Sandbox{ID: id, Dir: dir, Bundle: filepath.Join(dir, "bundle"), RootDir: filepath.Join(dir, "root")}
	defer func() {
		if err != nil {
			_ = sb.Cleanup()
			sb = nil
		}
	}()
	for _, d := range []string{sb.Bundle, sb.RootDir} {
		// The root is world-readable: runsc's gofer may run as another user.
		if err := os.Mkdir(d, 0o755); err != nil {
			return sb, fmt.Errorf("create %s: %w", d, err)
		}
	}
	spec.Root = &specs.Root{Path: image}
	c, err := compile(sb.RootDir, sb.Bundle)
	if err != nil {
		return sb, err
	}
	sb.Compiled = c
	if err := c.Apply(spec); err != nil {
		return sb, err
	}
	sb.Pruned = pruneMissing(spec, image)
	data, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return sb, fmt.Errorf("encode spec: %w", err)
	}
	if err := os.WriteFile(filepath.Join(sb.Bundle, "config.json"), data, 0o600); err != nil {
		return sb, fmt.Errorf("write config.json: %w", err)
	}
	return sb, nil
}

// pruneMissing drops bind mounts whose source is not in the image (a policy
// may list /lib64 where the image has none) and credential masks over
// files the image does not have: runsc would otherwise fail to start, or
// create the missing mount point on the host.
func pruneMissing(spec *specs.Spec, image string) []string {
	var pruned []string
	spec.Mounts = slices.DeleteFunc(spec.Mounts, func(m specs.Mount) bool {
		if m.Type != "bind" {
			return false
		}
		src := m.Source
		if src == "/dev/null" {
			src = filepath.Join(image, m.Destination)
		}
		if _, err := os.Stat(src); err != nil {
			pruned = append(pruned, m.Destination)
			return true
		}
		return false
	})
	return pruned
}

// Cleanup removes the sandbox's state directory. It refuses when anything
// is still mounted below it, so a leftover bind mount can never turn a
// removal into deleting the host's files.
func (sb *Sandbox) Cleanup() error {
	mounted, err := mountsBelow(sb.Dir)
	if err != nil {
		return err
	}
	if len(mounted) > 0 {
		return fmt.Errorf("remove %s: still mounted below it: %s", sb.Dir, strings.Join(mounted, ", "))
	}
	if err := os.RemoveAll(sb.Dir); err != nil {
		return fmt.Errorf("remove %s: %w", sb.Dir, err)
	}
	return nil
}

func mountsBelow(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			out = append(out, fields[4])
		}
	}
	return out, sc.Err()
}
