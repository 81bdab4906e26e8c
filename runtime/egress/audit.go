package egress

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/time/rate"

	"github.com/openshell/openshell/runtime/inference"
)

// Decisions an audit event records.
const (
	Allow = "allow"
	Deny  = "deny"
	// Audit is a connection an `enforcement: audit` rule let through that
	// an enforcing rule would have refused.
	Audit = "audit"
)

// KindSuppressed is the kind of the line that counts the events the rate
// limit kept out of the log.
const KindSuppressed = "suppressed"

// KindRotated is the kind of the first line of a rotated audit file: it
// says where the earlier lines went and how many bytes of the oldest ones
// the bound removed (decision allow), or, where the file could not be
// rotated and was emptied, how many were lost (decision deny).
const KindRotated = "rotated"

// Bounds of the audit log. Everything in an event but its numbers comes,
// directly or not, from the sandbox (a DNS name, an SNI, a Host header, an
// error that quotes them), so every string is capped before it is written,
// and again when it is read.
const (
	// MaxFieldBytes caps each string field but the reason.
	MaxFieldBytes = 256
	// MaxReasonBytes caps the reason, which may quote a whole DNS name
	// (253 bytes) in a sentence.
	MaxReasonBytes = 512
	// MaxAuditLine is the longest line ReadAuditLog accepts; a longer one
	// is skipped and reported. Lines the writer makes are a few KiB at
	// most: the capped fields, each escaped at worst six bytes a byte.
	MaxAuditLine = 1 << 20
	// DefaultAuditMaxBytes bounds one sandbox's audit on disk when the
	// configuration does not say (egress.audit_max_mb).
	DefaultAuditMaxBytes = 64 << 20
	// DefaultAuditRate and DefaultAuditBurst bound the lines written a
	// second, for violations and for allowed events each.
	DefaultAuditRate  = 100
	DefaultAuditBurst = 200
	// DefaultAuditWindow is how long identical events are folded into the
	// first one's line.
	DefaultAuditWindow = time.Second
)

// maxOpenAggregates bounds the events remembered for folding; past it a
// new event is written without being remembered. The rate limit keeps the
// open windows far below it (about burst + rate × window).
const maxOpenAggregates = 4096

// suppressedSample is how many of the destinations the rate limit dropped
// a suppressed line names.
const suppressedSample = 3

// Event is one line of a sandbox's audit log: one DNS answer, one
// connection or request, or one policy reload; or the summary of events
// folded or suppressed (Count).
type Event struct {
	Time       time.Time `json:"time"`
	Sandbox    string    `json:"sandbox"`
	Policy     string    `json:"policy"`
	PolicyHash string    `json:"policy_sha256"`
	Kind       string    `json:"kind"` // dns, connect, http, tls, tcp, udp, icmp, reload, suppressed
	Rule       string    `json:"rule,omitempty"`
	Host       string    `json:"host,omitempty"`
	Port       int       `json:"port,omitempty"`
	IP         string    `json:"ip,omitempty"`
	// Method, Path (no query) and Status are a request's, where the
	// gateway reads requests; Grant is which of the endpoint's HTTP
	// rules allowed it.
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
	Status int    `json:"status,omitempty"`
	Grant  string `json:"grant,omitempty"`
	// Binary is the executable that opened the connection, where a
	// binary-scoped rule made the gateway ask (as the sentry reported
	// it: a path inside the sandbox).
	Binary string `json:"binary,omitempty"`
	// BinaryWritable: that executable lies on a writable mount, so it
	// counts for no binary-scoped rule.
	BinaryWritable bool   `json:"binary_writable,omitempty"`
	BytesUp        int64  `json:"bytes_up"`
	BytesDown      int64  `json:"bytes_down"`
	Decision       string `json:"decision"`
	Reason         string `json:"reason,omitempty"`
	// Inference is a call to inference.local (kind inference): its
	// models, tokens, provider and the credential's source (never its
	// value).
	Inference *inference.Event `json:"inference,omitempty"`
	// Count, when set, is how many events this line stands for, from
	// Since to Time: on a summary line the repeats of an event whose first
	// occurrence has its own line (bytes are their sum); on a suppressed
	// line the events the rate limit kept out.
	Count int       `json:"count,omitempty"`
	Since time.Time `json:"since,omitzero"`
	// Truncated names the fields that were cut to their cap (and end in
	// "…").
	Truncated []string `json:"truncated,omitempty"`
}

