package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/runtime-tools/generate"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/policyhook/modifier"
	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/runtime"
	"github.com/openshell/openshell/runtime/runsc"
)

// exitTimeout is what a sandbox killed at its wall-clock limit exits with,
// as if killed by SIGKILL.
const exitTimeout = 128 + int(syscall.SIGKILL)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func runRun(ctx context.Context, s streams, args []string) int {
	fs := newFlags(s, "run", "run --policy FILE [--rootfs DIR] [--workdir DIR] [-e K=V]... [--] CMD [ARG...]")
	policyFile := fs.String("policy", "", "the policy file (required)")
	rootfs := fs.String("rootfs", "/", "the directory the policy's paths are taken from (default: the host's root)")
	workdir := fs.String("workdir", "/", "the working directory inside the sandbox")
	runscPath := fs.String("runsc", "", "the runsc binary (default: the configuration's, $OPENSHELL_RUNSC, bin/runsc beside openshell, or runsc on PATH)")
	stateDir := fs.String("state-dir", "", "where sandbox state is kept (default: the configuration's root, /run/openshell)")
	plat := fs.String("platform", "", "runsc platform (default: the configuration's, else systrap)")
	config := fs.String("config", runtime.DefaultConfigPath, "the runtime configuration")
	timeline := fs.Bool("timeline", true, "record the sandbox's processes and connections (openshell timeline)")
	fileOpens := fs.Bool("file-opens", false, "record file opens in the timeline too (as sandbox.audit.file_opens)")
	learn := fs.Bool("learn", false, "learning mode: record file opens, answer every name and allow every connection as audit, for openshell policy suggest")
	var env multiFlag
	fs.Var(&env, "e", "set an environment variable in the sandbox (K=V; repeatable)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *policyFile == "" || fs.NArg() == 0 {
		fs.Usage()
		return exitUsage
	}
	if *learn && !*timeline {
		fmt.Fprintln(s.err, "openshell: --learn records a timeline: it cannot be used with --timeline=false")
		return exitUsage
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(s.err, "openshell: "+format+"\n", a...)
		return exitFailed
	}
	cfg, err := runtime.LoadConfig(*config)
	if err != nil {
		return fail("configuration: %s", err)
	}
	if *stateDir == "" {
		*stateDir = cfg.Root
	}
	if *runscPath == "" {
		*runscPath = cfg.RunscPath()
	}
	if *plat == "" {
		*plat = cfg.PlatformOrDefault()
	}
	p, err := policy.Load(*policyFile)
	if err != nil {
		printErr(s, err)
		return exitFailed
	}
	image, err := filepath.Abs(*rootfs)
	if err != nil {
		return fail("rootfs: %s", err)
	}
	r := &runsc.Runsc{Path: *runscPath, Root: filepath.Join(*stateDir, "runsc"), Platform: *plat, Flags: cfg.RunscFlags}
	if err := r.Exists(); err != nil {
		return fail("%s", err)
	}

	g, err := generate.New("linux")
	if err != nil {
		return fail("default spec: %s", err)
	}
	g.SetProcessArgs(fs.Args())
	g.SetProcessCwd(*workdir)
	g.SetHostname("openshell")
	modifier.SetEnv(g.Config, "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fail("-e %q: want NAME=VALUE", kv)
		}
		modifier.SetEnv(g.Config, k, v)
	}
	terminal := isTerminal(0) && isTerminal(1)
	g.SetProcessTerminal(terminal)

	gpuFlags, gpuWarnings, err := runtime.GPUFlags(ctx, *runscPath, cfg, p)
	if err != nil {
		return fail("%s", err)
	}
	if err := runtime.CheckAttribution(ctx, *runscPath, p); err != nil {
		return fail("%s", err)
	}
	for _, w := range gpuWarnings {
		fmt.Fprintf(s.err, "openshell: warning: %s\n", w)
	}
	sweepOrphans(ctx, s, r, *stateDir)
	id, err := runtime.NewID()
	if err != nil {
		return fail("%s", err)
	}
	g.SetRootPath(image)
	var cgroupsPath string
	if p.Resources.MaxMemoryMB > 0 || p.Resources.MaxCPUCores > 0 || *learn {
		// Memory and CPU limits are the host cgroup's; runsc makes it.
		// Learning reads its memory peak from it.
		cgroupsPath = "/openshell/" + id
		g.SetLinuxCgroupsPath(cgroupsPath)
	}
	sb, err := runtime.Prepare(runtime.PrepareOptions{
		StateDir: *stateDir, ID: id, Spec: runtime.NewMemorySpec(g.Config),
		Compile: runtime.CompilePolicy(p, cfg, runtime.LearnCompile(*learn)...),
	})
	if err != nil {
		return fail("%s", err)
	}
	c := sb.Compiled
	printWarnings(s, c.Warnings)
	if w := sb.LearnWithoutSink(ctx, *runscPath); w != "" {
		fmt.Fprintf(s.err, "openshell: warning: %s\n", w)
	}
	c.RunscFlags = append(c.RunscFlags, gpuFlags...)
	st := sb.NewState(sb.Bundle, "openshell run --policy", nil)
	self := runtime.Self()
	st.Owner = &self
	if err := sb.SaveState(st); err != nil {
		_ = sb.Cleanup()
		return fail("%s", err)
	}
	if c.Egress {
		if err := startGateway(sb, st, cfg, *policyFile, *learn); err != nil {
			_ = sb.Cleanup()
			return fail("%s", err)
		}
	}
	r.Flags = append(r.Flags, c.RunscFlags...)
	var rec runtime.LearnRecord
	if *learn {
		if rec, err = writeLearnRecord(cfg, id, *policyFile, image); err != nil {
			_ = sb.Cleanup()
			return fail("%s", err)
		}
		fmt.Fprintf(s.err, "openshell: learning mode: sandbox %s; every name is answered and every connection allowed as audit; then: openshell policy suggest %s\n", id, id)
	}
	if *timeline {
		flag, err := sb.StartMonitor(st, runtime.MonitorOptions{Config: cfg, FileOpens: *fileOpens || *learn || p.Audit.FileOpens, DieWithParent: true})
		if err != nil {
			_ = sb.Cleanup()
			return fail("%s", err)
		}
		r.Flags = append(r.Flags, flag)
	} else if flag, err := sb.AttributionInit(); err != nil {
		_ = sb.Cleanup()
		return fail("%s", err)
	} else if flag != "" {
		r.Flags = append(r.Flags, flag)
	}

	// Learning samples the sandbox's memory peak while runsc runs: runsc
	// removes the cgroup, and its peak, when the sandbox ends.
	var peak *runtime.MemoryPeakSampler
	var onStart func()
	if *learn {
		onStart = func() { peak = runtime.SampleMemoryPeak(runsc.CgroupRoot, cgroupsPath, memorySampleInterval) }
	}
	code, err := runSandbox(ctx, s, r, sb, c.Timeout, onStart)
	if peak != nil {
		recordMemoryPeak(s, cfg, rec, peak)
	}
	// Always clean up, whatever happened above.
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if rerr := sb.Remove(cctx, r); rerr != nil {
		fmt.Fprintf(s.err, "openshell: %s\n", rerr)
	}
	if err != nil {
		return fail("%s", err)
	}
	return code
}

