package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/runtime/egress"
)

// The monitor process gets everything it uses as inherited files: its
// listening socket, its ready pipe, its config, and its timeline's live
// and rotated files. It opens nothing by name.
const (
	fdListener = 3 + iota
	fdReady
	fdConfig
	fdTimeline
	fdTimelineOld
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
	// e.g. {"/usr/bin/openshell", "monitor"}, or {SelfExe, "monitor"}.
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
	// UID and GID are the unprivileged user the monitor runs as; zero:
	// DefaultUID.
	UID, GID int
}

// SelfExe as a command is this binary, reached through /proc: the
// monitor's user may not be allowed to reach it by its path.
const SelfExe = "/proc/self/exe"

// DefaultUID is the monitor's user and group unless the runtime's
// config says otherwise: nobody/nogroup.
const DefaultUID = 65534

// maxSocketPath is what fits in sockaddr_un, with its terminating NUL.
const maxSocketPath = 107

// Start makes the sink's socket, writes runsc's pod-init-config, opens
// the timeline, and starts the monitor process, which is ready when Start
// returns. The socket is made here, before runsc can connect: runsc's
// create fails (the sandbox does not start) when no monitor listens.
//
// The monitor parses what the sentry sends, so it starts confined (as
// the gateway's serving process does): as o.UID, with no capability and
// no way to gain one (no_new_privs), under Landlock that lets it open no
// file, and (once it has its descriptors) behind a seccomp allowlist. Its
// timeline is root's, in root's directory, and reaches it as
// descriptors: it can write its own timeline and nothing else, the
// audit log least of all.
func Start(o StartOptions) (int, error) {
	if len(o.Socket) > maxSocketPath {
		return 0, fmt.Errorf("monitor: socket path %s is longer than %d bytes", o.Socket, maxSocketPath)
	}
	if o.UID == 0 && o.GID == 0 {
		o.UID, o.GID = DefaultUID, DefaultUID
	}
	if o.UID <= 0 || o.GID <= 0 {
		return 0, fmt.Errorf("monitor: may not run as uid %d gid %d", o.UID, o.GID)
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
	conf, err := os.Open(o.ConfigFile)
	if err != nil {
		return 0, fmt.Errorf("monitor config: %w", err)
	}
	defer conf.Close()
	live, old, err := OpenTimelineFiles(o.Config.Timeline)
	if err != nil {
		return 0, fmt.Errorf("monitor: %w", err)
	}
	defer live.Close()
	defer old.Close()
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
	cmd := exec.Command(o.Command[0], append(o.Command[1:], o.ConfigFile)...)
	if o.Command[0] == SelfExe {
		cmd.Args[0] = os.Args[0]
	}
	cmd.ExtraFiles = []*os.File{lf, nil /* the ready pipe */, conf, live, old}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:     true,
		Credential: &syscall.Credential{Uid: uint32(o.UID), Gid: uint32(o.GID), Groups: []uint32{}},
	}
	// The thread that forks the monitor lives as long as the monitor
	// should die with it: a parent-death signal follows the thread.
	var keep chan struct{}
	if o.DieWithParent {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
		keep = make(chan struct{})
	}
	launch := egress.Launch{Name: "monitor", Cmd: cmd, ReadyFD: fdReady, LogFile: o.LogFile, Reap: o.DieWithParent,
		Start: func() error { return egress.StartConfined(cmd, keep) }}
	if keep != nil {
		launch.Waited = func() { close(keep) }
	}
	pid, err := launch.Run()
	var nr *egress.NotReadyError
	if errors.As(err, &nr) {
		return 0, fmt.Errorf("monitor: %w", err)
	}
	return pid, err
}