// Violation reports whether the event is a denial, or a would-be denial.
func (e *Event) Violation() bool { return e.Decision != Allow }

// Sanitize caps every string field (MaxFieldBytes, MaxReasonBytes for the
// reason), marking those it cut in Truncated, and replaces invalid UTF-8.
// Control characters are left to the encoding (MarshalEvent) or the view.
func (e *Event) Sanitize() {
	var cut []string
	for _, f := range []struct {
		name string
		s    *string
		max  int
	}{
		{"sandbox", &e.Sandbox, MaxFieldBytes},
		{"policy", &e.Policy, MaxFieldBytes},
		{"policy_sha256", &e.PolicyHash, MaxFieldBytes},
		{"kind", &e.Kind, MaxFieldBytes},
		{"rule", &e.Rule, MaxFieldBytes},
		{"host", &e.Host, MaxFieldBytes},
		{"ip", &e.IP, MaxFieldBytes},
		{"method", &e.Method, MaxFieldBytes},
		{"path", &e.Path, MaxFieldBytes},
		{"grant", &e.Grant, MaxFieldBytes},
		{"binary", &e.Binary, MaxFieldBytes},
		{"decision", &e.Decision, MaxFieldBytes},
		{"reason", &e.Reason, MaxReasonBytes},
	} {
		var was bool
		if *f.s, was = capString(*f.s, f.max); was {
			cut = append(cut, f.name)
		}
	}
	if in := e.Inference; in != nil {
		for _, f := range []struct {
			name string
			s    *string
		}{
			{"inference.api", &in.API}, {"inference.provider", &in.Provider}, {"inference.upstream_host", &in.UpstreamHost},
			{"inference.credential", &in.Credential}, {"inference.requested_model", &in.RequestedModel},
			{"inference.sent_model", &in.SentModel}, {"inference.reported_model", &in.ReportedModel},
			{"inference.route", &in.Route},
		} {
			var was bool
			if *f.s, was = capString(*f.s, MaxFieldBytes); was {
				cut = append(cut, f.name)
			}
		}
	}
	// What the line said of itself is kept (a field cut by the writer is
	// within its cap when read back), but only names of fields.
	for _, name := range e.Truncated {
		if len(cut) < 16 && fieldName(name) && !slices.Contains(cut, name) {
			cut = append(cut, name)
		}
	}
	e.Truncated = cut
}

func fieldName(s string) bool {
	switch s {
	case "sandbox", "policy", "policy_sha256", "kind", "rule", "host", "ip", "decision", "reason",
		"inference.api", "inference.provider", "inference.upstream_host", "inference.credential",
		"inference.requested_model", "inference.sent_model", "inference.reported_model", "inference.route":
		return true
	}
	return false
}

// capString makes s valid UTF-8 and at most max bytes, plus "…" when cut
// (at a rune boundary).
func capString(s string, max int) (string, bool) {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= max {
		return s, false
	}
	n := max
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…", true
}

// MarshalEvent encodes e as one JSON line (with its newline) in which
// nothing a terminal acts on appears raw: encoding/json escapes the C0
// controls, and this escapes DEL, the C1 controls (CSI is U+009B) and
// every other rune Go does not count printable (bidirectional overrides,
// line and paragraph separators). Those runes can only be inside strings,
// so the line stays valid JSON and decodes to the same event.
func MarshalEvent(e *Event) ([]byte, error) {
	raw, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(raw)+1)
	for i := 0; i < len(raw); {
		r, size := utf8.DecodeRune(raw[i:])
		switch {
		case r < utf8.RuneSelf && r != 0x7f:
			out = append(out, raw[i])
		case r == 0x7f || !unicode.IsPrint(r):
			if r > 0xffff {
				r1, r2 := utf16Pair(r)
				out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
			} else {
				out = fmt.Appendf(out, `\u%04x`, r)
			}
		default:
			out = append(out, raw[i:i+size]...)
		}
		i += size
	}
	return append(out, '\n'), nil
}

