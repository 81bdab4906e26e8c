// Package rootfs builds small root filesystems for tests from what
// Debian installs on the host: busybox-static for a minimal image. No
// registry, no network.
package rootfs

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"golang.org/x/sys/unix"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BusyboxPath is where Debian's busybox-static installs busybox.
const BusyboxPath = "/bin/busybox"

// Busybox builds a root filesystem in dir: a static busybox with a link
// for each applet in /bin, /etc/passwd and /etc/group with root, nobody
// and an unprivileged "agent" (1000), and empty /tmp, /proc, /dev, /sys
// and /workspace. It fails when busybox-static is not installed.
func Busybox(dir string) error {
	bb := BusyboxPath
	if _, err := os.Stat(bb); err != nil {
		return fmt.Errorf("busybox rootfs: %w (apt-get install busybox-static)", err)
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, d := range []string{"bin", "etc", "tmp", "proc", "dev", "sys", "workspace", "root"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("busybox rootfs: %w", err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return fmt.Errorf("busybox rootfs: %w", err)
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return fmt.Errorf("busybox rootfs: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		return fmt.Errorf("busybox rootfs: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil && !os.IsExist(err) {
			return fmt.Errorf("busybox rootfs: %w", err)
		}
	}
	files := map[string]string{
		"etc/passwd":   "root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000:agent:/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
		"etc/group":    "root:x:0:\nagent:x:1000:\nnogroup:x:65534:\n",
		"etc/shadow":   "root:$6$secret-hash:19000:0:99999:7:::\n",
		"etc/hostname": "busybox\n",
	}
	for name, content := range files {
		mode := os.FileMode(0o644)
		if name == "etc/shadow" {
			mode = 0o600
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			return fmt.Errorf("busybox rootfs: %w", err)
		}
	}
	return nil
}

// DebianPackages are what Debian builds an agent's root filesystem with:
// a shell, the interpreters and clients agents use (python3, node, curl,
// git), and the CA bundle their TLS stacks read.
var DebianPackages = []string{"bash", "python3", "curl", "ca-certificates", "git", "nodejs"}

// DebianCacheName names a cached Debian root by its package list, so a
// cache built with other packages is never taken for this one.
func DebianCacheName() string {
	sum := sha256.Sum256([]byte(strings.Join(DebianPackages, ",")))
	return "debian-bookworm-" + hex.EncodeToString(sum[:4])
}

// Debian builds a minimal Debian bookworm root filesystem in dir with
// debootstrap from Debian's mirror, with DebianPackages. It takes a few
// minutes and ~270 MB, so callers keep the result (see Cached).
func Debian(dir string) error {
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return fmt.Errorf("debian rootfs: %w (apt-get install debootstrap)", err)
	}
	tmp := dir + ".partial"
	// A debootstrap that failed leaves its /proc (and more) mounted in
	// the tree: detach them before removing it, or the removal would
	// walk the host's /proc.
	unmountBelow(tmp)
	defer unmountBelow(tmp)
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("debian rootfs: %w", err)
	}
	cmd := exec.Command("debootstrap", "--variant=minbase", "--include="+strings.Join(DebianPackages, ","),
		"bookworm", tmp, "http://deb.debian.org/debian")
	if out, err := cmd.CombinedOutput(); err != nil {
		tail := out
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return fmt.Errorf("debootstrap: %w\n%s", err, tail)
	}
	// Only a finished tree gets the final name, so a cache is never half.
	return os.Rename(tmp, dir)
}

// unmountBelow detaches every mount at or below dir, deepest first.
func unmountBelow(dir string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			points = append(points, f[4])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		_ = unix.Unmount(points[i], unix.MNT_DETACH)
	}
}

// Cached returns dir, building it with build first when it does not
// exist. Concurrent callers (test binaries of other packages, other
// sessions' runs) wait on a lock: one builds, the others take its tree.
func Cached(dir string, build func(string) error) (string, error) {
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return "", fmt.Errorf("lock %s: %w", dir, err)
	}
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	return dir, build(dir)
}
