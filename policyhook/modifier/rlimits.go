package modifier

import (
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Limits are the per-process limits a policy sets; zero leaves a limit as
// the engine set it, except RLIMIT_CORE, which is always 0.
type Limits struct {
	NoFile    uint64 // max_open_files
	NProc     uint64 // max_processes: RLIMIT_NPROC, which gVisor enforces exactly
	FSizeByte uint64 // max_file_size_mb
}

type rlimits struct{ set []specs.POSIXRlimit }

var _ SpecModifier = (*rlimits)(nil)

// NewRlimits sets hard and soft process limits. max_processes becomes
// RLIMIT_NPROC, not the cgroup pids limit: under runsc that cgroup counts
// gVisor's own threads too, so it would stop the sandbox from starting.
// No core dumps: they would write the agent's memory where it can be read.
func NewRlimits(l Limits) SpecModifier {
	r := &rlimits{}
	add := func(typ string, v uint64) {
		r.set = append(r.set, specs.POSIXRlimit{Type: typ, Hard: v, Soft: v})
	}
	add("RLIMIT_CORE", 0)
	if l.NoFile > 0 {
		add("RLIMIT_NOFILE", l.NoFile)
	}
	if l.NProc > 0 {
		add("RLIMIT_NPROC", l.NProc)
	}
	if l.FSizeByte > 0 {
		add("RLIMIT_FSIZE", l.FSizeByte)
	}
	return r
}

func (r *rlimits) Modify(s *specs.Spec) error {
	if s.Process == nil {
		s.Process = &specs.Process{}
	}
	for _, want := range r.set {
		i := slices.IndexFunc(s.Process.Rlimits, func(l specs.POSIXRlimit) bool { return l.Type == want.Type })
		if i < 0 {
			s.Process.Rlimits = append(s.Process.Rlimits, want)
			continue
		}
		// Only ever tighten what the engine asked for.
		cur := &s.Process.Rlimits[i]
		cur.Hard = min(cur.Hard, want.Hard)
		cur.Soft = min(cur.Soft, want.Soft, cur.Hard)
	}
	return nil
}
