package monitor

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	pb "gvisor.dev/gvisor/pkg/sentry/seccheck/points/points_go_proto"
)

const secret = "s3cr3t-value-never-stored"

func ctxData(pid, ppid int32, t int64) *pb.ContextData {
	return &pb.ContextData{
		TimeNs: t, ThreadId: pid, ThreadGroupId: pid, ThreadGroupStartTimeNs: int64(pid) * 1000,
		ParentThreadGroupId: ppid, Cwd: "/work", ProcessName: "proc",
		Credentials: &pb.Credentials{EffectiveUid: 1000, EffectiveGid: 1000},
	}
}

func packet(t testing.TB, typ pb.MessageType, dropped uint32, m proto.Message) []byte {
	t.Helper()
	payload, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return append(appendHeader(nil, Header{Size: headerMinSize, MessageType: uint16(typ), Dropped: dropped}), payload...)
}

func inet4(ip [4]byte, port uint16) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint16(b, unix.AF_INET)
	binary.BigEndian.PutUint16(b[2:], port)
	copy(b[4:], ip[:])
	return b
}

// session is a sandbox's worth of points: the first process (a shell)
// forks and execs curl, which connects and exits.
func session(t testing.TB) [][]byte {
	return [][]byte{
		packet(t, pb.MessageType_MESSAGE_CONTAINER_START, 0, &pb.Start{ContextData: ctxData(1, 0, 1e9), Id: "c", Cwd: "/work", Args: []string{"/bin/sh", "-c", "curl x"}, Env: []string{"TOKEN=" + secret}}),
		packet(t, pb.MessageType_MESSAGE_SENTRY_CLONE, 0, &pb.CloneInfo{ContextData: ctxData(1, 0, 2e9), CreatedThreadId: 2, CreatedThreadGroupId: 2, CreatedThreadStartTimeNs: 2000}),
		packet(t, pb.MessageType_MESSAGE_SENTRY_CLONE, 0, &pb.CloneInfo{ContextData: ctxData(1, 0, 2e9), CreatedThreadId: 9, CreatedThreadGroupId: 1, Flags: 0x10000}),
		packet(t, pb.MessageType_MESSAGE_SENTRY_EXEC, 0, &pb.ExecveInfo{ContextData: ctxData(2, 1, 3e9), BinaryPath: "/usr/bin/curl", Argv: []string{"curl", "x"}, Env: []string{"PATH=/bin", "TOKEN=" + secret}}),
		packet(t, pb.MessageType_MESSAGE_SYSCALL_CONNECT, 0, &pb.Connect{ContextData: ctxData(2, 1, 4e9), Fd: 5, Address: inet4([4]byte{10, 0, 0, 1}, 3128)}),
		packet(t, pb.MessageType_MESSAGE_SYSCALL_CONNECT, 0, &pb.Connect{ContextData: ctxData(2, 1, 4e9), Fd: 5, Address: inet4([4]byte{10, 0, 0, 1}, 3128), Exit: &pb.Exit{Result: -115, Errorno: 115}}),
		packet(t, pb.MessageType_MESSAGE_SENTRY_TASK_EXIT, 2, &pb.TaskExit{ContextData: ctxData(2, 1, 5e9), ExitStatus: 0}),
		packet(t, pb.MessageType_MESSAGE_SENTRY_EXIT_NOTIFY_PARENT, 2, &pb.ExitNotifyParentInfo{ContextData: ctxData(2, 1, 5e9), ExitStatus: 6 << 8}),
		packet(t, pb.MessageType_MESSAGE_SENTRY_TASK_EXIT, 2, &pb.TaskExit{ContextData: ctxData(1, 0, 6e9), ExitStatus: 9}),
	}
}

type memSink struct{ events []*Event }

func (s *memSink) Write(e *Event) error { s.events = append(s.events, e); return nil }

func record(t *testing.T, pkts [][]byte) (*Monitor, *memSink) {
	t.Helper()
	sink := &memSink{}
	m := New("sb", sink)
	var last uint32
	for _, p := range pkts {
		h, payload, err := ParsePacket(p)
		if err != nil {
			t.Fatal(err)
		}
		if h.Dropped != last {
			m.dropped(uint64(h.Dropped - last))
			last = h.Dropped
		}
		ev, err := Decode(h.MessageType, payload)
		if err != nil {
			t.Fatal(err)
		}
		if ev != nil {
			m.Record(ev)
		}
	}
	return m, sink
}

