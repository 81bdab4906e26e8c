package ocicli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/runtime"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// cmdExec runs a process in a running container. The process, from
// --process or from the flags, is confined by the container's recorded
// policy first: its user, no capabilities, no new privileges, its rlimits.
// A policy with allow_exec: false refuses exec altogether.
func cmdExec(ctx context.Context, e *env, args []string) error {
	set := e.subFlags("exec")
	var processFile, pidFile, consoleSocket, cwd, user string
	var detach, tty bool
	var envs, caps multiFlag
	for _, n := range []string{"process", "p"} {
		set.StringVar(&processFile, n, "", "a process.json to run")
	}
	for _, n := range []string{"detach", "d"} {
		set.BoolVar(&detach, n, false, "do not wait for the process")
	}
	for _, n := range []string{"tty", "t"} {
		set.BoolVar(&tty, n, false, "allocate a terminal")
	}
	for _, n := range []string{"env", "e"} {
		set.Var(&envs, n, "set an environment variable (K=V; repeatable)")
	}
	for _, n := range []string{"user", "u"} {
		set.StringVar(&user, n, "", "ignored: the policy decides the user")
	}
	for _, n := range []string{"cap", "c"} {
		set.Var(&caps, n, "refused: the policy drops every capability")
	}
	set.StringVar(&pidFile, "pid-file", "", "write the process's pid here")
	set.StringVar(&consoleSocket, "console-socket", "", "AF_UNIX socket that receives the pty master")
	set.StringVar(&cwd, "cwd", "", "working directory")
	set.Bool("no-new-privs", true, "always on")
	set.String("process-label", "", "ignored")
	set.String("apparmor", "", "ignored")
	set.String("cgroup", "", "ignored")
	set.Bool("ignore-paused", false, "ignored")
	set.String("additional-gids", "", "ignored: the policy decides the groups")
	preserve := set.Int("preserve-fds", 0, "unsupported: must be 0")
	if err := set.Parse(args); err != nil {
		return err
	}
	if set.NArg() < 1 {
		return fmt.Errorf("exec: want a container id")
	}
	if *preserve != 0 {
		return fmt.Errorf("exec: --preserve-fds is not supported by runsc")
	}
	if len(caps) > 0 {
		return fmt.Errorf("exec: --cap %s refused: the policy drops every capability", caps.String())
	}
	id := set.Arg(0)
	sb, st, err := runtime.Open(e.stateDir(), id)
	if err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	if st == nil {
		return fmt.Errorf("exec: container %q has no recorded policy", id)
	}

	var p *specs.Process
	if processFile != "" {
		data, err := os.ReadFile(processFile)
		if err != nil {
			return fmt.Errorf("exec: %w", err)
		}
		p = new(specs.Process)
		if err := json.Unmarshal(data, p); err != nil {
			return fmt.Errorf("exec: %s: %w", processFile, err)
		}
	} else {
		if set.NArg() < 2 {
			return fmt.Errorf("exec: want a command after the container id")
		}
		p = &specs.Process{Cwd: "/"}
		if st.Process != nil {
			p.Env, p.Cwd = append([]string(nil), st.Process.Env...), st.Process.Cwd
		}
		p.Args, p.Terminal = set.Args()[1:], tty
		p.Env = append(p.Env, envs...)
		if cwd != "" {
			p.Cwd = cwd
		}
	}
	if user != "" {
		e.log.Info("exec --user ignored: the policy decides", "container", id, "user", user)
	}
	confined, err := st.ConfineExec(p)
	if err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	f, err := os.CreateTemp(sb.Dir, "exec-*.json")
	if err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	supervised := detach && consoleSocket == ""
	if !supervised {
		defer os.Remove(f.Name())
	}
	if err := json.NewEncoder(f).Encode(confined); err != nil {
		f.Close()
		os.Remove(f.Name())
		return fmt.Errorf("exec: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("exec: %w", err)
	}
	if supervised {
		return e.execSupervised(id, f.Name(), pidFile)
	}
	ra := []string{"--process", f.Name()}
	if detach {
		ra = append(ra, "--detach")
	}
	if pidFile != "" {
		ra = append(ra, "--pid-file", pidFile)
	}
	if consoleSocket != "" {
		ra = append(ra, "--console-socket", consoleSocket)
	}
	code, err := e.runscFor(st).Passthrough(ctx, e.runscStdio(), "exec", append(ra, id)...)
	if err != nil {
		return err
	}
	if code != 0 {
		return exitError(code)
	}
	return nil
}

// cmdSpec writes runsc's default config.json, as runc spec does.
func cmdSpec(ctx context.Context, e *env, args []string) error {
	set := e.subFlags("spec")
	bundle := set.String("bundle", ".", "where to write config.json")
	set.StringVar(bundle, "b", ".", "where to write config.json")
	set.Bool("rootless", false, "ignored")
	if err := set.Parse(args); err != nil {
		return err
	}
	if set.NArg() != 0 {
		return fmt.Errorf("spec: takes no arguments")
	}
	return passthrough("spec")(ctx, e, []string{"--bundle", *bundle})
}

// execSupervised starts a detached exec the way engines kill it: the pid
// they get (--pid-file) is a supervisor of ours, not runsc's. Engines end
// an exec (a timed-out ExecSync, a probe) by signalling that pid, and a
// SIGKILL to runsc's own exec process would leave the process in the
// sandbox running and holding the exec's streams open. The supervisor
// forwards signals into the sandbox, and a reaper ends the process there
// when the supervisor is killed. Terminal execs keep runsc's own path:
// runsc forwards their signals itself.
func (e *env) execSupervised(id, processFile, pidFile string) error {
	internal := strings.TrimSuffix(processFile, ".json") + ".pid"
	cmd, err := e.internal(true, "exec-supervise", id, processFile, internal)
	if err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	// The supervisor writes one byte on this pipe once the process runs
	// in the sandbox, and closes it unwritten if it ends without having
	// started it. Polling runsc's pid file instead lost a quick exec: the
	// supervisor had removed the file before the poll saw it, and the
	// exec's own exit status was taken for a failure to start.
	started, startedW, err := os.Pipe()
	if err != nil {
		os.Remove(processFile)
		return fmt.Errorf("exec: %w", err)
	}
	cmd.ExtraFiles = []*os.File{startedW}
	err = cmd.Start()
	startedW.Close()
	if err != nil {
		started.Close()
		os.Remove(processFile)
		return fmt.Errorf("exec: %w", err)
	}
	var b [1]byte
	n, _ := started.Read(b[:])
	started.Close()
	if n == 1 {
		// Only then has the exec started, as engines take a returned
		// exec to mean. The supervisor is never reaped here: when this
		// process exits it passes to the engine's shim (a subreaper),
		// which must get its exit status, even if it has already ended.
		if pidFile != "" {
			if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
				_ = cmd.Process.Signal(syscall.SIGKILL)
				return fmt.Errorf("exec: %w", err)
			}
		}
		return cmd.Process.Release()
	}
	// It ended without starting the process: reap it for its status,
	// which is runsc's (its error is in --log).
	err = cmd.Wait()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exitError(exit.ExitCode())
	}
	return fmt.Errorf("exec %s: the supervisor ended before the process started: %v", id, err)
}

