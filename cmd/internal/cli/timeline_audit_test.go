package cli

import (
	"testing"
	"time"

	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/runtime/monitor"
)

// TestJoinAudit: a line goes to the latest connect before it that it can
// be about; an empty direct connection takes no one's line; DNS and lines
// out of the window are not paired.
func TestJoinAudit(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	conn := func(ms int, dest string) *monitor.Event {
		return &monitor.Event{Kind: monitor.KindConnect, Family: "inet", Dest: dest, Time: at(ms)}
	}
	direct := conn(0, "198.51.100.10:80")     // empty: no line of its own
	dns := conn(1, "169.254.213.1:53")        // never paired
	proxied := conn(50, "169.254.213.1:3128") // curl's request
	denied := conn(60, "203.0.113.9:443")     // a direct TLS connection, denied
	late := conn(100, "203.0.113.7:22")       // its line comes too late
	events := []*monitor.Event{direct, dns, proxied, denied, late}
	audit := []*egress.Event{
		{Kind: "dns", Host: "allowed.test", IP: "198.51.100.10", Decision: egress.Allow, Time: at(2)},
		{Kind: "http", Host: "allowed.test", IP: "198.51.100.10", Port: 80, Decision: egress.Allow, Time: at(70)},
		{Kind: "tls", Host: "evil.test", IP: "203.0.113.9", Port: 443, Decision: egress.Deny, Time: at(80)},
		{Kind: "tcp", IP: "203.0.113.7", Port: 22, Decision: egress.Deny, Time: at(100 + 6000)},
	}
	got := joinAudit(events, audit)
	if got[proxied] != audit[1] || got[denied] != audit[2] || got[direct] != nil || got[dns] != nil || got[late] != nil || len(got) != 2 {
		t.Errorf("pairs: %v", got)
	}
	if n := auditNote(audit[2]); n != " → deny evil.test" {
		t.Errorf("note %q", n)
	}
}
