package egress

import (
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// refusal is an answer of the server's the gateway does not relay (a
// switch of protocols it cannot hold, informational answers without end):
// a denial, audited as one.
type refusal struct{ why string }

func (e *refusal) Error() string { return e.why }

// maxInformational bounds the 1xx answers a request may get.
const maxInformational = 5

const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func websocketAccept(key string) string {
	sum := sha1.Sum([]byte(key + websocketGUID))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// wsKeys is a WebSocket handshake's two keys. The sandbox picks its own
// Sec-WebSocket-Key, so it could compute the accept itself and a server
// that lets the caller choose its response headers could "accept" without
// ever switching (and go on reading what follows as more HTTP, past the
// rules): the server is sent a key the gateway drew instead, its accept
// is checked against that, and the sandbox gets the accept for its own.
type wsKeys struct{ sandbox, server string }

// replace puts the gateway's key in the outgoing request's headers.
func (k *wsKeys) replace(h http.Header) {
	k.sandbox = h.Get("Sec-WebSocket-Key")
	if k.sandbox == "" {
		return
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	k.server = base64.StdEncoding.EncodeToString(b[:])
	h.Set("Sec-WebSocket-Key", k.server)
}

// accepted reports whether resp, a 101, completes a WebSocket handshake:
// both sides name websocket alone, and the server's Sec-WebSocket-Accept
// is the one the gateway's key asks for (RFC 6455 4.2.2). It then gives
// resp the accept the sandbox's key asks for. A server that switches to
// anything else (h2c, whose requests the gateway would never see), or
// answers 101 without speaking WebSocket, gets no stream.
func (k *wsKeys) accepted(resp *http.Response) bool {
	if resp.Request == nil || k.server == "" {
		return false
	}
	req := resp.Request.Header
	if !strings.EqualFold(req.Get("Upgrade"), "websocket") || !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		return false
	}
	if got := resp.Header.Values("Sec-WebSocket-Accept"); len(got) != 1 || got[0] != websocketAccept(k.server) {
		return false
	}
	resp.Header.Set("Sec-WebSocket-Accept", websocketAccept(k.sandbox))
	return true
}

// upgradeStream is the server's side of a connection after it switched
// protocols (a WebSocket), as ReverseProxy copies it both ways: what the
// sandbox sends counts, with the request's headers before it, toward
// max_request_size_kb (an upgrade carries no request body: one that did
// is refused), what the server sends toward max_response_size_mb, and a
// stream quiet both ways for the idle timeout ends. A limit crossed ends
// the stream; the audit line has its bytes and the limit that ended it.
type upgradeStream struct {
	rwc   io.ReadWriteCloser
	conn  net.Conn // under rwc: for its half-close
	down  *counter // rwc's reads: the server's bytes, under max_response_size_mb
	clock idleClock

	mu        sync.Mutex
	upLimit   int64 // what may follow the request's headers; 0: no limit
	upWhat    string
	up        int64
	upTripped error
	idle      bool // ended by watch

	done      chan struct{}
	closeOnce sync.Once
}

func newUpgradeStream(rwc io.ReadWriteCloser, conn net.Conn, t *target, upLimit int64, upWhat string) *upgradeStream {
	s := &upgradeStream{rwc: rwc, conn: conn, down: responseCounter(t, rwc), upLimit: upLimit, upWhat: upWhat, done: make(chan struct{})}
	s.clock.touch()
	return s
}

// tripped is the limit that ended the stream, either way, if one did.
func (s *upgradeStream) tripped() error {
	if _, err := s.down.counted(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.upTripped
}

// Read is the server's bytes toward the sandbox.
func (s *upgradeStream) Read(p []byte) (int, error) {
	s.mu.Lock()
	err := s.upTripped
	s.mu.Unlock()
	if err != nil {
		return 0, err
	}
	n, err := s.down.Read(p)
	if n > 0 {
		s.clock.touch()
	}
	return n, err
}

// Write is the sandbox's bytes toward the server: none past the limit is
// sent.
func (s *upgradeStream) Write(p []byte) (int, error) {
	err := s.tripped()
	if err == nil {
		s.mu.Lock()
		if s.upLimit > 0 && s.up+int64(len(p)) > s.upLimit {
			s.upTripped = &limitError{what: s.upWhat}
			err = s.upTripped
		}
		s.mu.Unlock()
	}
	if err != nil {
		_ = s.rwc.Close()
		return 0, err
	}
	n, err := s.rwc.Write(p)
	s.clock.touch()
	s.mu.Lock()
	s.up += int64(n)
	s.mu.Unlock()
	return n, err
}

func (s *upgradeStream) Close() error {
	s.closeOnce.Do(func() { close(s.done) })
	return s.rwc.Close()
}

// watch ends the stream once no byte has moved either way for the idle
// timeout: it closes both connections, which ends both of ReverseProxy's
// copies wherever they wait (a sandbox that stops reading blocks one in
// a write with no deadline). user is the sandbox's connection, once
// taken over.
func (s *upgradeStream) watch(user *atomic.Pointer[net.Conn]) {
	every := idleTimeout / 4
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-t.C:
			}
			if !s.clock.quiet() {
				continue
			}
			idle := s.tripped() == nil
			s.mu.Lock()
			s.idle = idle
			s.mu.Unlock()
			if c := user.Load(); c != nil {
				_ = (*c).Close()
			}
			_ = s.Close()
			return
		}
	}()
}

// CloseWrite passes the sandbox's half-close on to the server, so that
// what the server still sends goes on (ReverseProxy ends the whole stream
// at the sandbox's half-close otherwise).
func (s *upgradeStream) CloseWrite() error {
	if cw, ok := s.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// audit adds the stream's bytes, and the limit that ended it, to ev.
func (s *upgradeStream) audit(ev *Event) {
	down, _ := s.down.counted()
	tripped := s.tripped()
	s.mu.Lock()
	defer s.mu.Unlock()
	ev.BytesUp += s.up
	ev.BytesDown += down
	switch {
	case tripped != nil:
		ev.Decision, ev.Reason = Deny, tripped.Error()
	case s.idle:
		ev.Reason = fmt.Sprintf("closed: quiet both ways for %s", idleTimeout)
	}
}
