// Package runsc is a client for gVisor's runsc command line. It builds the
// argument list (global flags before the subcommand) and attaches runsc's
// stderr to every error, so a failure says what runsc said.
package runsc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// Runsc runs one runsc binary with one state root.
type Runsc struct {
	Path     string   // the runsc binary
	Root     string   // --root: runsc's state directory
	Platform string   // --platform: systrap, ptrace or kvm
	Flags    []string // more global flags (a policy's, the config's)
}

// Stdio are the streams of a container run in the foreground.
type Stdio struct {
	In       io.Reader
	Out, Err io.Writer
}

func (r *Runsc) args(sub string, args ...string) []string {
	a := []string{"--root", r.Root}
	if r.Platform != "" {
		a = append(a, "--platform="+r.Platform)
	}
	a = append(a, r.Flags...)
	a = append(a, sub)
	return append(a, args...)
}

// Command returns the exec.Cmd for one runsc invocation.
func (r *Runsc) Command(ctx context.Context, sub string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, r.Path, r.args(sub, args...)...)
	// If we die, runsc must not outlive us holding the sandbox.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Check verifies the binary can be run, returning its version line.
func (r *Runsc) Check(ctx context.Context) (string, error) {
	if _, err := os.Stat(r.Path); err != nil {
		return "", fmt.Errorf("runsc not found at %s (make runsc installs it): %w", r.Path, err)
	}
	out, err := exec.CommandContext(ctx, r.Path, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("run %s --version: %w: %s", r.Path, err, bytes.TrimSpace(out))
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return line, nil
}

// Run creates and runs a container in the foreground and returns its exit
// status as a shell reports it (128+signal for a signal death). The
// sandbox inherits stdio. started, when not nil, is called once runsc has
// been started.
func (r *Runsc) Run(ctx context.Context, bundle, id string, o CreateOpts, stdio Stdio, started func()) (int, error) {
	cmd := r.Command(ctx, "run", o.args(bundle, id)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.In, stdio.Out, stdio.Err
	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("start runsc: %w", err)
	}
	if started != nil {
		started()
	}
	return exitStatus(cmd.Wait())
}

func exitStatus(err error) (int, error) {
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exit):
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return exit.ExitCode(), nil
	}
	return -1, fmt.Errorf("runsc: %w", err)
}

// Kill sends sig to the container's processes.
func (r *Runsc) Kill(ctx context.Context, id string, sig syscall.Signal, all bool) error {
	args := []string{id, fmt.Sprint(int(sig))}
	if all {
		args = append([]string{"--all"}, args...)
	}
	return r.quiet(ctx, "kill", args...)
}

// KillProcess sends sig to one process of the container, by its pid
// inside the sandbox (an exec'd process).
func (r *Runsc) KillProcess(ctx context.Context, id string, pid int, sig syscall.Signal) error {
	return r.quiet(ctx, "kill", "--pid", fmt.Sprint(pid), id, fmt.Sprint(int(sig)))
}

// Delete removes a container and its sandbox; force kills it first.
func (r *Runsc) Delete(ctx context.Context, id string, force bool) error {
	args := []string{id}
	if force {
		args = append([]string{"--force"}, args...)
	}
	return r.quiet(ctx, "delete", args...)
}

func (r *Runsc) quiet(ctx context.Context, sub string, args ...string) error {
	out, err := r.Command(ctx, sub, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("runsc %s: %w: %s", sub, err, bytes.TrimSpace(out))
	}
	return nil
}

// CreateOpts are runc's create options that runsc understands.
type CreateOpts struct {
	PidFile       string
	ConsoleSocket string
}

// Create creates a container from bundle without starting it. runsc's
// stderr is kept for the error; the container's stdio is the caller's,
// inherited by the sandbox.
func (r *Runsc) Create(ctx context.Context, bundle, id string, o CreateOpts, stdio Stdio) error {
	return r.withStdio(ctx, stdio, "create", o.args(bundle, id)...)
}

// args are create's and run's arguments.
func (o CreateOpts) args(bundle, id string) []string {
	args := []string{"--bundle", bundle}
	if o.PidFile != "" {
		args = append(args, "--pid-file", o.PidFile)
	}
	if o.ConsoleSocket != "" {
		args = append(args, "--console-socket", o.ConsoleSocket)
	}
	return append(args, id)
}

// IsNotExist reports whether a runsc error says the container is unknown.
func IsNotExist(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "not found"))
}

// Start starts a created container.
func (r *Runsc) Start(ctx context.Context, id string) error {
	return r.quiet(ctx, "start", id)
}

// State is the part of runsc state the runtime reads.
type State struct {
	ID     string `json:"id"`
	Pid    int    `json:"pid"`
	Status string `json:"status"`
	Bundle string `json:"bundle"`
}

