package ocicli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/runtime"
	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/runtime/monitor"
	"github.com/openshell/openshell/runtime/runsc"
)

type createFlags struct {
	bundle, pidFile, consoleSocket string
	detach, keep                   bool
}

func (c *createFlags) opts() runsc.CreateOpts {
	return runsc.CreateOpts{PidFile: c.pidFile, ConsoleSocket: c.consoleSocket}
}

func (e *env) parseCreate(name string, args []string) (*createFlags, string, error) {
	var c createFlags
	fs := e.subFlags(name)
	fs.StringVar(&c.bundle, "bundle", ".", "the bundle directory")
	fs.StringVar(&c.bundle, "b", ".", "the bundle directory")
	fs.StringVar(&c.pidFile, "pid-file", "", "write the container's pid here")
	fs.StringVar(&c.consoleSocket, "console-socket", "", "AF_UNIX socket that receives the console's pty master")
	// runc options that have no meaning under runsc, accepted so engines
	// that pass them keep working.
	fs.Bool("no-pivot", false, "ignored: runsc never pivots on the host")
	fs.Bool("no-new-keyring", false, "ignored: gVisor has no keyrings")
	preserve := fs.Int("preserve-fds", 0, "unsupported: must be 0")
	if name == "run" {
		fs.BoolVar(&c.detach, "detach", false, "do not wait for the container")
		fs.BoolVar(&c.detach, "d", false, "do not wait for the container")
		fs.BoolVar(&c.keep, "keep", false, "ignored: runsc removes a container run in the foreground")
		fs.Bool("no-subreaper", false, "ignored")
	}
	if err := fs.Parse(args); err != nil {
		return nil, "", err
	}
	if *preserve != 0 {
		return nil, "", fmt.Errorf("%s: --preserve-fds is not supported by runsc", name)
	}
	id, err := oneID(fs)
	if err != nil {
		return nil, "", err
	}
	b, err := filepath.Abs(c.bundle)
	if err != nil {
		return nil, "", fmt.Errorf("bundle: %w", err)
	}
	c.bundle = b
	return &c, id, nil
}

// prepare applies the container's policy to a copy of its bundle's spec in
// the runtime's state, and records the state. The engine's bundle is never
// written. On error nothing is left.
func (e *env) prepare(id, bundle string) (*runtime.Sandbox, *runtime.State, func(), error) {
	spec := runtime.NewFileSpec(filepath.Join(bundle, "config.json"))
	s, err := spec.Load()
	if err != nil {
		return nil, nil, nil, err
	}
	p, src, err := e.cfg.ResolvePolicy(s.Annotations)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("policy (%s): %w", src, err)
	}
	subcontainer, err := e.checkJoin(s.Annotations, p.Name, p.Hash)
	if err != nil {
		return nil, nil, nil, err
	}
	gpuFlags, gpuWarnings, err := runtime.GPUFlags(context.Background(), e.runsc.Path, e.cfg, p)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := runtime.CheckAttribution(context.Background(), e.runsc.Path, p); err != nil {
		return nil, nil, nil, err
	}
	// Learning mode is the operator's to allow (allow_learn), the
	// annotation's to ask for; a pod's later containers share its first
	// one's gateway and monitor, and so its mode.
	learn, err := runtime.Learning(e.cfg, s.Annotations)
	if err != nil {
		return nil, nil, nil, err
	}
	learn = learn && !subcontainer
	sb, err := runtime.Prepare(runtime.PrepareOptions{
		StateDir: e.stateDir(), ID: id, Spec: spec, Bundle: bundle,
		Compile: runtime.CompilePolicy(p, e.cfg, runtime.LearnCompile(learn)...),
	})
	if err != nil {
		return nil, nil, nil, err
	}
	c := sb.Compiled
	for _, w := range c.Warnings {
		e.log.Warn(w.Error(), "container", id)
	}
	if w := sb.LearnWithoutSink(context.Background(), e.runsc.Path); w != "" {
		e.log.Warn(w, "container", id)
	}
	for _, w := range gpuWarnings {
		e.log.Warn(w, "container", id)
	}
	c.RunscFlags = append(c.RunscFlags, gpuFlags...)
	st := sb.NewState(bundle, src.String(), s.Process)
	st.Subcontainer = subcontainer
	undo := func() {
		if err := sb.Cleanup(); err != nil {
			e.log.Error("remove state", "container", id, "error", err)
		}
	}
	if err := sb.SaveState(st); err != nil {
		undo()
		return nil, nil, nil, err
	}
	// A pod's later containers share its first one's network, and gateway.
	if c.Egress && !st.Subcontainer {
		if err := e.startGateway(sb, st, p.File, s.Annotations, src, learn); err != nil {
			undo()
			return nil, nil, nil, err
		}
	}
	// One monitor per sandbox: a pod's later containers are traced by
	// its first one's (their events carry their container id).
	if !st.Subcontainer {
		flag, err := sb.StartMonitor(st, runtime.MonitorOptions{Config: e.cfg, FileOpens: p.Audit.FileOpens || learn})
		if err == nil {
			st.RunscFlags = append(st.RunscFlags, flag)
			err = sb.SaveState(st)
		}
		if err != nil {
			undo()
			return nil, nil, nil, err
		}
	}
	if learn {
		if err := e.writeLearnRecord(id, bundle, p.File, s); err != nil {
			undo()
			return nil, nil, nil, err
		}
		e.log.Warn("learning mode: every name is answered and every connection allowed as audit; then: openshell policy suggest "+id, "container", id)
	}
	e.log.Info("policy applied", "container", id, "policy", p.Name, "sha256", p.Hash, "source", src.String(), "learn", learn)
	return sb, st, undo, nil
}

