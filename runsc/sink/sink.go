// Package sink is openshell's gVisor trace sink: at the exit of each
// TCP connect(2) it reports, to the sandbox's egress gateway, the
// socket's local and remote addresses and the executable of the process
// that called it, with whether that executable lies on a read-only
// mount. The gateway sees the same local address as the source of the
// connection it accepts, so it knows exactly which binary opened it,
// whatever else connects to the same host at the same moment.
//
// The sink runs inside the sentry, beside the agent's code. It reads
// only kernel state the sentry owns (the fd table, the socket's bound
// address, the memory manager's executable); nothing the process wrote
// into its own memory or chose to call itself decides the record.
package sink

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"gvisor.dev/gvisor/pkg/abi/linux"
	"gvisor.dev/gvisor/pkg/atomicbitops"
	"gvisor.dev/gvisor/pkg/context"
	"gvisor.dev/gvisor/pkg/errors/linuxerr"
	"gvisor.dev/gvisor/pkg/fd"
	"gvisor.dev/gvisor/pkg/sentry/kernel"
	"gvisor.dev/gvisor/pkg/sentry/mm"
	"gvisor.dev/gvisor/pkg/sentry/seccheck"
	pb "gvisor.dev/gvisor/pkg/sentry/seccheck/points/points_go_proto"
	"gvisor.dev/gvisor/pkg/sentry/socket"
	"gvisor.dev/gvisor/pkg/sentry/vfs"
)

// Name is the sink's name in runsc's trace configuration.
const Name = "openshell"

// Version is the record format's version, the "v" of each record.
const Version = 1

// Record is one connect, sent as one JSON object per SOCK_SEQPACKET
// packet. The gateway's reader (runtime/egress) parses the same fields;
// testdata/record.json is the shape both sides test against.
type Record struct {
	V      int    `json:"v"`
	Local  string `json:"local"`
	Remote string `json:"remote"`
	PID    int32  `json:"pid"`
	Exe    string `json:"exe"`
	// RO: the executable lies on a read-only mount, so the agent cannot
	// have written it.
	RO bool `json:"ro"`
	// Foreign is the first file this process image mapped executable
	// that is not on a read-only mount (a library preloaded or loaded
	// from where the agent writes, a memfd), whether or not it is still
	// mapped: the process runs code the agent may have written, so its
	// executable does not count.
	Foreign string `json:"foreign,omitempty"`
	// Dropped counts the records this sink could not deliver so far.
	Dropped uint32 `json:"dropped,omitempty"`
}

// Register makes the sink known to runsc, before its command line is
// read: runsc's own sinks do this in init functions.
func Register() {
	seccheck.RegisterSink(seccheck.SinkDesc{Name: Name, Setup: setup, New: newSink})
}

// setup runs in runsc outside the sandbox: it connects to the gateway's
// socket, whose descriptor runsc donates to the sentry.
func setup(config map[string]any) (*os.File, error) {
	path, ok := config["endpoint"].(string)
	if !ok || path == "" {
		return nil, fmt.Errorf("openshell sink: endpoint missing or not a string")
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("openshell sink: socket: %w", err)
	}
	if err := unix.Connect(s, &unix.SockaddrUnix{Name: path}); err != nil {
		_ = unix.Close(s)
		return nil, fmt.Errorf("openshell sink: connect %s: %w", path, err)
	}
	if err := unix.SetNonblock(s, true); err != nil {
		_ = unix.Close(s)
		return nil, fmt.Errorf("openshell sink: %w", err)
	}
	return os.NewFile(uintptr(s), path), nil
}

// Retry schedule when the gateway's socket is full: about two seconds in
// all before a record is dropped, as the process monitor's sink. A
// dropped record costs only its own connection (the gateway refuses a
// binary-scoped grant it cannot attribute), never a wrong attribution.
const (
	retries        = 2000
	initialBackoff = 25 * time.Microsecond
	maxBackoff     = time.Millisecond
)

type sink struct {
	seccheck.SinkDefaults
	endpoint *fd.FD
	dropped  atomicbitops.Uint32
	// tainted holds each process image (its memory manager: a new one
	// at every execve) that mapped code from a file not on a read-only
	// mount, with that file.
	mu       sync.Mutex
	tainted  map[*mm.MemoryManager]string
	overflow bool
}