func utf16Pair(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + (r>>10)&0x3ff, 0xdc00 + r&0x3ff
}

// AuditLimits bound what one sandbox's audit log may take. Zero fields
// take the defaults.
type AuditLimits struct {
	// MaxBytes bounds the log on disk, the live file and its rotated
	// predecessor together: the live file is rotated to <file>.1 (the
	// previous <file>.1 is dropped) when the next line would take it past
	// half of MaxBytes.
	MaxBytes int64
	// Rate (lines a second) and Burst bound the lines written for
	// violations, and separately for allowed events, so that a flood of
	// one cannot push the other out of the log.
	Rate  float64
	Burst int
	// Window is how long the repeats of an event (same kind, host, port,
	// rule, decision and reason) are counted instead of written.
	Window time.Duration
}

func (l AuditLimits) withDefaults() AuditLimits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultAuditMaxBytes
	}
	if l.Rate <= 0 {
		l.Rate = DefaultAuditRate
	}
	if l.Burst <= 0 {
		l.Burst = DefaultAuditBurst
	}
	if l.Window <= 0 {
		l.Window = DefaultAuditWindow
	}
	return l
}

// AuditLog appends events to a file, one JSON object per line, within a
// bound a hostile sandbox cannot push it past:
//
//   - Repeats are folded: the first occurrence of an event is written at
//     once; identical events (kind, host, port, rule, decision, reason)
//     within Window of it are only counted, and one summary line with
//     their count (and summed bytes) follows when the window closes.
//     Allowed events are folded the same way as denials: the log is a
//     record of decisions, and a loop of allowed requests must not fill
//     it either.
//   - A rate limit per class (violations, allowed) drops what is over it;
//     a "suppressed" line says how many, and names a few, at most once a
//     second per class. Summary and suppressed lines are charged to the
//     limit but never dropped. Reload lines are never folded or dropped.
//   - The file is rotated by size (AuditLimits.MaxBytes); the new file's
//     first line says so, and how much the bound removed.
//   - Every string field is capped (Sanitize) and every control character
//     escaped (MarshalEvent).
//
// Lines are written whole under a lock, so concurrent connections never
// interleave.
type AuditLog struct {
	mu    sync.Mutex
	path  string
	f     *os.File
	size  int64
	lim   AuditLimits
	now   func() time.Time
	open  map[aggKey]*aggregate
	viol  *budget
	allow *budget
	ids   Event // sandbox and policy of the latest event, for our own lines
	// rotator, where set, rotates for a writer that cannot rename in
	// the audit directory (the confined gateway: its keeper does it) and
	// returns the new live file, the bytes of the rotated file it
	// replaced, and the rotated file's name. Nil: the log renames and
	// reopens by path itself.
	rotator func() (f *os.File, removed int64, rotated string, err error)
	closed  bool
	// started is set when the clock goroutine runs (OpenAuditLog); tests
	// drive flush with their own clock instead.
	started bool
	stop    chan struct{}
	done    chan struct{}
}

type aggKey struct {
	kind, host     string
	port           int
	rule, decision string
	reason         string
	// A request folds only into repeats of itself: same method, path,
	// grant and status.
	method, path, grant string
	status              int
}

// aggregate is one open window: the line written for its first event and
// the repeats counted since.
type aggregate struct {
	end      time.Time
	line     Event
	count    int
	since    time.Time
	last     time.Time
	up, down int64
}

// budget is one class's rate limit and what it has dropped since its
// last suppressed line.
type budget struct {
	lim      *rate.Limiter
	decision string // of its suppressed lines
	class    string
	dropped  int
	since    time.Time
	sample   []string
}

// OpenAuditLog opens (or creates) the audit file for appending, and
// starts the clock that writes summaries when their windows close.
func OpenAuditLog(path string, limits AuditLimits) (*AuditLog, error) {
	l, err := openAuditLog(path, limits, time.Now)
	if err != nil {
		return nil, err
	}
	l.started = true
	go l.tick(l.lim.Window / 4)
	return l, nil
}