// memorySampleInterval is how often a learning run reads its sandbox's
// memory peak.
const memorySampleInterval = 100 * time.Millisecond

// recordMemoryPeak stops peak and rewrites the learning run's record with
// the highest value it read; a peak not read is a warning, since the rest
// of the record still serves openshell policy suggest.
func recordMemoryPeak(s streams, cfg *runtime.Config, rec runtime.LearnRecord, peak *runtime.MemoryPeakSampler) {
	n, err := peak.Stop()
	if err == nil {
		rec.MemoryPeakBytes = n
		err = runtime.WriteLearnRecord(cfg.Egress.AuditDir, rec)
	}
	if err != nil {
		fmt.Fprintf(s.err, "openshell: warning: learning mode: the memory peak is not recorded: %s\n", err)
	}
}

// startGateway starts the sandbox's egress gateway as a child of this
// process that dies with it, and records it in the sandbox's state.
func startGateway(sb *runtime.Sandbox, st *runtime.State, cfg *runtime.Config, policyFile string, learn bool) error {
	abs, err := filepath.Abs(policyFile)
	if err != nil {
		return fmt.Errorf("egress gateway: %w", err)
	}
	return sb.StartGateway(st, runtime.GatewayOptions{Config: cfg, PolicyFile: abs, DieWithParent: true, Learn: learn})
}

// sweepOrphans removes the sandboxes of openshell runs that were killed
// before they could clean up (runsc dies with them, their state does not).
func sweepOrphans(ctx context.Context, s streams, r *runsc.Runsc, stateDir string) {
	orphans, err := runtime.Orphans(stateDir)
	if err != nil {
		fmt.Fprintf(s.err, "openshell: %s\n", err)
		return
	}
	for _, sb := range orphans {
		if err := sb.Remove(ctx, r); err != nil {
			fmt.Fprintf(s.err, "openshell: remove orphaned sandbox %s: %s\n", sb.ID, err)
		}
	}
}

// runSandbox runs the sandbox in the foreground, forwarding signals and
// enforcing the wall-clock limit. onStart, when not nil, is called once
// runsc has started, on the calling goroutine.
func runSandbox(ctx context.Context, s streams, r *runsc.Runsc, sb *runtime.Sandbox, timeout time.Duration, onStart func()) (int, error) {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)

	done := make(chan struct{})
	defer close(done)
	timedOut := make(chan struct{})
	started := func() {
		if onStart != nil {
			onStart()
		}
		go func() {
			var deadline <-chan time.Time
			if timeout > 0 {
				t := time.NewTimer(timeout)
				defer t.Stop()
				deadline = t.C
			}
			for {
				select {
				case <-done:
					return
				case sig := <-sigs:
					// The sandbox may not exist yet for an early signal;
					// runsc kill then fails and the next signal retries.
					_ = r.Kill(context.Background(), sb.ID, sig.(syscall.Signal), true)
				case <-deadline:
					close(timedOut)
					_ = r.Kill(context.Background(), sb.ID, syscall.SIGKILL, true)
					deadline = nil
				}
			}
		}()
	}
	code, err := r.Run(ctx, sb.Bundle, sb.ID, runsc.CreateOpts{}, runsc.Stdio{In: s.in, Out: s.out, Err: s.err}, started)
	select {
	case <-timedOut:
		fmt.Fprintf(s.err, "openshell: max_execution_time (%s) reached; sandbox killed\n", timeout)
		return exitTimeout, nil
	default:
	}
	return code, err
}

func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}
