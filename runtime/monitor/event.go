package monitor

import (
	"strings"
	"time"
	"unicode/utf8"
)

// Event kinds: what one timeline line says happened.
const (
	KindStart   = "start"   // the container's first process (no exec event: attributed from the spec)
	KindExec    = "exec"    // a process replaced its image (execve)
	KindClone   = "clone"   // a process made a child process (threads are not recorded)
	KindExit    = "exit"    // a process ended
	KindConnect = "connect" // a socket connect and its result
	KindOpen    = "open"    // a file open (only with file opens on)
	KindDropped = "dropped" // the sentry dropped events it could not send
	KindMonitor = "monitor" // the monitor's own notes: connected, ended, malformed packets
)

// Event is one line of a timeline. Process identity is Pid and PidStart
// together: gVisor reuses pids, never the pair.
type Event struct {
	Time    time.Time `json:"time"`
	Sandbox string    `json:"sandbox"`
	Kind    string    `json:"kind"`

	Pid      int32  `json:"pid,omitempty"`
	PidStart int64  `json:"pid_start,omitempty"` // the process's start time in the sentry, ns
	Tid      int32  `json:"tid,omitempty"`
	PPid     int32  `json:"ppid,omitempty"`
	UID      *int64 `json:"uid,omitempty"`
	GID      *int64 `json:"gid,omitempty"`
	Cwd      string `json:"cwd,omitempty"`
	Comm     string `json:"comm,omitempty"` // the task's name: chosen by the process, never an identity

	// exec and start
	Binary   string   `json:"binary,omitempty"`
	Argv     []string `json:"argv,omitempty"`
	EnvNames []string `json:"env_names,omitempty"` // names only: values are never kept
	// ExecSession marks a process that runsc exec started (no exec event).
	ExecSession bool `json:"exec_session,omitempty"`
	// Attributed says where a process's binary came from when the sentry
	// sent no exec for it: "container-start" (the spec's args) or
	// "exec-session" (only its name).
	Attributed string `json:"attributed,omitempty"`

	// clone
	Child      int32 `json:"child,omitempty"`
	ChildStart int64 `json:"child_start,omitempty"`

	// exit
	ExitCode *int `json:"exit_code,omitempty"`
	Signal   int  `json:"signal,omitempty"`

	// connect and open
	FD     int64  `json:"fd,omitempty"`
	Family string `json:"family,omitempty"` // inet, inet6, unix, or the number
	Dest   string `json:"dest,omitempty"`   // ip:port, or a unix socket's path
	Path   string `json:"path,omitempty"`
	Flags  string `json:"flags,omitempty"`
	Result string `json:"result,omitempty"` // "ok", an errno name (ECONNREFUSED, EINPROGRESS)

	// dropped and monitor
	Dropped uint64 `json:"dropped,omitempty"` // events lost since the last report
	Total   uint64 `json:"total_dropped,omitempty"`
	Note    string `json:"note,omitempty"`

	taskExit bool // from sentry/task_exit, not exit_notify_parent

	// Truncated lists the fields the monitor shortened to its bounds.
	Truncated []string `json:"truncated,omitempty"`
}

// Bounds on what one event keeps. A line of the timeline is at most
// about maxArgvBytes + maxEnvNames*maxEnvName + a few paths.
const (
	maxPath      = 4096
	maxArg       = 1024
	maxArgs      = 128
	maxArgvBytes = 16 << 10
	maxEnvNames  = 256
	maxEnvName   = 128
	maxComm      = 64
	maxNote      = 512
)

// capString shortens s to at most n bytes on a rune boundary and makes
// it valid UTF-8 (JSON would otherwise rewrite it silently).
func capString(s string, n int) (string, bool) {
	cut := false
	if len(s) > n {
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s, cut = s[:n], true
	}
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return s, cut
}

func (e *Event) capField(name string, s *string, n int) {
	var cut bool
	if *s, cut = capString(*s, n); cut {
		e.Truncated = append(e.Truncated, name)
	}
}

// capArgv keeps at most maxArgs arguments, each at most maxArg bytes and
// maxArgvBytes in all.
func (e *Event) capArgv(argv []string) []string {
	var out []string
	total, cut := 0, false
	for i, a := range argv {
		if i == maxArgs || total >= maxArgvBytes {
			cut = true
			break
		}
		a, c := capString(a, min(maxArg, maxArgvBytes-total))
		cut = cut || c
		total += len(a)
		out = append(out, a)
	}
	if cut {
		e.Truncated = append(e.Truncated, "argv")
	}
	return out
}

// envNames keeps the names of env's variables, never their values.
func (e *Event) envNames(env []string) []string {
	var out []string
	cut := false
	for i, kv := range env {
		if i == maxEnvNames {
			cut = true
			break
		}
		name, _, _ := strings.Cut(kv, "=")
		name, c := capString(name, maxEnvName)
		cut = cut || c
		out = append(out, name)
	}
	if cut {
		e.Truncated = append(e.Truncated, "env_names")
	}
	return out
}
