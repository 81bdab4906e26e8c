package monitor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// TimelineDir is where a sandbox's timeline lives in the audit
// directory: a directory of its own, so that `openshell audit` (which
// reads <audit_dir>/*.jsonl) never takes a timeline for an audit log.
func TimelineDir(auditDir string) string { return filepath.Join(auditDir, "timeline") }

// TimelineFile is sandbox's timeline in auditDir.
func TimelineFile(auditDir, sandbox string) string {
	return filepath.Join(TimelineDir(auditDir), sandbox+".jsonl")
}

// TimelineFiles are the files of one timeline that exist, oldest first:
// the rotated one, then the live one.
func TimelineFiles(path string) []string {
	var out []string
	for _, p := range []string{path + ".1", path} {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			out = append(out, p)
		}
	}
	return out
}

// DefaultTimelineMaxBytes bounds a timeline on disk: the live file and
// its rotated predecessor together.
const DefaultTimelineMaxBytes = 64 << 20

// maxLine bounds one line: an event is far smaller (see the bounds in
// event.go); a longer line in a file is not ours and is skipped.
const maxLine = 256 << 10

// flushEvery is how long a written event may wait in memory.
const flushEvery = 200 * time.Millisecond

// Timeline appends events to a sandbox's timeline file as JSON lines. The
// live file is rotated to <file>.1 when it reaches half of MaxBytes, so
// the two stay within MaxBytes. It works on two open files and never on
// their names: the monitor process gets them as descriptors from the
// runtime (root's files, in root's directory), so rotation copies the
// live file over the old one and empties the live one. It is safe for
// concurrent use.
type Timeline struct {
	maxBytes int64

	mu    sync.Mutex
	f     *os.File // live: read-write, appending
	old   *os.File // <file>.1: read-write
	w     *bufio.Writer
	size  int64
	timer *time.Timer
}

// OpenTimeline opens (appending) or creates the timeline at path and its
// rotated file. maxBytes <= 0 means DefaultTimelineMaxBytes.
func OpenTimeline(path string, maxBytes int64) (*Timeline, error) {
	live, old, err := OpenTimelineFiles(path)
	if err != nil {
		return nil, err
	}
	t, err := NewTimeline(live, old, maxBytes)
	if err != nil {
		_ = live.Close()
		_ = old.Close()
		return nil, err
	}
	return t, nil
}

// OpenTimelineFiles opens or creates the timeline at path (read-write,
// appending) and <path>.1 (read-write): what NewTimeline takes. Neither
// may be a symbolic link.
func OpenTimelineFiles(path string) (live, old *os.File, err error) {
	live, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("open timeline: %w", err)
	}
	old, err = os.OpenFile(path+".1", os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o640)
	if err != nil {
		_ = live.Close()
		return nil, nil, fmt.Errorf("open timeline: %w", err)
	}
	return live, old, nil
}

// NewTimeline writes to live (read-write, appending), rotating into old
// (read-write); it owns both. maxBytes <= 0 means
// DefaultTimelineMaxBytes.
func NewTimeline(live, old *os.File, maxBytes int64) (*Timeline, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultTimelineMaxBytes
	}
	st, err := live.Stat()
	if err != nil {
		return nil, fmt.Errorf("open timeline: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("open timeline: %s is not a regular file", live.Name())
	}
	return &Timeline{maxBytes: maxBytes, f: live, old: old, w: bufio.NewWriterSize(live, 64<<10), size: st.Size()}, nil
}

// Write appends ev as one line.
func (t *Timeline) Write(ev *Event) error {
	line, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("timeline: %w", err)
	}
	line = append(line, '\n')
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.f == nil {
		return errors.New("timeline: closed")
	}
	if t.size > 0 && t.size+int64(len(line)) > t.maxBytes/2 {
		if err := t.rotate(); err != nil {
			return err
		}
	}
	if _, err := t.w.Write(line); err != nil {
		return fmt.Errorf("timeline: %w", err)
	}
	t.size += int64(len(line))
	if t.timer == nil {
		t.timer = time.AfterFunc(flushEvery, func() { _ = t.Flush() })
	}
	return nil
}

// rotate copies the live file over the old one and empties it. A
// monitor killed between the two leaves the lines in both files, never
// in neither.
//
// Preconditions: t.mu must be locked.
func (t *Timeline) rotate() error {
	if err := t.w.Flush(); err != nil {
		return fmt.Errorf("timeline: %w", err)
	}
	if err := t.old.Truncate(0); err != nil {
		return fmt.Errorf("rotate timeline: %w", err)
	}
	if _, err := io.Copy(io.NewOffsetWriter(t.old, 0), io.NewSectionReader(t.f, 0, t.size)); err != nil {
		return fmt.Errorf("rotate timeline: %w", err)
	}
	if err := t.f.Truncate(0); err != nil {
		return fmt.Errorf("rotate timeline: %w", err)
	}
	t.size = 0
	return nil
}

// Flush writes out what is buffered.
func (t *Timeline) Flush() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.timer = nil
	if t.f == nil {
		return nil
	}
	if err := t.w.Flush(); err != nil {
		return fmt.Errorf("timeline: %w", err)
	}
	return nil
}

// Close flushes and closes the file.
func (t *Timeline) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
	if t.f == nil {
		return nil
	}
	err := errors.Join(t.w.Flush(), t.f.Close(), t.old.Close())
	t.f = nil
	return err
}

// ReadTimeline calls fn for each event in the file at path, in file
// order. A line that is not an event (torn by a killed monitor, too
// long) is skipped and counted in the returned *BadLinesError, after
// every good line has been read.
func ReadTimeline(path string, fn func(*Event) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read timeline: %w", err)
	}
	defer f.Close()
	return readEvents(f, path, fn)
}

// BadLinesError counts the lines of a timeline file that were skipped.
type BadLinesError struct {
	File  string
	First int // the first bad line's number
	Count int
}

func (e *BadLinesError) Error() string {
	return fmt.Sprintf("%s: %d line(s) skipped, the first at line %d", e.File, e.Count, e.First)
}

func readEvents(r io.Reader, name string, fn func(*Event) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var bad *BadLinesError
	for n := 1; ; n++ {
		line, long, err := readLine(br)
		if len(line) > 0 || long {
			var ev Event
			if long || json.Unmarshal(line, &ev) != nil || ev.Kind == "" {
				if bad == nil {
					bad = &BadLinesError{File: name, First: n}
				}
				bad.Count++
			} else if err := fn(&ev); err != nil {
				return err
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read timeline: %w", err)
		}
	}
	if bad != nil {
		return bad
	}
	return nil
}

// readLine reads one line of at most maxLine bytes; a longer one is
// consumed and reported long.
func readLine(br *bufio.Reader) ([]byte, bool, error) {
	var buf []byte
	long := false
	for {
		chunk, err := br.ReadSlice('\n')
		if !long {
			if len(buf)+len(chunk) > maxLine {
				long, buf = true, nil
			} else {
				buf = append(buf, chunk...)
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		return bytes.TrimRight(buf, "\r\n"), long, err
	}
}
