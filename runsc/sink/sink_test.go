package sink

import (
	"encoding/json"
	"net/netip"
	"os"
	"strings"
	"testing"

	"gvisor.dev/gvisor/pkg/abi/linux"
	"gvisor.dev/gvisor/pkg/sentry/socket"
)

// The gateway (runtime/egress) parses the same file: the two sides agree
// on the record's shape.
func TestRecordGolden(t *testing.T) {
	want, err := os.ReadFile("../../runtime/egress/testdata/attr-record.json")
	if err != nil {
		t.Fatal(err)
	}
	r := Record{V: Version, Local: "10.0.2.15:43210", Remote: "[2001:db8::1]:443", PID: 42, Exe: "/usr/bin/git", RO: true, Dropped: 3}
	got, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != strings.TrimSpace(string(want)) {
		t.Errorf("record\n%s\nwant\n%s", got, want)
	}
}

func TestRawSockAddr(t *testing.T) {
	v4 := []byte{linux.AF_INET, 0, 0x01, 0xbb, 93, 184, 216, 34, 0, 0, 0, 0, 0, 0, 0, 0}
	v6 := make([]byte, 28)
	v6[0], v6[2], v6[3] = linux.AF_INET6, 0x00, 0x50
	copy(v6[8:24], netip.MustParseAddr("::ffff:10.1.2.3").AsSlice())
	for _, c := range []struct {
		in   []byte
		want string
	}{
		{v4, "93.184.216.34:443"},
		{v6, "10.1.2.3:80"},
		{v4[:7], ""},
		{v6[:23], ""},
		{[]byte{linux.AF_UNIX, 0, '/', 'x'}, ""},
		{nil, ""},
	} {
		got, ok := rawSockAddr(c.in)
		if (c.want == "") == ok || (ok && got.String() != c.want) {
			t.Errorf("rawSockAddr(%v) = %v %v, want %q", c.in, got, ok, c.want)
		}
	}
}

func TestSockAddr(t *testing.T) {
	a := &linux.SockAddrInet{Family: linux.AF_INET, Port: socket.Htons(4321), Addr: [4]byte{10, 0, 2, 15}}
	if got, ok := sockAddr(a); !ok || got.String() != "10.0.2.15:4321" {
		t.Errorf("v4: %v %v", got, ok)
	}
	b := &linux.SockAddrInet6{Family: linux.AF_INET6, Port: socket.Htons(443), Addr: netip.MustParseAddr("2001:db8::2").As16()}
	if got, ok := sockAddr(b); !ok || got.String() != "[2001:db8::2]:443" {
		t.Errorf("v6: %v %v", got, ok)
	}
	if _, ok := sockAddr(&linux.SockAddrUnix{Family: linux.AF_UNIX}); ok {
		t.Error("a unix address converted")
	}
}