func openAuditLog(path string, limits AuditLimits, now func() time.Time) (*AuditLog, error) {
	limits = limits.withDefaults()
	l := &AuditLog{
		path:  path,
		lim:   limits,
		now:   now,
		open:  map[aggKey]*aggregate{},
		viol:  &budget{lim: rate.NewLimiter(rate.Limit(limits.Rate), limits.Burst), decision: Deny, class: "violation"},
		allow: &budget{lim: rate.NewLimiter(rate.Limit(limits.Rate), limits.Burst), decision: Allow, class: "allowed"},
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	if err := l.reopen(); err != nil {
		return nil, err
	}
	return l, nil
}

// procFD is how the confined gateway is told its audit file: a
// descriptor its keeper opened, which it takes as it is (it may not open
// the file by name, even through /proc).
const procFD = "/proc/self/fd/"

func (l *AuditLog) reopen() error {
	var f *os.File
	if n, ok := strings.CutPrefix(l.path, procFD); ok {
		fd, err := strconv.Atoi(n)
		if err != nil || fd < 3 {
			return fmt.Errorf("open audit log: %s is not a descriptor", l.path)
		}
		f = os.NewFile(uintptr(fd), l.path)
	} else {
		var err error
		if f, err = os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640); err != nil {
			return fmt.Errorf("open audit log: %w", err)
		}
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open audit log: %w", err)
	}
	l.f, l.size = f, st.Size()
	return nil
}

func (l *AuditLog) tick(every time.Duration) {
	defer close(l.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.mu.Lock()
			_ = l.flush(l.now(), false)
			l.mu.Unlock()
		}
	}
}

// Write records e (its Time is set when zero). A failed write is
// returned; the caller logs it, and the connection it describes has
// already been decided.
func (l *AuditLog) Write(e *Event) error {
	ev := *e
	ev.Count, ev.Since = 0, time.Time{}
	ev.Sanitize()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return fmt.Errorf("write audit log %s: closed", l.path)
	}
	now := l.now()
	if ev.Time.IsZero() {
		ev.Time = now.UTC()
	}
	l.ids = Event{Sandbox: ev.Sandbox, Policy: ev.Policy, PolicyHash: ev.PolicyHash}
	if ev.Kind == "reload" || (ev.Inference != nil && !ev.Violation()) {
		// An allowed inference call is an account of tokens: never
		// folded or dropped (the calls are bounded by the route's rate
		// and the model server's pace, and the file by rotation).
		return l.writeLine(&ev)
	}
	var errs []error
	k := aggKey{ev.Kind, ev.Host, ev.Port, ev.Rule, ev.Decision, ev.Reason, ev.Method, ev.Path, ev.Grant, ev.Status}
	if a, ok := l.open[k]; ok {
		if now.Before(a.end) {
			a.count++
			if a.since.IsZero() {
				a.since = ev.Time
			}
			a.last = ev.Time
			a.up += ev.BytesUp
			a.down += ev.BytesDown
			return nil
		}
		errs = append(errs, l.summarize(k, a, now))
	}
	b := l.allow
	if ev.Violation() {
		b = l.viol
	}
	if !b.lim.AllowN(now, 1) {
		b.drop(&ev)
		return errors.Join(errs...)
	}
	if len(l.open) < maxOpenAggregates {
		l.open[k] = &aggregate{end: now.Add(l.lim.Window), line: ev}
	}
	errs = append(errs, l.writeLine(&ev))
	return errors.Join(errs...)
}

func (b *budget) drop(e *Event) {
	if b.dropped == 0 {
		b.since = e.Time
		b.sample = b.sample[:0]
	}
	b.dropped++
	if len(b.sample) < suppressedSample && e.Host != "" && !slices.Contains(b.sample, e.Host) {
		b.sample = append(b.sample, e.Host)
	}
}

// summarize writes the summary of a's repeats, if any, and closes it.
// Preconditions: l.mu must be locked.
func (l *AuditLog) summarize(k aggKey, a *aggregate, now time.Time) error {
	delete(l.open, k)
	if a.count == 0 {
		return nil
	}
	s := a.line
	s.Time, s.Since, s.Count = a.last, a.since, a.count
	s.BytesUp, s.BytesDown = a.up, a.down
	l.charge(&s, now)
	return l.writeLine(&s)
}

// charge takes a line that is written regardless from its class's budget.
func (l *AuditLog) charge(e *Event, now time.Time) {
	b := l.allow
	if e.Violation() {
		b = l.viol
	}
	b.lim.ReserveN(now, 1)
}

