// Package suggest proposes a least-privilege policy from what a sandbox
// did in learning mode: its egress gateway's audit log (the names and
// ports it reached) and its timeline (the files it opened, the programs
// it ran, how many processes it had at once).
//
// Everything it reads came from the sandbox (names, paths, argv), so it
// takes nothing on trust: a host that is not a valid name, a path that is
// not clean and absolute or holds a control character, is left out and
// noted; notes are written quoted; the result is parsed and validated
// like any policy file before it is returned. It never widens the
// filesystem the sandbox ran with: each suggested path lies within a path
// of the policy it ran under.
package suggest

import (
	"fmt"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/openshell/openshell/policyhook/egress"
	"github.com/openshell/openshell/policyhook/policy"
	audit "github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/runtime/monitor"
)

// Input is one learning run.
type Input struct {
	Sandbox string
	// Policy is the policy the sandbox ran under.
	Policy   *policy.Policy
	Audit    []*audit.Event
	Timeline []*monitor.Event
	// Root is the directory the sandbox's paths were taken from (the
	// image; "/" for openshell run): a suggested directory must exist
	// there, since a listed path is bind-mounted.
	Root string
	// MemoryPeakBytes is the most memory the sandbox's cgroup used, from
	// its learn record; 0 when not recorded.
	MemoryPeakBytes int64
}

// Suggestion is the learned policy, before it is written out.
type Suggestion struct {
	Sandbox string
	From    *policy.Policy

	// SystemPaths are the policy's system paths (kept whole: a
	// program's loader is mapped by the kernel, never opened).
	SystemPaths []string
	Reads       []string
	Writes      []string
	Egress      []Rule
	AllowExec   bool
	// MaxProcesses is the peak number of processes with headroom (0:
	// no process was seen, the policy's own limit is kept).
	MaxProcesses int64
	PeakProcs    int
	// MaxMemoryMB is the memory peak with headroom (0: no peak was
	// recorded, the policy's own limit is kept); MemoryPeakMB is the peak,
	// in MiB rounded up, and MemoryCapped says the policy's own limit was
	// lower than the headroom asked for.
	MaxMemoryMB  int64
	MemoryPeakMB int64
	MemoryCapped bool
	// Notes say what was left out, and why; each is one line.
	Notes []string
}

// Rule is one learned egress rule: a name and the ports it was reached on,
// with the limits of the policy's rule that allowed it, if any.
type Rule struct {
	Host  string
	Ports []int
	From  *policy.EgressRule // the policy's own rule, nil when only learning allowed it
	// Binaries are the executables that made every connection to Host,
	// when the sentry named one, on a read-only mount, for each of them;
	// else none (the rule allows any process).
	Binaries []string
}

// Headroom for max_processes: twice the peak plus eight, at least
// minProcesses (RLIMIT_NPROC counts a program's threads too, which the
// timeline does not record), never more than the policy's own limit.
const minProcesses = 16

// Learn builds the suggestion.
func Learn(in Input) (*Suggestion, error) {
	if in.Policy == nil {
		return nil, fmt.Errorf("suggest: no policy")
	}
	if in.Root == "" {
		in.Root = "/"
	}
	s := &Suggestion{Sandbox: in.Sandbox, From: in.Policy}
	s.learnNetwork(in)
	s.learnFiles(in)
	s.learnProcesses(in)
	s.learnMemory(in)
	return s, nil
}

func (s *Suggestion) note(format string, a ...any) {
	if len(s.Notes) < maxNotes {
		s.Notes = append(s.Notes, fmt.Sprintf(format, a...))
	} else if len(s.Notes) == maxNotes {
		s.Notes = append(s.Notes, "more left out")
	}
}

const maxNotes = 64

// connectionKinds are the audit lines that stand for a connection or a
// request the gateway let through.
var connectionKinds = map[string]bool{"connect": true, "http": true, "https": true, "tls": true, "tcp": true}

