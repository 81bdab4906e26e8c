package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

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
	dir, id, code := parseAuditArgs(s, fs, args, false)
	if code != exitOK {
		return code
	}
	files := auditLogFiles(dir, id)
	if id != "" && len(files) == 0 {
		fmt.Fprintf(s.err, "openshell: no audit log for sandbox %s in %s\n", id, dir)
		return exitFailed
	}
	var cutoff time.Time
	if *since > 0 {
		cutoff = time.Now().Add(-*since)
	}
	var events []*egress.Event
	err := readAuditLogs(s, files, func(e *egress.Event) error {
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
	slices.SortStableFunc(events, func(a, b *egress.Event) int { return a.Time.Compare(b.Time) })
	if *asJSON {
		for _, e := range events {
			line, err := egress.MarshalEvent(e)
			if err != nil {
				return exitFailed
			}
			if _, err := s.out.Write(line); err != nil {
				return exitFailed
			}
		}
		return exitOK
	}
	// Every string in an event came from the sandbox, directly or not
	// (an SNI, a Host header, a DNS name, an error quoting them): each is
	// printed escaped, so that no escape sequence reaches the terminal and
	// no newline or tab forges a row or a column.
	w := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TIME\tSANDBOX\tDECISION\tKIND\tDESTINATION\tIP\tUP/DOWN\tN\tRULE\tREASON")
	for _, e := range events {
		dest := shown(e.Host)
		if e.Port != 0 {
			dest = fmt.Sprintf("%s:%d", dest, e.Port)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%d\t%s\t%s\n", e.Time.Local().Format("15:04:05.000"), shown(e.Sandbox), shown(e.Decision), shown(e.Kind), dash(dest), dash(shown(e.IP)), e.BytesUp, e.BytesDown, max(e.Count, 1), dash(shown(e.Rule)), dash(shown(e.Reason)))
	}
	_ = w.Flush()
	return exitOK
}

// parseAuditArgs parses [SANDBOX] and the flags of a command that reads
// the audit logs or timeline of one sandbox or, without SANDBOX and where
// it is not required, of every one: those in fs and the audit
// directory's, which it adds. It prints what it rejects; code is the exit
// status to stop with, exitOK to go on.
func parseAuditArgs(s streams, fs *flag.FlagSet, args []string, required bool) (dir, id string, code int) {
	af := addAuditDirFlags(fs)
	if err := fs.Parse(reorder(args)); err != nil {
		return "", "", exitUsage
	}
	if fs.NArg() > 1 || required && fs.NArg() != 1 {
		fs.Usage()
		return "", "", exitUsage
	}
	if fs.NArg() == 1 {
		if id = fs.Arg(0); !validSandboxID(id) {
			fmt.Fprintf(s.err, "openshell: %q is not a sandbox id\n", id)
			return "", "", exitUsage
		}
	}
	dir, err := af.auditDir()
	if err != nil {
		fmt.Fprintf(s.err, "openshell: %s\n", err)
		return "", "", exitFailed
	}
	return dir, id, exitOK // id "": every sandbox
}

// auditDirFlags are --config and --dir, which name the audit directory
// for the commands that read audit logs and timelines.
type auditDirFlags struct {
	config, dir *string
}

func addAuditDirFlags(fs *flag.FlagSet) auditDirFlags {
	return auditDirFlags{
		config: fs.String("config", runtime.DefaultConfigPath, "the runtime configuration"),
		dir:    fs.String("dir", "", "the audit directory (default: the configuration's egress.audit_dir)"),
	}
}

// auditDir is --dir, else the configuration's egress.audit_dir.
func (f auditDirFlags) auditDir() (string, error) {
	if *f.dir != "" {
		return *f.dir, nil
	}
	cfg, err := runtime.LoadConfig(*f.config)
	if err != nil {
		return "", fmt.Errorf("configuration: %w", err)
	}
	return cfg.Egress.AuditDir, nil
}

// validSandboxID says whether id can name a sandbox's files in the audit
// directory: a plain name, not a path and not hidden.
func validSandboxID(id string) bool {
	return id == filepath.Base(id) && !strings.HasPrefix(id, ".")
}

// auditLogFiles are the audit log files, rotated ones included, of the
// sandbox id in dir, or of every sandbox there when id is "".
func auditLogFiles(dir, id string) []string {
	if id != "" {
		return egress.AuditFiles(filepath.Join(dir, id+".jsonl"))
	}
	var files []string
	live, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	for _, f := range live {
		files = append(files, egress.AuditFiles(f)...)
	}
	return files
}

// readAuditLogs calls fn for each event in files. A bad line (torn by a
// killed gateway, not JSON, too long) is reported as a warning and
// skipped: it never hides the rest of its file, or the other files.
// Any other error ends the reading.
func readAuditLogs(s streams, files []string, fn func(*egress.Event) error) error {
	for _, f := range files {
		err := egress.ReadAuditLog(f, fn)
		var bad *egress.BadLinesError
		switch {
		case errors.As(err, &bad):
			warn(s, bad)
		case err != nil:
			return err
		}
	}
	return nil
}

// warn prints err as a warning, each of its lines marked.
func warn(s streams, err error) {
	fmt.Fprintf(s.err, "openshell: warning: %s\n", strings.ReplaceAll(err.Error(), "\n", "\nopenshell: warning: "))
}

// shownMax caps what the text view prints of one field (the reader has
// capped it already; this holds for any line).
const shownMax = 512

// shown escapes s for a terminal: a backslash, and every rune that is not
// printable (control characters, DEL, C1, bidirectional overrides, invalid
// UTF-8), are written as Go escapes (\x1b, \n, \u202e); printable text,
// IDNs included, is left as it is.
func shown(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		if b.Len() >= shownMax {
			b.WriteString("…")
			break
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\':
			b.WriteString(`\\`)
		case unicode.IsPrint(r):
			b.WriteRune(r)
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
		i += size
	}
	return b.String()
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
