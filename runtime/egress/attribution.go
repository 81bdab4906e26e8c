package egress

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Per-binary egress rules: which executable opened each connection.
//
// openshell's runsc build (the runsc/ module) carries a trace sink that,
// at the exit of every TCP connect in the sandbox, reports the socket's
// local and remote addresses and the calling process's executable, with
// whether it lies on a read-only mount. The gateway accepts the same
// connection with the same local address as its peer, so the pair of
// addresses names exactly one connect: no guess from the destination
// alone, whatever else connects to the same host at once.
//
// The sentry runs the agent's code, so every record is bounded and
// parsed strictly, and nothing in it can widen a grant on its own: a
// missing, late, dropped, conflicting or unparsable record leaves the
// connection unattributed, and an unattributed connection gets no
// binary-scoped grant (fail closed). Rules without binaries never wait.

// attrRecord is one report of the sink (runsc/sink.Record).
type attrRecord struct {
	V       int    `json:"v"`
	Local   string `json:"local"`
	Remote  string `json:"remote"`
	PID     int32  `json:"pid"`
	Exe     string `json:"exe"`
	RO      bool   `json:"ro"`
	Foreign string `json:"foreign,omitempty"`
	Dropped uint32 `json:"dropped,omitempty"`
}

// Bounds on what the sentry can make the gateway hold.
const (
	maxAttrPacket  = 8 << 10 // one record; a path is at most 4 KiB
	maxAttrRecords = 16384   // records waiting for their connection
	attrTTL        = 10 * time.Second
	// attrWait is how long a decision that needs a connection's binary
	// waits for its record: the sink retries a full socket for about two
	// seconds before it drops one.
	attrWait = 2500 * time.Millisecond
	// maxAttrChannels: runsc connects once per sandbox; a few more are
	// tolerated (a restore), never an unbounded number.
	maxAttrChannels = 4
)

// Binary is who opened a connection, as the sentry reported it.
type Binary struct {
	Path string
	// ReadOnly: the executable lies on a read-only mount of the
	// sandbox's view, so the agent cannot have written it.
	ReadOnly bool
	PID      int32
	// Foreign is a file the process maps executable that is not on a
	// read-only mount (LD_PRELOAD, a plugin the agent wrote): it runs
	// code the agent may have written, and so counts as no binary.
	Foreign string
}

// trusted reports whether b may count for a binary-scoped rule.
func (b Binary) trusted() bool { return b.ReadOnly && b.Foreign == "" }

// Why a connection has no binary.
var (
	errAttrOff       = errors.New("this sandbox was started without connection attribution (its policy at create had no binaries, or runsc is not openshell's build)")
	errAttrLost      = errors.New("connection attribution was lost (the sentry's channel closed)")
	errAttrTimeout   = errors.New("no attribution record arrived for the connection")
	errAttrConflict  = errors.New("two records claim the connection's addresses")
	errAttrNoAddress = errors.New("the connection's addresses are unknown")
)

type attrKey struct{ local, remote netip.AddrPort }

type attrEntry struct {
	bin      Binary
	at       time.Time
	conflict bool
}

// attribution holds the records that have not yet met their connection,
// and the decisions waiting for a record.
type attribution struct {
	on       bool
	mu       sync.Mutex
	records  map[attrKey]attrEntry
	waiting  map[attrKey]chan struct{}
	lost     bool
	channels int
	dropped  uint32 // the highest count a record carried
	bad      atomic.Int64
	now      func() time.Time
	// note audits what the channel says about itself (drops, malformed
	// records); closed is told when the last channel ends.
	note   func(string)
	closed func()
}

func newAttribution(on bool, note func(string)) *attribution {
	return &attribution{on: on, records: map[attrKey]attrEntry{}, waiting: map[attrKey]chan struct{}{}, now: time.Now, note: note}
}

