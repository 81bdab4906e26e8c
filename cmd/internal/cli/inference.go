package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/openshell/openshell/runtime/egress"
)

// runInference is `openshell inference usage [SANDBOX]`: the tokens and
// cost of the model calls in the audit log, per sandbox, provider and
// model.
func runInference(_ context.Context, s streams, args []string) int {
	if len(args) == 0 || args[0] != "usage" {
		fmt.Fprintln(s.err, "usage: openshell inference usage [SANDBOX] [--dir DIR] [--config FILE]")
		return exitUsage
	}
	fs := newFlags(s, "inference usage", "inference usage [SANDBOX] [--dir DIR]")
	dir, id, code := parseAuditArgs(s, fs, args[1:], false)
	if code != exitOK {
		return code
	}
	files := auditLogFiles(dir, id)
	type key struct{ sandbox, provider, model string }
	type sum struct {
		calls, denied      int
		in, out, cacheRead int64
		cost               float64
	}
	sums := map[key]*sum{}
	err := readAuditLogs(s, files, func(e *egress.Event) error {
		if e.Kind != "inference" {
			return nil
		}
		n := max(e.Count, 1)
		k := key{e.Sandbox, "-", "-"}
		if in := e.Inference; in != nil {
			k.provider = dash(in.Provider)
			k.model = dash(firstNonEmpty(in.ReportedModel, in.SentModel, in.RequestedModel))
		}
		sm := sums[k]
		if sm == nil {
			sm = &sum{}
			sums[k] = sm
		}
		if e.Violation() {
			sm.denied += n
			return nil
		}
		sm.calls += n
		if in := e.Inference; in != nil {
			sm.in += int64(n) * in.TokensIn
			sm.out += int64(n) * in.TokensOut
			sm.cacheRead += int64(n) * in.CacheReadTokens
			sm.cost += float64(n) * in.CostUSD
		}
		return nil
	})
	if err != nil {
		fmt.Fprintf(s.err, "openshell: %s\n", err)
		return exitFailed
	}
	keys := make([]key, 0, len(sums))
	for k := range sums {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b key) int {
		return strings.Compare(a.sandbox+"\x00"+a.provider+"\x00"+a.model, b.sandbox+"\x00"+b.provider+"\x00"+b.model)
	})
	// Model and provider names came from the sandbox or the model
	// server: printed escaped.
	w := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SANDBOX\tPROVIDER\tMODEL\tCALLS\tDENIED\tTOKENS IN\tTOKENS OUT\tCACHED IN\tTOTAL\tCOST USD")
	var total sum
	for _, k := range keys {
		sm := sums[k]
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%.6f\n", shown(k.sandbox), shown(k.provider), shown(k.model), sm.calls, sm.denied, sm.in, sm.out, sm.cacheRead, sm.in+sm.out, sm.cost)
		total.calls += sm.calls
		total.denied += sm.denied
		total.in += sm.in
		total.out += sm.out
		total.cacheRead += sm.cacheRead
		total.cost += sm.cost
	}
	fmt.Fprintf(w, "total\t\t\t%d\t%d\t%d\t%d\t%d\t%d\t%.6f\n", total.calls, total.denied, total.in, total.out, total.cacheRead, total.in+total.out, total.cost)
	_ = w.Flush()
	return exitOK
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
