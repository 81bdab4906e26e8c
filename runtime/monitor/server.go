package monitor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	pb "gvisor.dev/gvisor/pkg/sentry/seccheck/points/points_go_proto"
)

// maxConns bounds the sink connections served at once: runsc makes one
// per trace session, and a sandbox has one session.
const maxConns = 4

// Serve accepts the sentry's sink connections on l and hands their
// events to m until ctx ends or l is closed. It returns when every
// connection it accepted has ended.
func Serve(ctx context.Context, l *net.UnixListener, m *Monitor) error {
	return serve(ctx, l, m, false)
}

// serve is Serve; with untilDone it also returns once a connection has
// been served and none is left: the sandbox's sentry is gone.
func serve(ctx context.Context, l *net.UnixListener, m *Monitor, untilDone bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu     sync.Mutex
		active int
	)
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, maxConns)
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("monitor: accept: %w", err)
		}
		select {
		case slots <- struct{}{}:
		default:
			m.note(fmt.Sprintf("refused a sink connection: %d already served", maxConns))
			_ = c.Close()
			continue
		}
		mu.Lock()
		active++
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			defer func() {
				mu.Lock()
				defer mu.Unlock()
				if active--; active == 0 && untilDone {
					cancel()
				}
			}()
			stopConn := context.AfterFunc(ctx, func() { _ = c.Close() })
			defer stopConn()
			if err := serveConn(c, m); err != nil && ctx.Err() == nil {
				m.note(err.Error())
			}
		}()
	}
}

// serveConn does the handshake on one sink connection, then reads its
// packets until the sentry closes it.
func serveConn(c *net.UnixConn, m *Monitor) error {
	defer c.Close()
	if err := handshake(c); err != nil {
		return err
	}
	m.note("sink connected")
	defer m.note("sink disconnected")
	buf := make([]byte, maxPacket)
	var last uint32
	for {
		n, _, flags, _, err := c.ReadMsgUnix(buf, nil)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read sink: %w", err)
		}
		if n == 0 {
			return nil // SOCK_SEQPACKET's end of stream
		}
		if flags&unix.MSG_TRUNC != 0 {
			m.malformed(fmt.Errorf("%w: longer than %d bytes", ErrMalformed, maxPacket))
			continue
		}
		h, payload, err := ParsePacket(buf[:n])
		if err != nil {
			m.malformed(err)
			continue
		}
		if h.Dropped != last {
			// Cumulative, and wraps: the difference modulo 2^32 is what
			// was lost since the last packet.
			m.dropped(uint64(h.Dropped - last))
			last = h.Dropped
		}
		ev, err := Decode(h.MessageType, payload)
		if err != nil {
			m.malformed(err)
			continue
		}
		if ev != nil {
			m.Record(ev)
		}
	}
}

// handshake reads the sentry's Handshake and answers with ours. The
// sentry refuses a version below its minimum; we refuse none: the
// packet format has not changed since version 1.
func handshake(c *net.UnixConn) error {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	in := make([]byte, maxHandshake+1)
	n, _, flags, _, err := c.ReadMsgUnix(in, nil)
	if err != nil {
		return fmt.Errorf("sink handshake: %w", err)
	}
	if n > maxHandshake || flags&unix.MSG_TRUNC != 0 {
		return fmt.Errorf("sink handshake: larger than %d bytes", maxHandshake)
	}
	var hs pb.Handshake
	if err := proto.Unmarshal(in[:n], &hs); err != nil {
		return fmt.Errorf("sink handshake: %w", err)
	}
	if hs.GetVersion() < wireVersion {
		return fmt.Errorf("sink handshake: version %d, want %d or later", hs.GetVersion(), wireVersion)
	}
	out, err := proto.Marshal(&pb.Handshake{Version: wireVersion})
	if err != nil {
		return fmt.Errorf("sink handshake: %w", err)
	}
	if _, err := c.Write(out); err != nil {
		return fmt.Errorf("sink handshake: %w", err)
	}
	return nil
}
