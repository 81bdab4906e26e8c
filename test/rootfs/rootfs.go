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
