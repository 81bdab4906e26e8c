package runtime

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// State is what the runtime keeps about a container between commands:
// enough to confine an exec by the container's policy and to enforce its
// wall-clock limit, without reading the policy file again (it may have
// changed since).
type State struct {
	ID      string    `json:"id"`
	Bundle  string    `json:"bundle"`
	Created time.Time `json:"created"`
	Policy  PolicyRef `json:"policy"`
	// AllowExec is the policy's allow_exec: false refuses exec into the
	// container, since gVisor starts an exec'd process itself, past the
	// seccomp filter that stops execve.
	AllowExec bool `json:"allowExec"`
	// Process is the container's process after the policy: the user,
	// capabilities and rlimits every exec gets.
	Process *specs.Process `json:"process"`
	// Timeout is max_execution_time_seconds; zero means none.
	Timeout time.Duration `json:"timeout"`
	// RunscFlags are the flags the policy compiled to.
	RunscFlags []string `json:"runscFlags"`
	// Owner is set for a sandbox run in the foreground: when it has died,
	// the sandbox is an orphan to be swept.
	Owner *Owner `json:"owner,omitempty"`
	// Subcontainer is a pod's second (or later) container, which runsc
	// starts inside the pod's existing sandbox.
	Subcontainer bool `json:"subcontainer,omitempty"`
	// StdioHolder keeps a pod's second container's stdio from create to
	// start: runsc gives such a container the stdio of "runsc start",
	// which engines call without it.
	StdioHolder *Owner `json:"stdioHolder,omitempty"`
	// Gateway is the sandbox's egress gateway process, and AuditFile the
	// log it writes; both unset when the policy allows no egress.
	Gateway   *Owner `json:"gateway,omitempty"`
	AuditFile string `json:"auditFile,omitempty"`
	// Monitor is the sandbox's process monitor, and TimelineFile the
	// timeline it writes; both unset when the sandbox has none.
	Monitor      *Owner `json:"monitor,omitempty"`
	TimelineFile string `json:"timelineFile,omitempty"`
}

// PolicyRef says which policy a container runs under.
type PolicyRef struct {
	Name   string `json:"name"`
	Hash   string `json:"sha256"`
	Format string `json:"format"`
	File   string `json:"file"`
	Source string `json:"source"`
}

const stateFile = "state.json"

// NewState records a prepared sandbox: its compiled policy, named by
// source, and what a later exec and the watchdog need. bundle is the one
// the engine gave, or the sandbox's own; process is the container's
// process after the policy, nil when no exec will follow.
func (sb *Sandbox) NewState(bundle, source string, process *specs.Process) *State {
	c, p := sb.Compiled, sb.Compiled.Policy
	return &State{
		ID: sb.ID, Bundle: bundle, Created: time.Now().UTC(),
		Policy:    PolicyRef{Name: p.Name, Hash: p.Hash, Format: string(p.Format), File: p.File, Source: source},
		AllowExec: p.Process.AllowExec, Process: process, Timeout: c.Timeout, RunscFlags: c.RunscFlags,
	}
}

// SaveState records st in the sandbox's state directory.
func (sb *Sandbox) SaveState(st *State) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := os.WriteFile(filepath.Join(sb.Dir, stateFile), data, 0o600); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}

// Open finds an existing sandbox's state directory. It returns an error
// wrapping os.ErrNotExist when there is none.
func Open(stateDir, id string) (*Sandbox, *State, error) {
	if id == "" || id != filepath.Base(id) || id == "." || id == ".." {
		return nil, nil, fmt.Errorf("container id %q: not a valid id", id)
	}
	dir := filepath.Join(stateDir, id)
	sb := &Sandbox{ID: id, Dir: dir, RootDir: filepath.Join(dir, "root")}
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		if _, serr := os.Stat(dir); serr == nil && os.IsNotExist(err) {
			return sb, nil, nil // prepared but not yet recorded
		}
		return nil, nil, fmt.Errorf("container %q: %w", id, err)
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, nil, fmt.Errorf("container %q: read state: %w", id, err)
	}
	sb.Bundle = st.Bundle
	return sb, &st, nil
}

// ConfineExec turns the process an engine asks to exec into one the
// container's policy allows: the policy's user, no capabilities, no new
// privileges, the container's rlimits. The engine's command, environment,
// working directory and terminal are kept.
func (st *State) ConfineExec(p *specs.Process) (*specs.Process, error) {
	if !st.AllowExec {
		return nil, fmt.Errorf("policy %s (%s) has allow_exec: false: exec into the sandbox is refused", st.Policy.Name, st.Policy.File)
	}
	if p == nil || len(p.Args) == 0 {
		return nil, fmt.Errorf("exec: no command")
	}
	out := *p
	if st.Process != nil {
		out.User = st.Process.User
		out.Rlimits = slices.Clone(st.Process.Rlimits)
		out.OOMScoreAdj = st.Process.OOMScoreAdj
	}
	out.Capabilities = &specs.LinuxCapabilities{}
	out.NoNewPrivileges = true
	return &out, nil
}

// Owner identifies the process that owns a sandbox run in the foreground
// (openshell run). Its start time tells a live owner from a reused pid.
type Owner struct {
	Pid   int    `json:"pid"`
	Start string `json:"start"`
}

// Self is the running process as an Owner.
func Self() Owner { return OwnerOf(os.Getpid()) }

// Alive reports whether the owner process still runs. A zombie is dead:
// it has ended, and only waits for its parent.
func (o Owner) Alive() bool {
	if o.Pid <= 0 {
		return false
	}
	state, start := procStat(o.Pid)
	return start != "" && start == o.Start && state != "Z" && state != "X"
}

// procStart is field 22 of /proc/PID/stat, the start time in clock ticks
// since boot; "" when the process does not exist.
func procStart(pid int) string {
	_, start := procStat(pid)
	return start
}

// procStat returns fields 3 (the state) and 22 (the start time) of
// /proc/PID/stat.
func procStat(pid int) (state, start string) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", ""
	}
	// The command name, field 2, may hold spaces; it ends at the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return "", ""
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 20 {
		return "", ""
	}
	return fields[0], fields[19]
}

// Orphans lists the sandboxes in stateDir whose owner has died: an
// openshell run that was killed before it could clean up.
func Orphans(stateDir string) ([]*Sandbox, error) {
	entries, err := os.ReadDir(stateDir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	var out []*Sandbox
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		sb, st, err := Open(stateDir, e.Name())
		if err != nil || st == nil || st.Owner == nil || st.Owner.Alive() {
			continue
		}
		out = append(out, sb)
	}
	return out, nil
}

// OwnerOf identifies a running process by pid.
func OwnerOf(pid int) Owner { return Owner{Pid: pid, Start: procStart(pid)} }

// Kill ends the process if it is still the one recorded.
func (o Owner) Kill() {
	if o.Alive() {
		_ = syscall.Kill(o.Pid, syscall.SIGKILL)
	}
}