func TestMonitorSession(t *testing.T) {
	m, sink := record(t, session(t))
	var kinds []string
	for _, e := range sink.events {
		kinds = append(kinds, e.Kind)
	}
	want := "start clone exec connect dropped exit exit"
	if got := strings.Join(kinds, " "); got != want {
		t.Fatalf("kinds = %q, want %q", got, want)
	}
	start, clone, exec, conn, drop, exit, rootExit := sink.events[0], sink.events[1], sink.events[2], sink.events[3], sink.events[4], sink.events[5], sink.events[6]
	if start.Binary != "/bin/sh" || start.Attributed != "container-start" || start.Pid != 1 {
		t.Errorf("start = %+v", start)
	}
	if clone.Child != 2 || clone.Binary != "/bin/sh" {
		t.Errorf("clone = %+v", clone)
	}
	if exec.Binary != "/usr/bin/curl" || exec.PPid != 1 || strings.Join(exec.EnvNames, ",") != "PATH,TOKEN" || *exec.UID != 1000 {
		t.Errorf("exec = %+v", exec)
	}
	if conn.Dest != "10.0.0.1:3128" || conn.Family != "inet" || conn.Result != "EINPROGRESS" || conn.Binary != "/usr/bin/curl" {
		t.Errorf("connect = %+v", conn)
	}
	if drop.Dropped != 2 || drop.Total != 2 {
		t.Errorf("dropped = %+v", drop)
	}
	if exit.Pid != 2 || *exit.ExitCode != 6 {
		t.Errorf("exit = %+v", exit)
	}
	if rootExit.Pid != 1 || rootExit.Signal != 9 || *rootExit.ExitCode != 137 {
		t.Errorf("root exit = %+v", rootExit)
	}
	for _, e := range sink.events {
		b, _ := json.Marshal(e)
		if strings.Contains(string(b), secret) {
			t.Errorf("an environment value was kept: %s", b)
		}
	}
	if st := m.Stats(); st.Dropped != 2 || st.Malformed != 0 {
		t.Errorf("stats = %+v", st)
	}
}

