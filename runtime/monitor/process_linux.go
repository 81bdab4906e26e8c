package monitor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The monitor process gets its listening socket and its ready pipe as
// inherited files.
const (
	fdListener = 3 + iota
	fdReady
)

// ProcessConfig is the file the monitor process is started with.
type ProcessConfig struct {
	Sandbox  string `json:"sandbox"`
	Timeline string `json:"timeline"`
	MaxBytes int64  `json:"max_bytes"`
}

// StartOptions start a sandbox's monitor process.
type StartOptions struct {
	// Command is the monitor's command line without the config path,
	// e.g. {"/usr/bin/openshell", "monitor"}.
	Command []string
	Config  ProcessConfig
	// ConfigFile is where Config is written for the process, and
	// PodInitConfig where runsc's --pod-init-config file goes.
	ConfigFile, PodInitConfig string
	// Socket is the path of the sink's socket, which runsc connects to.
	Socket  string
	Options Options
	// LogFile takes the monitor's own errors.
	LogFile string
	// DieWithParent ends the monitor with the process that starts it
	// (openshell run); a runtime that exits after create leaves it be.
	DieWithParent bool
}

// maxSocketPath is what fits in sockaddr_un, with its terminating NUL.
const maxSocketPath = 107

// Start makes the sink's socket, writes runsc's pod-init-config, and
// starts the monitor process, which has opened its timeline when Start
// returns. The socket is made here, before runsc can connect: runsc's
// create fails (the sandbox does not start) when no monitor listens.
func Start(o StartOptions) (int, error) {
	if len(o.Socket) > maxSocketPath {
		return 0, fmt.Errorf("monitor: socket path %s is longer than %d bytes", o.Socket, maxSocketPath)
	}
	if err := os.MkdirAll(filepath.Dir(o.Config.Timeline), 0o750); err != nil {
		return 0, fmt.Errorf("monitor: %w", err)
	}
	data, err := json.MarshalIndent(o.Config, "", "  ")
	if err != nil {
		return 0, fmt.Errorf("monitor config: %w", err)
	}
	if err := os.WriteFile(o.ConfigFile, data, 0o600); err != nil {
		return 0, fmt.Errorf("monitor config: %w", err)
	}
	pic, err := PodInitConfig(o.Socket, o.Options)
	if err != nil {
		return 0, err
	}
	if err := os.WriteFile(o.PodInitConfig, pic, 0o600); err != nil {
		return 0, fmt.Errorf("monitor: %w", err)
	}
	_ = os.Remove(o.Socket)
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: o.Socket, Net: "unixpacket"})
	if err != nil {
		return 0, fmt.Errorf("monitor: %w", err)
	}
	l.SetUnlinkOnClose(false)
	lf, err := l.File()
	_ = l.Close()
	if err != nil {
		return 0, fmt.Errorf("monitor: %w", err)
	}
	defer lf.Close()
	if err := os.Chmod(o.Socket, 0o600); err != nil {
		return 0, fmt.Errorf("monitor: %w", err)
	}
	rd, wr, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("monitor: %w", err)
	}
	defer rd.Close()
	logf, err := os.OpenFile(o.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		_ = wr.Close()
		return 0, fmt.Errorf("monitor log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(o.Command[0], append(o.Command[1:], o.ConfigFile)...)
	cmd.ExtraFiles = []*os.File{lf, wr}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if o.DieWithParent {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	err = cmd.Start()
	_ = wr.Close()
	if err != nil {
		return 0, fmt.Errorf("start monitor: %w", err)
	}
	line, _ := bufio.NewReader(rd).ReadString('\n')
	if line = strings.TrimSpace(line); line != "ready" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if line == "" {
			line = "it exited; see " + o.LogFile
		}
		return 0, fmt.Errorf("monitor: %s", line)
	}
	pid := cmd.Process.Pid
	if o.DieWithParent {
		go func() { _ = cmd.Wait() }()
	} else {
		_ = cmd.Process.Release()
	}
	return pid, nil
}

// Main is the monitor process: it opens its timeline, says ready, and
// serves the sink until the sandbox's sentry has connected and gone (or
// SIGTERM), then writes its counts and exits. It holds only its socket
// and its timeline: no_new_privs and, where the kernel has Landlock, no
// file but the timeline's directory.
func Main(configFile string) error {
	ready := os.NewFile(fdReady, "ready")
	fail := func(err error) error {
		fmt.Fprintln(ready, strings.ReplaceAll(err.Error(), "\n", "; "))
		return err
	}
	data, err := os.ReadFile(configFile)
	if err != nil {
		return fail(fmt.Errorf("monitor config: %w", err))
	}
	var cfg ProcessConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return fail(fmt.Errorf("monitor config %s: %w", configFile, err))
	}
	lf := os.NewFile(fdListener, "sink")
	fl, err := net.FileListener(lf)
	_ = lf.Close()
	if err != nil {
		return fail(fmt.Errorf("inherited sink socket: %w", err))
	}
	l, ok := fl.(*net.UnixListener)
	if !ok {
		return fail(errors.New("inherited sink socket is not a unix socket"))
	}
	tl, err := OpenTimeline(cfg.Timeline, cfg.MaxBytes)
	if err != nil {
		return fail(err)
	}
	cerr := confine(filepath.Dir(cfg.Timeline))
	if cerr != nil && !errors.Is(cerr, syscall.ENOTSUP) {
		return fail(cerr)
	}
	m := New(cfg.Sandbox, tl)
	if cerr != nil {
		m.note("monitor " + errUnconfined.Error())
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if _, err := fmt.Fprintln(ready, "ready"); err != nil {
		return err
	}
	_ = ready.Close()
	serr := serve(ctx, l, m, true)
	m.Close()
	if st := m.Stats(); st.SinkErr != nil {
		serr = errors.Join(serr, st.SinkErr)
	}
	return errors.Join(serr, tl.Close())
}

// confine sets no_new_privs and, where Landlock exists, allows no file
// access but below dir (where the timeline rotates) and no TCP. Without
// Landlock it goes on: the monitor's reach is then its user's (root),
// which the documentation says.
func confine(dir string) error {
	if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0); errno != 0 {
		return fmt.Errorf("monitor: no_new_privs: %w", errno)
	}
	return landlock(dir)
}

