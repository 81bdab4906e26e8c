package egress

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"
)

// Decisions an audit event records.
const (
	Allow = "allow"
	Deny  = "deny"
	// Audit is a connection an `enforcement: audit` rule let through that
	// an enforcing rule would have refused.
	Audit = "audit"
)

// Event is one line of a sandbox's audit log: one DNS answer, one
// connection or request, or one policy reload.
type Event struct {
	Time       time.Time `json:"time"`
	Sandbox    string    `json:"sandbox"`
	Policy     string    `json:"policy"`
	PolicyHash string    `json:"policy_sha256"`
	Kind       string    `json:"kind"` // dns, connect, http, tls, reload
	Rule       string    `json:"rule,omitempty"`
	Host       string    `json:"host,omitempty"`
	Port       int       `json:"port,omitempty"`
	IP         string    `json:"ip,omitempty"`
	BytesUp    int64     `json:"bytes_up"`
	BytesDown  int64     `json:"bytes_down"`
	Decision   string    `json:"decision"`
	Reason     string    `json:"reason,omitempty"`
}

// Violation reports whether the event is a denial, or a would-be denial.
func (e *Event) Violation() bool { return e.Decision != Allow }

// AuditLog appends events to a file, one JSON object per line. Lines are
// written whole under a lock, so concurrent connections never interleave.
type AuditLog struct {
	mu  sync.Mutex
	f   *os.File
	enc *json.Encoder
}

// OpenAuditLog opens (or creates) the audit file for appending.
func OpenAuditLog(path string) (*AuditLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return &AuditLog{f: f, enc: json.NewEncoder(f)}, nil
}

// Write appends e. A failed write is returned; the caller logs it, and the
// connection it describes has already been decided.
func (l *AuditLog) Write(e *Event) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.enc.Encode(e); err != nil {
		return fmt.Errorf("write audit log %s: %w", l.f.Name(), err)
	}
	return nil
}

// Close closes the file.
func (l *AuditLog) Close() error { return l.f.Close() }

// ReadAuditLog reads the events of one audit file, calling fn for each.
// A line that is not an event (a torn last line) is reported with its
// line number.
func ReadAuditLog(path string, fn func(*Event) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read audit log: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("%s:%d: not an audit event: %w", path, line, err)
		}
		if err := fn(&e); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read audit log %s: %w", path, err)
	}
	return nil
}
