package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/runtime"
	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/runtime/monitor"
	"github.com/openshell/openshell/runtime/suggest"
)

// writeLearnRecord keeps the policy a learning run runs under, and its
// image, for openshell policy suggest, and returns the record (rewritten
// with the memory peak when the sandbox ends).
func writeLearnRecord(cfg *runtime.Config, id, policyFile, root string) (runtime.LearnRecord, error) {
	data, err := os.ReadFile(policyFile)
	if err != nil {
		return runtime.LearnRecord{}, fmt.Errorf("learn: %w", err)
	}
	abs, err := filepath.Abs(policyFile)
	if err != nil {
		return runtime.LearnRecord{}, fmt.Errorf("learn: %w", err)
	}
	rec := runtime.LearnRecord{Sandbox: id, PolicyFile: abs, Policy: string(data), Root: root}
	return rec, runtime.WriteLearnRecord(cfg.Egress.AuditDir, rec)
}

func runSuggest(_ context.Context, s streams, args []string) int {
	fs := newFlags(s, "policy suggest", "policy suggest SANDBOX [--format seed|openshell] [-o FILE] [--policy FILE] [--rootfs DIR]")
	format := fs.String("format", suggest.FormatSeed, "the suggestion's format: seed (openshell's own) or openshell (NVIDIA OpenShell v1)")
	out := fs.String("o", "", "write the suggestion to FILE (default: standard output)")
	policyFile := fs.String("policy", "", "the policy the sandbox ran under (default: the one its learning run recorded)")
	rootfs := fs.String("rootfs", "", "the image the sandbox's paths came from (default: the one its learning run recorded)")
	dir, id, code := parseAuditArgs(s, fs, args, true)
	if code != exitOK {
		return code
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(s.err, "openshell: "+format+"\n", a...)
		return exitFailed
	}
	if dir == "" { // egress.audit_dir = "": the runtime's default, as the gateway has it
		dir = runtime.DefaultAuditDir
	}
	in := suggest.Input{Sandbox: id, Root: *rootfs}
	if *policyFile != "" {
		var err error
		if in.Policy, err = policy.Load(*policyFile); err != nil {
			printErr(s, err)
			return exitFailed
		}
	} else {
		rec, err := runtime.ReadLearnRecord(dir, id)
		if err != nil {
			return fail("%s (was sandbox %s run with --learn? else name its policy with --policy)", err, id)
		}
		if in.Policy, err = policy.Parse(rec.PolicyFile, []byte(rec.Policy)); err != nil {
			printErr(s, err)
			return exitFailed
		}
		if in.Root == "" {
			in.Root = rec.Root
		}
		in.MemoryPeakBytes = rec.MemoryPeakBytes
	}
	// A bad line (torn, too long) is reported and skipped.
	auditFiles := auditLogFiles(dir, id)
	if err := readAuditLogs(s, auditFiles, func(e *egress.Event) error { in.Audit = append(in.Audit, e); return nil }); err != nil {
		return fail("%s", err)
	}
	timelineFiles := monitor.TimelineFiles(monitor.TimelineFile(dir, id))
	for _, f := range timelineFiles {
		err := monitor.ReadTimeline(f, func(e *monitor.Event) error { in.Timeline = append(in.Timeline, e); return nil })
		var bad *monitor.BadLinesError
		if err != nil && !errors.As(err, &bad) {
			return fail("%s", err)
		}
		if err != nil {
			warn(s, err)
		}
	}
	if len(auditFiles) == 0 && len(timelineFiles) == 0 {
		return fail("no audit log or timeline for sandbox %s in %s", id, dir)
	}
	for _, e := range in.Audit {
		if e.PolicyHash != "" && e.PolicyHash != in.Policy.Hash {
			fmt.Fprintf(s.err, "openshell: warning: sandbox %s ran under policy sha256 %s, not %s's %s\n", id, shown(e.PolicyHash), in.Policy.File, in.Policy.Hash)
			break
		}
	}
	sg, err := suggest.Learn(in)
	if err != nil {
		return fail("%s", err)
	}
	o, err := sg.Write(*format)
	if err != nil {
		return fail("%s", err)
	}
	for _, w := range o.Widenings {
		fmt.Fprintf(s.err, "openshell: note: the suggestion allows more than %s: %s\n", in.Policy.File, shown(w.String()))
	}
	if *out == "" {
		_, err = s.out.Write(o.YAML)
	} else {
		err = os.WriteFile(*out, o.YAML, 0o644)
	}
	if err != nil {
		return fail("%s", err)
	}
	return exitOK
}
