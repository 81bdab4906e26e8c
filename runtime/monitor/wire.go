package monitor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	pb "gvisor.dev/gvisor/pkg/sentry/seccheck/points/points_go_proto"
)

// The remote sink's wire format (gvisor.dev/gvisor/pkg/sentry/seccheck/
// sinks/remote): after a handshake, one SOCK_SEQPACKET packet per point,
// a little-endian header then the point's protobuf.
const (
	wireVersion    = 1 // the protocol version we speak
	headerMinSize  = 8 // u16 header size, u16 message type, u32 dropped count
	maxHeaderSize  = 256
	maxHandshake   = 10 << 10 // the sentry's own buffer for ours
	maxPacket      = 1 << 20  // bigger than a unix socket's send buffer: no real point is cut
	droppedWrapMod = 1 << 32
)

// Header is a packet's header.
type Header struct {
	Size        uint16 // the header's own size: the payload follows it
	MessageType uint16 // a pb.MessageType
	Dropped     uint32 // points the sentry dropped so far (wraps)
}

// ErrMalformed wraps every reason a packet is refused.
var ErrMalformed = errors.New("malformed packet")

// ParsePacket splits a packet into its header and payload. A header
// larger than ours (a newer sentry) is accepted and its extra bytes
// skipped, within maxHeaderSize.
func ParsePacket(pkt []byte) (Header, []byte, error) {
	if len(pkt) < headerMinSize {
		return Header{}, nil, fmt.Errorf("%w: %d bytes, shorter than a header", ErrMalformed, len(pkt))
	}
	h := Header{
		Size:        binary.LittleEndian.Uint16(pkt[0:2]),
		MessageType: binary.LittleEndian.Uint16(pkt[2:4]),
		Dropped:     binary.LittleEndian.Uint32(pkt[4:8]),
	}
	if h.Size < headerMinSize || h.Size > maxHeaderSize || int(h.Size) > len(pkt) {
		return h, nil, fmt.Errorf("%w: header size %d in a %d-byte packet", ErrMalformed, h.Size, len(pkt))
	}
	return h, pkt[h.Size:], nil
}

// appendHeader is the sink's side of ParsePacket, for tests and fuzzing.
func appendHeader(b []byte, h Header) []byte {
	b = binary.LittleEndian.AppendUint16(b, h.Size)
	b = binary.LittleEndian.AppendUint16(b, h.MessageType)
	return binary.LittleEndian.AppendUint32(b, h.Dropped)
}

// Decode turns one point into a timeline event. It returns nil, nil for
// a point the timeline does not record (a thread's clone, a connect's
// enter). Strings and lists are cut to the event's bounds; environment
// values are dropped here.
func Decode(msgType uint16, payload []byte) (*Event, error) {
	var (
		msg proto.Message
		ev  Event
	)
	switch pb.MessageType(msgType) {
	case pb.MessageType_MESSAGE_CONTAINER_START:
		msg = &pb.Start{}
	case pb.MessageType_MESSAGE_SENTRY_EXEC:
		msg = &pb.ExecveInfo{}
	case pb.MessageType_MESSAGE_SENTRY_CLONE:
		msg = &pb.CloneInfo{}
	case pb.MessageType_MESSAGE_SENTRY_EXIT_NOTIFY_PARENT:
		msg = &pb.ExitNotifyParentInfo{}
	case pb.MessageType_MESSAGE_SENTRY_TASK_EXIT:
		msg = &pb.TaskExit{}
	case pb.MessageType_MESSAGE_SYSCALL_CONNECT:
		msg = &pb.Connect{}
	case pb.MessageType_MESSAGE_SYSCALL_OPEN:
		msg = &pb.Open{}
	case pb.MessageType_MESSAGE_SENTRY_MMAP:
		// The attribution sink's point, which shares the session: not
		// the timeline's.
		return nil, nil
	default:
		// A point we did not ask for: a newer sentry, or a hostile one.
		return nil, fmt.Errorf("%w: message type %d", ErrMalformed, msgType)
	}
	if err := proto.Unmarshal(payload, msg); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, pb.MessageType(msgType), err)
	}
	switch m := msg.(type) {
	case *pb.Start:
		ev.Kind = KindStart
		ev.context(m.GetContextData())
		ev.Attributed = "container-start"
		ev.Argv = ev.capArgv(m.GetArgs())
		if len(ev.Argv) > 0 {
			ev.Binary = ev.Argv[0]
			ev.capField("binary", &ev.Binary, maxPath)
		}
		if m.GetCwd() != "" {
			ev.Cwd = m.GetCwd()
			ev.capField("cwd", &ev.Cwd, maxPath)
		}
		ev.EnvNames = ev.envNames(m.GetEnv())
	case *pb.ExecveInfo:
		ev.Kind = KindExec
		ev.context(m.GetContextData())
		ev.Binary = m.GetBinaryPath()
		ev.capField("binary", &ev.Binary, maxPath)
		ev.Argv = ev.capArgv(m.GetArgv())
		ev.EnvNames = ev.envNames(m.GetEnv())
	case *pb.CloneInfo:
		const cloneThread = 0x10000 // CLONE_THREAD
		if m.GetFlags()&cloneThread != 0 {
			return nil, nil
		}
		ev.Kind = KindClone
		ev.context(m.GetContextData())
		ev.Child = m.GetCreatedThreadGroupId()
		ev.ChildStart = m.GetCreatedThreadStartTimeNs()
	case *pb.ExitNotifyParentInfo:
		ev.Kind = KindExit
		ev.context(m.GetContextData())
		ev.waitStatus(m.GetExitStatus())
	case *pb.TaskExit:
		// Only a thread group leader's, and the Monitor keeps only a
		// parentless process's: others end with exit_notify_parent.
		cd := m.GetContextData()
		if cd == nil || cd.GetThreadId() != cd.GetThreadGroupId() {
			return nil, nil
		}
		ev.Kind, ev.taskExit = KindExit, true
		ev.context(cd)
		ev.waitStatus(m.GetExitStatus())
	case *pb.Connect:
		if m.GetExit() == nil {
			return nil, nil // the enter point: the exit one has the result
		}
		ev.Kind = KindConnect
		ev.context(m.GetContextData())
		ev.FD = m.GetFd()
		ev.Family, ev.Dest = sockaddr(m.GetAddress())
		ev.capField("dest", &ev.Dest, maxPath)
		ev.Result = result(m.GetExit())
	case *pb.Open:
		if m.GetExit() == nil {
			return nil, nil
		}
		ev.Kind = KindOpen
		ev.context(m.GetContextData())
		ev.Path = m.GetPathname()
		if dir := m.GetFdPath(); !strings.HasPrefix(ev.Path, "/") {
			// Relative to its directory fd, or to the cwd (AT_FDCWD).
			if !strings.HasPrefix(dir, "/") {
				dir = ev.Cwd
			}
			if dir != "" {
				ev.Path = strings.TrimSuffix(dir, "/") + "/" + ev.Path
			}
		}
		ev.capField("path", &ev.Path, maxPath)
		ev.Flags = openFlags(m.GetFlags())
		ev.Result = result(m.GetExit())
		if ev.Result == "ok" {
			ev.FD = m.GetExit().GetResult()
		}
	}
	return &ev, nil
}

