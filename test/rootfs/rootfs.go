// Package rootfs builds small root filesystems for tests from what
// Debian installs on the host: busybox-static for a minimal image. No
// registry, no network.
package rootfs

import (
	"fmt"
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
// a shell, an interpreter and an HTTP client.
var DebianPackages = []string{"bash", "python3", "curl"}

// Debian builds a minimal Debian bookworm root filesystem in dir with
// debootstrap from Debian's mirror, with DebianPackages. It takes a few
// minutes and ~270 MB, so callers keep the result (see Cached).
func Debian(dir string) error {
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return fmt.Errorf("debian rootfs: %w (apt-get install debootstrap)", err)
	}
	tmp := dir + ".partial"
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

// Cached returns dir, building it with build first when it does not exist.
func Cached(dir string, build func(string) error) (string, error) {
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	return dir, build(dir)
}
