package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openshell/openshell/runtime/egress"
)

func writeAudit(t *testing.T, path string, lines ...string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o644); err != nil {
		t.Fatal(err)
	}
}

func auditLine(t *testing.T, e egress.Event) string {
	t.Helper()
	b, err := egress.MarshalEvent(&e)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Found by attack: an SNI with ESC and newlines reached the text view raw
// (terminal escapes, a forged row). It is printed escaped, on its own row.
func TestAuditTextViewEscapes(t *testing.T) {
	dir := t.TempDir()
	sni := "\x1b[31m\nforged\tallow\u009b2J\u202e"
	// As encoding/json alone wrote it before: C0 escaped, C1 and bidi raw.
	raw := `{"time":"2026-11-24T04:00:00Z","sandbox":"sb1","kind":"tls","host":"\u001b[31m\nforged\tallow` + "\u009b2J\u202e" + `","port":443,"decision":"deny"}` + "\n"
	writeAudit(t, filepath.Join(dir, "sb1.jsonl"), raw,
		auditLine(t, egress.Event{Sandbox: "sb1", Kind: "tls", Host: sni, Port: 443, Decision: egress.Deny}))
	code, out, errs := run(t, "audit", "sb1", "--dir", dir)
	if code != exitOK || errs != "" {
		t.Fatalf("exit %d %s", code, errs)
	}
	for _, bad := range []string{"\x1b", "\u009b", "\u202e", "\t"} {
		if strings.Contains(out, bad) {
			t.Errorf("%q printed raw:\n%s", bad, out)
		}
	}
	if rows := strings.Count(out, "\n"); rows != 3 {
		t.Errorf("%d rows for a header and 2 events:\n%s", rows, out)
	}
	if n := strings.Count(out, `\x1b[31m\nforged\tallow\u009b2J\u202e:443`); n != 2 {
		t.Errorf("the SNI escaped %d times, want 2:\n%s", n, out)
	}
	// --json writes what it read, escaped the same way as the writer.
	_, out, _ = run(t, "audit", "sb1", "--dir", dir, "--json")
	if strings.ContainsAny(out, "\x1b\u009b\u202e") || strings.Count(out, "\n") != 2 {
		t.Errorf("--json:\n%q", out)
	}
}

// Found by attack: one line over 1 MiB made `openshell audit` fail for
// every sandbox. It is skipped with a warning; the lines after it, and the
// other sandboxes, are shown.
func TestAuditSkipsOverlongLine(t *testing.T) {
	dir := t.TempDir()
	ev := func(host string) string {
		return auditLine(t, egress.Event{Sandbox: "sb1", Kind: "http", Host: host, Port: 80, Decision: egress.Deny})
	}
	huge := `{"kind":"http","host":"` + strings.Repeat("a", 2<<20) + "\"}\n"
	writeAudit(t, filepath.Join(dir, "sb1.jsonl"), ev("before.example"), huge, ev("after.example"))
	writeAudit(t, filepath.Join(dir, "sb2.jsonl"), ev("other.example"))
	code, out, errs := run(t, "audit", "--dir", dir)
	if code != exitOK || !strings.Contains(errs, "sb1.jsonl:2: skipped: longer than") {
		t.Errorf("exit %d, stderr %s", code, errs)
	}
	for _, h := range []string{"before.example", "after.example", "other.example"} {
		if !strings.Contains(out, h) {
			t.Errorf("%s not shown:\n%s", h, out)
		}
	}
}

// A rotated log is read too, before the live file.
func TestAuditReadsRotated(t *testing.T) {
	dir := t.TempDir()
	line := func(host, at string) string {
		return `{"time":"` + at + `","sandbox":"sb1","kind":"dns","host":"` + host + `","decision":"deny","count":7}` + "\n"
	}
	writeAudit(t, filepath.Join(dir, "sb1.jsonl.1"), line("old.example", "2026-11-24T04:00:00Z"))
	writeAudit(t, filepath.Join(dir, "sb1.jsonl"), line("new.example", "2026-11-24T04:00:01Z"))
	for _, args := range [][]string{{"audit", "sb1", "--dir", dir}, {"audit", "--dir", dir}} {
		code, out, errs := run(t, args...)
		o, n := strings.Index(out, "old.example"), strings.Index(out, "new.example")
		if code != exitOK || o < 0 || n < o || !strings.Contains(out, "  7  ") {
			t.Errorf("%v: exit %d\n%s%s", args, code, out, errs)
		}
	}
	// Only a rotated file left (the sandbox's live file not yet written).
	os.Remove(filepath.Join(dir, "sb1.jsonl"))
	if code, out, _ := run(t, "audit", "sb1", "--dir", dir); code != exitOK || !strings.Contains(out, "old.example") {
		t.Errorf("rotated only: exit %d\n%s", code, out)
	}
}