// parseAttrRecord reads one packet; anything off is an error.
func parseAttrRecord(b []byte) (attrKey, Binary, uint32, error) {
	if len(b) == 0 || len(b) > maxAttrPacket {
		return attrKey{}, Binary{}, 0, fmt.Errorf("record of %d bytes", len(b))
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var r attrRecord
	if err := d.Decode(&r); err != nil {
		return attrKey{}, Binary{}, 0, fmt.Errorf("record: %w", err)
	}
	if d.More() {
		return attrKey{}, Binary{}, 0, errors.New("record: trailing data")
	}
	if r.V != 1 {
		return attrKey{}, Binary{}, 0, fmt.Errorf("record version %d", r.V)
	}
	local, err := netip.ParseAddrPort(r.Local)
	if err != nil {
		return attrKey{}, Binary{}, 0, fmt.Errorf("record local address: %w", err)
	}
	remote, err := netip.ParseAddrPort(r.Remote)
	if err != nil {
		return attrKey{}, Binary{}, 0, fmt.Errorf("record remote address: %w", err)
	}
	// An executable path the kernel could hold: absolute, valid UTF-8
	// (encoding/json replaces what is not, so such a path never matches
	// a pattern), no NUL or newline.
	for _, p := range []string{r.Exe, r.Foreign} {
		if p != "" && (!strings.HasPrefix(p, "/") || len(p) > 4096 || !utf8.ValidString(p) || strings.ContainsAny(p, "\x00\n")) {
			return attrKey{}, Binary{}, 0, errors.New("record path is malformed")
		}
	}
	key := attrKey{local: unmapPort(local), remote: unmapPort(remote)}
	return key, Binary{Path: r.Exe, ReadOnly: r.RO, PID: r.PID, Foreign: r.Foreign}, r.Dropped, nil
}

func unmapPort(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// serve reads one sink channel until it closes. A closed channel ends
// attribution for the sandbox: later decisions do not wait for records
// that cannot come.
func (a *attribution) serve(c net.Conn) {
	defer c.Close()
	a.mu.Lock()
	a.channels++
	n := a.channels
	a.mu.Unlock()
	if n > maxAttrChannels {
		a.mu.Lock()
		a.channels--
		a.mu.Unlock()
		a.note(fmt.Sprintf("attribution: a channel beyond the %d allowed was refused", maxAttrChannels))
		return
	}
	buf := make([]byte, maxAttrPacket+1)
	for {
		n, err := c.Read(buf)
		if err != nil || n == 0 {
			break
		}
		key, bin, dropped, err := parseAttrRecord(buf[:n])
		if err != nil {
			if a.bad.Add(1) == 1 {
				a.note("attribution: malformed record ignored: " + err.Error())
			}
			continue
		}
		a.add(key, bin, dropped)
	}
	a.mu.Lock()
	a.channels--
	last := a.channels == 0
	if last {
		a.lost = true
		for k, ch := range a.waiting {
			close(ch)
			delete(a.waiting, k)
		}
	}
	a.mu.Unlock()
	if last && a.closed != nil {
		// Not an audit line: the channel closes whenever the sandbox
		// ends. A later binary-scoped decision says why it was denied.
		a.closed()
	}
}

// add files a record. A second record for the same addresses before the
// first met its connection makes both worthless: which one the accepted
// connection is cannot be told, so neither is believed.
func (a *attribution) add(key attrKey, bin Binary, dropped uint32) {
	a.mu.Lock()
	now := a.now()
	if dropped > a.dropped {
		d := dropped - a.dropped
		a.dropped = dropped
		defer a.note(fmt.Sprintf("attribution: the sentry dropped %d records (the gateway was too slow); their connections get no binary-scoped grant", d))
	}
	e, ok := a.records[key]
	switch {
	case ok && now.Sub(e.at) < attrTTL:
		e.conflict, e.at = true, now
	default:
		if len(a.records) >= maxAttrRecords {
			a.shrink(now)
		}
		e = attrEntry{bin: bin, at: now}
	}
	a.records[key] = e
	if ch := a.waiting[key]; ch != nil {
		close(ch)
		delete(a.waiting, key)
	}
	a.mu.Unlock()
}

// shrink drops expired records and, if that is not enough, an eighth of
// the rest (the map's order: effectively at random), so that a sandbox
// flooding connects costs the gateway amortised constant time per record.
// A record dropped this way costs its connection the binary-scoped grant
// only.
func (a *attribution) shrink(now time.Time) {
	for k, e := range a.records {
		if now.Sub(e.at) >= attrTTL {
			delete(a.records, k)
		}
	}
	if len(a.records) < maxAttrRecords {
		return
	}
	n := maxAttrRecords / 8
	for k := range a.records {
		if n == 0 {
			break
		}
		delete(a.records, k)
		n--
	}
}

// take is the binary that opened the connection local→remote (addresses
// as the sandbox saw them), waiting up to wait for its record. The record
// is consumed: it answers for one connection only.
func (a *attribution) take(key attrKey, wait time.Duration) (Binary, error) {
	if a == nil || !a.on {
		return Binary{}, errAttrOff
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		a.mu.Lock()
		if e, ok := a.records[key]; ok {
			delete(a.records, key)
			a.mu.Unlock()
			switch {
			case e.conflict:
				return Binary{}, errAttrConflict
			case a.now().Sub(e.at) >= attrTTL:
				return Binary{}, errAttrTimeout
			}
			return e.bin, nil
		}
		if a.lost {
			a.mu.Unlock()
			return Binary{}, errAttrLost
		}
		ch := a.waiting[key]
		if ch == nil {
			if len(a.waiting) >= maxAttrRecords {
				a.mu.Unlock()
				return Binary{}, errAttrTimeout
			}
			ch = make(chan struct{})
			a.waiting[key] = ch
		}
		a.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			a.mu.Lock()
			if a.waiting[key] == ch {
				delete(a.waiting, key)
			}
			a.mu.Unlock()
			return Binary{}, errAttrTimeout
		}
	}
}

// forget drops a record its connection never asked for, when the
// connection ends: it must not outlive it and answer for a later
// connection that reuses the addresses.
func (a *attribution) forget(key attrKey) {
	if a == nil || !a.on {
		return
	}
	a.mu.Lock()
	delete(a.records, key)
	a.mu.Unlock()
}

// peer is the sandbox end of one accepted connection: its addresses and,
// asked for at most once, its binary.
type peer struct {
	key   attrKey
	known bool // the addresses were read
	attr  *attribution
	once  sync.Once
	bin   Binary
	err   error
}

// newPeer reads c's addresses: its remote address is the sandbox's local
// one, and the sandbox dialled dst, the original destination of a
// redirected connection; invalid: c's own local address (the proxy's, or
// the original destination the transparent listeners see as theirs).
func newPeer(a *attribution, c net.Conn, dst netip.AddrPort) *peer {
	p := &peer{attr: a}
	if !dst.IsValid() {
		dst, _ = netip.ParseAddrPort(c.LocalAddr().String())
	}
	src, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err == nil && dst.IsValid() {
		p.key, p.known = attrKey{local: unmapPort(src), remote: unmapPort(dst)}, true
	}
	return p
}

// binary is the connection's binary, asked of the attribution table the
// first time a decision needs it.
func (p *peer) binary() (Binary, error) {
	if p == nil {
		return Binary{}, errAttrOff
	}
	p.once.Do(func() {
		if !p.known {
			p.err = errAttrNoAddress
			if p.attr == nil || !p.attr.on {
				p.err = errAttrOff
			}
			return
		}
		p.bin, p.err = p.attr.take(p.key, attrWait)
	})
	return p.bin, p.err
}

// done forgets the connection's record if no decision took it.
func (p *peer) done() {
	if p != nil && p.known {
		p.attr.forget(p.key)
	}
}

type peerKey struct{}

func withPeer(ctx context.Context, p *peer) context.Context {
	if p == nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, p)
}

// peerFrom is the connection a decision is for; nil (no binary) when
// unknown.
func peerFrom(ctx context.Context) *peer {
	p, _ := ctx.Value(peerKey{}).(*peer)
	return p
}

// peerOf is c's peer, made once per tracked connection and forgotten
// when it closes. dst is as newPeer takes it.
func (g *Gateway) peerOf(c net.Conn, dst netip.AddrPort) *peer {
	tc := tracked(c)
	if tc == nil {
		return newPeer(g.attr, c, dst)
	}
	tc.peerOnce.Do(func() { tc.peer = newPeer(g.attr, c, dst) })
	return tc.peer
}

// who records in ev the executable that opened the connection, where a
// binary-scoped rule asked; in learning mode it asks for every allowed
// connection, so that a suggested policy can name binaries.
func (g *Gateway) who(ctx context.Context, rs *rules, ev *Event, t *target, d *denial) {
	var b Binary
	switch {
	case d != nil:
		b = d.bin
	case t != nil && t.bin.Path != "":
		b = t.bin
	case t != nil && rs.learn != nil && g.attr.on:
		b, _ = peerFrom(ctx).binary()
	}
	ev.Binary, ev.BinaryWritable = b.Path, b.Path != "" && !b.trusted()
}
