package egress

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// clientHello is what crypto/tls sends first.
func clientHello(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		_ = tls.Client(a, &tls.Config{ServerName: "example.com"}).Handshake()
	}()
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(b, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}

func TestReadClientHello(t *testing.T) {
	hello := clientHello(t)
	got, err := readClientHello(bytes.NewReader(append(append([]byte(nil), hello...), "GET / HTTP/1.1\r\n"...)))
	if err != nil || !bytes.Equal(got, hello) {
		t.Fatalf("a real ClientHello: %v (%d of %d bytes)", err, len(got), len(hello))
	}
	// The hello split over two records is still one hello.
	split := append([]byte{22, 3, 1, 0, 10}, hello[5:15]...)
	split = append(split, 22, 3, 1, byte((len(hello)-15)>>8), byte(len(hello)-15))
	split = append(split, hello[15:]...)
	if _, err := readClientHello(bytes.NewReader(split)); err != nil {
		t.Errorf("a hello in two records: %v", err)
	}
	bad := map[string][]byte{
		"0x16 then plaintext":   []byte("\x16GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		"not a handshake":       append([]byte{23}, hello[1:]...),
		"not a ClientHello":     append(append([]byte(nil), hello[:5]...), append([]byte{2}, hello[6:]...)...),
		"a truncated hello":     hello[:len(hello)-1],
		"a lying length":        append(append([]byte(nil), hello[:8]...), append([]byte{hello[8] - 1}, hello[9:]...)...),
		"record version 0x0200": append([]byte{22, 2, 0}, hello[3:]...),
	}
	for name, b := range bad {
		if _, err := readClientHello(bytes.NewReader(b)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestRecordReaderStopsAtPlaintext(t *testing.T) {
	in := []byte{23, 3, 3, 0, 3, 'a', 'b', 'c', 21, 3, 3, 0, 2, 1, 0}
	rr := &recordReader{r: io.MultiReader(bytes.NewReader(in), bytes.NewReader([]byte("GET /secret HTTP/1.1\r\n")))}
	var out bytes.Buffer
	_, err := io.Copy(&out, rr)
	var nt *notTLSError
	if !errors.As(err, &nt) {
		t.Fatalf("plaintext after records: %v", err)
	}
	if !bytes.Equal(out.Bytes(), in) {
		t.Errorf("passed on %q, want only the records", out.Bytes())
	}
}

func TestCounterPassesNothingPastTheLimit(t *testing.T) {
	c := &counter{r: io.NopCloser(bytes.NewReader(make([]byte, 32<<10))), limit: 1024, what: "max_request_size_kb 1"}
	var out bytes.Buffer
	_, err := io.Copy(&out, c)
	if err == nil || out.Len() != 1024 {
		t.Errorf("passed on %d bytes (%v), want 1024 and an error", out.Len(), err)
	}
}

func TestConnTableDisplacesIdleOnly(t *testing.T) {
	tab := newConnTable(2)
	mk := func() net.Conn { a, b := net.Pipe(); t.Cleanup(func() { a.Close(); b.Close() }); return a }
	busy := tab.admit(mk())
	defer busy.hold()()
	idle := tab.admit(mk())
	if busy == nil || idle == nil {
		t.Fatal("no room under the bound")
	}
	if tab.admit(mk()) == nil {
		t.Fatal("an idle connection was not displaced")
	}
	if !idle.released.Load() || busy.released.Load() {
		t.Error("displaced the wrong connection")
	}
	if tab.len() != 2 {
		t.Errorf("%d held, bound 2", tab.len())
	}
}

func TestDialRefusesHostAddress(t *testing.T) {
	g, _, _ := newTestGateway(t, testPolicy)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ap := l.Addr().(*net.TCPAddr).AddrPort()
	if _, _, err := g.dial(t.Context(), &target{addrs: []netip.Addr{ap.Addr()}, port: int(ap.Port())}); !errors.Is(err, errHostAddr) {
		t.Errorf("dialled an address of the host: %v", err)
	}
}
