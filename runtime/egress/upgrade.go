package egress

import (
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/openshell/openshell/policyhook/policy"
)

// websocketAccepted reports whether resp, a 101, completes a WebSocket
// handshake: both sides name websocket alone, and the server's
// Sec-WebSocket-Accept is the one its request's key asks for (RFC 6455
// 4.2.2). A server that switches to anything else (h2c, whose requests
// the gateway would never see), or answers 101 without speaking
// WebSocket (and might read what follows as more HTTP), gets no stream.
func websocketAccepted(resp *http.Response) bool {
	if resp.Request == nil {
		return false
	}
	req := resp.Request.Header
	key := req.Get("Sec-WebSocket-Key")
	if key == "" || !strings.EqualFold(req.Get("Upgrade"), "websocket") || !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		return false
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return resp.Header.Get("Sec-WebSocket-Accept") == base64.StdEncoding.EncodeToString(sum[:])
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
	conn  net.Conn // under rwc: its read deadline
	clock idleClock

	mu        sync.Mutex
	upLimit   int64 // what may follow the request's headers; 0: no limit
	upWhat    string
	downLimit int64
	downWhat  string
	up, down  int64
	tripped   error
}

func newUpgradeStream(rwc io.ReadWriteCloser, conn net.Conn, t *target, upLimit int64, upWhat string) *upgradeStream {
	s := &upgradeStream{rwc: rwc, conn: conn, upLimit: upLimit, upWhat: upWhat}
	if t.rule.MaxResponseMB > 0 && t.rule.Enforcement != policy.EnforcementAudit && t.audit == "" {
		s.downLimit, s.downWhat = t.rule.MaxResponseMB<<20, fmt.Sprintf("max_response_size_mb %d", t.rule.MaxResponseMB)
	}
	s.clock.touch()
	return s
}

// Read is the server's bytes toward the sandbox.
func (s *upgradeStream) Read(p []byte) (int, error) {
	for {
		if err := s.trippedErr(); err != nil {
			return 0, err
		}
		_ = s.conn.SetReadDeadline(time.Now().Add(idleTimeout))
		n, err := s.rwc.Read(p)
		if n > 0 {
			s.clock.touch()
		}
		s.mu.Lock()
		if s.downLimit > 0 && s.down+int64(n) > s.downLimit {
			n = int(s.downLimit - s.down)
			s.tripped = &limitError{what: s.downWhat}
			err = s.tripped
		}
		s.down += int64(n)
		s.mu.Unlock()
		if err != nil && isTimeout(err) && !s.clock.quiet() {
			// Quiet this way only: the sandbox is still sending.
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

// Write is the sandbox's bytes toward the server: none past the limit is
// sent.
func (s *upgradeStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	if s.tripped == nil && s.upLimit > 0 && s.up+int64(len(p)) > s.upLimit {
		s.tripped = &limitError{what: s.upWhat}
	}
	err := s.tripped
	s.mu.Unlock()
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

func (s *upgradeStream) Close() error { return s.rwc.Close() }

// CloseWrite passes the sandbox's half-close on to the server, so that
// what the server still sends goes on (ReverseProxy ends the whole stream
// at the sandbox's half-close otherwise).
func (s *upgradeStream) CloseWrite() error {
	if cw, ok := s.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (s *upgradeStream) trippedErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tripped
}

// audit adds the stream's bytes, and the limit that ended it, to ev.
func (s *upgradeStream) audit(ev *Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ev.BytesUp += s.up
	ev.BytesDown += s.down
	if s.tripped != nil {
		ev.Decision, ev.Reason = Deny, s.tripped.Error()
	}
}
