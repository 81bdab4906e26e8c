package monitor

import (
	"encoding/json"
	"fmt"
	"time"
)

// Options choose what a sandbox's monitor records.
type Options struct {
	// FileOpens adds every open, openat and creat (path, flags, result).
	// It costs: the sentry traces each open at about three times the
	// open's own cost.
	FileOpens bool
	// Retries and BackoffMax are the sink's: how often the sentry retries
	// a point the monitor's socket has no room for, waiting at most
	// BackoffMax between tries, before it drops it. Zero: the lossless
	// defaults (a stalled monitor then stalls the sandbox's traced calls
	// by up to about Retries*BackoffMax each, never forever).
	Retries    int
	BackoffMax time.Duration
	// Attribution, when set, is the egress gateway's socket for
	// openshell's own sink (runsc/sink, in openshell's runsc build): it
	// reports which binary opened each TCP connection, for per-binary
	// egress rules. It rides in the same trace session, since runsc takes
	// one pod init config.
	Attribution string
}

// Lossless defaults: the sentry's own (no retries, 10 ms backoff) drop
// 1-13% of events under load. 2000 tries at most 1 ms apart hold a
// point for about 2 s before it is dropped.
const (
	DefaultRetries    = 2000
	DefaultBackoffMax = time.Millisecond
	initialBackoff    = 25 * time.Microsecond
)

// Context fields. A point whose message holds a string that is not valid
// UTF-8 is never sent: the sentry's protobuf marshalling refuses it and
// the sink drops the point without counting it. A process chooses its
// own name (prctl) and cwd, so the points that must not be hidden
// (clone, connect, exit) carry no string from the context: only ids,
// times and credentials. exec and open carry strings of their own
// (argv, paths) in any case; they get the cwd and name too.
var (
	idFields = []string{"time", "thread_id", "task_start_time", "group_id", "thread_group_start_time",
		"credentials", "parent_thread_group_id"}
	contextFields = append(append([]string(nil), idFields...), "cwd", "process_name", "is_exec_session")
	// A connect's is_exec_session tells an exec session's process from
	// one whose clone was dropped; exit_notify_parent has no such field.
	connectFields = append(append([]string(nil), idFields...), "is_exec_session")
)

// AttributionSink is the name openshell's runsc build registers its sink
// under (runsc/sink.Name).
const AttributionSink = "openshell"

// Point names in runsc's trace configuration.
type pointConfig struct {
	Name           string   `json:"name"`
	OptionalFields []string `json:"optional_fields,omitempty"`
	ContextFields  []string `json:"context_fields,omitempty"`
}

type sinkConfig struct {
	Name   string         `json:"name"`
	Config map[string]any `json:"config"`
}

type sessionConfig struct {
	Name   string        `json:"name"`
	Points []pointConfig `json:"points"`
	Sinks  []sinkConfig  `json:"sinks"`
}

// PodInitConfig is the file runsc reads with --pod-init-config: one trace
// session whose remote sink connects to endpoint (the monitor's socket).
// The container's environment is not asked for (container/start's env
// field); execve's is always sent, and Decode keeps only its names.
func PodInitConfig(endpoint string, o Options) ([]byte, error) {
	if endpoint == "" && o.Attribution == "" {
		return nil, fmt.Errorf("monitor: no endpoint")
	}
	if o.Retries <= 0 {
		o.Retries = DefaultRetries
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = DefaultBackoffMax
	}
	backoff := min(initialBackoff, o.BackoffMax)
	points := []pointConfig{
		{Name: "container/start", ContextFields: contextFields},
		{Name: "sentry/execve", ContextFields: contextFields},
		{Name: "sentry/clone", ContextFields: connectFields},
		{Name: "sentry/exit_notify_parent", ContextFields: idFields},
		{Name: "sentry/task_exit", ContextFields: connectFields},
		{Name: "syscall/connect/exit", ContextFields: connectFields},
	}
	if o.FileOpens {
		points = append(points,
			pointConfig{Name: "syscall/open/exit", ContextFields: contextFields},
			pointConfig{Name: "syscall/openat/exit", OptionalFields: []string{"fd_path"}, ContextFields: contextFields},
			pointConfig{Name: "syscall/creat/exit", ContextFields: contextFields},
		)
	}
	var sinks []sinkConfig
	if endpoint != "" {
		sinks = append(sinks, sinkConfig{Name: "remote", Config: map[string]any{
			"endpoint":    endpoint,
			"retries":     o.Retries,
			"backoff":     backoff.String(),
			"backoff_max": o.BackoffMax.String(),
		}})
	} else {
		// The attribution sink alone needs only the connects.
		points = []pointConfig{{Name: "syscall/connect/exit"}}
	}
	if o.Attribution != "" {
		sinks = append(sinks, sinkConfig{Name: AttributionSink, Config: map[string]any{"endpoint": o.Attribution}})
		// Its mmap point (executable mappings only) marks a process
		// that maps code from a file not on a read-only mount; its clone
		// point passes the mark to a forked child (the monitor's list
		// has clone already).
		points = append(points, pointConfig{Name: "sentry/mmap"})
		if endpoint == "" {
			points = append(points, pointConfig{Name: "sentry/clone"})
		}
	}
	cfg := struct {
		TraceSession sessionConfig `json:"trace_session"`
	}{sessionConfig{Name: "Default", Points: points, Sinks: sinks}}
	return json.MarshalIndent(cfg, "", "  ")
}