// flush writes the summaries of the windows that have closed, and the
// suppressed lines due (each class at most once a second); all of them
// when final.
// Preconditions: l.mu must be locked.
func (l *AuditLog) flush(now time.Time, final bool) error {
	var errs []error
	for k, a := range l.open {
		if final || !now.Before(a.end) {
			errs = append(errs, l.summarize(k, a, now))
		}
	}
	for _, b := range []*budget{l.viol, l.allow} {
		if b.dropped == 0 || (!final && now.Sub(b.since) < time.Second) {
			continue
		}
		e := l.ids
		e.Time, e.Since, e.Count = now.UTC(), b.since, b.dropped
		e.Kind, e.Decision = KindSuppressed, b.decision
		e.Reason = fmt.Sprintf("%d %s events not written: over the audit rate limit of %g lines a second (burst %d)", b.dropped, b.class, l.lim.Rate, l.lim.Burst)
		if len(b.sample) > 0 {
			e.Reason += "; among them " + strings.Join(b.sample, ", ")
		}
		e.Sanitize()
		b.dropped = 0
		l.charge(&e, now)
		errs = append(errs, l.writeLine(&e))
	}
	return errors.Join(errs...)
}

// writeLine encodes e and appends it, rotating first if the line would
// take the live file past half the bound.
// Preconditions: l.mu must be locked.
func (l *AuditLog) writeLine(e *Event) error {
	line, err := MarshalEvent(e)
	if err != nil {
		return fmt.Errorf("write audit log %s: %w", l.path, err)
	}
	if l.f == nil || (l.size > 0 && l.size+int64(len(line)) > l.lim.MaxBytes/2) {
		if err := l.rotate(); err != nil {
			return err
		}
	}
	n, err := l.f.Write(line)
	l.size += int64(n)
	if err != nil {
		return fmt.Errorf("write audit log %s: %w", l.path, err)
	}
	return nil
}

// rotate moves the live file to <path>.1, replacing the one there, and
// starts a new one whose first line (KindRotated) says so. Where the
// rotation fails the live file is emptied instead, and the first line
// says how much was lost: the bound holds either way, and no line goes
// without a trace.
// Preconditions: l.mu must be locked.
func (l *AuditLog) rotate() error {
	if l.f == nil {
		return l.reopen()
	}
	was := l.size
	removed, rotated, err := l.rotateFile()
	note := l.ids
	note.Time, note.Kind = l.now().UTC(), KindRotated
	if err == nil {
		note.Decision = Allow
		note.Reason = fmt.Sprintf("audit log rotated at %d bytes (half its bound of %d): the earlier lines are in %s", was, l.lim.MaxBytes, rotated)
		if removed > 0 {
			note.Reason += fmt.Sprintf("; the %d bytes it held before were removed", removed)
		}
	} else {
		terr := l.f.Truncate(0)
		l.size = 0
		if terr != nil {
			return errors.Join(fmt.Errorf("rotate audit log %s: %w", l.path, err), terr)
		}
		note.Decision = Deny
		note.Reason = fmt.Sprintf("audit log emptied at %d bytes (half its bound of %d): %d bytes of earlier lines lost, since it could not be rotated: %v", was, l.lim.MaxBytes, was, err)
	}
	note.Sanitize()
	line, merr := MarshalEvent(&note)
	if merr != nil {
		return merr
	}
	// A failed rotation is told in the file itself (that line), and the
	// line that caused it is written after it.
	n, werr := l.f.Write(line)
	l.size += int64(n)
	if werr != nil {
		return fmt.Errorf("rotate audit log %s: %w", l.path, werr)
	}
	return nil
}

// rotateFile moves the live file aside and opens its successor as l.f:
// through the rotator where there is one, else by renaming. It returns
// the size of the rotated file it replaced.
// Preconditions: l.mu must be locked.
func (l *AuditLog) rotateFile() (removed int64, rotated string, err error) {
	if l.rotator != nil {
		f, removed, rotated, err := l.rotator()
		if err != nil {
			return 0, "", err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return 0, "", err
		}
		_ = l.f.Close()
		l.f, l.size = f, st.Size()
		return removed, rotated, nil
	}
	if st, err := os.Lstat(l.path + ".1"); err == nil {
		removed = st.Size()
	}
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return 0, "", err
	}
	_ = l.f.Close()
	l.f = nil
	if err := l.reopen(); err != nil {
		return 0, "", err
	}
	return removed, filepath.Base(l.path) + ".1", nil
}

