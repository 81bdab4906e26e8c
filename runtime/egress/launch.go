package egress

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Launch starts a helper process that the runtime waits for (the
// gateway, a sandbox's monitor): the process says "ready" on a pipe, or
// why it is not, on one line, and writes its own output to a log.
type Launch struct {
	// Name names the process in errors: "gateway", "monitor".
	Name string
	// Cmd is the process, its output not set. Its ExtraFiles hold a nil
	// for the descriptor ReadyFD, which Run fills with the ready pipe.
	Cmd     *exec.Cmd
	ReadyFD int
	// LogFile takes the process's output, appended.
	LogFile string
	// LogTail is how many of the log's last lines a NotReadyError quotes
	// when the process exited without a word; zero: none.
	LogTail int
	// Start starts Cmd (in a namespace, confined); nil: Cmd.Start.
	Start func() error
	// Reap waits for the ready process in the background (it is our
	// child until we exit); else it is released.
	Reap bool
	// Waited, if not nil, is called once the process has been waited
	// for: it was not ready, or Reap reaped it.
	Waited func()
}

// NotReadyError is a started process that did not say it was ready.
type NotReadyError struct {
	// Line is what it said instead; empty: it exited without a word.
	Line    string
	LogFile string
	// Tail is the end of its log, on one line, where it said nothing.
	Tail string
}

func (e *NotReadyError) Error() string {
	if e.Line != "" {
		return e.Line
	}
	msg := "it exited; see " + e.LogFile
	if e.Tail != "" {
		msg += ": " + e.Tail
	}
	return msg
}

// Run starts the process and waits until it is ready; it returns the
// process's pid. A process that says anything else, or nothing, is
// killed and waited for, and the error is a *NotReadyError.
func (l Launch) Run() (int, error) {
	rd, wr, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", l.Name, err)
	}
	defer rd.Close()
	logf, err := os.OpenFile(l.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		_ = wr.Close()
		return 0, fmt.Errorf("%s log: %w", l.Name, err)
	}
	defer logf.Close()
	cmd := l.Cmd
	cmd.ExtraFiles[l.ReadyFD-3] = wr
	cmd.Stdout, cmd.Stderr = logf, logf
	start := l.Start
	if start == nil {
		start = cmd.Start
	}
	err = start()
	_ = wr.Close()
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", l.Name, err)
	}
	waited := func() {
		_ = cmd.Wait()
		if l.Waited != nil {
			l.Waited()
		}
	}
	line, _ := bufio.NewReader(rd).ReadString('\n')
	if line = strings.TrimSpace(line); line != "ready" {
		_ = cmd.Process.Kill()
		waited()
		nr := &NotReadyError{Line: line, LogFile: l.LogFile}
		// The log goes with the sandbox's state: its last lines are
		// the only trace an engine will keep.
		if line == "" && l.LogTail > 0 {
			if data, err := os.ReadFile(l.LogFile); err == nil && len(data) > 0 {
				nr.Tail = lastLines(string(data), l.LogTail)
			}
		}
		return 0, nr
	}
	pid := cmd.Process.Pid
	if l.Reap {
		go waited()
	} else {
		_ = cmd.Process.Release()
	}
	return pid, nil
}

// lastLines is the end of a log, at most n lines and 2 KiB, on one line.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	out := strings.Join(lines, " | ")
	if len(out) > 2048 {
		out = out[len(out)-2048:]
	}
	return out
}