func (s *Suggestion) learnNetwork(in Input) {
	m := egress.New(in.Policy.Network)
	ports := map[string]map[int]bool{}
	bins := map[string]map[string]bool{}
	unattributed := map[string]bool{}
	resolved := map[string]bool{}
	for _, e := range in.Audit {
		if e.Decision != audit.Allow && e.Decision != audit.Audit {
			continue
		}
		if e.Kind == "dns" {
			if h, err := policy.NormalizeHost(e.Host); err == nil {
				resolved[h] = true
			}
			continue
		}
		if !connectionKinds[e.Kind] || e.Host == audit.InferenceHost || e.Port <= 0 || e.Port > 65535 {
			continue
		}
		if _, err := netip.ParseAddr(e.Host); err == nil {
			s.note("a connection to the address %s:%d: rules name hosts; add allowed_ips by hand if it is needed", quote(e.Host), e.Port)
			continue
		}
		h, err := policy.NormalizeHost(e.Host)
		if err != nil {
			s.note("left out %s: not a host name", quote(e.Host))
			continue
		}
		if ports[h] == nil {
			ports[h], bins[h] = map[int]bool{}, map[string]bool{}
		}
		ports[h][e.Port] = true
		if e.Binary == "" || e.BinaryWritable {
			unattributed[h] = true
		} else {
			bins[h][e.Binary] = true
		}
	}
	for h, ps := range ports {
		r := Rule{Host: h}
		for p := range ps {
			r.Ports = append(r.Ports, p)
		}
		slices.Sort(r.Ports)
		// The policy's rule that allowed it keeps its limits; the
		// first port's rule stands for all (they are one name's).
		r.From = m.Match(h, r.Ports[0])
		if !unattributed[h] {
			r.Binaries = sortedKeys(bins[h])
		}
		s.Egress = append(s.Egress, r)
	}
	slices.SortFunc(s.Egress, func(a, b Rule) int { return strings.Compare(a.Host, b.Host) })
	var dnsOnly []string
	for h := range resolved {
		if ports[h] == nil {
			dnsOnly = append(dnsOnly, h)
		}
	}
	slices.Sort(dnsOnly)
	for _, h := range dnsOnly {
		s.note("%s was resolved but never connected to: no rule (its lookup will be refused)", quote(h))
	}
}

// access is what the timeline shows of one path.
type access struct {
	dir   string // the directory it stands for
	write bool
}

// gVisor's own filesystems and the runtime's mounts: never listed.
var skipped = []string{"/proc", "/dev", "/sys", "/.openshell"}

func (s *Suggestion) learnFiles(in Input) {
	var seen []access
	add := func(p string, isDir, write bool) {
		if !cleanPath(p) {
			s.note("left out the path %s: not a clean absolute path", quote(p))
			return
		}
		for _, k := range skipped {
			if within(p, k) {
				return
			}
		}
		d := p
		if !isDir {
			d = path.Dir(p)
		}
		seen = append(seen, access{dir: d, write: write})
	}
	for _, e := range in.Timeline {
		switch e.Kind {
		case monitor.KindOpen:
			if e.Result != "ok" {
				continue
			}
			add(e.Path, strings.Contains(e.Flags, "O_DIRECTORY"), writeFlags(e.Flags))
		case monitor.KindExec, monitor.KindStart:
			if e.Binary != "" {
				add(e.Binary, false, false)
			}
		}
	}

	fs := in.Policy.Filesystem
	type granted struct {
		rule   policy.PathRule
		write  bool
		system bool
	}
	var rules []granted
	for _, r := range fs.ReadOnly {
		rules = append(rules, granted{rule: r, system: strings.Contains(r.Field, ".system_paths") || slices.Contains(policy.DefaultSystemPaths, r.Path)})
	}
	for _, r := range fs.ReadWrite {
		rules = append(rules, granted{rule: r, write: true})
	}
	// Each access belongs to the deepest path of the policy that holds
	// it: that is the mount it went through.
	byRule := map[int][]access{}
	for _, a := range seen {
		best := -1
		for i, g := range rules {
			if within(a.dir, g.rule.Path) && (best < 0 || len(g.rule.Path) > len(rules[best].rule.Path)) {
				best = i
			}
		}
		if best < 0 {
			// /tmp (the sandbox's own tmpfs) or a path the runtime
			// binds (resolv.conf, the CA bundle): nothing to list.
			continue
		}
		byRule[best] = append(byRule[best], a)
	}
	reads, writes := map[string]bool{}, map[string]bool{}
	for i, g := range rules {
		as := byRule[i]
		if g.system {
			// Kept whole, used or not: a dynamic program's loader
			// (/lib64/ld-linux-*.so.2) is mapped by the kernel and
			// never shows as an open.
			if !slices.Contains(s.SystemPaths, g.rule.Path) {
				s.SystemPaths = append(s.SystemPaths, g.rule.Path)
			}
			continue
		}
		if len(as) == 0 {
			continue
		}
		write := false
		for _, a := range as {
			write = write || (a.write && g.write)
		}
		for _, d := range collapse(g.rule.Path, as, in.Root) {
			if write {
				writes[d] = true
			} else {
				reads[d] = true
			}
		}
	}
	for d := range writes {
		delete(reads, d)
	}
	s.Reads, s.Writes = sortedKeys(reads), sortedKeys(writes)
	if !slices.ContainsFunc(in.Timeline, func(e *monitor.Event) bool { return e.Kind == monitor.KindOpen }) {
		s.note("the timeline has no file opens (was the sandbox run with --learn?): only the paths of executed programs were learned")
	}
}