// State returns a container's state.
func (r *Runsc) State(ctx context.Context, id string) (*State, error) {
	var stderr bytes.Buffer
	cmd := r.Command(ctx, "state", id)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("runsc state %s: %w: %s", id, err, bytes.TrimSpace(stderr.Bytes()))
	}
	var st State
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("runsc state %s: %w", id, err)
	}
	return &st, nil
}

// Passthrough runs one runsc command with the caller's stdio and returns
// its exit status. Used for the commands the runtime does not change.
func (r *Runsc) Passthrough(ctx context.Context, stdio Stdio, sub string, args ...string) (int, error) {
	cmd := r.Command(ctx, sub, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.In, stdio.Out, stdio.Err
	// runsc exec ends itself with the signal that ended the process in
	// the sandbox: a SIGTERM'd exec reports 143, as a shell would.
	code, err := exitStatus(cmd.Run())
	if err != nil {
		return -1, fmt.Errorf("runsc %s: %w", sub, err)
	}
	return code, nil
}

// withStdio runs runsc with the caller's stdio, which the sandbox
// inherits as the container's streams. They must be files (or nil): a pipe
// that we copied from would be held open by the sandbox, and the copy, so
// the command, would never end. runsc writes its own errors to that
// stderr and to --log, where engines look for them.
func (r *Runsc) withStdio(ctx context.Context, stdio Stdio, sub string, args ...string) error {
	cmd := r.Command(ctx, sub, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.In, stdio.Out, stdio.Err
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("runsc %s: %w (runsc's message is on the container's stderr and in --log)", sub, err)
	}
	return nil
}

// RemoveStale removes what runsc left in its root for a root container it
// no longer knows: the lock and socket files of a create that was killed
// before it wrote the container's state. Only those files, named exactly
// for id, are touched: another container's id may contain this one.
func (r *Runsc) RemoveStale(id string) error {
	if id == "" || id != filepath.Base(id) || id == "." || id == ".." {
		return fmt.Errorf("remove stale state: bad id %q", id)
	}
	for _, name := range []string{id + "_sandbox:" + id + ".lock", id + "_sandbox:" + id + ".state", "runsc-" + id + ".sock"} {
		if err := os.Remove(filepath.Join(r.Root, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale state: %w", err)
		}
	}
	return removeCgroups(CgroupRoot, id)
}

// CgroupRoot is where cgroup hierarchies are mounted.
const CgroupRoot = "/sys/fs/cgroup"

// removeCgroups removes the empty cgroups named id that runsc made for a
// container with no cgroupsPath, in each v1 hierarchy or the v2 root. A
// cgroup that still holds a process is not empty and stays.
func removeCgroups(root, id string) error {
	dirs, err := filepath.Glob(filepath.Join(root, "*", id))
	if err != nil {
		return fmt.Errorf("remove stale cgroups: %w", err)
	}
	dirs = append(dirs, filepath.Join(root, id))
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale cgroup: %w", err)
		}
	}
	return nil
}

// Exists reports whether the binary is there and executable, without
// running it: starting runsc costs tens of milliseconds, on every sandbox.
func (r *Runsc) Exists() error {
	st, err := os.Stat(r.Path)
	if err != nil {
		return fmt.Errorf("runsc not found at %s (make runsc installs it): %w", r.Path, err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("runsc at %s is not an executable file", r.Path)
	}
	return nil
}

// Known reports whether runsc still holds state for a root container:
// after "runsc run" returns, it has removed it, and a delete would only
// spend a runsc start to find nothing.
func (r *Runsc) Known(id string) bool {
	_, err := os.Stat(filepath.Join(r.Root, id+"_sandbox:"+id+".state"))
	return err == nil
}

// Exec replaces the calling process with "runsc SUB ARGS": for commands
// whose outcome is runsc's alone, this spares a fork and a wait, and the
// caller's own exit, on every call an engine makes. It returns only on
// error.
func (r *Runsc) Exec(sub string, args ...string) error {
	argv := append([]string{r.Path}, r.args(sub, args...)...)
	err := syscall.Exec(r.Path, argv, os.Environ())
	return fmt.Errorf("exec runsc %s: %w", sub, err)
}

// StartWithStdio starts a created container with the given stdio: runsc
// gives a pod's second container the stdio of the start command.
func (r *Runsc) StartWithStdio(ctx context.Context, id string, stdio Stdio) error {
	return r.withStdio(ctx, stdio, "start", id)
}

// Wait waits for a container to exit and returns its status as a shell
// reports it.
func (r *Runsc) Wait(ctx context.Context, id string) (int, error) {
	var stderr bytes.Buffer
	cmd := r.Command(ctx, "wait", id)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return -1, fmt.Errorf("runsc wait %s: %w: %s", id, err, bytes.TrimSpace(stderr.Bytes()))
	}
	var res struct {
		ExitStatus int `json:"exitStatus"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return -1, fmt.Errorf("runsc wait %s: %w", id, err)
	}
	return res.ExitStatus, nil
}