// maxTainted bounds the images remembered.
const maxTainted = 4096

func newSink(_ map[string]any, endpoint *fd.FD) (seccheck.Sink, error) {
	if endpoint == nil {
		return nil, fmt.Errorf("openshell sink: no endpoint")
	}
	return &sink{endpoint: endpoint, tainted: map[*mm.MemoryManager]string{}}, nil
}

func (*sink) Name() string { return Name }

func (s *sink) Status() seccheck.SinkStatus {
	return seccheck.SinkStatus{DroppedCount: uint64(s.dropped.Load())}
}

func (s *sink) Stop() { _ = s.endpoint.Close() }

// Syscall takes syscall/connect/exit; every other point is ignored.
func (s *sink) Syscall(ctx context.Context, _ seccheck.FieldSet, _ *pb.ContextData, typ pb.MessageType, msg proto.Message) error {
	if typ != pb.MessageType_MESSAGE_SYSCALL_CONNECT {
		return nil
	}
	c, ok := msg.(*pb.Connect)
	if !ok || c.Exit == nil {
		return nil
	}
	// A non-blocking connect has its local port once it returns
	// EINPROGRESS; any other failure opened nothing.
	if c.Exit.Errorno != 0 && c.Exit.Errorno != int64(unix.EINPROGRESS) {
		return nil
	}
	t := kernel.TaskFromContext(ctx)
	if t == nil {
		return nil
	}
	if r, ok := s.record(t, int32(c.Fd), c.Address); ok {
		s.write(r)
	}
	return nil
}

// record reads what the sentry knows of the task's connected socket fd.
func (s *sink) record(t *kernel.Task, fdNum int32, dst []byte) (Record, bool) {
	file := t.GetFile(fdNum)
	if file == nil {
		return Record{}, false
	}
	defer file.DecRef(t)
	sock, ok := file.Impl().(socket.Socket)
	if !ok {
		return Record{}, false
	}
	family, stype, _ := sock.Type()
	if stype != linux.SOCK_STREAM || (family != linux.AF_INET && family != linux.AF_INET6) {
		return Record{}, false
	}
	sa, _, serr := sock.GetSockName(t)
	if serr != nil {
		return Record{}, false
	}
	local, ok := sockAddr(sa)
	if !ok {
		return Record{}, false
	}
	remote, ok := rawSockAddr(dst)
	if !ok {
		return Record{}, false
	}
	r := Record{V: Version, Local: local.String(), Remote: remote.String(), PID: int32(t.ThreadGroup().ID())}
	if mm := t.MemoryManager(); mm != nil {
		if exe := mm.Executable(); exe != nil {
			defer exe.DecRef(t)
			if p, err := pathOf(t, exe.VirtualDentry()); err == nil {
				r.Exe, r.RO = p, exe.Mount().ReadOnly()
			}
		}
		r.Foreign = s.foreign(mm)
	}
	return r, true
}

// pathOf is vd's path from the root of t's mount namespace (not its
// chroot, which the process chooses).
func pathOf(t *kernel.Task, vd vfs.VirtualDentry) (string, error) {
	root := t.MountNamespace().Root(t)
	defer root.DecRef(t)
	return t.Kernel().VFS().PathnameWithDeleted(t, root, vd)
}

// Mmap takes sentry/mmap, which the sentry fires for every mapping that
// can execute, before it is made: one whose file is not on a read-only
// mount (a library preloaded or loaded from /tmp, a memfd) marks the
// process image for the rest of its life (until its next execve). The
// mark is made when the code arrives, not looked for at connect: code
// that copies itself elsewhere and unmaps its file is still the agent's.
// ld.so maps each library itself, before any code of the library runs,
// so no agent code can race the check. The point carries the file's name
// only, so the file is taken from the syscall's own arguments (the task
// is inside mmap).
func (s *sink) Mmap(ctx context.Context, _ seccheck.FieldSet, _ *pb.MmapInfo) error {
	t := kernel.TaskFromContext(ctx)
	if t == nil {
		return nil
	}
	args := t.Arch().SyscallArgs()
	if args[3].Int()&linux.MAP_ANONYMOUS != 0 || args[4].Int() < 0 {
		return nil
	}
	file := t.GetFile(args[4].Int())
	if file == nil {
		return nil
	}
	defer file.DecRef(t)
	if file.Mount().ReadOnly() {
		return nil
	}
	path := "a file on a writable mount"
	if p, err := pathOf(t, file.VirtualDentry()); err == nil && p != "" {
		path = p
	}
	if m := t.MemoryManager(); m != nil {
		s.taint(m, path)
	}
	return nil
}

