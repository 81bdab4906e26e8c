package egress

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/policyhook/policy"
)

func TestParseAttrRecord(t *testing.T) {
	for _, c := range []struct {
		name, in string
		ok       bool
		key      attrKey
		bin      Binary
	}{
		{"v4", `{"v":1,"local":"10.0.0.2:4000","remote":"93.184.216.34:443","pid":7,"exe":"/usr/bin/curl","ro":true}`, true,
			attrKey{netip.MustParseAddrPort("10.0.0.2:4000"), netip.MustParseAddrPort("93.184.216.34:443")}, Binary{Path: "/usr/bin/curl", ReadOnly: true, PID: 7}},
		{"mapped v6 is v4", `{"v":1,"local":"[::ffff:10.0.0.2]:4000","remote":"[::ffff:1.2.3.4]:80","pid":1,"exe":"/bin/x","ro":false}`, true,
			attrKey{netip.MustParseAddrPort("10.0.0.2:4000"), netip.MustParseAddrPort("1.2.3.4:80")}, Binary{Path: "/bin/x", ReadOnly: false, PID: 1}},
		{"foreign", `{"v":1,"local":"10.0.0.2:1","remote":"1.2.3.4:80","pid":1,"exe":"/usr/bin/curl","ro":true,"foreign":"/tmp/x.so"}`, true,
			attrKey{netip.MustParseAddrPort("10.0.0.2:1"), netip.MustParseAddrPort("1.2.3.4:80")}, Binary{Path: "/usr/bin/curl", ReadOnly: true, PID: 1, Foreign: "/tmp/x.so"}},
		{"relative foreign", `{"v":1,"local":"10.0.0.2:1","remote":"1.2.3.4:80","exe":"/x","ro":true,"foreign":"x.so"}`, false, attrKey{}, Binary{}},
		{"no exe", `{"v":1,"local":"10.0.0.2:1","remote":"1.2.3.4:80","pid":1,"exe":"","ro":true}`, true,
			attrKey{netip.MustParseAddrPort("10.0.0.2:1"), netip.MustParseAddrPort("1.2.3.4:80")}, Binary{Path: "", ReadOnly: true, PID: 1}},
		{"unknown field", `{"v":1,"local":"10.0.0.2:1","remote":"1.2.3.4:80","exe":"/x","ro":true,"trusted":true}`, false, attrKey{}, Binary{}},
		{"version", `{"v":2,"local":"10.0.0.2:1","remote":"1.2.3.4:80","exe":"/x"}`, false, attrKey{}, Binary{}},
		{"bad local", `{"v":1,"local":"10.0.0.2","remote":"1.2.3.4:80","exe":"/x"}`, false, attrKey{}, Binary{}},
		{"bad remote", `{"v":1,"local":"10.0.0.2:1","remote":"x:80","exe":"/x"}`, false, attrKey{}, Binary{}},
		{"relative exe", `{"v":1,"local":"10.0.0.2:1","remote":"1.2.3.4:80","exe":"usr/bin/curl"}`, false, attrKey{}, Binary{}},
		{"newline in exe", `{"v":1,"local":"10.0.0.2:1","remote":"1.2.3.4:80","exe":"/usr/bin/curl\n"}`, false, attrKey{}, Binary{}},
		{"two records", `{"v":1,"local":"10.0.0.2:1","remote":"1.2.3.4:80","exe":"/x"}{"v":1}`, false, attrKey{}, Binary{}},
		{"empty", ``, false, attrKey{}, Binary{}},
		{"too big", `{"v":1,"local":"10.0.0.2:1","remote":"1.2.3.4:80","exe":"/` + strings.Repeat("a", maxAttrPacket) + `"}`, false, attrKey{}, Binary{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			key, bin, _, err := parseAttrRecord([]byte(c.in))
			if (err == nil) != c.ok {
				t.Fatalf("err %v, want ok %v", err, c.ok)
			}
			if c.ok && (key != c.key || bin != c.bin) {
				t.Errorf("got %v %+v, want %v %+v", key, bin, c.key, c.bin)
			}
		})
	}
}

// The record the sink in openshell's runsc build writes (its own test
// marshals the same file) parses here.
func TestParseAttrRecordGolden(t *testing.T) {
	data, err := os.ReadFile("testdata/attr-record.json")
	if err != nil {
		t.Fatal(err)
	}
	key, bin, dropped, err := parseAttrRecord([]byte(strings.TrimSpace(string(data))))
	if err != nil {
		t.Fatal(err)
	}
	if key.local.String() != "10.0.2.15:43210" || key.remote.String() != "[2001:db8::1]:443" || bin != (Binary{Path: "/usr/bin/git", ReadOnly: true, PID: 42}) || dropped != 3 {
		t.Errorf("got %v %+v %d", key, bin, dropped)
	}
}