// SetRotator makes fn rotate the file from now on (see AuditLog.rotator).
func (l *AuditLog) SetRotator(fn func() (f *os.File, removed int64, rotated string, err error)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rotator = fn
}

// Close writes what is pending (summaries, suppressed counts) and closes
// the file.
func (l *AuditLog) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.stop)
	err := l.flush(l.now(), true)
	l.mu.Unlock()
	if l.started {
		<-l.done
	}
	if l.f != nil {
		err = errors.Join(err, l.f.Close())
	}
	return err
}

// AuditFiles are the files of one sandbox's audit log that exist, oldest
// first: the rotated one, then the live one.
func AuditFiles(path string) []string {
	var out []string
	for _, p := range []string{path + ".1", path} {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			out = append(out, p)
		}
	}
	return out
}

// BadLinesError lists the lines of an audit file that were skipped: torn
// (a gateway killed mid-write), not JSON, or longer than MaxAuditLine.
type BadLinesError struct {
	File  string
	Lines []BadLine // the first few
	Count int       // all of them
}

// BadLine is one skipped line.
type BadLine struct {
	Line int
	Err  error
}

const maxBadLinesListed = 10

func (e *BadLinesError) Error() string {
	var b strings.Builder
	for i, l := range e.Lines {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "%s:%d: skipped: %s", e.File, l.Line, l.Err)
	}
	if more := e.Count - len(e.Lines); more > 0 {
		fmt.Fprintf(&b, "\n%s: %d more lines skipped", e.File, more)
	}
	return b.String()
}

// ReadAuditLog reads the events of one audit file, calling fn for each,
// each Sanitized. A line that is not an event (torn, not JSON, longer than
// MaxAuditLine) is skipped and never hides the lines after it; the
// skipped lines are returned at the end as a *BadLinesError. Other errors
// (the file cannot be read, fn failed) end the reading.
func ReadAuditLog(path string, fn func(*Event) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read audit log: %w", err)
	}
	defer f.Close()
	bad := &BadLinesError{File: path}
	skip := func(line int, err error) {
		bad.Count++
		if len(bad.Lines) < maxBadLinesListed {
			bad.Lines = append(bad.Lines, BadLine{line, err})
		}
	}
	r := bufio.NewReaderSize(f, 64<<10)
	var buf []byte
	for line := 1; ; line++ {
		data, long, err := readLine(r, &buf)
		if errors.Is(err, io.EOF) && len(data) == 0 && !long {
			break
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read audit log %s: %w", path, err)
		}
		switch {
		case long:
			skip(line, fmt.Errorf("longer than %d bytes", MaxAuditLine))
		case len(bytes.TrimSpace(data)) == 0:
		default:
			var e Event
			if jerr := json.Unmarshal(data, &e); jerr != nil {
				skip(line, fmt.Errorf("not an audit event: %w", jerr))
				break
			}
			e.Sanitize()
			if ferr := fn(&e); ferr != nil {
				return ferr
			}
		}
		if err != nil { // io.EOF after a last line without its newline
			break
		}
	}
	if bad.Count > 0 {
		return bad
	}
	return nil
}

// readLine reads one line without its newline into *buf, reusing it. A
// line longer than MaxAuditLine is read to its end and dropped: long is
// set and data is empty.
func readLine(r *bufio.Reader, buf *[]byte) (data []byte, long bool, err error) {
	*buf = (*buf)[:0]
	for {
		chunk, err := r.ReadSlice('\n')
		if !long {
			if len(*buf)+len(chunk) > MaxAuditLine+1 {
				long, *buf = true, (*buf)[:0]
			} else {
				*buf = append(*buf, chunk...)
			}
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err != nil:
			return bytes.TrimSuffix(*buf, []byte("\n")), long, err
		}
		return bytes.TrimSuffix(*buf, []byte("\n")), long, nil
	}
}