// Clone takes sentry/clone, which fires in the parent before the child
// runs: a child with an address space of its own (fork) inherits a copy
// of the parent's memory, foreign code included, so it inherits the mark.
// A thread or a CLONE_VM child shares the parent's image, and its mark;
// an execve starts a clean one.
func (s *sink) Clone(ctx context.Context, _ seccheck.FieldSet, info *pb.CloneInfo) error {
	t := kernel.TaskFromContext(ctx)
	if t == nil {
		return nil
	}
	pm := t.MemoryManager()
	p := s.foreign(pm)
	if pm == nil || p == "" {
		return nil
	}
	nt := t.Kernel().TaskSet().Root.TaskWithID(kernel.ThreadID(info.CreatedThreadId))
	if nt == nil {
		// Fail the clone rather than let an unmarked copy run.
		return linuxerr.EAGAIN
	}
	if cm := nt.MemoryManager(); cm != nil && cm != pm {
		s.taint(cm, p)
	}
	return nil
}

// taint marks m with path, the first foreign file it mapped. Past
// maxTainted images, every process counts as tainted (fail closed): a
// sandbox that maps thousands of foreign files loses its binary-scoped
// grants, never the other way round.
func (s *sink) taint(m *mm.MemoryManager, path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.tainted[m]; ok {
		return
	}
	if len(s.tainted) >= maxTainted {
		s.overflow = true
		return
	}
	s.tainted[m] = path
}

// foreign is the foreign file m's image mapped, "" when none.
func (s *sink) foreign(m *mm.MemoryManager) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.tainted[m]; ok {
		return p
	}
	if s.overflow {
		return "(too many images mapped foreign code: every process counts as tainted)"
	}
	return ""
}

// sockAddr converts a socket's bound address.
func sockAddr(sa linux.SockAddr) (netip.AddrPort, bool) {
	switch a := sa.(type) {
	case *linux.SockAddrInet:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), socket.Ntohs(a.Port)), true
	case *linux.SockAddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), socket.Ntohs(a.Port)), true
	}
	return netip.AddrPort{}, false
}

// rawSockAddr reads the sockaddr bytes connect was given.
func rawSockAddr(b []byte) (netip.AddrPort, bool) {
	if len(b) < 2 {
		return netip.AddrPort{}, false
	}
	family := uint16(b[0]) | uint16(b[1])<<8 // host order: amd64 and arm64 are little-endian
	switch {
	case family == linux.AF_INET && len(b) >= 8:
		port := uint16(b[2])<<8 | uint16(b[3])
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), true
	case family == linux.AF_INET6 && len(b) >= 24:
		port := uint16(b[2])<<8 | uint16(b[3])
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])).Unmap(), port), true
	}
	return netip.AddrPort{}, false
}

// write sends r, retrying while the gateway's socket is full; a record
// that cannot go is counted, and the count rides on the next one.
func (s *sink) write(r Record) {
	r.Dropped = s.dropped.Load()
	out, err := json.Marshal(r)
	if err != nil {
		s.dropped.Add(1)
		return
	}
	backoff := initialBackoff
	for i := 0; ; i++ {
		_, err := unix.Write(s.endpoint.FD(), out)
		if err == nil {
			return
		}
		if !errors.Is(err, unix.EAGAIN) || i >= retries {
			s.dropped.Add(1)
			return
		}
		time.Sleep(backoff)
		backoff = min(backoff*2, maxBackoff)
	}
}