// startGateway starts the container's egress gateway, detached: it lives
// until delete ends it.
func (e *env) startGateway(sb *runtime.Sandbox, st *runtime.State, file string, annotations map[string]string, src runtime.PolicySource, learn bool) error {
	o := runtime.GatewayOptions{Config: e.cfg, PolicyFile: file, Learn: learn}
	if src.Kind == "inline" {
		o.PolicyData = []byte(annotations[runtime.AnnotationPolicyInline])
	}
	return sb.StartGateway(st, o)
}

// cmdMonitor is a sandbox's process monitor (runtime/monitor).
func cmdMonitor(_ context.Context, _ *env, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("monitor: want the monitor's config file")
	}
	return monitor.Main(args[0])
}

// cmdGateway is a container's egress gateway process.
func cmdGateway(_ context.Context, _ *env, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("gateway: want the gateway's config file")
	}
	return egress.Main(args[0])
}

func cmdCreate(ctx context.Context, e *env, args []string) error {
	c, id, err := e.parseCreate("create", args)
	if err != nil {
		return err
	}
	_, err = e.create(ctx, "create", id, c, false)
	return err
}

// create prepares the container and has runsc create it, and start it too
// when asked. On any failure runsc's container and the runtime's state are
// removed.
func (e *env) create(ctx context.Context, verb, id string, c *createFlags, start bool) (*runtime.State, error) {
	sb, st, undo, err := e.prepare(id, c.bundle)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", verb, id, err)
	}
	if !start && st.Subcontainer && (st.Process == nil || !st.Process.Terminal) {
		if st.StdioHolder, err = e.spawnStdioHolder(id); err == nil {
			err = sb.SaveState(st)
		}
		if err != nil {
			undo()
			return nil, fmt.Errorf("%s %s: %w", verb, id, err)
		}
	}
	r := e.runscFor(st)
	err = r.Create(ctx, sb.Bundle, id, c.opts(), e.runscStdio())
	if err == nil && st.StdioHolder != nil && c.pidFile != "" {
		err = os.WriteFile(c.pidFile, []byte(strconv.Itoa(st.StdioHolder.Pid)), 0o644)
	}
	if err == nil && start {
		err = r.Start(ctx, id)
	}
	if err != nil {
		if msg := e.lastRunscError(); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		if st.StdioHolder != nil {
			st.StdioHolder.Kill()
		}
		e.forceDelete(r, id)
		undo()
		return nil, fmt.Errorf("%s %s: %w", verb, id, err)
	}
	return st, nil
}

// lastRunscError is the last error runsc wrote to the JSON --log: runsc
// puts its reasons there and on the container's stderr, which an engine
// may not show. Empty when there is no JSON log or no error in it.
func (e *env) lastRunscError() string {
	if e.g.log == "" || e.g.logFormat != "json" {
		return ""
	}
	data, err := os.ReadFile(e.g.log)
	if err != nil {
		return ""
	}
	var last string
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		var entry struct{ Level, Msg string }
		if err := dec.Decode(&entry); err != nil {
			return last
		}
		if entry.Level == "error" || entry.Level == "fatal" {
			last = entry.Msg
		}
	}
}