// Main is the monitor process: it takes its config, socket and timeline
// from its descriptors, checks that it was started confined and shuts
// itself behind its seccomp filter, says ready, and serves the sink until
// the sandbox's sentry has connected and gone (or SIGTERM), then writes
// its counts and exits. configFile only names the config in messages.
func Main(configFile string) error {
	ready := os.NewFile(fdReady, "ready")
	fail := func(err error) error {
		fmt.Fprintln(ready, strings.ReplaceAll(err.Error(), "\n", "; "))
		return err
	}
	cf := os.NewFile(fdConfig, configFile)
	data, err := io.ReadAll(io.LimitReader(cf, 1<<20))
	_ = cf.Close()
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
	tl, err := NewTimeline(os.NewFile(fdTimeline, cfg.Timeline), os.NewFile(fdTimelineOld, cfg.Timeline+".1"), cfg.MaxBytes)
	if err != nil {
		return fail(err)
	}
	abi, err := checkConfined()
	if err != nil {
		return fail(err)
	}
	if err := egress.InstallSeccomp(seccompAllowed); err != nil {
		return fail(fmt.Errorf("monitor: %w", err))
	}
	m := New(cfg.Sandbox, tl)
	landlock := "no Landlock on this kernel"
	if abi > 0 {
		landlock = fmt.Sprintf("Landlock ABI %d", abi)
	}
	m.note(fmt.Sprintf("monitor confined: uid %d gid %d, no capabilities, no_new_privs, %s, seccomp", os.Getuid(), os.Getgid(), landlock))
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

// checkConfined fails unless the process was started confined: an
// unprivileged user without capabilities, no_new_privs, and, where the
// kernel has Landlock, no file it may open by name (the root directory,
// open to every user, is refused). It returns the kernel's Landlock ABI.
func checkConfined() (int, error) {
	if err := egress.CheckUnprivileged(); err != nil {
		return 0, fmt.Errorf("monitor not confined: %w", err)
	}
	abi := egress.LandlockABI()
	if abi > 0 {
		fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err == nil {
			_ = unix.Close(fd)
			return 0, errors.New("monitor not confined: Landlock did not take (it can open /)")
		}
		if !errors.Is(err, unix.EACCES) {
			return 0, fmt.Errorf("monitor: check Landlock: %w", err)
		}
	}
	return abi, nil
}

// seccompAllowed is what the monitor calls once it serves: the Go
// runtime (threads, memory, signals, timers), accepting on its socket and
// reading the sentry's packets, and writing (and rotating, by copy and
// truncate) its timeline through its descriptors. Not here: open,
// socket, connect, bind, execve, rename, unlink, ptrace, and every *id
// call: the monitor has no file, network or process to reach.
var seccompAllowed = []uintptr{
	unix.SYS_READ, unix.SYS_WRITE, unix.SYS_CLOSE, unix.SYS_FSTAT, unix.SYS_NEWFSTATAT, unix.SYS_STATX,
	unix.SYS_LSEEK, unix.SYS_PREAD64, unix.SYS_PWRITE64, unix.SYS_READV, unix.SYS_WRITEV,
	unix.SYS_FCNTL, unix.SYS_FTRUNCATE, unix.SYS_FSYNC, unix.SYS_FDATASYNC, unix.SYS_COPY_FILE_RANGE,
	unix.SYS_MMAP, unix.SYS_MUNMAP, unix.SYS_MPROTECT, unix.SYS_MADVISE, unix.SYS_BRK, unix.SYS_MREMAP, unix.SYS_MINCORE,
	unix.SYS_RT_SIGACTION, unix.SYS_RT_SIGPROCMASK, unix.SYS_RT_SIGRETURN, unix.SYS_SIGALTSTACK,
	unix.SYS_TGKILL, unix.SYS_TKILL, unix.SYS_GETPID, unix.SYS_GETTID, unix.SYS_GETPPID,
	unix.SYS_EXIT, unix.SYS_EXIT_GROUP, unix.SYS_FUTEX, unix.SYS_SET_ROBUST_LIST, unix.SYS_RSEQ, unix.SYS_RESTART_SYSCALL,
	unix.SYS_SCHED_YIELD, unix.SYS_SCHED_GETAFFINITY, unix.SYS_NANOSLEEP, unix.SYS_CLOCK_NANOSLEEP,
	unix.SYS_CLOCK_GETTIME, unix.SYS_GETTIMEOFDAY, unix.SYS_GETRLIMIT, unix.SYS_PRLIMIT64,
	unix.SYS_GETUID, unix.SYS_GETEUID, unix.SYS_GETGID, unix.SYS_GETEGID, unix.SYS_GETRANDOM,
	unix.SYS_EPOLL_CREATE1, unix.SYS_EPOLL_CTL, unix.SYS_EPOLL_PWAIT, unix.SYS_EVENTFD2,
	unix.SYS_PIPE2, unix.SYS_PPOLL,
	unix.SYS_ACCEPT4, unix.SYS_GETSOCKNAME, unix.SYS_GETPEERNAME, unix.SYS_GETSOCKOPT, unix.SYS_SETSOCKOPT,
	unix.SYS_RECVFROM, unix.SYS_RECVMSG, unix.SYS_SENDTO, unix.SYS_SENDMSG, unix.SYS_SHUTDOWN,
}
