package egress

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The serving process's two other lines to its keeper, besides the
// credential channel (inference_keys_linux.go):
//
//   - the audit channel, a SOCK_SEQPACKET pair: the serving process
//     cannot rename in the audit directory, so at its bound it sends
//     "rotate SEQ"; the keeper moves the live file to <file>.1 (replacing
//     the one there), creates a new live file, and answers
//     "ok SEQ REMOVED NAME" with the new file's descriptor (SCM_RIGHTS;
//     REMOVED is the size of the .1 it replaced, NAME the rotated file's
//     base name), or "err SEQ REASON".
//   - the lifeline, a pipe whose write end only the keeper holds: when
//     the keeper ends, however it ends, the serving process reads EOF and
//     exits, so the sandbox is left with no network. (The keeper re-execs
//     itself with fewer capabilities once the serving process runs, which
//     ends the thread that forked it: a parent-death signal would fire
//     then.)

const (
	envAuditFD  = "OPENSHELL_EGRESS_AUDIT_FD"
	envLifeline = "OPENSHELL_EGRESS_LIFELINE_FD"
)

// minRotateInterval spaces the rotations the keeper does: a serving
// process asking in a loop only slows itself.
const minRotateInterval = 100 * time.Millisecond

// serveAuditRotation answers rotation requests on fd for the audit file
// at path until the serving process closes its end.
func serveAuditRotation(fd int, path string, log *slog.Logger) {
	buf := make([]byte, 128)
	var last time.Time
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n <= 0 {
			return
		}
		seq, ok := bytes.CutPrefix(buf[:n], []byte("rotate "))
		if !ok {
			continue
		}
		if d := time.Since(last); d < minRotateInterval {
			time.Sleep(minRotateInterval - d)
		}
		last = time.Now()
		f, removed, err := rotateAuditFile(path)
		if err != nil {
			log.Warn("audit rotation", "err", err)
			if _, err := unix.Write(fd, []byte("err "+string(seq)+" "+err.Error())); err != nil {
				return
			}
			continue
		}
		reply := "ok " + string(seq) + " " + strconv.FormatInt(removed, 10) + " " + filepath.Base(path) + ".1"
		err = unix.Sendmsg(fd, []byte(reply), unix.UnixRights(int(f.Fd())), nil, 0)
		f.Close()
		if err != nil {
			return
		}
	}
}

// rotateAuditFile moves path to path.1, replacing it, and creates a new
// path (root's, 0640: the serving process writes it through the
// descriptor only). It returns the new file and the size of the .1 it
// replaced. Where the new file cannot be made the old one is put back,
// so that the serving process's fallback (emptying its file) never
// empties the rotated one.
func rotateAuditFile(path string) (*os.File, int64, error) {
	var removed int64
	if st, err := os.Lstat(path + ".1"); err == nil {
		removed = st.Size()
	}
	if err := os.Rename(path, path+".1"); err != nil {
		return nil, 0, fmt.Errorf("rotate %s: %w", filepath.Base(path), err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o640)
	if err != nil {
		_ = os.Rename(path+".1", path)
		return nil, 0, fmt.Errorf("rotate %s: %w", filepath.Base(path), err)
	}
	return f, removed, nil
}

// auditRotator is the serving process's end of the audit channel: one
// request at a time (the audit log holds its lock meanwhile), each
// answered within 5 s or given up (the log then empties its file).
type auditRotator struct {
	mu  sync.Mutex
	fd  int
	seq uint64
}

func (r *auditRotator) rotate() (*os.File, int64, string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	seq := strconv.FormatUint(r.seq, 10)
	if _, err := unix.Write(r.fd, []byte("rotate "+seq)); err != nil {
		return nil, 0, "", fmt.Errorf("ask the gateway's keeper: %w", err)
	}
	buf := make([]byte, 512)
	oob := make([]byte, unix.CmsgSpace(4))
	deadline := time.Now().Add(5 * time.Second)
	for {
		tv := unix.NsecToTimeval(max(int64(time.Until(deadline)), int64(time.Millisecond)))
		if err := unix.SetsockoptTimeval(r.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return nil, 0, "", fmt.Errorf("ask the gateway's keeper: %w", err)
		}
		n, oobn, _, _, err := unix.Recvmsg(r.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, 0, "", fmt.Errorf("ask the gateway's keeper: %w", err)
		}
		if n == 0 {
			return nil, 0, "", errors.New("ask the gateway's keeper: it has gone")
		}
		f := receivedFile(oob[:oobn])
		if rest, ok := bytes.CutPrefix(buf[:n], []byte("ok "+seq+" ")); ok && f != nil {
			size, name, _ := strings.Cut(string(rest), " ")
			removed, _ := strconv.ParseInt(size, 10, 64)
			return f, removed, name, nil
		}
		if f != nil {
			f.Close() // an answer to a request that timed out
		}
		if why, ok := bytes.CutPrefix(buf[:n], []byte("err "+seq+" ")); ok {
			return nil, 0, "", errors.New(string(why))
		}
	}
}

// receivedFile is the first descriptor passed in oob, if any; any others
// are closed.
func receivedFile(oob []byte) *os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var f *os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if f == nil {
				f = os.NewFile(uintptr(fd), "audit")
			} else {
				unix.Close(fd)
			}
		}
	}
	return f
}

// openKeeperChannels takes the audit channel and the lifeline the keeper
// gave this (serving) process, where it gave them.
func (g *Gateway) openKeeperChannels(log *slog.Logger) error {
	if v := os.Getenv(envAuditFD); v != "" {
		fd, err := strconv.Atoi(v)
		if err != nil || fd < 3 {
			return fmt.Errorf("%s=%q is not a descriptor", envAuditFD, v)
		}
		r := &auditRotator{fd: fd}
		g.audit.SetRotator(r.rotate)
	}
	if v := os.Getenv(envLifeline); v != "" {
		fd, err := strconv.Atoi(v)
		if err != nil || fd < 3 {
			return fmt.Errorf("%s=%q is not a descriptor", envLifeline, v)
		}
		go func() {
			buf := make([]byte, 1)
			for {
				n, err := unix.Read(fd, buf)
				if errors.Is(err, unix.EINTR) || n > 0 {
					continue
				}
				log.Error("the gateway's keeper has gone: the serving process ends, leaving the sandbox no network")
				os.Exit(3)
			}
		}()
	}
	return nil
}
