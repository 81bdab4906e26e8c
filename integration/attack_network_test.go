package integration

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/test/fakenet"
)

// networkAttacks are the audit log's findings (issue 15, finding 5),
// tried from a sandbox against its real gateway: a flood of denials, and
// lines forged through names the sandbox chooses.
func networkAttacks() []attackCase {
	return []attackCase{
		{area: "network", name: "audit-flood",
			attack:  "flood the gateway with distinct DNS denials, allowed DNS answers and TCP denials until the audit log has rotated (audit_max_mb = 2): fill the host's disk, or push the lines the operator needs out unseen",
			defence: "denials folded and rate-limited per class with suppressed lines; the keeper rotates the log at half the bound (the new file says so); the live and rotated files together stay under audit_max_mb",
			run:     auditFloodAttack},
		{area: "network", name: "forged-audit-line",
			attack:  "a DNS name, a TLS SNI and an HTTP Host carrying ESC sequences, CR and LF, to paint the operator's terminal and forge rows in `openshell audit`",
			defence: "fields capped and every control character escaped in the JSON and in the text view",
			run:     forgedAuditLineAttack},
	}
}

// floodProbe floods until a line arrives on stdin (at most 40 s).
const floodProbe = `
import socket, struct, sys, threading, time, random
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
def q(name, qtype):
    m = struct.pack(">HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
    for l in name.split("."):
        m += bytes([len(l)]) + l.encode()
    return m + b"\x00" + struct.pack(">HH", qtype, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
pad = "a" * 50
sent = tcp = 0
deadline = time.time() + 40
print("flooding", flush=True)
while not stop.is_set() and time.time() < deadline:
    for _ in range(50):
        i = sent
        name = ".".join([f"{i}-{pad}"] * 3) + ".flood.test"
        for m in (q(name, 1), q(f"x{i}-{pad}.wild.test", 28)):
            try:
                s.sendto(m, ("169.254.213.1", 53))
            except BlockingIOError:
                pass
        sent += 1
    try:
        while True:
            s.recv(1500)
    except BlockingIOError:
        pass
    c = socket.socket()
    c.settimeout(0.05)
    try:
        c.connect(("DENIED_IP", 1000 + tcp % 5000))
    except OSError:
        pass
    c.close()
    tcp += 1
print(f"sent: {sent} dns pairs, {tcp} tcp", flush=True)
`