// errUnconfined: the binary is built with cgo, where Go cannot apply a
// per-thread setting (no_new_privs, Landlock) to every thread.
var errUnconfined = errors.New("not confined: this binary uses cgo, where a setting cannot be applied to all threads")

// Landlock through the raw system calls, for every thread.
func landlock(dir string) error {
	abi, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, unix.LANDLOCK_CREATE_RULESET_VERSION)
	if errno != 0 || abi < 1 {
		return nil
	}
	handled := uint64(unix.LANDLOCK_ACCESS_FS_EXECUTE | unix.LANDLOCK_ACCESS_FS_WRITE_FILE | unix.LANDLOCK_ACCESS_FS_READ_FILE |
		unix.LANDLOCK_ACCESS_FS_READ_DIR | unix.LANDLOCK_ACCESS_FS_REMOVE_DIR | unix.LANDLOCK_ACCESS_FS_REMOVE_FILE |
		unix.LANDLOCK_ACCESS_FS_MAKE_CHAR | unix.LANDLOCK_ACCESS_FS_MAKE_DIR | unix.LANDLOCK_ACCESS_FS_MAKE_REG |
		unix.LANDLOCK_ACCESS_FS_MAKE_SOCK | unix.LANDLOCK_ACCESS_FS_MAKE_FIFO | unix.LANDLOCK_ACCESS_FS_MAKE_BLOCK |
		unix.LANDLOCK_ACCESS_FS_MAKE_SYM)
	if abi >= 2 {
		handled |= unix.LANDLOCK_ACCESS_FS_REFER
	}
	if abi >= 3 {
		handled |= unix.LANDLOCK_ACCESS_FS_TRUNCATE
	}
	attr := unix.LandlockRulesetAttr{Handled_access_fs: handled}
	if abi >= 4 {
		// No TCP at all: the monitor has no network to use.
		attr.Handled_access_net = unix.LANDLOCK_ACCESS_NET_BIND_TCP | unix.LANDLOCK_ACCESS_NET_CONNECT_TCP
	}
	fd, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr), 0)
	if errno != 0 {
		return fmt.Errorf("monitor: landlock: %w", errno)
	}
	defer unix.Close(int(fd))
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("monitor: landlock %s: %w", dir, err)
	}
	defer unix.Close(dfd)
	rule := unix.LandlockPathBeneathAttr{
		Allowed_access: unix.LANDLOCK_ACCESS_FS_WRITE_FILE | unix.LANDLOCK_ACCESS_FS_READ_FILE |
			unix.LANDLOCK_ACCESS_FS_REMOVE_FILE | unix.LANDLOCK_ACCESS_FS_MAKE_REG,
		Parent_fd: int32(dfd),
	}
	if abi >= 2 {
		rule.Allowed_access |= unix.LANDLOCK_ACCESS_FS_REFER // rotation renames
	}
	if abi >= 3 {
		rule.Allowed_access |= unix.LANDLOCK_ACCESS_FS_TRUNCATE
	}
	if _, _, errno := unix.Syscall6(unix.SYS_LANDLOCK_ADD_RULE, fd, unix.LANDLOCK_RULE_PATH_BENEATH, uintptr(unsafe.Pointer(&rule)), 0, 0, 0); errno != 0 {
		return fmt.Errorf("monitor: landlock rule: %w", errno)
	}
	if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_LANDLOCK_RESTRICT_SELF, fd, 0, 0); errno != 0 {
		return fmt.Errorf("monitor: landlock: %w", errno)
	}
	return nil
}
