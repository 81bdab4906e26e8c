package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/runtime/monitor"
)

// runMonitor is a sandbox's process monitor, started by the runtime.
func runMonitor(_ context.Context, s streams, args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(s.err, "usage: openshell monitor CONFIG (started by the runtime)")
		return exitUsage
	}
	if err := monitor.Main(args[0]); err != nil {
		fmt.Fprintf(s.err, "openshell monitor: %s\n", err)
		return exitFailed
	}
	return exitOK
}

func runTimeline(_ context.Context, s streams, args []string) int {
	fs := newFlags(s, "timeline", "timeline SANDBOX [--json] [--since DURATION] [--pid N]")
	asJSON := fs.Bool("json", false, "print the events as JSON lines")
	since := fs.Duration("since", 0, "show only events newer than this (e.g. 10m)")
	pid := fs.Int("pid", 0, "show only this process and its descendants")
	dir, id, code := parseAuditArgs(s, fs, args, true)
	if code != exitOK {
		return code
	}
	files := monitor.TimelineFiles(monitor.TimelineFile(dir, id))
	if len(files) == 0 {
		fmt.Fprintf(s.err, "openshell: no timeline for sandbox %s in %s\n", id, monitor.TimelineDir(dir))
		return exitFailed
	}
	var events []*monitor.Event
	for _, f := range files {
		err := monitor.ReadTimeline(f, func(e *monitor.Event) error {
			events = append(events, e)
			return nil
		})
		var bad *monitor.BadLinesError
		switch {
		case errors.As(err, &bad):
			fmt.Fprintf(s.err, "openshell: warning: %s\n", bad)
		case err != nil:
			fmt.Fprintf(s.err, "openshell: %s\n", err)
			return exitFailed
		}
	}
	// The sentry's clock orders events; a stable sort keeps the file's
	// order for equal times (a clone before its child's exec).
	slices.SortStableFunc(events, func(a, b *monitor.Event) int { return a.Time.Compare(b.Time) })
	tree := newProcTree(events)
	var cutoff time.Time
	if *since > 0 {
		cutoff = time.Now().Add(-*since)
	}
	var shownEvents []*monitor.Event
	for _, e := range events {
		if e.Time.Before(cutoff) {
			continue
		}
		if *pid != 0 && !tree.under(e, int32(*pid)) {
			continue
		}
		shownEvents = append(shownEvents, e)
	}
	decisions := joinAudit(events, readAudit(dir, id))
	if *asJSON {
		for _, e := range shownEvents {
			line, err := jsonLine(e, decisions[e])
			if err != nil {
				return exitFailed
			}
			if _, err := s.out.Write(line); err != nil {
				return exitFailed
			}
		}
		return exitOK
	}
	printTimeline(s.out, shownEvents, tree, decisions)
	return exitOK
}

// procTree is the sandbox's processes as the timeline saw them: each
// pid's parent, in the order pids were reused.
type procTree struct {
	parent map[int32]int32
}

func newProcTree(events []*monitor.Event) *procTree {
	t := &procTree{parent: map[int32]int32{}}
	for _, e := range events {
		switch {
		case e.Kind == monitor.KindClone && e.Child != 0 && e.Child != e.Pid:
			t.parent[e.Child] = e.Pid
		case e.Pid != 0 && e.PPid != 0:
			if _, ok := t.parent[e.Pid]; !ok {
				t.parent[e.Pid] = e.PPid
			}
		}
	}
	return t
}

// depth is how many ancestors pid has in the timeline.
func (t *procTree) depth(pid int32) int {
	d := 0
	for seen := map[int32]bool{}; !seen[pid]; d++ {
		seen[pid] = true
		p, ok := t.parent[pid]
		if !ok || p == 0 {
			return d
		}
		pid = p
	}
	return d
}

// under reports whether e is about pid or one of its descendants (a
// clone by pid's parent that made pid counts as pid's).
func (t *procTree) under(e *monitor.Event, pid int32) bool {
	for _, p := range []int32{e.Pid, e.Child} {
		for seen := map[int32]bool{}; p != 0 && !seen[p]; p = t.parent[p] {
			seen[p] = true
			if p == pid {
				return true
			}
		}
	}
	return false
}

// jsonLine is e as a JSON line, with the gateway's decision on it (a
// connect's audit line) where there is one.
func jsonLine(e *monitor.Event, a *egress.Event) ([]byte, error) {
	var v any = e
	if a != nil {
		v = struct {
			*monitor.Event
			Audit *egress.Event `json:"audit"`
		}{e, a}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// printTimeline writes the replay: one line per event in time order,
// indented by the process's depth in the tree. Every string came from
// the sandbox and is escaped (shown).
func printTimeline(w io.Writer, events []*monitor.Event, tree *procTree, decisions map[*monitor.Event]*egress.Event) {
	proxy := fmt.Sprintf("%s:%d", egress.GatewayAddr.Addr(), egress.ProxyPort)
	for _, e := range events {
		indent := strings.Repeat("  ", tree.depth(e.Pid))
		ts := e.Time.Local().Format("15:04:05.000000")
		who := fmt.Sprintf("[%d]", e.Pid)
		var what string
		switch e.Kind {
		case monitor.KindStart:
			what = "start " + argv(e) + " (the container's process" + cwdUID(e) + ")"
		case monitor.KindExec:
			what = "exec " + shown(e.Binary) + " " + argv(e) + " (" + strings.TrimPrefix(cwdUID(e), ", ") + ")"
			if e.ExecSession {
				what += " exec session"
			}
		case monitor.KindClone:
			what = fmt.Sprintf("fork → [%d]", e.Child)
		case monitor.KindExit:
			if e.Signal != 0 {
				what = fmt.Sprintf("exit: killed by signal %d", e.Signal)
			} else if e.ExitCode != nil {
				what = fmt.Sprintf("exit %d", *e.ExitCode)
			}
		case monitor.KindConnect:
			what = "connect " + shown(e.Dest) + " " + shown(e.Result)
			if e.Dest == proxy {
				what += " (the egress proxy)"
			}
			if a := decisions[e]; a != nil {
				what += auditNote(a)
			}
		case monitor.KindOpen:
			what = "open " + shown(e.Path) + " " + shown(e.Flags) + " " + shown(e.Result)
		case monitor.KindDropped:
			indent, who = "", "!"
			what = fmt.Sprintf("%d event(s) dropped by the sentry (%d in all): the timeline is incomplete here", e.Dropped, e.Total)
		case monitor.KindMonitor:
			indent, who = "", "-"
			what = "monitor: " + shown(e.Note)
		default:
			what = shown(e.Kind)
		}
		if e.Kind != monitor.KindStart && e.Kind != monitor.KindExec && e.Binary != "" {
			what += "  " + shown(filepath.Base(e.Binary))
		}
		if len(e.Truncated) > 0 {
			what += " (cut: " + shown(strings.Join(e.Truncated, ",")) + ")"
		}
		fmt.Fprintf(w, "%s %s%s %s\n", ts, indent, who, what)
	}
}

func argv(e *monitor.Event) string {
	var parts []string
	for _, a := range e.Argv {
		s := shown(a)
		if s == "" || strings.ContainsAny(s, " \"'") {
			s = strconv.Quote(a)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

func cwdUID(e *monitor.Event) string {
	var s string
	if e.Cwd != "" {
		s += ", cwd " + shown(e.Cwd)
	}
	if e.UID != nil {
		s += fmt.Sprintf(", uid %d", *e.UID)
	}
	return s
}