// auditFloodAttack floods until the host sees the log rotate, then
// checks the bound, the suppressed lines and the rotation's own line.
func auditFloodAttack(t *testing.T, _ *attackEnv) (bool, string) {
	e := newEgressEnv(t)
	const maxMB = 2
	cfg, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	// The [egress] table is the config's last.
	e.config = filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(e.config, append(cfg, fmt.Sprintf("audit_max_mb = %d\n", maxMB)...), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	c, stdin, lines, errb := e.startPiped(t, ctx, writePolicy(t, egressPolicy), strings.ReplaceAll(floodProbe, "DENIED_IP", fakenet.WebB.String()))
	if !lines.Scan() || lines.Text() != "flooding" {
		t.Fatalf("sandbox: %q\n%s", lines.Text(), errb.String())
	}
	var live string
	rotatedAt := time.Duration(0)
	for time.Since(start) < 40*time.Second {
		if m, _ := filepath.Glob(filepath.Join(e.audit, "*.jsonl.1")); len(m) == 1 {
			live = strings.TrimSuffix(m[0], ".1")
			rotatedAt = time.Since(start)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A little more flood after the rotation, then stop.
	time.Sleep(1500 * time.Millisecond)
	fmt.Fprintln(stdin)
	out := waitRest(t, c, lines, errb)
	assertNothingLeft(t, stateDir)
	if live == "" {
		m, _ := filepath.Glob(filepath.Join(e.audit, "*.jsonl"))
		var size int64
		for _, f := range m {
			st, _ := os.Stat(f)
			size += st.Size()
		}
		// Not an escape, but the case did not test what it is for.
		t.Errorf("the flood did not make the log rotate in 40 s (%d bytes written); %v", size, out)
		return false, fmt.Sprintf("no rotation; %d bytes", size)
	}
	var total int64
	counts := map[string]int{}
	suppressed := 0
	var firstLive egress.Event
	for i, f := range egress.AuditFiles(live) {
		st, _ := os.Stat(f)
		total += st.Size()
		n := 0
		if err := egress.ReadAuditLog(f, func(ev *egress.Event) error {
			if i == 1 && n == 0 {
				firstLive = *ev
			}
			n++
			counts[ev.Kind]++
			if ev.Kind == egress.KindSuppressed {
				suppressed += ev.Count
			}
			return nil
		}); err != nil {
			return true, fmt.Sprintf("%s does not read back: %v", f, err)
		}
	}
	evidence := fmt.Sprintf("rotated after %s; %d bytes in %s and .1 (bound %d MiB); %d suppressed lines standing for %d events; %s",
		rotatedAt.Round(100*time.Millisecond), total, filepath.Base(live), maxMB, counts[egress.KindSuppressed], suppressed, strings.Join(out, " "))
	switch {
	case total > maxMB<<20:
		return true, "over the bound: " + evidence
	case counts[egress.KindSuppressed] == 0 || suppressed == 0:
		return true, "events dropped without a suppressed line: " + evidence
	case firstLive.Kind != egress.KindRotated || !strings.Contains(firstLive.Reason, ".jsonl.1"):
		return true, fmt.Sprintf("the new file does not say it was rotated (first line %s %q): %s", firstLive.Kind, firstLive.Reason, evidence)
	}
	return false, evidence
}

// forgedProbe sends the forged names three ways.
const forgedProbe = `
import socket, struct
FORGE = b"evil\x1b[31m\x1b]0;pwned\x07\r\nFORGED-ROW allow 0.0.0.0\x1b[0m"
def q(labels):
    m = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    for l in labels:
        m += bytes([len(l)]) + l
    return m + b"\x00" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(q([FORGE, b"test"]), ("169.254.213.1", 53))
try:
    print("dns:", s.recv(1500)[3] & 15, flush=True)
except OSError as e:
    print("dns:", e, flush=True)
def hello(sni):
    ext = struct.pack(">HH", 0, len(sni) + 5) + struct.pack(">HBH", len(sni) + 3, 0, len(sni)) + sni
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + struct.pack(">H", len(ext)) + ext
    hs = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs
def send(name, port, data):
    c = socket.create_connection(("DENIED_IP", port), timeout=3)
    try:
        c.sendall(data)
        print(name + ":", c.recv(200)[:40], flush=True)
    except OSError as e:
        print(name + ":", e, flush=True)
    c.close()
send("sni", 443, hello(FORGE))
send("host", 80, b"GET / HTTP/1.1\r\nHost: " + FORGE.replace(b"\r\n", b"\r") + b"\r\n\r\n")
`

// forgedAuditLineAttack sends the names, then reads the text view as an
// operator would.
func forgedAuditLineAttack(t *testing.T, _ *attackEnv) (bool, string) {
	e := newEgressEnv(t)
	out := e.run(t, egressPolicy, strings.ReplaceAll(forgedProbe, "DENIED_IP", fakenet.WebB.String()))
	logs, _ := filepath.Glob(filepath.Join(e.audit, "*.jsonl"))
	if len(logs) != 1 {
		t.Fatalf("audit logs %v", logs)
	}
	id := strings.TrimSuffix(filepath.Base(logs[0]), ".jsonl")
	c := exec.Command(openshellBin, "audit", "--dir", e.audit, id)
	c.Stderr = io.Discard
	view, err := c.Output()
	if err != nil {
		t.Fatalf("openshell audit: %v", err)
	}
	raw, _ := os.ReadFile(logs[0])
	shown := strings.Count(string(view), "evil")
	evidence := fmt.Sprintf("%d of the forged names shown escaped; sandbox: %s", shown, strings.ReplaceAll(strings.TrimSpace(out), "\n", "; "))
	for _, bad := range []string{"\x1b", "\x07", "\r"} {
		if strings.Contains(string(view), bad) || strings.Contains(string(raw), bad) {
			return true, fmt.Sprintf("a raw %q reached the audit log or its text view; %s", bad, evidence)
		}
	}
	for _, l := range strings.Split(string(view), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "FORGED-ROW") {
			return true, "a forged row in the text view: " + firstLine(l)
		}
	}
	if shown == 0 {
		// Not an escape, but nothing was tried: the names never reached
		// the log.
		t.Errorf("none of the forged names reached the audit log:\n%s", view)
	}
	return false, evidence
}