// context copies what the timeline keeps of a point's context.
func (e *Event) context(c *pb.ContextData) {
	if c == nil {
		return
	}
	if ns := c.GetTimeNs(); ns > 0 {
		e.Time = time.Unix(0, ns).UTC()
	}
	e.Pid, e.PidStart, e.Tid, e.PPid = c.GetThreadGroupId(), c.GetThreadGroupStartTimeNs(), c.GetThreadId(), c.GetParentThreadGroupId()
	if e.Tid == e.Pid {
		e.Tid = 0
	}
	if cr := c.GetCredentials(); cr != nil {
		uid, gid := int64(cr.GetEffectiveUid()), int64(cr.GetEffectiveGid())
		e.UID, e.GID = &uid, &gid
	}
	e.Cwd = c.GetCwd()
	e.capField("cwd", &e.Cwd, maxPath)
	e.Comm = c.GetProcessName()
	e.capField("comm", &e.Comm, maxComm)
	e.ExecSession = c.GetIsExecSession()
}

// waitStatus decodes a Linux wait status: an exit code, or the signal
// that ended the process.
func (e *Event) waitStatus(ws int32) {
	if sig := int(ws & 0x7f); sig != 0 && sig != 0x7f {
		e.Signal = sig
		code := 128 + sig
		e.ExitCode = &code
		return
	}
	code := int((ws >> 8) & 0xff)
	e.ExitCode = &code
}

// result is a syscall's outcome: "ok" or its errno's name.
func result(x *pb.Exit) string {
	if x.GetErrorno() == 0 && x.GetResult() >= 0 {
		return "ok"
	}
	errno := x.GetErrorno()
	if errno == 0 {
		errno = -x.GetResult()
	}
	if errno > 0 && errno < 4096 {
		if name := unix.ErrnoName(unix.Errno(errno)); name != "" {
			return name
		}
	}
	return "errno " + strconv.FormatInt(errno, 10)
}

// sockaddr reads a raw struct sockaddr as the process passed it.
func sockaddr(b []byte) (family, dest string) {
	if len(b) < 2 {
		return "", ""
	}
	fam := binary.LittleEndian.Uint16(b)
	switch fam {
	case unix.AF_INET:
		if len(b) < 8 {
			return "inet", ""
		}
		ip := netip.AddrFrom4([4]byte(b[4:8]))
		return "inet", netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b[2:4])).String()
	case unix.AF_INET6:
		if len(b) < 24 {
			return "inet6", ""
		}
		ip := netip.AddrFrom16([16]byte(b[8:24]))
		return "inet6", netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b[2:4])).String()
	case unix.AF_UNIX:
		path := b[2:]
		if len(path) > 0 && path[0] == 0 {
			// An abstract name: printable as @name.
			return "unix", "@" + strings.TrimRight(string(path[1:]), "\x00")
		}
		if i := strings.IndexByte(string(path), 0); i >= 0 {
			path = path[:i]
		}
		return "unix", string(path)
	case unix.AF_UNSPEC:
		return "unspec", ""
	}
	return strconv.Itoa(int(fam)), ""
}

// openFlags names an open's access mode and its notable flags.
func openFlags(f uint32) string {
	var parts []string
	switch f & unix.O_ACCMODE {
	case unix.O_RDONLY:
		parts = append(parts, "O_RDONLY")
	case unix.O_WRONLY:
		parts = append(parts, "O_WRONLY")
	case unix.O_RDWR:
		parts = append(parts, "O_RDWR")
	default:
		parts = append(parts, "O_ACCMODE")
	}
	for _, n := range []struct {
		bit  uint32
		name string
	}{{unix.O_CREAT, "O_CREAT"}, {unix.O_TRUNC, "O_TRUNC"}, {unix.O_APPEND, "O_APPEND"}, {unix.O_EXCL, "O_EXCL"}, {unix.O_DIRECTORY, "O_DIRECTORY"}, {unix.O_TMPFILE &^ unix.O_DIRECTORY, "O_TMPFILE"}} {
		if f&n.bit != 0 {
			parts = append(parts, n.name)
		}
	}
	return strings.Join(parts, "|")
}
