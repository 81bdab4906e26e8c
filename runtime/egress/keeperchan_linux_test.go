package egress

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// rotatingLog is an audit log whose rotations its "keeper" (the other end
// of a socket pair, served as the real keeper serves it) does.
func rotatingLog(t *testing.T, bound int64, c *clock) (*AuditLog, string) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "sb1.jsonl")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	go serveAuditRotation(fds[0], path, slog.New(slog.NewTextHandler(io.Discard, nil)))
	// The writer knows its file by descriptor only, as the confined
	// gateway does.
	l, err := openAuditLog(fmt.Sprintf("%s%d", procFD, f.Fd()), AuditLimits{MaxBytes: bound, Rate: 1e9, Burst: 1 << 30}, c.now)
	if err != nil {
		t.Fatal(err)
	}
	l.SetRotator((&auditRotator{fd: fds[1]}).rotate)
	// f is held to the end: the log writes to its descriptor by number,
	// and a collected *os.File closes its descriptor.
	t.Cleanup(func() { unix.Close(fds[1]); unix.Close(fds[0]); f.Close() })
	return l, path
}

// TestAuditRotationByKeeper: a writer that cannot rename (the confined
// gateway) has its keeper rotate: the bound holds for the live and the
// rotated file together, both files exist, and each new file begins with a
// rotated line that says where the earlier lines went and how many bytes
// of the oldest the bound removed.
func TestAuditRotationByKeeper(t *testing.T) {
	c := newClock()
	const bound = 64 << 10
	l, path := rotatingLog(t, bound, c)
	const n = 3000
	for i := range n {
		write(t, l, c, denyEvent(fmt.Sprintf("h%d.evil.example", i), 443))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files := AuditFiles(path)
	var total int64
	for _, f := range files {
		st, _ := os.Stat(f)
		total += st.Size()
	}
	if len(files) != 2 || files[0] != path+".1" || total > bound {
		t.Fatalf("files %v take %d bytes, bound %d", files, total, bound)
	}
	live, old := readEvents(t, path), readEvents(t, path+".1")
	if live[0].Kind != KindRotated || live[0].Decision != Allow || !strings.Contains(live[0].Reason, "sb1.jsonl.1") || !strings.Contains(live[0].Reason, "were removed") {
		t.Errorf("the live file begins with %+v", live[0])
	}
	if old[0].Kind != KindRotated {
		t.Errorf("the rotated file begins with %+v", old[0])
	}
	if last := live[len(live)-1]; last.Host != fmt.Sprintf("h%d.evil.example", n-1) {
		t.Errorf("the live file ends with %+v", last)
	}
	// Nothing lost silently: the two files hold a run of consecutive
	// events up to the last, and what came before them is accounted for
	// by the rotated line's removed bytes.
	var hosts []string
	for _, e := range append(old, live...) {
		if e.Kind != KindRotated {
			hosts = append(hosts, e.Host)
		}
	}
	first := n - len(hosts)
	for i, h := range hosts {
		if want := fmt.Sprintf("h%d.evil.example", first+i); h != want {
			t.Fatalf("line %d of the kept run is %s, want %s", i, h, want)
		}
	}
	t.Logf("%d lines in %d bytes over 2 files; the first %d removed by rotation, as the rotated lines say", len(hosts), total, first)
}

// TestAuditRotationFails: where the keeper cannot rotate, the live file
// is emptied and its first line says how much was lost.
func TestAuditRotationFails(t *testing.T) {
	c := newClock()
	const bound = 16 << 10
	l, path := testAuditLog(t, AuditLimits{MaxBytes: bound, Rate: 1e9, Burst: 1 << 30}, c)
	l.SetRotator(func() (*os.File, int64, string, error) { return nil, 0, "", errors.New("no keeper") })
	for i := range 400 {
		write(t, l, c, denyEvent(fmt.Sprintf("h%d.evil.example", i), 443))
	}
	l.Close()
	if _, err := os.Stat(path + ".1"); err == nil {
		t.Error("a rotated file without a rotation")
	}
	st, _ := os.Stat(path)
	if st.Size() > bound/2 {
		t.Errorf("the live file is %d bytes, bound %d", st.Size(), bound)
	}
	ev := readEvents(t, path)
	if ev[0].Kind != KindRotated || ev[0].Decision != Deny || !strings.Contains(ev[0].Reason, "bytes of earlier lines lost") || !strings.Contains(ev[0].Reason, "no keeper") {
		t.Errorf("the emptied file begins with %+v", ev[0])
	}
}

// TestRotateAuditFileKeepsOld: a new live file that cannot be made puts
// the old one back, so the writer's fallback never empties the rotated
// file.
func TestRotateAuditFileKeepsOld(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sb.jsonl")
	os.WriteFile(path, []byte("live\n"), 0o640)
	f, removed, err := rotateAuditFile(path)
	if err != nil || removed != 0 {
		t.Fatal(err, removed)
	}
	f.Close()
	os.WriteFile(path, []byte("second\n"), 0o640)
	if f, removed, err = rotateAuditFile(path); err != nil || removed != 5 {
		t.Fatalf("second rotation: %v, removed %d (want 5)", err, removed)
	}
	f.Close()
	if data, _ := os.ReadFile(path + ".1"); string(data) != "second\n" {
		t.Errorf(".1 holds %q", data)
	}
}