func FuzzParseAttrRecord(f *testing.F) {
	f.Add([]byte(`{"v":1,"local":"10.0.0.2:4000","remote":"93.184.216.34:443","pid":7,"exe":"/usr/bin/curl","ro":true}`))
	f.Add([]byte(`{"v":1,"local":"[::1]:1","remote":"[::1]:2","exe":"/\u0000"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		key, bin, _, err := parseAttrRecord(b)
		if err != nil {
			return
		}
		if !key.local.IsValid() || !key.remote.IsValid() || key.local.Addr().Is4In6() {
			t.Fatalf("accepted %q as %v", b, key)
		}
		if bin.Path != "" && (!strings.HasPrefix(bin.Path, "/") || strings.ContainsAny(bin.Path, "\x00\n")) {
			t.Fatalf("accepted executable %q", bin.Path)
		}
	})
}

var (
	keyA = attrKey{netip.MustParseAddrPort("10.0.0.2:4000"), netip.MustParseAddrPort("1.2.3.4:443")}
	keyB = attrKey{netip.MustParseAddrPort("10.0.0.2:4001"), netip.MustParseAddrPort("1.2.3.4:443")}
	curl = Binary{Path: "/usr/bin/curl", ReadOnly: true, PID: 5}
	py   = Binary{Path: "/usr/bin/python3.11", ReadOnly: true, PID: 6}
)

func newTestAttribution() (*attribution, *[]string) {
	var notes []string
	return newAttribution(true, func(s string) { notes = append(notes, s) }), &notes
}

func TestAttributionTake(t *testing.T) {
	a, _ := newTestAttribution()
	// Record first, then the connection.
	a.add(keyA, curl, 0)
	if b, err := a.take(keyA, time.Second); err != nil || b != curl {
		t.Fatalf("take: %+v %v", b, err)
	}
	// Consumed: it answers for one connection only.
	if _, err := a.take(keyA, 10*time.Millisecond); !errors.Is(err, errAttrTimeout) {
		t.Fatalf("second take: %v", err)
	}
	// The connection first: the decision waits for its record.
	done := make(chan error, 1)
	go func() {
		b, err := a.take(keyB, 5*time.Second)
		if err == nil && b != py {
			err = errors.New("wrong binary " + b.Path)
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	a.add(keyA, curl, 0) // another connection's record wakes nobody wrongly
	a.add(keyB, py, 0)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A record its connection never asked for is forgotten with it.
	a.forget(keyA)
	if _, err := a.take(keyA, 10*time.Millisecond); !errors.Is(err, errAttrTimeout) {
		t.Fatalf("after forget: %v", err)
	}
}

// Two records for one pair of addresses: neither is believed.
func TestAttributionConflict(t *testing.T) {
	a, _ := newTestAttribution()
	a.add(keyA, curl, 0)
	a.add(keyA, py, 0)
	if _, err := a.take(keyA, time.Second); !errors.Is(err, errAttrConflict) {
		t.Fatalf("take: %v", err)
	}
}

// A record older than its lifetime answers for nothing.
func TestAttributionExpires(t *testing.T) {
	a, _ := newTestAttribution()
	now := time.Now()
	a.now = func() time.Time { return now }
	a.add(keyA, curl, 0)
	now = now.Add(attrTTL)
	if _, err := a.take(keyA, 10*time.Millisecond); !errors.Is(err, errAttrTimeout) {
		t.Fatalf("take: %v", err)
	}
	// Nor does an expired one make the next record a conflict.
	a.add(keyA, curl, 0)
	now = now.Add(attrTTL)
	a.add(keyA, py, 0)
	if b, err := a.take(keyA, time.Second); err != nil || b != py {
		t.Fatalf("take: %+v %v", b, err)
	}
}

// The sentry cannot make the gateway hold more than maxAttrRecords.
func TestAttributionBounded(t *testing.T) {
	a, _ := newTestAttribution()
	for i := range maxAttrRecords + 100 {
		k := attrKey{netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 1), keyA.remote}
		a.add(k, curl, 0)
	}
	if n := len(a.records); n > maxAttrRecords {
		t.Fatalf("%d records held", n)
	}
}

func TestAttributionOffAndLost(t *testing.T) {
	off := newAttribution(false, func(string) {})
	if _, err := off.take(keyA, time.Second); !errors.Is(err, errAttrOff) {
		t.Fatalf("off: %v", err)
	}
	a, notes := newTestAttribution()
	srv, cli := unixpacketPair(t)
	served := make(chan struct{})
	go func() { a.serve(srv); close(served) }()
	if _, err := cli.Write([]byte(`{"v":1,"local":"10.0.0.2:4000","remote":"1.2.3.4:443","pid":5,"exe":"/usr/bin/curl","ro":true,"dropped":2}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Write([]byte(`not json`)); err != nil {
		t.Fatal(err)
	}
	if b, err := a.take(keyA, 5*time.Second); err != nil || b != curl {
		t.Fatalf("take: %+v %v", b, err)
	}
	// A decision waiting when the channel ends is answered at once.
	waiting := make(chan error, 1)
	go func() { _, err := a.take(keyB, time.Minute); waiting <- err }()
	time.Sleep(20 * time.Millisecond)
	cli.Close()
	<-served
	select {
	case err := <-waiting:
		if !errors.Is(err, errAttrLost) {
			t.Fatalf("waiting take: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a waiting decision outlived the channel")
	}
	start := time.Now()
	if _, err := a.take(keyA, time.Minute); !errors.Is(err, errAttrLost) || time.Since(start) > time.Second {
		t.Fatalf("after the channel closed: %v after %v", err, time.Since(start))
	}
	all := strings.Join(*notes, "\n")
	for _, want := range []string{"dropped 2 records", "malformed record"} {
		if !strings.Contains(all, want) {
			t.Errorf("notes %q lack %q", all, want)
		}
	}
}

func unixpacketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	path := t.TempDir() + "/a.sock"
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cli, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close(); srv.Close() })
	return srv, cli
}