// collapse turns the accesses under a policy path into the directories to
// list: their deepest common directory, never above the policy's path,
// and one that exists under root (the run may have made it; a listed
// path that does not exist cannot be mounted). Under / they are grouped
// by their first component, so / itself is never suggested. /tmp is the
// sandbox's own tmpfs: its subdirectories do not exist at start.
func collapse(rulePath string, as []access, root string) []string {
	if rulePath == "/tmp" {
		return []string{rulePath}
	}
	groups := map[string][]string{}
	for _, a := range as {
		key := rulePath
		if rulePath == "/" {
			rest := strings.TrimPrefix(a.dir, "/")
			if rest == "" {
				continue // the root directory itself: never listed
			}
			key = "/" + strings.SplitN(rest, "/", 2)[0]
		}
		groups[key] = append(groups[key], a.dir)
	}
	var out []string
	for key, dirs := range groups {
		d := dirs[0]
		for _, o := range dirs[1:] {
			d = common(d, o)
		}
		if !within(d, key) {
			d = key
		}
		for d != key && !isDir(filepath.Join(root, d)) {
			d = path.Dir(d)
		}
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

// common is the deepest directory holding both a and b.
func common(a, b string) string {
	for !within(b, a) {
		a = path.Dir(a)
	}
	return a
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func (s *Suggestion) learnProcesses(in Input) {
	type proc struct {
		pid   int32
		start int64
	}
	live := map[proc]bool{}
	peak := 0
	for _, e := range in.Timeline {
		switch e.Kind {
		case monitor.KindStart:
			live[proc{e.Pid, e.PidStart}] = true
		case monitor.KindClone:
			live[proc{e.Child, e.ChildStart}] = true
		case monitor.KindExit:
			delete(live, proc{e.Pid, e.PidStart})
		case monitor.KindExec:
			s.AllowExec = true
		case monitor.KindDropped:
			s.note("the sentry dropped %d event(s): the timeline is incomplete, so may be the suggestion", e.Dropped)
		}
		peak = max(peak, len(live))
	}
	s.AllowExec = s.AllowExec && in.Policy.Process.AllowExec
	s.PeakProcs = peak
	if peak == 0 {
		return
	}
	limit := in.Policy.Process.MaxProcesses
	if limit <= 0 {
		limit = policy.DefaultMaxProcesses
	}
	s.MaxProcesses = min(max(int64(2*peak+8), minProcesses), limit)
}

// Headroom for max_memory_mb: half again the peak, rounded up to a
// multiple of memoryStepMB, at least minMemoryMB, never more than the
// policy's own limit.
const (
	memoryStepMB = 64
	minMemoryMB  = 128
	// maxMemoryPeak bounds a recorded peak (1 PiB), so the arithmetic
	// below cannot overflow.
	maxMemoryPeak = 1 << 50
)

func (s *Suggestion) learnMemory(in Input) {
	peak := in.MemoryPeakBytes
	if peak <= 0 {
		return
	}
	peak = min(peak, maxMemoryPeak)
	const mib = 1 << 20
	s.MemoryPeakMB = (peak + mib - 1) / mib
	want := (peak*3 + 1) / 2
	step := int64(memoryStepMB * mib)
	mb := max((want+step-1)/step*memoryStepMB, minMemoryMB)
	if limit := in.Policy.Resources.MaxMemoryMB; limit > 0 && mb > limit {
		mb, s.MemoryCapped = limit, true
	}
	s.MaxMemoryMB = mb
}

func writeFlags(flags string) bool {
	for _, f := range []string{"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"} {
		if strings.Contains(flags, f) {
			return true
		}
	}
	return false
}

// cleanPath reports whether p is a path a policy can list: absolute,
// clean, printable.
func cleanPath(p string) bool {
	if !strings.HasPrefix(p, "/") || path.Clean(p) != p || len(p) > 4096 {
		return false
	}
	for _, r := range p {
		if !unicode.IsPrint(r) || r == unicode.ReplacementChar {
			return false
		}
	}
	return true
}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	return p == dir || dir == "/" || strings.HasPrefix(p, dir+"/")
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// quote writes a string from the sandbox for a note: ASCII, escaped, on
// one line, so a note can never end its comment line.
func quote(s string) string {
	if len(s) > 256 {
		s = s[:256]
	}
	return strconv.QuoteToASCII(s)
}
