package egress

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The gateway's own bounds: what one sandbox can make it hold, whatever
// it sends. With every connection slot taken and every buffer full the
// gateway stays near maxConns × (header + copy buffers + goroutines):
// well under the figure docs/egress.md gives.
const (
	// maxConns is how many TCP connections from its sandbox the gateway
	// holds at once, over all its sockets.
	maxConns = 256
	// headerTimeout is how long a connection may take to send its HTTP
	// request headers or its TLS ClientHello (slowloris).
	headerTimeout = 10 * time.Second
	// keepAliveTimeout is how long an idle keep-alive HTTP connection
	// from the sandbox is kept.
	keepAliveTimeout = 60 * time.Second
	// maxHeaderBytes bounds an HTTP request's headers.
	maxHeaderBytes = 64 << 10
	// maxDNSInFlight bounds the UDP DNS questions answered at once; more
	// are dropped, and the sandbox's resolver asks again.
	maxDNSInFlight = 64
	// spliceChunk is how much a relay moves between two checks of its
	// idle clock when the kernel copies socket to socket.
	spliceChunk = 256 << 10
)

// idleTimeout ends a tunnel, a relayed connection, or a request body,
// when no byte has moved either way for this long, and a keep-alive HTTP
// connection waiting for its next request. A variable only so that the
// package's tests can shorten it; nothing else sets it.
var idleTimeout = 2 * time.Minute

// connTable counts the connections the gateway holds. At the bound, a new
// connection takes the slot of the oldest one that is not busy (still
// sending its request headers or hello, or idle between keep-alive
// requests), so a sandbox that opens slow connections only ever displaces
// its own; when every slot is busy the new one is reset.
//
// Preconditions: mu guards conns.
type connTable struct {
	max   int
	mu    sync.Mutex
	conns []*trackedConn // in the order they were accepted
	// attr is the gateway's attribution table: a connection's record
	// is forgotten however the connection ends.
	attr *attribution
}

func newConnTable(max int) *connTable { return &connTable{max: max} }

// admit tracks c, making room when it can; nil: no room, c is not
// tracked.
func (t *connTable) admit(c net.Conn) *trackedConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.conns) >= t.max {
		victim := -1
		for i, o := range t.conns {
			if o.busy.Load() == 0 {
				victim = i
				break
			}
		}
		if victim < 0 {
			return nil
		}
		o := t.conns[victim]
		t.conns = append(t.conns[:victim], t.conns[victim+1:]...)
		o.released.Store(true)
		o.forgetPeer()
		_ = o.Conn.Close()
	}
	tc := &trackedConn{Conn: c, table: t}
	t.conns = append(t.conns, tc)
	return tc
}

func (t *connTable) release(c *trackedConn) {
	if c.released.Swap(true) {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, o := range t.conns {
		if o == c {
			t.conns = append(t.conns[:i], t.conns[i+1:]...)
			return
		}
	}
}

// len is how many connections are held.
func (t *connTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// trackedConn is a connection holding a slot until it is closed.
type trackedConn struct {
	net.Conn
	table    *connTable
	busy     atomic.Int32 // > 0: a decided connection, never displaced
	released atomic.Bool
	peerOnce sync.Once
	peer     *peer
}

func (c *trackedConn) Close() error {
	c.table.release(c)
	c.forgetPeer()
	return c.Conn.Close()
}

// forgetPeer drops the connection's attribution record, whether or not a
// decision asked for it (a request refused before any handler, a
// connection displaced from the table): a record that outlived its
// connection could answer for a later one on the same addresses. A
// connection no handler made a peer for was accepted where the sandbox
// dialled (the proxy's address, or the transparent listeners' original
// destination).
func (c *trackedConn) forgetPeer() {
	c.peerOnce.Do(func() { c.peer = newPeer(c.table.attr, c.Conn, netip.AddrPort{}) })
	c.peer.done()
}

// hold marks c busy until the returned func is called.
func (c *trackedConn) hold() func() {
	if c == nil {
		return func() {}
	}
	c.busy.Add(1)
	return func() { c.busy.Add(-1) }
}

// rawConn is the connection under the gateway's tracking, for the
// kernel's socket-to-socket copy.
func rawConn(c net.Conn) net.Conn {
	if tc, ok := c.(*trackedConn); ok {
		return tc.Conn
	}
	return c
}

// tracked is c's entry in the table, if it has one.
func tracked(c net.Conn) *trackedConn {
	tc, _ := c.(*trackedConn)
	return tc
}

type trackedKey struct{}

// trackedOf is the tracked connection an HTTP request came on, if any.
func trackedOf(ctx context.Context) *trackedConn {
	c, _ := ctx.Value(trackedKey{}).(*trackedConn)
	return c
}

// limitedListener admits what l accepts into the table and resets what
// finds no room.
type limitedListener struct {
	net.Listener
	table  *connTable
	refuse func(c net.Conn)
}

func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if tc := l.table.admit(c); tc != nil {
			return tc, nil
		}
		if tcp, ok := c.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0)
		}
		if l.refuse != nil {
			l.refuse(c)
		}
		_ = c.Close()
	}
}

// relayBuffers are the copy buffers of relays the kernel cannot splice
// (a size limit or tls_required reads the bytes): smaller than the
// proxy's, as every slot may hold two.
var relayBuffers = bufferPool{free: make(chan []byte, 64), size: 32 << 10}

// idleClock is when a relay last moved a byte, either way.
type idleClock struct{ last atomic.Int64 }

func (c *idleClock) touch() { c.last.Store(time.Now().UnixNano()) }

// quiet reports whether nothing has moved for the idle timeout.
func (c *idleClock) quiet() bool {
	return time.Since(time.Unix(0, c.last.Load())) >= idleTimeout
}

func (c *idleClock) arm(src, dst net.Conn) {
	d := time.Now().Add(idleTimeout)
	_ = src.SetReadDeadline(d)
	_ = dst.SetWriteDeadline(d)
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// pipe copies to dst until src ends, an error, or the relay has been
// quiet both ways for the idle timeout. With src nil it copies srcConn
// itself, socket to socket in the kernel; otherwise it reads src (which
// reads srcConn) and srcConn only carries the deadlines.
func pipe(dst, srcConn net.Conn, src io.Reader, clock *idleClock) (int64, error) {
	var total int64
	if src == nil {
		for {
			clock.arm(srcConn, dst)
			n, err := io.Copy(dst, &io.LimitedReader{R: srcConn, N: spliceChunk})
			total += n
			if n > 0 {
				clock.touch()
			}
			switch {
			case err != nil && isTimeout(err) && !clock.quiet():
			case err != nil:
				return total, err
			case n == 0:
				return total, nil
			}
		}
	}
	buf := relayBuffers.Get()
	defer relayBuffers.Put(buf)
	for {
		clock.arm(srcConn, dst)
		n, err := src.Read(buf)
		if n > 0 {
			clock.touch()
		}
		for b := buf[:n]; len(b) > 0; {
			w, werr := dst.Write(b)
			total += int64(w)
			b = b[w:]
			if w > 0 {
				clock.touch()
			}
			if werr != nil {
				if isTimeout(werr) && !clock.quiet() {
					clock.arm(srcConn, dst)
					continue
				}
				return total, werr
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			return total, nil
		case isTimeout(err) && !clock.quiet():
		default:
			return total, err
		}
	}
}
