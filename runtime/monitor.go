package runtime

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/openshell/openshell/runtime/monitor"
)

// MonitorOptions start a sandbox's process monitor.
type MonitorOptions struct {
	// Command runs the monitor given its config file's path. Empty: this
	// binary's own "monitor" command.
	Command []string
	Config  *Config
	// FileOpens records file opens too (the policy's
	// sandbox.audit.file_opens, or a command-line flag).
	FileOpens bool
	// DieWithParent ends the monitor with its starter.
	DieWithParent bool
}

// AttributionSocket is where the sandbox's gateway listens for the
// sentry's attribution sink, or "" when its policy has no binary-scoped
// rule (the sink then is not asked for: it costs each connect a report).
func (sb *Sandbox) AttributionSocket() string {
	if sb.Compiled == nil || !sb.Compiled.Attribution {
		return ""
	}
	return shortSocket(sb.Dir, "attr.sock", "a-")
}

// AttributionInit writes a trace session with the attribution sink alone,
// for a sandbox without a process monitor, and returns the runsc flag
// that reads it; "" when the sandbox needs none.
func (sb *Sandbox) AttributionInit() (string, error) {
	sock := sb.AttributionSocket()
	if sock == "" {
		return "", nil
	}
	data, err := monitor.PodInitConfig("", monitor.Options{Attribution: sock})
	if err != nil {
		return "", err
	}
	podInit := filepath.Join(sb.Dir, "pod-init.json")
	if err := os.WriteFile(podInit, data, 0o600); err != nil {
		return "", fmt.Errorf("attribution: %w", err)
	}
	return "--pod-init-config=" + podInit, nil
}

// monitorSocket is where runsc's sink finds sandbox dir's monitor: in
// the state directory when the path fits a unix socket address, else
// under the state root by a hash of dir.
func monitorSocket(dir string) string { return shortSocket(dir, "monitor.sock", "m-") }

// shortSocket is dir/name when that fits a unix socket address, else a
// name under dir's parent by a hash of dir.
func shortSocket(dir, name, prefix string) string {
	if p := filepath.Join(dir, name); len(p) <= 100 {
		return p
	}
	sum := sha256.Sum256([]byte(dir))
	return filepath.Join(filepath.Dir(dir), prefix+hex.EncodeToString(sum[:8])+".sock")
}

// StartMonitor starts the sandbox's process monitor and records it, and
// its timeline, in st, which it saves. It returns the runsc flag that
// makes the sandbox's sentry report to it; runsc's create fails when the
// monitor is not there to take the connection.
func (sb *Sandbox) StartMonitor(st *State, o MonitorOptions) (string, error) {
	if len(o.Command) == 0 {
		// This binary through /proc: the monitor's user need not be able
		// to reach it by its path.
		o.Command = []string{monitor.SelfExe, "monitor"}
	}
	auditDir := DefaultAuditDir
	maxBytes := int64(DefaultAuditMaxMB) << 20
	if o.Config != nil {
		if o.Config.Egress.AuditDir != "" {
			auditDir = o.Config.Egress.AuditDir
		}
		if o.Config.Egress.AuditMaxMB > 0 {
			maxBytes = int64(o.Config.Egress.AuditMaxMB) << 20
		}
	}
	if err := os.MkdirAll(auditDir, 0o750); err != nil {
		return "", fmt.Errorf("audit dir: %w", err)
	}
	var uid, gid int
	if o.Config != nil && o.Config.Egress.MonitorUser != "" {
		var err error
		if uid, gid, err = parseGatewayUser(o.Config.Egress.MonitorUser); err != nil {
			return "", fmt.Errorf("egress.monitor_user: %w", err)
		}
	}
	timeline := monitor.TimelineFile(auditDir, sb.ID)
	podInit := filepath.Join(sb.Dir, "pod-init.json")
	pid, err := monitor.Start(monitor.StartOptions{
		Command:       o.Command,
		Config:        monitor.ProcessConfig{Sandbox: sb.ID, Timeline: timeline, MaxBytes: maxBytes},
		ConfigFile:    filepath.Join(sb.Dir, "monitor.json"),
		PodInitConfig: podInit,
		Socket:        monitorSocket(sb.Dir),
		Options:       monitor.Options{FileOpens: o.FileOpens, Attribution: sb.AttributionSocket()},
		LogFile:       filepath.Join(sb.Dir, "monitor.log"),
		DieWithParent: o.DieWithParent,
		UID:           uid,
		GID:           gid,
	})
	if err != nil {
		return "", err
	}
	owner := OwnerOf(pid)
	st.Monitor, st.TimelineFile = &owner, timeline
	if err := sb.SaveState(st); err != nil {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		return "", err
	}
	return "--pod-init-config=" + podInit, nil
}

// stopMonitor ends the sandbox's monitor, which has usually ended with
// the sandbox already, and removes its socket. The timeline stays.
func (sb *Sandbox) stopMonitor() {
	if _, st, err := Open(filepath.Dir(sb.Dir), sb.ID); err == nil && st != nil && st.Monitor != nil && st.Monitor.Alive() {
		// SIGTERM: it flushes and writes its closing line.
		_ = syscall.Kill(st.Monitor.Pid, syscall.SIGTERM)
	}
	_ = os.Remove(monitorSocket(sb.Dir))
	if s := sb.AttributionSocket(); s != "" {
		_ = os.Remove(s)
	}
}
