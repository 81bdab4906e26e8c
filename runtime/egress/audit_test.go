package egress

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// clock is a fake time source the tests move by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock                   { return &clock{t: time.Date(2026, 11, 24, 4, 0, 0, 0, time.UTC)} }
func denyEvent(host string, port int) *Event {
	return &Event{Sandbox: "sb1", Policy: "p", PolicyHash: "h", Kind: "tcp", Host: host, Port: port, Decision: Deny, Reason: "no rule allows " + host}
}

func testAuditLog(t *testing.T, limits AuditLimits, c *clock) (*AuditLog, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sb1.jsonl")
	l, err := openAuditLog(path, limits, c.now)
	if err != nil {
		t.Fatal(err)
	}
	return l, path
}

func write(t *testing.T, l *AuditLog, c *clock, e *Event) {
	t.Helper()
	e.Time = c.now()
	if err := l.Write(e); err != nil {
		t.Fatal(err)
	}
}

// represented is how many events the lines stand for.
func represented(events []Event) int {
	n := 0
	for _, e := range events {
		n += max(e.Count, 1)
	}
	return n
}

// Found by attack: one sandbox wrote ~16 MB in 15 s of identical TCP
// denials. Repeats within the window are one line plus one summary.
func TestAuditFoldsRepeatedDenials(t *testing.T) {
	c := newClock()
	l, path := testAuditLog(t, AuditLimits{}, c)
	for range 10000 { // 10,000 denials over 5 s
		write(t, l, c, denyEvent("evil.example", 443))
		c.advance(500 * time.Microsecond)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	events := readEvents(t, path)
	if len(events) > 12 {
		t.Fatalf("%d lines for 10,000 identical denials in 5 s, want at most 12 (a line and a summary a second)", len(events))
	}
	if n := represented(events); n != 10000 {
		t.Errorf("the lines stand for %d events, want 10000", n)
	}
	if events[0].Count != 0 || events[1].Count == 0 || events[1].Since.IsZero() || events[1].Host != "evil.example" || events[1].Decision != Deny {
		t.Errorf("first line %+v, summary %+v", events[0], events[1])
	}
}

// Distinct destinations cannot be folded: past the rate limit they are
// dropped and counted in a suppressed line.
func TestAuditRateLimitSuppresses(t *testing.T) {
	c := newClock()
	l, path := testAuditLog(t, AuditLimits{}, c)
	for i := range 10000 {
		write(t, l, c, denyEvent(fmt.Sprintf("h%d.evil.example", i), 443))
	}
	c.advance(time.Second)
	if err := l.flush(c.now(), false); err != nil {
		t.Fatal(err)
	}
	events := readEvents(t, path)
	if len(events) != DefaultAuditBurst+1 {
		t.Fatalf("%d lines for 10,000 distinct denials at once, want the burst (%d) and a suppressed line", len(events), DefaultAuditBurst)
	}
	s := events[len(events)-1]
	if s.Kind != KindSuppressed || s.Decision != Deny || s.Count != 10000-DefaultAuditBurst || s.Sandbox != "sb1" || s.Policy != "p" ||
		!strings.Contains(s.Reason, "h200.evil.example") {
		t.Errorf("suppressed line %+v", s)
	}
	for i, e := range events[:DefaultAuditBurst] {
		if want := fmt.Sprintf("h%d.evil.example", i); e.Host != want {
			t.Fatalf("line %d is %s, want the first occurrence of %s", i, e.Host, want)
		}
	}
	// The budget refills: the next new destination is written.
	c.advance(3 * time.Second)
	write(t, l, c, denyEvent("later.example", 443))
	l.Close()
	if ev := readEvents(t, path); ev[len(ev)-1].Host != "later.example" {
		t.Errorf("after the flood: %+v", ev[len(ev)-1])
	}
}

// A flood of allowed events (a loop over an allowed wildcard) does not
// take the budget denials are written from.
func TestAuditAllowedFloodKeepsDenials(t *testing.T) {
	c := newClock()
	l, path := testAuditLog(t, AuditLimits{}, c)
	for i := range 5000 {
		write(t, l, c, &Event{Kind: "dns", Host: fmt.Sprintf("x%d.cdn.example.net", i), Decision: Allow})
	}
	write(t, l, c, denyEvent("exfil.example", 443))
	l.Close()
	var denied, suppressed bool
	for _, e := range readEvents(t, path) {
		denied = denied || (e.Host == "exfil.example" && e.Decision == Deny)
		suppressed = suppressed || (e.Kind == KindSuppressed && e.Decision == Allow && e.Count == 5000-DefaultAuditBurst)
	}
	if !denied || !suppressed {
		t.Errorf("denial written: %v; allowed flood counted: %v", denied, suppressed)
	}
}

// Reload lines are the operator's, and `openshell policy reload` waits
// for them: never folded or dropped.
func TestAuditKeepsReloads(t *testing.T) {
	c := newClock()
	l, path := testAuditLog(t, AuditLimits{Burst: 1, Rate: 1}, c)
	for range 5 {
		write(t, l, c, &Event{Kind: "reload", Host: "/p.yaml", Decision: Allow, Reason: "1 egress rule(s) active"})
	}
	l.Close()
	if n := len(readEvents(t, path)); n != 5 {
		t.Errorf("%d reload lines for 5 reloads", n)
	}
}

// The summaries are written by the log's own clock, with no further event
// and before Close.
func TestAuditSummaryWithoutClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sb1.jsonl")
	l, err := OpenAuditLog(path, AuditLimits{Window: 40 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for range 3 {
		if err := l.Write(denyEvent("evil.example", 443)); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ev := readEvents(t, path); len(ev) == 2 && ev[1].Count == 2 {
			return
		}
	}
	t.Errorf("no summary line: %+v", readEvents(t, path))
}

// The file never passes its bound: it is rotated to .1 at half of it.
func TestAuditRotationKeepsBound(t *testing.T) {
	c := newClock()
	const bound = 64 << 10
	l, path := testAuditLog(t, AuditLimits{MaxBytes: bound, Rate: 1e9, Burst: 1 << 30}, c)
	for i := range 5000 {
		write(t, l, c, denyEvent(fmt.Sprintf("h%d.evil.example", i), 443))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".2"); err == nil {
		t.Error("a second rotated file")
	}
	var total int64
	for _, f := range AuditFiles(path) {
		st, _ := os.Stat(f)
		total += st.Size()
	}
	if files := AuditFiles(path); len(files) != 2 || files[0] != path+".1" || total > bound {
		t.Fatalf("files %v take %d bytes, bound %d", files, total, bound)
	}
	if ev := readEvents(t, path); ev[len(ev)-1].Host != "h4999.evil.example" {
		t.Errorf("the live file ends with %+v", ev[len(ev)-1])
	}
	// A gateway restarted on a full file rotates before it writes.
	l, err := openAuditLog(path, AuditLimits{MaxBytes: 2 * (total + 1)}, c.now)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(path)
	l.size = 2 * total // as if the file were full
	write(t, l, c, denyEvent("after.example", 443))
	l.Close()
	if ev := readEvents(t, path); len(ev) != 2 || ev[0].Kind != KindRotated || ev[1].Host != "after.example" {
		t.Errorf("live file after a rotation at open: %d lines (was %d bytes)", len(ev), before.Size())
	}
}

// Found by attack: a 700 KiB Host header made a line over 1 MiB.
func TestAuditCapsFields(t *testing.T) {
	c := newClock()
	l, path := testAuditLog(t, AuditLimits{}, c)
	huge := strings.Repeat("a", 700<<10)
	write(t, l, c, &Event{Kind: "http", Host: huge, Rule: huge, Decision: Deny, Reason: "no rule allows " + huge, IP: "\xff" + huge})
	l.Close()
	data, _ := os.ReadFile(path)
	if len(data) > 4<<10 {
		t.Fatalf("a line of %d bytes", len(data))
	}
	e := readEvents(t, path)[0]
	if len(e.Host) > MaxFieldBytes+len("…") || !strings.HasSuffix(e.Host, "…") || len(e.Reason) > MaxReasonBytes+len("…") || !utf8.ValidString(e.IP) {
		t.Errorf("host %d bytes, reason %d bytes", len(e.Host), len(e.Reason))
	}
	if got := strings.Join(e.Truncated, ","); got != "rule,host,ip,reason" {
		t.Errorf("truncated = %q", got)
	}
	// A cut never splits a rune.
	if s, cut := capString(strings.Repeat("é", 200), 255); !cut || !utf8.ValidString(s) {
		t.Errorf("cut %q", s)
	}
}

// Found by attack: an SNI with ESC and newlines. The JSON line holds no
// control character raw (C1, DEL and bidi overrides included) and decodes
// to what was sent.
func TestAuditEscapesControls(t *testing.T) {
	c := newClock()
	l, path := testAuditLog(t, AuditLimits{}, c)
	sni := "\x1b[31m\nforged\r\t\x7f\u009b2J\u202e\U000e0001"
	write(t, l, c, &Event{Kind: "tls", Host: sni, Port: 443, Decision: Deny, Reason: "no rule allows " + sni})
	l.Close()
	data, _ := os.ReadFile(path)
	line := bytes.TrimSuffix(data, []byte("\n"))
	for _, r := range string(line) {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == 0x202e || r == 0xe0001 {
			t.Fatalf("raw %U in %q", r, line)
		}
	}
	if e := readEvents(t, path)[0]; e.Host != sni {
		t.Errorf("decoded host %q, want %q", e.Host, sni)
	}
}

// Found by attack: one line over 1 MiB made every later read fail. Bad
// lines are skipped and reported; the lines after them are read.
func TestReadAuditLogSkipsBadLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sb1.jsonl")
	good := func(host string) string {
		b, _ := MarshalEvent(&Event{Kind: "dns", Host: host, Decision: Deny})
		return string(b)
	}
	long := `{"kind":"http","host":"` + strings.Repeat("a", 2<<20) + "\"}\n"
	data := good("one") + long + "not json\n" + "\n" + good("two") + `{"time":`
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	var hosts []string
	err := ReadAuditLog(path, func(e *Event) error { hosts = append(hosts, e.Host); return nil })
	var bad *BadLinesError
	if !errors.As(err, &bad) || bad.Count != 3 || bad.Lines[0].Line != 2 || bad.Lines[1].Line != 3 || bad.Lines[2].Line != 6 {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(err.Error(), "sb1.jsonl:2: skipped: longer than") || !strings.Contains(err.Error(), "sb1.jsonl:6: skipped: not an audit event") {
		t.Errorf("err = %v", err)
	}
	if strings.Join(hosts, ",") != "one,two" {
		t.Errorf("read %v, want one,two", hosts)
	}
	// A line written by something else than this writer is capped on read.
	wide := `{"kind":"http","host":"` + strings.Repeat("a", 100<<10) + "\"}\n"
	if err := os.WriteFile(path, []byte(wide), 0o644); err != nil {
		t.Fatal(err)
	}
	if ev := readEvents(t, path); len(ev) != 1 || len(ev[0].Host) > MaxFieldBytes+len("…") || ev[0].Truncated[0] != "host" {
		t.Errorf("read back %+v", ev)
	}
}
