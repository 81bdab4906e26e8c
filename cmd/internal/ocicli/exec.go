package ocicli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

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
	defer os.Remove(f.Name())
	if err := json.NewEncoder(f).Encode(confined); err != nil {
		f.Close()
		return fmt.Errorf("exec: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("exec: %w", err)
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