func cmdStart(ctx context.Context, e *env, args []string) error {
	fs := e.subFlags("start")
	if err := fs.Parse(args); err != nil {
		return err
	}
	id, err := oneID(fs)
	if err != nil {
		return err
	}
	_, st, err := runtime.Open(e.stateDir(), id)
	if err != nil {
		return err
	}
	if st == nil {
		return fmt.Errorf("start: container %q has no recorded policy", id)
	}
	// The policy's flags go with start too: for a pod's second container
	// runsc takes its configuration (--oci-seccomp among it) from here.
	r := e.runscFor(st)
	if st.StdioHolder == nil && st.Timeout == 0 {
		return r.Exec("start", id)
	}
	if st.StdioHolder != nil {
		if err := startWithHeldStdio(ctx, r, id, *st.StdioHolder); err != nil {
			return err
		}
	} else if err := r.Start(ctx, id); err != nil {
		return err
	}
	if st.Timeout > 0 {
		return e.spawnWatchdog(id, st.Timeout)
	}
	return nil
}

// The annotations with which CRI engines (containerd, CRI-O) have runsc
// start a pod's later containers inside its first one's sandbox.
const (
	annotationContainerdType    = "io.kubernetes.cri.container-type"
	annotationContainerdSandbox = "io.kubernetes.cri.sandbox-id"
	annotationCRIOType          = "io.kubernetes.cri-o.ContainerType"
	annotationCRIOSandbox       = "io.kubernetes.cri-o.SandboxID"
)

// isSubcontainer reports whether a spec is a pod's second (or later)
// container, which runsc starts inside the pod's existing sandbox. It
// reads the annotations exactly as runsc does (specutils.SpecContainerType:
// containerd's first, whatever its value), so that we never check one
// container type while runsc acts on another.
func isSubcontainer(annotations map[string]string) bool {
	if t, ok := annotations[annotationContainerdType]; ok {
		return t == "container"
	}
	return annotations[annotationCRIOType] == "container"
}

// sandboxToJoin is the sandbox a subcontainer joins, and the annotation
// that named it, in runsc's order (specutils.SandboxID).
func sandboxToJoin(annotations map[string]string) (id, key string) {
	for _, k := range []string{annotationContainerdSandbox, annotationCRIOSandbox} {
		if id, ok := annotations[k]; ok {
			return id, k
		}
	}
	return "", annotationContainerdSandbox
}

// checkJoin reports whether the container joins an existing sandbox, and
// refuses the join unless that sandbox is one this runtime created (its
// state is in ours), is a sandbox rather than a container that joined
// one, and runs under the very same policy (by sha256) as the container.
// A joined container shares its sandbox's network, egress gateway and
// runsc flags, so any other policy could widen it. The annotations are
// written by whoever writes the spec (with ctr or Docker, anyone), and
// CRI engines set them from their own sandbox records, so a pod's
// containers pass: they resolve the same annotations to the same policy.
func (e *env) checkJoin(annotations map[string]string, name, hash string) (bool, error) {
	if !isSubcontainer(annotations) {
		return false, nil
	}
	id, key := sandboxToJoin(annotations)
	if id == "" {
		return false, fmt.Errorf("join sandbox: the container type annotation makes this a pod's container, but annotation %s names no sandbox", key)
	}
	_, st, err := runtime.Open(e.stateDir(), id)
	switch {
	case err != nil:
		return false, fmt.Errorf("join sandbox %q (annotation %s): no sandbox of this runtime by that id: %w", id, key, err)
	case st == nil:
		return false, fmt.Errorf("join sandbox %q (annotation %s): it has no recorded policy yet", id, key)
	case st.Subcontainer:
		return false, fmt.Errorf("join sandbox %q (annotation %s): it is a container that joined a sandbox, not a sandbox", id, key)
	case st.Policy.Hash != hash:
		return false, fmt.Errorf("join sandbox %q (annotation %s): it runs policy %s (sha256 %s), this container policy %s (sha256 %s); a container joins only a sandbox with the same policy", id, key, st.Policy.Name, st.Policy.Hash, name, hash)
	}
	return true, nil
}

// spawnStdioHolder starts the container's proxy process for a pod's
// second container. It holds this process's stdio (the container's, as
// the engine gave them to create) until start takes them, then waits for
// the container and exits with its status. Engines wait for the pid in
// --pid-file: for such a container runsc's pid is the pod's sandbox,
// which outlives it, so the proxy's pid goes there instead.
func (e *env) spawnStdioHolder(id string) (*runtime.Owner, error) {
	pid, err := e.spawn(true, "hold-stdio", id)
	if err != nil {
		return nil, fmt.Errorf("container proxy: %w", err)
	}
	o := runtime.OwnerOf(pid)
	return &o, nil
}