// stubPeer answers with a fixed binary or error.
func ctxWith(bin Binary, err error) context.Context {
	a := newAttribution(true, func(string) {})
	p := &peer{attr: a, known: true}
	p.once.Do(func() { p.bin, p.err = bin, err })
	return withPeer(context.Background(), p)
}

func TestChoose(t *testing.T) {
	scoped := &policy.EgressRule{Field: "scoped", Binaries: []string{"/usr/bin/curl", "/opt/tools/**"}, Enforcement: policy.EnforcementEnforce}
	scopedAudit := &policy.EgressRule{Field: "audit", Binaries: []string{"/usr/bin/curl"}, Enforcement: policy.EnforcementAudit}
	open := &policy.EgressRule{Field: "open", Enforcement: policy.EnforcementEnforce}
	writable := Binary{Path: "/usr/bin/curl", ReadOnly: false}
	for _, c := range []struct {
		name   string
		cands  []*policy.EgressRule
		ctx    context.Context
		rule   *policy.EgressRule
		reason string // a denial's, or an audit note's
	}{
		{"named binary", []*policy.EgressRule{scoped}, ctxWith(curl, nil), scoped, ""},
		{"glob", []*policy.EgressRule{scoped}, ctxWith(Binary{Path: "/opt/tools/x/y", ReadOnly: true}, nil), scoped, ""},
		{"other binary", []*policy.EgressRule{scoped}, ctxWith(py, nil), nil, "not to /usr/bin/python3.11"},
		{"copy on a writable mount", []*policy.EgressRule{scoped}, ctxWith(writable, nil), nil, "not on a read-only mount"},
		{"code loaded from a writable mount", []*policy.EgressRule{scoped}, ctxWith(Binary{Path: "/usr/bin/curl", ReadOnly: true, Foreign: "/tmp/evil.so"}, nil), nil, "runs code from /tmp/evil.so"},
		{"no attribution", []*policy.EgressRule{scoped}, ctxWith(Binary{}, errAttrLost), nil, "attribution was lost"},
		{"no peer at all", []*policy.EgressRule{scoped}, context.Background(), nil, "started without connection attribution"},
		{"falls through to an open rule", []*policy.EgressRule{scoped, open}, ctxWith(py, nil), open, ""},
		{"open rule first never asks", []*policy.EgressRule{open, scoped}, ctxWith(Binary{}, errAttrLost), open, ""},
		{"audit mode lets it through, noted", []*policy.EgressRule{scopedAudit}, ctxWith(py, nil), scopedAudit, "would deny"},
		{"nothing matches", nil, ctxWith(curl, nil), nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			tg, d := choose(c.ctx, c.cands, func() string { return "h.test:443" })
			switch {
			case c.rule == nil && c.reason == "":
				if tg != nil || d != nil {
					t.Fatalf("got %+v %+v", tg, d)
				}
			case c.rule == nil:
				if tg != nil || d == nil || !strings.Contains(d.reason, c.reason) {
					t.Fatalf("got %+v %+v, want a denial saying %q", tg, d, c.reason)
				}
			default:
				if d != nil || tg == nil || tg.rule != c.rule || !strings.Contains(tg.audit, c.reason) {
					t.Fatalf("got %+v %+v, want %s", tg, d, c.rule.Field)
				}
			}
		})
	}
}

// A record is forgotten however its connection ends: closed before any
// decision asked for it (a request refused before its handler), or
// displaced from the full connection table.
func TestAttributionForgottenOnClose(t *testing.T) {
	a, _ := newTestAttribution()
	tab := newConnTable(1)
	tab.attr = a
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accept := func() (net.Conn, attrKey) {
		c, err := net.Dial("tcp4", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return s, attrKey{netip.MustParseAddrPort(c.LocalAddr().String()), netip.MustParseAddrPort(c.RemoteAddr().String())}
	}
	s1, k1 := accept()
	a.add(k1, curl, 0)
	tc := tab.admit(s1)
	tc.Close()
	if _, err := a.take(k1, 10*time.Millisecond); !errors.Is(err, errAttrTimeout) {
		t.Fatalf("after close: %v", err)
	}
	s2, k2 := accept()
	a.add(k2, curl, 0)
	tab.admit(s2)
	s3, _ := accept()
	if tab.admit(s3) == nil {
		t.Fatal("no room made")
	}
	if _, err := a.take(k2, 10*time.Millisecond); !errors.Is(err, errAttrTimeout) {
		t.Fatalf("after displacement: %v", err)
	}
}
