package monitor

import (
	"encoding/json"
	"testing"
)

// FuzzPacket feeds the packet parser and decoder what a hostile sentry
// could send: they never panic, and what they keep stays within bounds.
func FuzzPacket(f *testing.F) {
	for _, p := range session(f) {
		f.Add(p)
	}
	f.Add([]byte{8, 0, 10, 0, 0, 0, 0, 0, 0x32, 0x03, 0x02, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		h, payload, err := ParsePacket(pkt)
		if err != nil {
			return
		}
		ev, err := Decode(h.MessageType, payload)
		if err != nil || ev == nil {
			return
		}
		m := New("sb", &memSink{})
		m.Record(ev)
		b, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 64<<10 {
			t.Fatalf("event of %d bytes", len(b))
		}
	})
}
