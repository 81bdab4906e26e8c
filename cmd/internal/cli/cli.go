// Package cli implements the openshell command. Each command writes to the
// given streams and returns an exit code, so tests drive it in-process.
package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1 // the command ran and the answer is no (an invalid policy)
	exitUsage  = 2
)

// Version is set at link time (-X); "dev" otherwise.
var Version = "dev"

type streams struct {
	in       io.Reader
	out, err io.Writer
}

type command struct {
	name, usage string
	run         func(ctx context.Context, s streams, args []string) int
}

func commands() []command {
	return []command{
		{"run", "run a command in a gVisor sandbox under a policy", runRun},
		{"policy", "validate, compile and explain policies", runPolicy},
		{"audit", "read the egress audit log: every allowed and denied connection", runAudit},
		{"timeline", "replay what a sandbox's processes did: execs, forks, exits, connects", runTimeline},
		{"inference", "sum the tokens and cost of each sandbox's model calls", runInference},
		{"doctor", "check this host: runsc, platform, kernel, each enforcement layer", runDoctor},
		{"version", "print version information", runVersion},
	}
}

// Main runs the openshell command line.
func Main(ctx context.Context, args []string, in io.Reader, out, errw io.Writer) int {
	s := streams{in: in, out: out, err: errw}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(s.err)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	if args[0] == "gateway" {
		return runGateway(ctx, s, args[1:])
	}
	if args[0] == "monitor" {
		return runMonitor(ctx, s, args[1:])
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, s, args[1:])
		}
	}
	fmt.Fprintf(s.err, "openshell: unknown command %q\n\n", args[0])
	usage(s.err)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: openshell COMMAND [ARGS]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.usage)
	}
}

// newFlags returns a FlagSet that reports to s.err and never exits.
func newFlags(s streams, name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(s.err)
	fs.Usage = func() {
		fmt.Fprintf(s.err, "usage: openshell %s\n", usage)
		fs.PrintDefaults()
	}
	return fs
}

func runVersion(_ context.Context, s streams, args []string) int {
	if len(args) > 0 {
		fmt.Fprintln(s.err, "usage: openshell version")
		return exitUsage
	}
	fmt.Fprintf(s.out, "openshell %s\n", Version)
	fmt.Fprintf(s.out, "go: %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/opencontainers/runtime-spec" {
				fmt.Fprintf(s.out, "runtime-spec: %s\n", d.Version)
			}
		}
	}
	return exitOK
}
