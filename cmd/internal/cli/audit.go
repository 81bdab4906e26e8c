package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/openshell/openshell/runtime"
	"github.com/openshell/openshell/runtime/egress"
)

// runGateway is the egress gateway process the runtime starts for each
// sandbox that allows egress; it is not for people to run.
func runGateway(_ context.Context, s streams, args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(s.err, "usage: openshell gateway CONFIG (started by the runtime)")
		return exitUsage
	}
	if err := egress.Main(args[0]); err != nil {
		fmt.Fprintf(s.err, "openshell gateway: %s\n", err)
		return exitFailed
	}
	return exitOK
}

func runAudit(_ context.Context, s streams, args []string) int {
	fs := newFlags(s, "audit", "audit [SANDBOX] [--violations-only] [--since DURATION] [--json]")
	violations := fs.Bool("violations-only", false, "show only denials and audit-mode would-be denials")
	since := fs.Duration("since", 0, "show only events newer than this (e.g. 10m)")
	asJSON := fs.Bool("json", false, "print the events as JSON lines")
	config := fs.String("config", runtime.DefaultConfigPath, "the runtime configuration")
	dir := fs.String("dir", "", "the audit directory (default: the configuration's egress.audit_dir)")
	if err := fs.Parse(reorder(args)); err != nil {
		return exitUsage
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return exitUsage
	}
	if *dir == "" {
		cfg, err := runtime.LoadConfig(*config)
		if err != nil {
			fmt.Fprintf(s.err, "openshell: configuration: %s\n", err)
			return exitFailed
		}
		*dir = cfg.Egress.AuditDir
	}
	var files []string
	if fs.NArg() == 1 {
		id := fs.Arg(0)
		if id != filepath.Base(id) || strings.HasPrefix(id, ".") {
			fmt.Fprintf(s.err, "openshell: %q is not a sandbox id\n", id)
			return exitUsage
		}
		files = []string{filepath.Join(*dir, id+".jsonl")}
		if _, err := os.Stat(files[0]); err != nil {
			fmt.Fprintf(s.err, "openshell: no audit log for sandbox %s in %s\n", id, *dir)
			return exitFailed
		}
	} else {
		files, _ = filepath.Glob(filepath.Join(*dir, "*.jsonl"))
	}
	var cutoff time.Time
	if *since > 0 {
		cutoff = time.Now().Add(-*since)
	}
	var events []*egress.Event
	for _, f := range files {
		err := egress.ReadAuditLog(f, func(e *egress.Event) error {
			if (*violations && !e.Violation()) || e.Time.Before(cutoff) {
				return nil
			}
			events = append(events, e)
			return nil
		})
		if err != nil {
			fmt.Fprintf(s.err, "openshell: %s\n", err)
			return exitFailed
		}
	}
	slices.SortStableFunc(events, func(a, b *egress.Event) int { return a.Time.Compare(b.Time) })
	if *asJSON {
		enc := json.NewEncoder(s.out)
		for _, e := range events {
			if err := enc.Encode(e); err != nil {
				return exitFailed
			}
		}
		return exitOK
	}
	w := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TIME\tSANDBOX\tDECISION\tKIND\tDESTINATION\tIP\tUP/DOWN\tRULE\tREASON")
	for _, e := range events {
		dest := e.Host
		if e.Port != 0 {
			dest = fmt.Sprintf("%s:%d", e.Host, e.Port)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", e.Time.Local().Format("15:04:05.000"), e.Sandbox, e.Decision, e.Kind, dest, dash(e.IP), e.BytesUp, e.BytesDown, dash(e.Rule), dash(e.Reason))
	}
	_ = w.Flush()
	return exitOK
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// runReload makes a running sandbox's gateway load its policy file again
// and reports what it did: only network rules change under a running
// sandbox.
func runReload(_ context.Context, s streams, args []string) int {
	fs := newFlags(s, "policy reload", "policy reload SANDBOX [--state-dir DIR]")
	stateDir := fs.String("state-dir", "", "the sandbox state directory (default: openshell run's, then openshell-runtime's)")
	config := fs.String("config", runtime.DefaultConfigPath, "the runtime configuration")
	if err := fs.Parse(reorder(args)); err != nil {
		return exitUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitUsage
	}
	cfg, err := runtime.LoadConfig(*config)
	if err != nil {
		fmt.Fprintf(s.err, "openshell: configuration: %s\n", err)
		return exitFailed
	}
	dirs := []string{*stateDir}
	if *stateDir == "" {
		dirs = []string{cfg.Root, filepath.Join(runtime.DefaultRuntimeRoot, "openshell")}
	}
	id := fs.Arg(0)
	var st *runtime.State
	for _, d := range dirs {
		if _, found, err := runtime.Open(d, id); err == nil && found != nil {
			st = found
			break
		}
	}
	switch {
	case st == nil:
		fmt.Fprintf(s.err, "openshell: no sandbox %s in %s\n", id, strings.Join(dirs, ", "))
		return exitFailed
	case st.Gateway == nil:
		fmt.Fprintf(s.err, "openshell: sandbox %s allows no egress: it has no gateway to reload (restart it to add network rules)\n", id)
		return exitFailed
	case !st.Gateway.Alive():
		fmt.Fprintf(s.err, "openshell: the egress gateway of sandbox %s is not running: the sandbox has no network\n", id)
		return exitFailed
	}
	sent := time.Now().UTC()
	if err := syscall.Kill(st.Gateway.Pid, syscall.SIGHUP); err != nil {
		fmt.Fprintf(s.err, "openshell: signal gateway: %s\n", err)
		return exitFailed
	}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var last *egress.Event
		_ = egress.ReadAuditLog(st.AuditFile, func(e *egress.Event) error {
			if e.Kind == "reload" && !e.Time.Before(sent.Add(-time.Millisecond)) {
				last = e
			}
			return nil
		})
		if last != nil {
			if last.Decision != egress.Allow {
				fmt.Fprintf(s.err, "openshell: reload refused: %s\n", last.Reason)
				return exitFailed
			}
			fmt.Fprintf(s.out, "sandbox %s: reloaded %s (%s)\n", id, last.Host, last.Reason)
			return exitOK
		}
	}
	fmt.Fprintf(s.err, "openshell: the gateway of sandbox %s did not report a reload within 2s\n", id)
	return exitFailed
}