// spawn starts one of this binary's internal commands in a session of its
// own, with the global flags that find the same state, configuration and
// log, and returns its pid. withStdio hands it this process's stdio;
// otherwise it holds none, so the engine that called us sees our output
// end when we exit.
func (e *env) spawn(withStdio bool, sub string, args ...string) (int, error) {
	cmd, err := e.internal(withStdio, sub, args...)
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	pid := cmd.Process.Pid
	return pid, cmd.Process.Release()
}

// internal is the command for one of this binary's internal commands, as
// spawn starts them.
func (e *env) internal(withStdio bool, sub string, args ...string) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	global := []string{"--root", e.g.root, "--config", e.g.config}
	if e.g.log != "" {
		global = append(global, "--log", e.g.log, "--log-format", e.g.logFormat)
	}
	cmd := exec.Command(self, append(append(global, sub), args...)...)
	if withStdio {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = e.stdio.In, e.stdio.Out, e.stdio.Err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return cmd, nil
}

// startWithHeldStdio starts the container with the stdio its proxy kept,
// reopened through /proc, then tells the proxy to wait for it.
func startWithHeldStdio(ctx context.Context, r *runsc.Runsc, id string, holder runtime.Owner) error {
	if !holder.Alive() {
		return fmt.Errorf("start %s: its proxy process (pid %d) is gone", id, holder.Pid)
	}
	var files [3]*os.File
	for fd, flag := range []int{os.O_RDONLY, os.O_WRONLY, os.O_WRONLY} {
		f, err := os.OpenFile(fmt.Sprintf("/proc/%d/fd/%d", holder.Pid, fd), flag, 0)
		if err != nil {
			return fmt.Errorf("start %s: reopen stdio: %w", id, err)
		}
		defer f.Close()
		files[fd] = f
	}
	if err := r.StartWithStdio(ctx, id, runsc.Stdio{In: files[0], Out: files[1], Err: files[2]}); err != nil {
		holder.Kill()
		return err
	}
	return syscall.Kill(holder.Pid, syscall.SIGUSR1)
}

// cmdHoldStdio is the proxy: it holds its stdio until SIGUSR1 (start),
// then waits for the container and exits with its status. It lets go of
// the stdio first, so the container's streams end when the container does.
func cmdHoldStdio(ctx context.Context, e *env, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("hold-stdio: want a container id")
	}
	started := make(chan os.Signal, 1)
	signal.Notify(started, syscall.SIGUSR1)
	<-started
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	for fd := 0; fd < 3; fd++ {
		_ = unix.Dup2(int(devnull.Fd()), fd)
	}
	code, err := e.runsc.Wait(ctx, args[0])
	if err != nil {
		return err
	}
	return exitError(code)
}

// cmdRun creates and starts a container. In the foreground it waits, and
// exits with the container's status; runsc removes the container then,
// and the runtime its own state.
func cmdRun(ctx context.Context, e *env, args []string) error {
	c, id, err := e.parseCreate("run", args)
	if err != nil {
		return err
	}
	if c.detach {
		st, err := e.create(ctx, "run", id, c, true)
		if err != nil {
			return err
		}
		if st.Timeout > 0 {
			return e.spawnWatchdog(id, st.Timeout)
		}
		return nil
	}
	sb, st, _, err := e.prepare(id, c.bundle)
	if err != nil {
		return fmt.Errorf("run %s: %w", id, err)
	}
	r := e.runscFor(st)
	var killed bool
	var stop func()
	started := func() {
		if st.Timeout > 0 {
			t := time.AfterFunc(st.Timeout, func() {
				killed = true
				_ = r.Kill(context.Background(), id, syscall.SIGKILL, true)
			})
			stop = func() { t.Stop() }
		}
	}
	code, err := r.Run(ctx, sb.Bundle, id, c.opts(), e.runscStdio(), started)
	if stop != nil {
		stop()
	}
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if rerr := sb.Remove(cctx, r); rerr != nil {
		e.log.Error("remove container", "container", id, "error", rerr)
	}
	if err != nil {
		return err
	}
	if killed {
		e.log.Warn("max_execution_time reached; container killed", "container", id, "limit", st.Timeout)
	}
	if code != 0 {
		return exitError(code)
	}
	return nil
}

