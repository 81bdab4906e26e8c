package monitor

import (
	"sync"
	"time"
)

// Sink takes the events a Monitor records, in order. It is called with
// the Monitor's lock held: it must not call back into the Monitor.
type Sink interface {
	Write(*Event) error
}

// Table bounds.
const (
	maxProcs = 1 << 14 // live and recently exited processes kept
	maxNotes = 20      // malformed-packet notes written before only counting
)

// Proc is what the monitor knows of one process in the sandbox.
type Proc struct {
	Pid, PPid int32
	Start     int64 // the process's start time in the sentry: with Pid, its identity
	// Binary is the path the sentry executed (exec), or what the runtime
	// started for it (Attributed set): a process that forked without
	// exec runs its parent's binary.
	Binary     string
	Attributed string
	Exited     bool
}

// Monitor keeps a sandbox's process table and writes its timeline. It is
// safe for concurrent use.
type Monitor struct {
	sandbox string
	sink    Sink
	now     func() time.Time

	mu       sync.Mutex
	procs    map[procKey]*Proc
	byPid    map[int32]procKey // the live process with each pid
	exited   []procKey         // oldest first: evicted beyond maxProcs
	root     procKey           // the container's first process (container/start)
	nDropped uint64            // events the sentry dropped, in all
	bad      uint64            // malformed packets
	sinkErr  error             // the first write error; later writes are not tried
}

type procKey struct {
	pid   int32
	start int64
}

// New returns a Monitor for sandbox that writes to sink.
func New(sandbox string, sink Sink) *Monitor {
	return &Monitor{sandbox: sandbox, sink: sink, now: time.Now, procs: map[procKey]*Proc{}, byPid: map[int32]procKey{}}
}

// Record adds ev to the process table and writes it to the timeline.
func (m *Monitor) Record(ev *Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recordLocked(ev)
}

// Preconditions: m.mu must be locked.
func (m *Monitor) recordLocked(ev *Event) {
	ev.Sandbox = m.sandbox
	if ev.Time.IsZero() {
		ev.Time = m.now().UTC()
	}
	key := procKey{ev.Pid, ev.PidStart}
	switch ev.Kind {
	case KindStart:
		p := m.proc(ev)
		p.Binary, p.Attributed = ev.Binary, ev.Attributed
		m.root = key
	case KindExec:
		p := m.proc(ev)
		p.Binary, p.Attributed = ev.Binary, ""
	case KindClone:
		parent := m.proc(ev)
		child := &Proc{Pid: ev.Child, PPid: ev.Pid, Start: ev.ChildStart, Binary: parent.Binary, Attributed: parent.Attributed}
		m.add(child)
	case KindExit:
		if ev.Tid != 0 {
			return
		}
		if ev.taskExit && ev.PPid != 0 {
			// A process with a parent ends with exit_notify_parent, once
			// all its threads are gone; its leader's task_exit may come
			// before its exit status is final. Only a process without a
			// parent (the first one, an exec session's) has no other.
			return
		}
		p := m.proc(ev)
		if p.Exited {
			return // task_exit then exit_notify_parent: once is enough
		}
		p.Exited = true
		m.exited = append(m.exited, key)
		if m.byPid[key.pid] == key {
			delete(m.byPid, key.pid)
		}
		m.evict()
	case KindConnect:
		m.proc(ev)
	case KindOpen:
		m.proc(ev)
	}
	if ev.Kind != KindMonitor && ev.Kind != KindDropped {
		if p := m.procs[key]; p != nil && ev.Binary == "" {
			// Each line names its process's binary, so that a reader of
			// one line (or of a rotated file) knows who did it.
			ev.Binary, ev.Attributed = p.Binary, p.Attributed
		}
	}
	m.write(ev)
}

// proc returns ev's process, adding it when it is new: a process first
// seen in the middle of its life is an exec session's (runsc exec starts
// it without an exec event) or one whose clone was dropped.
//
// Preconditions: m.mu must be locked.
func (m *Monitor) proc(ev *Event) *Proc {
	key := procKey{ev.Pid, ev.PidStart}
	if p := m.procs[key]; p != nil {
		return p
	}
	p := &Proc{Pid: ev.Pid, PPid: ev.PPid, Start: ev.PidStart}
	if ev.ExecSession {
		p.Attributed = "exec-session"
		if ev.Kind != KindExec {
			p.Binary = ev.Comm
		}
	}
	m.add(p)
	return p
}

// Preconditions: m.mu must be locked.
func (m *Monitor) add(p *Proc) {
	key := procKey{p.Pid, p.Start}
	if old, ok := m.byPid[p.Pid]; ok && old != key {
		// The pid was reused: the old process ended unseen.
		if op := m.procs[old]; op != nil && !op.Exited {
			op.Exited = true
			m.exited = append(m.exited, old)
		}
	}
	m.procs[key] = p
	m.byPid[p.Pid] = key
	m.evict()
}

// evict bounds the table: exited processes go first, oldest first.
//
// Preconditions: m.mu must be locked.
func (m *Monitor) evict() {
	for len(m.procs) > maxProcs && len(m.exited) > 0 {
		delete(m.procs, m.exited[0])
		m.exited = m.exited[1:]
	}
	if len(m.exited) > maxProcs {
		m.exited = append([]procKey(nil), m.exited[len(m.exited)-maxProcs:]...)
	}
	if len(m.procs) > maxProcs {
		// Only live processes: a fork bomb. Forget arbitrary ones; their
		// later events add them back unattributed.
		for k := range m.procs {
			if len(m.procs) <= maxProcs {
				break
			}
			delete(m.procs, k)
			if m.byPid[k.pid] == k {
				delete(m.byPid, k.pid)
			}
		}
	}
}

// Preconditions: m.mu must be locked.
func (m *Monitor) write(ev *Event) {
	if m.sinkErr != nil {
		return
	}
	m.sinkErr = m.sink.Write(ev)
}

// dropped records that the sentry dropped n events.
func (m *Monitor) dropped(n uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nDropped += n
	m.recordLocked(&Event{Kind: KindDropped, Dropped: n, Total: m.nDropped})
}

// malformed records a packet that could not be read.
func (m *Monitor) malformed(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.bad++
	if m.bad <= maxNotes {
		note, _ := capString(err.Error(), maxNote)
		m.recordLocked(&Event{Kind: KindMonitor, Note: note})
	}
}

// note records something the monitor itself saw.
func (m *Monitor) note(s string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, _ = capString(s, maxNote)
	m.recordLocked(&Event{Kind: KindMonitor, Note: s})
}

// Stats are what a Monitor has counted.
type Stats struct {
	Dropped   uint64 // events the sentry reported dropped
	Malformed uint64 // packets refused
	SinkErr   error  // why the timeline stopped being written, if it did
}

// Stats returns the monitor's counts.
func (m *Monitor) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return Stats{Dropped: m.nDropped, Malformed: m.bad, SinkErr: m.sinkErr}
}

// Close writes the monitor's closing note, with its counts.
func (m *Monitor) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recordLocked(&Event{Kind: KindMonitor, Note: "monitor ended", Total: m.nDropped})
}