func TestDecodeMalformed(t *testing.T) {
	for name, pkt := range map[string][]byte{
		"short":           {1, 2, 3},
		"header too big":  appendHeader(nil, Header{Size: 300, MessageType: 3}),
		"header past end": appendHeader(nil, Header{Size: 64, MessageType: 3}),
	} {
		if _, _, err := ParsePacket(pkt); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	if _, err := Decode(uint16(pb.MessageType_MESSAGE_SYSCALL_READ), nil); err == nil {
		t.Error("an unrequested point was decoded")
	}
	if _, err := Decode(uint16(pb.MessageType_MESSAGE_SENTRY_EXEC), []byte{0xff, 0xff, 0xff}); err == nil {
		t.Error("garbage was decoded")
	}
	// A larger header (a newer sentry) is skipped over.
	p := append(appendHeader(nil, Header{Size: 12, MessageType: 3}), 0, 0, 0, 0)
	if _, payload, err := ParsePacket(p); err != nil || len(payload) != 0 {
		t.Errorf("larger header: %v %d", err, len(payload))
	}
}

func TestDecodeBounds(t *testing.T) {
	long := strings.Repeat("a", 10000)
	argv := make([]string, 1000)
	for i := range argv {
		argv[i] = long
	}
	env := make([]string, 1000)
	for i := range env {
		env[i] = long + "=" + secret
	}
	payload, err := proto.Marshal(&pb.ExecveInfo{ContextData: ctxData(3, 1, 1), BinaryPath: long + "é", Argv: argv, Env: env})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := Decode(uint16(pb.MessageType_MESSAGE_SENTRY_EXEC), payload)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(ev)
	if len(b) > 64<<10 {
		t.Errorf("event is %d bytes", len(b))
	}
	if strings.Contains(string(b), secret) {
		t.Error("an environment value was kept")
	}
	if len(ev.Argv) > maxArgs || len(ev.EnvNames) != maxEnvNames || len(ev.Binary) > maxPath {
		t.Errorf("argv %d env %d binary %d", len(ev.Argv), len(ev.EnvNames), len(ev.Binary))
	}
	if strings.Join(ev.Truncated, ",") != "binary,argv,env_names" {
		t.Errorf("truncated = %v", ev.Truncated)
	}
}

func TestSockaddr(t *testing.T) {
	v6 := make([]byte, 28)
	binary.LittleEndian.PutUint16(v6, unix.AF_INET6)
	binary.BigEndian.PutUint16(v6[2:], 443)
	copy(v6[8:], netip.MustParseAddr("2001:db8::1").AsSlice())
	un := append([]byte{unix.AF_UNIX, 0}, "/run/x.sock\x00\x00"...)
	abs := append([]byte{unix.AF_UNIX, 0, 0}, "name"...)
	for _, c := range []struct {
		in        []byte
		fam, dest string
	}{
		{inet4([4]byte{1, 2, 3, 4}, 80), "inet", "1.2.3.4:80"},
		{v6, "inet6", "[2001:db8::1]:443"},
		{un, "unix", "/run/x.sock"},
		{abs, "unix", "@name"},
		{[]byte{unix.AF_INET, 0, 1}, "inet", ""},
		{nil, "", ""},
	} {
		if fam, dest := sockaddr(c.in); fam != c.fam || dest != c.dest {
			t.Errorf("sockaddr(%x) = %q %q, want %q %q", c.in, fam, dest, c.fam, c.dest)
		}
	}
}

func TestOpenEvent(t *testing.T) {
	payload, _ := proto.Marshal(&pb.Open{ContextData: ctxData(4, 1, 1), Fd: -100, Pathname: "out.txt", Flags: unix.O_WRONLY | unix.O_CREAT | unix.O_TRUNC, Exit: &pb.Exit{Result: 3}})
	ev, err := Decode(uint16(pb.MessageType_MESSAGE_SYSCALL_OPEN), payload)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Path != "/work/out.txt" || ev.Flags != "O_WRONLY|O_CREAT|O_TRUNC" || ev.Result != "ok" || ev.FD != 3 {
		t.Errorf("open = %+v", ev)
	}
}

func TestPodInitConfig(t *testing.T) {
	b, err := PodInitConfig("/run/m.sock", Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{`"endpoint": "/run/m.sock"`, `"retries": 2000`, `"backoff_max": "1ms"`, `"sentry/execve"`, `"syscall/connect/exit"`} {
		if !strings.Contains(s, want) {
			t.Errorf("config lacks %s:\n%s", want, s)
		}
	}
	if strings.Contains(s, "openat") || strings.Contains(s, `"env"`) {
		t.Errorf("config asks for opens or env by default:\n%s", s)
	}
	b, _ = PodInitConfig("/run/m.sock", Options{FileOpens: true})
	if !strings.Contains(string(b), "syscall/openat/exit") {
		t.Error("file opens not asked for")
	}
	if strings.Contains(s, AttributionSink) {
		t.Errorf("the attribution sink asked for without per-binary rules:\n%s", s)
	}
}

// Per-binary rules add openshell's sink to the same session (runsc reads
// one pod init config), or make a session of it alone.
func TestPodInitConfigAttribution(t *testing.T) {
	var both, alone struct {
		TraceSession sessionConfig `json:"trace_session"`
	}
	b, err := PodInitConfig("/run/m.sock", Options{Attribution: "/run/a.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &both); err != nil {
		t.Fatal(err)
	}
	if s := both.TraceSession.Sinks; len(s) != 2 || s[0].Name != "remote" || s[1].Name != AttributionSink || s[1].Config["endpoint"] != "/run/a.sock" {
		t.Errorf("sinks %+v", s)
	}
	if p := both.TraceSession.Points; p[len(p)-1].Name != "sentry/mmap" || !slices.ContainsFunc(p, func(c pointConfig) bool { return c.Name == "sentry/clone" }) {
		t.Errorf("the attribution sink's mmap point is missing: %+v", p)
	}
	// The timeline's decoder passes over those points quietly.
	if ev, err := Decode(uint16(pb.MessageType_MESSAGE_SENTRY_MMAP), nil); ev != nil || err != nil {
		t.Errorf("an mmap point: %v %v", ev, err)
	}
	b, err = PodInitConfig("", Options{Attribution: "/run/a.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &alone); err != nil {
		t.Fatal(err)
	}
	mmap := "sentry/mmap"
	if s, p := alone.TraceSession.Sinks, alone.TraceSession.Points; len(s) != 1 || s[0].Name != AttributionSink || len(p) != 3 || p[0].Name != "syscall/connect/exit" || p[1].Name != mmap || p[2].Name != "sentry/clone" {
		t.Errorf("attribution alone: %s", b)
	}
	if _, err := PodInitConfig("", Options{}); err == nil {
		t.Error("a session with no sink")
	}
}

// TestServe drives the server as runsc's remote sink does: connect,
// handshake, then packets; the timeline file gets the events.
func TestServe(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "m.sock")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	tl, err := OpenTimeline(filepath.Join(dir, "sb.jsonl"), 0)
	if err != nil {
		t.Fatal(err)
	}
	m := New("sb", tl)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- Serve(ctx, l, m) }()

	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	hs, _ := proto.Marshal(&pb.Handshake{Version: 1})
	if _, err := c.Write(hs); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1024)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var back pb.Handshake
	if err := proto.Unmarshal(buf[:n], &back); err != nil || back.GetVersion() != 1 {
		t.Fatalf("handshake answer %v %v", &back, err)
	}
	for _, p := range session(t) {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Write([]byte{1, 2}); err != nil { // malformed: counted
		t.Fatal(err)
	}
	_ = c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for m.Stats().Malformed == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	m.Close()
	if err := tl.Close(); err != nil {
		t.Fatal(err)
	}
	var kinds []string
	if err := ReadTimeline(filepath.Join(dir, "sb.jsonl"), func(e *Event) error {
		kinds = append(kinds, e.Kind)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(kinds, " ")
	if !strings.HasPrefix(got, "monitor start clone exec connect dropped exit exit monitor") || !strings.HasSuffix(got, "monitor") {
		t.Errorf("timeline kinds = %q", got)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "sb.jsonl"))
	if strings.Contains(string(data), secret) {
		t.Error("an environment value reached the timeline")
	}
}

func TestServeBadHandshake(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "m.sock")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	m := New("sb", sink)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- Serve(ctx, l, m) }()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write(make([]byte, maxHandshake+100))
	// The server hangs up without answering.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 16)); err == nil && n > 0 {
		t.Errorf("answered an oversized handshake")
	}
	_ = c.Close()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		m.mu.Lock()
		n := len(sink.events)
		m.mu.Unlock()
		if n > 0 {
			break
		}
	}
	cancel()
	<-done
	if len(sink.events) == 0 || !strings.Contains(sink.events[0].Note, "handshake") {
		t.Errorf("events = %+v", sink.events)
	}
}

func TestTimelineRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sb.jsonl")
	tl, err := OpenTimeline(path, 4096)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		if err := tl.Write(&Event{Kind: KindExec, Pid: int32(i), Binary: "/usr/bin/true"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tl.Close(); err != nil {
		t.Fatal(err)
	}
	files := TimelineFiles(path)
	if len(files) != 2 {
		t.Fatalf("files = %v", files)
	}
	var total int64
	for _, f := range files {
		st, _ := os.Stat(f)
		total += st.Size()
	}
	if total > 4096 {
		t.Errorf("timeline is %d bytes, bound 4096", total)
	}
	var last int32
	for _, f := range files {
		_ = ReadTimeline(f, func(e *Event) error { last = e.Pid; return nil })
	}
	if last != 199 {
		t.Errorf("last event pid %d, want 199", last)
	}
}

func TestReadTimelineBadLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.jsonl")
	data := `{"kind":"exec","pid":1}` + "\n" + "torn{\n" + strings.Repeat("x", maxLine+10) + "\n" + `{"kind":"exit","pid":1}` + "\n"
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	n := 0
	err := ReadTimeline(path, func(*Event) error { n++; return nil })
	bad, ok := err.(*BadLinesError)
	if !ok || bad.Count != 2 || bad.First != 2 || n != 2 {
		t.Errorf("err = %v, events %d", err, n)
	}
}
