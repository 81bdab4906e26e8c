// Package ocicli implements openshell-runtime, a runc-compatible command
// line over runsc. create and run apply the container's policy to the
// bundle before runsc sees it; exec is confined by the same policy; the
// other commands go to runsc as they are.
//
// It must never start a container whose policy does not load, and never
// leave runsc state, processes or its own state behind when create fails.
package ocicli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/openshell/openshell/runtime"
	"github.com/openshell/openshell/runtime/runsc"
)

// Version is set at link time (-X); "dev" otherwise.
var Version = "dev"

// Stdio are the process's streams. They are files because runsc hands
// them to the sandbox as the container's own.
type Stdio struct {
	In       *os.File
	Out, Err *os.File
}

// global is runc's global flags, and ours.
type global struct {
	root, log, logFormat, config string
	systemdCgroup, debug         bool
}

type env struct {
	g      global
	cfg    *runtime.Config
	runsc  *runsc.Runsc
	log    *slog.Logger
	stdio  Stdio
	closer io.Closer
}

// stateDir is where openshell-runtime keeps its own per-container state:
// beside runsc's state files in --root, in a directory runsc's listing
// never matches.
func (e *env) stateDir() string { return filepath.Join(e.g.root, "openshell") }

type command struct {
	name, usage string
	run         func(ctx context.Context, e *env, args []string) error
}

func commands() []command {
	return []command{
		{"create", "create a container, applying its policy", cmdCreate},
		{"start", "start a created container", cmdStart},
		{"run", "create and start a container", cmdRun},
		{"state", "print a container's state", passthrough("state")},
		{"kill", "send a signal to a container", cmdKill},
		{"delete", "delete a container and everything the runtime made for it", cmdDelete},
		{"exec", "run a process in a container, confined by its policy", cmdExec},
		{"ps", "list a container's processes", passthrough("ps")},
		{"pause", "pause a container", passthrough("pause")},
		{"resume", "resume a paused container", passthrough("resume")},
		{"events", "print a container's events and stats", passthrough("events")},
		{"update", "update a container's resources", passthrough("update")},
		{"list", "list containers", passthrough("list")},
		{"features", "print the runtime's features (JSON)", cmdFeatures},
		{"spec", "write a new config.json", cmdSpec},
		{"watchdog", "internal: kill a container at its wall-clock limit", cmdWatchdog},
		{"hold-stdio", "internal: keep a pod container's stdio from create to start", cmdHoldStdio},
		{"exec-supervise", "internal: a detached exec's process, as engines signal it", cmdExecSupervise},
		{"exec-reap", "internal: kill an exec whose supervisor was killed", cmdExecReap},
		{"gateway", "internal: a container's egress gateway", cmdGateway},
		{"monitor", "internal: a sandbox's process monitor", cmdMonitor},
	}
}

// Main runs openshell-runtime and returns its exit status.
func Main(ctx context.Context, args []string, stdio Stdio) int {
	e := &env{stdio: stdio}
	fs := flag.NewFlagSet("openshell-runtime", flag.ContinueOnError)
	fs.SetOutput(stdio.Err)
	fs.StringVar(&e.g.root, "root", runtime.DefaultRuntimeRoot, "state directory (runsc's and the runtime's)")
	fs.StringVar(&e.g.log, "log", "", "log file (default: stderr)")
	fs.StringVar(&e.g.logFormat, "log-format", "text", "log format: text or json")
	fs.BoolVar(&e.g.systemdCgroup, "systemd-cgroup", false, "use systemd to manage cgroups")
	fs.BoolVar(&e.g.debug, "debug", false, "debug logging")
	fs.StringVar(&e.g.config, "config", envOr("OPENSHELL_CONFIG", runtime.DefaultConfigPath), "runtime configuration")
	fs.Func("rootless", "ignored: runsc decides", func(string) error { return nil })
	fs.Func("criu", "ignored: checkpointing goes through runsc", func(string) error { return nil })
	version := fs.Bool("version", false, "print the version")
	fs.Usage = func() { usage(stdio.Err, fs) }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *version {
		fmt.Fprintf(stdio.Out, "openshell-runtime version %s\nspec: %s\n", Version, specs.Version)
		return 0
	}
	if fs.NArg() == 0 {
		usage(stdio.Err, fs)
		return 2
	}
	var cmd *command
	for _, c := range commands() {
		if c.name == fs.Arg(0) {
			cmd = &c
			break
		}
	}
	if cmd == nil {
		fmt.Fprintf(stdio.Err, "openshell-runtime: unknown command %q\n", fs.Arg(0))
		return 2
	}
	if cmd.name == "gateway" || cmd.name == "monitor" {
		// The gateway and the monitor get everything from their own
		// config (the monitor, as a descriptor), and run as an
		// unprivileged user who cannot (and must not) read the runtime's
		// configuration.
		if err := cmd.run(ctx, e, fs.Args()[1:]); err != nil {
			fmt.Fprintf(stdio.Err, "openshell-runtime %s: %s\n", cmd.name, err)
			return 1
		}
		return 0
	}
	if err := e.setup(); err != nil {
		fmt.Fprintf(stdio.Err, "openshell-runtime: %s\n", err)
		return 1
	}
	defer e.closer.Close()
	if err := cmd.run(ctx, e, fs.Args()[1:]); err != nil {
		var ex exitError
		if errors.As(err, &ex) {
			return int(ex)
		}
		e.log.Error(err.Error(), "command", cmd.name)
		if e.g.log != "" {
			fmt.Fprintf(stdio.Err, "openshell-runtime %s: %s\n", cmd.name, err)
		}
		return 1
	}
	return 0
}

func usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintln(w, "usage: openshell-runtime [GLOBAL FLAGS] COMMAND [ARGS]\n\ncommands:")
	for _, c := range commands() {
		if !strings.HasPrefix(c.usage, "internal:") {
			fmt.Fprintf(w, "  %-10s %s\n", c.name, c.usage)
		}
	}
	fmt.Fprintln(w, "\nglobal flags:")
	fs.PrintDefaults()
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// exitError passes a child's exit status through unchanged.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// setup opens the log and reads the configuration. Logs go where runc's
// do: --log, else stderr; in JSON, levels are lower case, because
// containerd's shim reads the last "error" entry as the failure's message.
func (e *env) setup() error {
	var w io.Writer = e.stdio.Err
	e.closer = io.NopCloser(nil)
	if e.g.log != "" {
		f, err := os.OpenFile(e.g.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("open log: %w", err)
		}
		w, e.closer = f, f
	}
	level := slog.LevelWarn
	if e.g.debug {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.LevelKey {
			a.Value = slog.StringValue(strings.ToLower(a.Value.String()))
		}
		return a
	}}
	switch e.g.logFormat {
	case "json":
		e.log = slog.New(slog.NewJSONHandler(w, opts))
	case "text", "":
		e.log = slog.New(slog.NewTextHandler(w, opts))
	default:
		return fmt.Errorf("--log-format %q: want text or json", e.g.logFormat)
	}
	cfg, err := runtime.LoadConfig(e.g.config)
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	e.cfg = cfg
	e.runsc = &runsc.Runsc{Path: cfg.RunscPath(), Root: e.g.root, Platform: cfg.PlatformOrDefault()}
	if e.g.log != "" {
		e.runsc.Flags = append(e.runsc.Flags, "--log", e.g.log, "--log-format", e.g.logFormat)
	}
	if e.g.systemdCgroup {
		e.runsc.Flags = append(e.runsc.Flags, "--systemd-cgroup")
	}
	if e.g.debug {
		e.runsc.Flags = append(e.runsc.Flags, "--debug")
	}
	e.runsc.Flags = append(e.runsc.Flags, cfg.RunscFlags...)
	return nil
}

func (e *env) runscStdio() runsc.Stdio {
	var s runsc.Stdio
	// A nil *os.File must become a nil interface, or exec would use it.
	if e.stdio.In != nil {
		s.In = e.stdio.In
	}
	if e.stdio.Out != nil {
		s.Out = e.stdio.Out
	}
	if e.stdio.Err != nil {
		s.Err = e.stdio.Err
	}
	return s
}

// subFlags is a command's FlagSet; runc's short names are aliases.
func (e *env) subFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stdio.Err)
	return fs
}

// oneID takes the container id, the only positional argument.
func oneID(fs *flag.FlagSet) (string, error) {
	if fs.NArg() != 1 {
		return "", fmt.Errorf("%s: want exactly one container id, got %d arguments", fs.Name(), fs.NArg())
	}
	return fs.Arg(0), nil
}

// passthrough hands a command to runsc unchanged, but for runc's short
// flag names, which runsc does not know. runsc replaces this process: its
// exit status and output are the command's.
func passthrough(sub string) func(context.Context, *env, []string) error {
	return func(_ context.Context, e *env, args []string) error {
		return e.runsc.Exec(sub, translate(sub, args)...)
	}
}

var shortFlags = map[string]map[string]string{
	"ps":     {"-f": "--format"},
	"kill":   {"-a": "--all"},
	"delete": {"-f": "--force"},
	"update": {"-r": "--resources"},
}

func translate(sub string, args []string) []string {
	m := shortFlags[sub]
	out := make([]string, 0, len(args))
	for _, a := range args {
		name, val, hasVal := strings.Cut(a, "=")
		if long, ok := m[name]; ok {
			if hasVal {
				a = long + "=" + val
			} else {
				a = long
			}
		}
		out = append(out, a)
	}
	return out
}
