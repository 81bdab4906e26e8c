package egress

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// TLS framing, as the gateway checks it for rules with tls_required: the
// connection must open with a well-formed ClientHello and carry nothing
// but TLS records, both ways, for its whole life. The gateway does not
// terminate TLS, so this is the framing, not the cryptography: it is what
// keeps a plaintext protocol from riding a connection that merely starts
// with the byte 0x16.

const (
	recordHeaderLen = 5
	// maxRecordLen bounds a record's payload: 2^14 of plaintext plus the
	// 2048 bytes of expansion TLS 1.2 allows a ciphertext (RFC 5246
	// 6.2.3; TLS 1.3 allows 256).
	maxRecordLen = 16384 + 2048
	// maxHelloLen bounds a ClientHello spread over several records.
	maxHelloLen = 64 << 10
)

const (
	recordChangeCipherSpec = 20
	recordAlert            = 21
	recordHandshake        = 22
	recordApplicationData  = 23
	handshakeClientHello   = 1
)

// notTLSError is the first thing on a tls_required connection that is not
// TLS.
type notTLSError struct{ why string }

func (e *notTLSError) Error() string { return "tls_required: not TLS: " + e.why }

func notTLS(format string, args ...any) error {
	return &notTLSError{why: fmt.Sprintf(format, args...)}
}

// checkRecordHeader checks one record header: a known content type, a
// TLS version (3.x) and a length within the bound.
func checkRecordHeader(h []byte) error {
	switch h[0] {
	case recordChangeCipherSpec, recordAlert, recordHandshake, recordApplicationData:
	default:
		return notTLS("record type %d", h[0])
	}
	if h[1] != 3 {
		return notTLS("record version %#04x", binary.BigEndian.Uint16(h[1:3]))
	}
	if n := int(binary.BigEndian.Uint16(h[3:5])); n > maxRecordLen {
		return notTLS("record of %d bytes", n)
	}
	return nil
}

// readClientHello reads the ClientHello a TLS connection opens with: one
// handshake message of type client_hello, in one or more handshake
// records, every length consistent. It returns the bytes it read, as they
// came, with the error when they are not that.
func readClientHello(r io.Reader) ([]byte, error) {
	var raw, msg []byte
	for {
		var h [recordHeaderLen]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return raw, notTLS("no ClientHello: %v", err)
		}
		raw = append(raw, h[:]...)
		if h[0] != recordHandshake {
			return raw, notTLS("the first record is of type %d, not a handshake", h[0])
		}
		if v := binary.BigEndian.Uint16(h[1:3]); v < 0x0301 || v > 0x0304 {
			return raw, notTLS("record version %#04x", v)
		}
		n := int(binary.BigEndian.Uint16(h[3:5]))
		if n == 0 || n > maxRecordLen {
			return raw, notTLS("handshake record of %d bytes", n)
		}
		start := len(raw)
		raw = append(raw, make([]byte, n)...)
		if _, err := io.ReadFull(r, raw[start:]); err != nil {
			return raw[:start], notTLS("short handshake record: %v", err)
		}
		msg = append(msg, raw[start:]...)
		if len(msg) < 4 {
			continue
		}
		if msg[0] != handshakeClientHello {
			return raw, notTLS("handshake message of type %d, not a ClientHello", msg[0])
		}
		want := 4 + (int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]))
		switch {
		case want > maxHelloLen:
			return raw, notTLS("a ClientHello of %d bytes", want)
		case len(msg) > want:
			return raw, notTLS("%d bytes after the ClientHello in its record", len(msg)-want)
		case len(msg) == want:
			if err := parseClientHello(msg[4:]); err != nil {
				return raw, err
			}
			return raw, nil
		}
	}
}

// parseClientHello checks a ClientHello's body (RFC 8446 4.1.2): every
// vector's length prefix must fit, and together they fill the message.
func parseClientHello(b []byte) error {
	s := helloReader(b)
	v, ok := s.u16()
	if !ok || v>>8 != 3 || v < 0x0301 {
		return notTLS("ClientHello version %#04x", v)
	}
	if !s.skip(32) {
		return notTLS("ClientHello too short for its random")
	}
	if sid, ok := s.vec8(); !ok || len(sid) > 32 {
		return notTLS("ClientHello session id")
	}
	if cs, ok := s.vec16(); !ok || len(cs) == 0 || len(cs)%2 != 0 {
		return notTLS("ClientHello cipher suites")
	}
	if cm, ok := s.vec8(); !ok || len(cm) == 0 {
		return notTLS("ClientHello compression methods")
	}
	if len(s) == 0 {
		return nil // no extensions: allowed before TLS 1.3
	}
	exts, ok := s.vec16()
	if !ok || len(s) != 0 {
		return notTLS("ClientHello extensions do not fill the message")
	}
	for e := helloReader(exts); len(e) > 0; {
		if _, ok := e.u16(); !ok {
			return notTLS("ClientHello extension header")
		}
		if _, ok := e.vec16(); !ok {
			return notTLS("ClientHello extension length")
		}
	}
	return nil
}

// helloReader reads big-endian fields off the front of a slice.
type helloReader []byte

func (s *helloReader) u16() (uint16, bool) {
	if len(*s) < 2 {
		return 0, false
	}
	v := binary.BigEndian.Uint16(*s)
	*s = (*s)[2:]
	return v, true
}

func (s *helloReader) skip(n int) bool {
	if len(*s) < n {
		return false
	}
	*s = (*s)[n:]
	return true
}

func (s *helloReader) vec8() ([]byte, bool) {
	if len(*s) < 1 {
		return nil, false
	}
	n := int((*s)[0])
	*s = (*s)[1:]
	v := []byte(*s)
	return v[:min(n, len(v))], s.skip(n)
}

func (s *helloReader) vec16() ([]byte, bool) {
	n, ok := s.u16()
	if !ok {
		return nil, false
	}
	v := []byte(*s)
	return v[:min(int(n), len(v))], s.skip(int(n))
}

// recordReader passes on a stream of TLS records and fails at the first
// record header that is not TLS, before passing on any byte of it. A
// record's payload is passed on as it arrives. A framing error sticks; a
// read error (a deadline) does not, and no byte is lost to it.
type recordReader struct {
	r    io.Reader
	hdr  [recordHeaderLen]byte
	nh   int // header bytes read so far
	left int // payload bytes left in the current record
	err  error
}

func (rr *recordReader) Read(p []byte) (int, error) {
	if rr.err != nil {
		return 0, rr.err
	}
	if len(p) < recordHeaderLen {
		return 0, io.ErrShortBuffer
	}
	n := 0
	for rr.left == 0 && n == 0 {
		k, err := rr.r.Read(rr.hdr[rr.nh:])
		rr.nh += k
		if rr.nh == recordHeaderLen {
			if err := checkRecordHeader(rr.hdr[:]); err != nil {
				rr.err = err
				return 0, err
			}
			rr.left = int(binary.BigEndian.Uint16(rr.hdr[3:5]))
			rr.nh = 0
			n = copy(p, rr.hdr[:])
			if rr.left == 0 {
				return n, nil
			}
			break
		}
		if err != nil {
			if errors.Is(err, io.EOF) && rr.nh > 0 {
				rr.err = notTLS("a truncated record header")
				return 0, rr.err
			}
			return 0, err
		}
	}
	k, err := rr.r.Read(p[n:min(len(p), n+rr.left)])
	rr.left -= k
	n += k
	if errors.Is(err, io.EOF) {
		if rr.left > 0 {
			rr.err = notTLS("a record cut short")
			return n, rr.err
		}
		err = nil // the EOF comes with the next header
	}
	return n, err
}