// cmdExecSupervise runs one exec in the foreground through runsc and
// exits with its status. Signals it gets go to the process in the
// sandbox; a reaper that shares a pipe with it kills that process if
// this one is killed before it ends.
func cmdExecSupervise(ctx context.Context, e *env, args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("exec-supervise: want a container id, a process file and a pid file")
	}
	id, processFile, internal := args[0], args[1], args[2]
	defer os.Remove(processFile)
	defer os.Remove(internal)
	// Fd 3 tells openshell-runtime exec that the process started; it
	// must not leak into runsc or the reaper.
	unix.CloseOnExec(3)
	startedPipe := os.NewFile(3, "started")
	var announce sync.Once
	announceStarted := func() {
		announce.Do(func() {
			_, _ = startedPipe.Write([]byte{1})
			startedPipe.Close()
		})
	}
	defer startedPipe.Close()
	_, st, err := runtime.Open(e.stateDir(), id)
	if err != nil || st == nil {
		return fmt.Errorf("exec-supervise: container %q: %v", id, err)
	}
	r := e.runscFor(st)

	// The reaper holds the read end of a pipe only this process writes:
	// a byte means the exec ended by itself, end-of-file that this
	// process died first.
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("exec-supervise: %w", err)
	}
	reaper, err := e.internal(false, "exec-reap", id, internal)
	if err != nil {
		return fmt.Errorf("exec-supervise: %w", err)
	}
	reaper.ExtraFiles = []*os.File{pr}
	if err := reaper.Start(); err != nil {
		return fmt.Errorf("exec-supervise: reaper: %w", err)
	}
	pr.Close()
	go reaper.Wait()

	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := r.Passthrough(ctx, e.runscStdio(), "exec", "--process", processFile, "--internal-pid-file", internal, id)
		done <- result{code, err}
	}()
	poll := time.NewTicker(2 * time.Millisecond)
	defer poll.Stop()
	for {
		select {
		case <-poll.C:
			if readPid(internal) > 0 {
				announceStarted()
				poll.Stop()
			}
		case sig := <-sigs:
			if pid := readPid(internal); pid > 0 {
				if err := r.KillProcess(ctx, id, pid, sig.(syscall.Signal)); err != nil {
					e.log.Warn("exec: forwarding a signal", "container", id, "signal", sig, "error", err)
				}
			}
		case res := <-done:
			// runsc wrote the pid before the process ran: if it is
			// there, the process started, however quickly it ended.
			if readPid(internal) > 0 {
				announceStarted()
			}
			_, _ = pw.Write([]byte{1})
			pw.Close()
			if res.err != nil {
				return res.err
			}
			if res.code < 0 {
				res.code = 128 + int(syscall.SIGKILL)
			}
			return exitError(res.code)
		}
	}
}

// cmdExecReap waits for its supervisor; if the supervisor died before the
// exec ended (a SIGKILL from the engine), it kills the process in the
// sandbox, which ends runsc's exec and closes the exec's streams.
func cmdExecReap(ctx context.Context, e *env, args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("exec-reap: want a container id and a pid file")
	}
	supervisor := os.NewFile(3, "supervisor")
	var b [1]byte
	if n, _ := supervisor.Read(b[:]); n == 1 {
		return nil
	}
	id, internal := args[0], args[1]
	pid := readPid(internal)
	if pid <= 0 {
		return nil
	}
	_, st, err := runtime.Open(e.stateDir(), id)
	if err != nil || st == nil {
		return fmt.Errorf("exec-reap: container %q: %v", id, err)
	}
	if err := e.runscFor(st).KillProcess(ctx, id, pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("exec-reap: %w", err)
	}
	e.log.Info("exec killed with its supervisor", "container", id, "pid", pid)
	return nil
}

func readPid(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid
}