// runscFor is the runsc client with the flags a container's policy needs.
func (e *env) runscFor(st *runtime.State) *runsc.Runsc {
	r := *e.runsc
	r.Flags = append(append([]string(nil), r.Flags...), st.RunscFlags...)
	return &r
}

func (e *env) forceDelete(r *runsc.Runsc, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Delete(ctx, id, true); err != nil && !runsc.IsNotExist(err) {
		e.log.Warn("delete after failure", "container", id, "error", err)
	}
}

// cmdKill signals a container. When it has already stopped, runsc says
// "sandbox is not running" or "... is not running"; engines recognise
// runc's words for that ("container not running") and treat the kill as
// done, so the failure is given in those words.
func cmdKill(ctx context.Context, e *env, args []string) error {
	out, err := e.runsc.Command(ctx, "kill", translate("kill", args)...).CombinedOutput()
	if err == nil {
		return nil
	}
	msg := strings.TrimSpace(string(out))
	if strings.Contains(msg, "not running") {
		return fmt.Errorf("container not running (runsc: %s)", msg)
	}
	return fmt.Errorf("runsc kill: %w: %s", err, msg)
}

// cmdDelete removes the container from runsc, then the runtime's own state.
// A container runsc does not know is not an error when the runtime's state
// for it still exists (a create that died midway), or with --force.
func cmdDelete(ctx context.Context, e *env, args []string) error {
	set := e.subFlags("delete")
	force := set.Bool("force", false, "kill the container if it is running")
	set.BoolVar(force, "f", false, "kill the container if it is running")
	if err := set.Parse(args); err != nil {
		return err
	}
	id, err := oneID(set)
	if err != nil {
		return err
	}
	sb, st, oerr := runtime.Open(e.stateDir(), id)
	if st != nil && st.StdioHolder != nil {
		st.StdioHolder.Kill()
	}
	derr := e.runsc.Delete(ctx, id, *force)
	switch {
	case derr == nil:
	case runsc.IsNotExist(derr) && (sb != nil || *force):
	default:
		return derr
	}
	if oerr != nil {
		if errors.Is(oerr, fs.ErrNotExist) {
			return nil
		}
		return oerr
	}
	return sb.Cleanup()
}

// spawnWatchdog starts a detached process that kills the container at its
// wall-clock limit.
func (e *env) spawnWatchdog(id string, limit time.Duration) error {
	if _, err := e.spawn(false, "watchdog", id, strconv.FormatInt(int64(limit), 10)); err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	return nil
}

// cmdWatchdog waits for the container's sandbox to end or its limit to
// pass, whichever is first, and kills it in the second case.
func cmdWatchdog(ctx context.Context, e *env, args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("watchdog: want ID NANOSECONDS")
	}
	id := args[0]
	ns, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil || ns <= 0 {
		return fmt.Errorf("watchdog: bad limit %q", args[1])
	}
	limit := time.Duration(ns)
	st, err := e.runsc.State(ctx, id)
	if err != nil {
		return err
	}
	fd, err := unix.PidfdOpen(st.Pid, 0)
	if err != nil {
		return fmt.Errorf("watchdog: open sandbox pid %d: %w", st.Pid, err)
	}
	defer unix.Close(fd)
	deadline := time.Now().Add(limit)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(min(left, time.Hour).Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("watchdog: %w", err)
		}
		if n > 0 {
			return nil // the sandbox ended by itself
		}
	}
	e.log.Warn("max_execution_time reached; container killed", "container", id, "limit", limit)
	return e.runsc.Kill(ctx, id, syscall.SIGKILL, true)
}

// writeLearnRecord keeps, for openshell policy suggest, the policy a
// learning container ran under (its bytes: inline, or its file's) and the
// image its paths came from (the bundle's root).
func (e *env) writeLearnRecord(id, bundle, file string, s *specs.Spec) error {
	data := []byte(s.Annotations[runtime.AnnotationPolicyInline])
	if len(data) == 0 {
		var err error
		if data, err = os.ReadFile(file); err != nil {
			return fmt.Errorf("learn: %w", err)
		}
	}
	root := ""
	if s.Root != nil {
		root = s.Root.Path
		if !filepath.IsAbs(root) {
			root = filepath.Join(bundle, root)
		}
	}
	return runtime.WriteLearnRecord(e.cfg.Egress.AuditDir, runtime.LearnRecord{Sandbox: id, PolicyFile: file, Policy: string(data), Root: root})
}
