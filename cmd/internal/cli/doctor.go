package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/nvproxy"
	"github.com/openshell/openshell/runtime"
	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/runtime/runsc"
)

// check is one line of openshell doctor: a layer, whether it works here,
// and what was found.
type check struct {
	status string // ok, warn, FAIL
	name   string
	detail string
}

// host is what doctor inspects; tests point it at fakes.
type host struct {
	procRoot   string // /proc
	sysRoot    string // /sys
	devRoot    string // /dev
	dockerJSON string // /etc/docker/daemon.json
}

func defaultHost() host {
	return host{procRoot: "/proc", sysRoot: "/sys", devRoot: "/dev", dockerJSON: "/etc/docker/daemon.json"}
}

func runDoctor(ctx context.Context, s streams, args []string) int {
	fs := newFlags(s, "doctor", "doctor [--config FILE] [--runsc PATH] [--docker-config FILE] [--smoke]")
	config := fs.String("config", runtime.DefaultConfigPath, "the runtime configuration")
	runscPath := fs.String("runsc", "", "the runsc binary (default: from the configuration)")
	smoke := fs.Bool("smoke", false, "also start a sandbox running /bin/true")
	dockerJSON := fs.String("docker-config", "/etc/docker/daemon.json", "Docker's daemon.json")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		fs.Usage()
		return exitUsage
	}
	h := defaultHost()
	h.dockerJSON = *dockerJSON
	checks := doctorChecks(ctx, h, *config, *runscPath, *smoke)
	tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
	failed := false
	for _, c := range checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.status, c.name, c.detail)
		failed = failed || c.status == "FAIL"
	}
	tw.Flush()
	if failed {
		return exitFailed
	}
	return exitOK
}

func doctorChecks(ctx context.Context, h host, configPath, runscFlag string, smoke bool) []check {
	var out []check
	add := func(status, name, format string, a ...any) {
		out = append(out, check{status, name, fmt.Sprintf(format, a...)})
	}
	add("ok", "openshell", "%s", Version)

	cfg, err := runtime.LoadConfig(configPath)
	switch {
	case err != nil:
		add("FAIL", "config", "%s", err)
		cfg = runtime.DefaultConfig()
	case cfg.File() == "":
		add("ok", "config", "%s absent: defaults (root %s, default policy %s)", configPath, cfg.Root, cfg.DefaultPolicy)
	default:
		add("ok", "config", "%s (root %s, default policy %s)", cfg.File(), cfg.Root, cfg.DefaultPolicy)
	}

	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		add("ok", "kernel", "%s %s", unix.ByteSliceToString(uts.Release[:]), unix.ByteSliceToString(uts.Machine[:]))
	}

	path := runscFlag
	if path == "" {
		path = cfg.RunscPath()
	}
	r := &runsc.Runsc{Path: path}
	runscOK := false
	if v, err := r.Check(ctx); err != nil {
		add("FAIL", "runsc", "%s", err)
	} else {
		runscOK = true
		add("ok", "runsc", "%s (%s)", v, path)
	}

	plat := cfg.PlatformOrDefault()
	_, kvmErr := os.Stat(filepath.Join(h.devRoot, "kvm"))
	switch {
	case kvmErr == nil && plat != "kvm":
		add("ok", "platform", "%s (/dev/kvm present: set platform = \"kvm\" to use it once `doctor --smoke` passes with it)", plat)
	case kvmErr == nil:
		add("ok", "platform", "%s (/dev/kvm present)", plat)
	case plat == "kvm":
		add("FAIL", "platform", "kvm configured but /dev/kvm is absent")
	default:
		add("ok", "platform", "%s (no /dev/kvm)", plat)
	}

	add("ok", "seccomp", "policy filters run inside the sandbox (runsc --oci-seccomp)")
	add("ok", "filesystem", "mount view built from the policy; Landlock is not used inside gVisor")
	add("ok", "network", "no egress rules: runsc --network=none; egress rules: runsc --network=sandbox behind the sandbox's egress gateway")
	out = append(out, egressCheck(cfg))
	out = append(out, cgroupCheck(h))
	out = append(out, landlockCheck())
	out = append(out, gatewayConfineCheck())
	out = append(out, oomCheck(h))
	out = append(out, nvidiaCheck(ctx, h, r, runscOK))
	if c, ok := dockerCheck(h); ok {
		out = append(out, c)
	}
	if smoke && runscOK {
		out = append(out, smokeCheck(ctx, cfg, path, plat))
	}
	return out
}

// egressCheck builds (and removes) one sandbox's egress namespaces: the
// veth, the routes, the sysctls and the nftables ruleset. Without them a
// policy with egress rules cannot start.
func egressCheck(cfg *runtime.Config) check {
	if os.Geteuid() != 0 {
		return check{"warn", "egress", "not root: cannot try the gateway's namespaces and nftables"}
	}
	dir, err := os.MkdirTemp("", "openshell-doctor-egress")
	if err != nil {
		return check{"FAIL", "egress", err.Error()}
	}
	defer os.RemoveAll(dir)
	t, err := egress.CreateTopology(filepath.Join(dir, "netns"))
	if err != nil {
		return check{"FAIL", "egress", fmt.Sprintf("%s: policies with egress rules will not start", err)}
	}
	if err := t.Remove(); err != nil {
		return check{"FAIL", "egress", err.Error()}
	}
	detail := "network namespaces, veth and nftables work"
	if cfg.Egress.DNSUpstream != "" {
		detail += "; upstream DNS " + cfg.Egress.DNSUpstream
	}
	if u := cfg.Egress.UplinkNetns; u != "" && !egress.NetnsExists(u) {
		return check{"FAIL", "egress", fmt.Sprintf("egress.uplink_netns %s is not a network namespace", u)}
	}
	return check{"ok", "egress", detail + "; audit logs in " + cfg.Egress.AuditDir}
}

func cgroupCheck(h host) check {
	c := check{name: "cgroups"}
	if _, err := os.Stat(filepath.Join(h.sysRoot, "fs/cgroup/cgroup.controllers")); err == nil {
		data, _ := os.ReadFile(filepath.Join(h.sysRoot, "fs/cgroup/cgroup.controllers"))
		c.status, c.detail = "ok", "v2: "+strings.TrimSpace(string(data))
		if !strings.Contains(string(data), "memory") {
			c.status, c.detail = "warn", c.detail+" (no memory controller: max_memory_mb cannot be enforced)"
		}
		return c
	}
	if _, err := os.Stat(filepath.Join(h.sysRoot, "fs/cgroup/memory")); err == nil {
		return check{"ok", "cgroups", "v1 with the memory controller (max_memory_mb, max_cpu_cores)"}
	}
	return check{"warn", "cgroups", "no memory cgroup found: max_memory_mb and max_cpu_cores cannot be enforced"}
}

// landlockCheck reports the host's Landlock ABI: host-side helpers (the
// egress gateway) restrict themselves with it.
func landlockCheck() check {
	abi, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, unix.LANDLOCK_CREATE_RULESET_VERSION)
	if errno != 0 {
		return check{"warn", "landlock", fmt.Sprintf("not available on the host (%s): host-side helpers run without it", errno)}
	}
	return check{"ok", "landlock", fmt.Sprintf("host ABI %d (for host-side helpers; not used inside gVisor)", abi)}
}

// gatewayConfineCheck: the egress gateway does not start without its
// cgroup (fail closed), and runs without Landlock where the host has none.
func gatewayConfineCheck() check {
	if os.Geteuid() != 0 {
		return check{"warn", "gateway confinement", "not root: cannot try the gateway's cgroup"}
	}
	dirs, abi, err := egress.ProbeConfinement()
	if err != nil {
		return check{"FAIL", "gateway confinement", fmt.Sprintf("%s: policies with egress rules will not start", err)}
	}
	ll := fmt.Sprintf("Landlock ABI %d active", abi)
	status := "ok"
	if abi == 0 {
		ll, status = "no Landlock (the gateway's files are guarded by its user only)", "warn"
	}
	return check{status, "gateway confinement", fmt.Sprintf("unprivileged user, no capabilities, seccomp, cgroup %s, %s", strings.Join(dirs, " + "), ll)}
}

// oomCheck: without CAP_SYS_RESOURCE an engine cannot lower oom_score_adj;
// containerd's CRI then needs restrict_oom_score_adj.
func oomCheck(h host) check {
	f, err := os.Open(filepath.Join(h.procRoot, "self/status"))
	if err != nil {
		return check{"warn", "capabilities", err.Error()}
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if hex, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			var caps uint64
			fmt.Sscanf(strings.TrimSpace(hex), "%x", &caps)
			if caps&(1<<unix.CAP_SYS_RESOURCE) == 0 {
				return check{"warn", "capabilities", "no CAP_SYS_RESOURCE: oom_score_adj cannot be lowered (containerd CRI: restrict_oom_score_adj = true)"}
			}
			return check{"ok", "capabilities", "CAP_SYS_RESOURCE present"}
		}
	}
	return check{"warn", "capabilities", "CapEff not found"}
}

// nvidiaCheck reports the GPU driver and whether runsc's nvproxy
// supports it.
func nvidiaCheck(ctx context.Context, h host, r *runsc.Runsc, runscOK bool) check {
	version, err := nvproxy.HostDriverVersion(h.sysRoot, h.procRoot)
	switch {
	case err != nil:
		return check{"warn", "gpu", err.Error()}
	case version == "":
		return check{"ok", "gpu", "no NVIDIA driver: GPU policies are refused here (driver_version = \"latest\" boots them without a GPU)"}
	case !runscOK:
		return check{"warn", "gpu", fmt.Sprintf("NVIDIA driver %s; runsc missing, nvproxy support unknown", version)}
	}
	gpus, _ := filepath.Glob(filepath.Join(h.devRoot, "nvidia[0-9]*"))
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	supported, err := nvproxy.SupportedDrivers(cctx, r.Path)
	if err != nil {
		return check{"warn", "gpu", fmt.Sprintf("NVIDIA driver %s; %s", version, err)}
	}
	if !slices.Contains(supported, version) {
		return check{"warn", "gpu", fmt.Sprintf("NVIDIA driver %s is not in runsc's nvproxy list (%s ... %s): GPU sandboxes need allow_unsupported_driver", version, supported[0], supported[len(supported)-1])}
	}
	return check{"ok", "gpu", fmt.Sprintf("NVIDIA driver %s, supported by nvproxy; %d GPU device node(s)", version, len(gpus))}
}

func dockerCheck(h host) (check, bool) {
	data, err := os.ReadFile(h.dockerJSON)
	if err != nil {
		return check{}, false
	}
	var cfg struct {
		Runtimes map[string]struct {
			Path        string `json:"path"`
			RuntimeType string `json:"runtimeType"`
		} `json:"runtimes"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return check{"warn", "docker", fmt.Sprintf("%s: %s", h.dockerJSON, err)}, true
	}
	var names []string
	for name := range cfg.Runtimes {
		names = append(names, name)
	}
	slices.Sort(names)
	var found []string
	for _, name := range names {
		rt := cfg.Runtimes[name]
		switch {
		case rt.RuntimeType == "io.openshell.v1":
			v := dockerdVersion()
			if strings.HasPrefix(v, "20.") || strings.HasPrefix(v, "19.") {
				return check{"FAIL", "docker", fmt.Sprintf("runtime %q: dockerd %s ignores runtimeType and would run containers under runc: use \"path\": \"/usr/local/bin/openshell-runtime\"", name, v)}, true
			}
			found = append(found, fmt.Sprintf("%s (runtimeType, dockerd %s)", name, v))
		case filepath.Base(rt.Path) == "openshell-runtime":
			found = append(found, fmt.Sprintf("%s (path %s)", name, rt.Path))
		}
	}
	if len(found) == 0 {
		return check{"warn", "docker", fmt.Sprintf("%s has no openshell runtime", h.dockerJSON)}, true
	}
	return check{"ok", "docker", "runtimes " + strings.Join(found, ", ")}, true
}

func dockerdVersion() string {
	out, err := exec.Command("dockerd", "--version").Output()
	if err != nil {
		return "unknown"
	}
	// "Docker version 20.10.24+dfsg1, build 297e128"
	f := strings.Fields(string(out))
	if len(f) >= 3 {
		return strings.TrimSuffix(f[2], ",")
	}
	return "unknown"
}

// smokeCheck starts a sandbox with a minimal policy, end to end.
func smokeCheck(ctx context.Context, cfg *runtime.Config, runscPath, plat string) check {
	dir, err := os.MkdirTemp("", "openshell-doctor")
	if err != nil {
		return check{"FAIL", "sandbox", err.Error()}
	}
	defer os.RemoveAll(dir)
	pf := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pf, []byte("version: \"1.0\"\nname: doctor\nsandbox:\n  filesystem: {allowed_writes: [/tmp]}\n"), 0o600); err != nil {
		return check{"FAIL", "sandbox", err.Error()}
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return check{"FAIL", "sandbox", err.Error()}
	}
	defer devnull.Close()
	var errb bytes.Buffer
	start := time.Now()
	code := runRun(ctx, streams{in: devnull, out: &errb, err: &errb}, []string{
		"--policy", pf, "--runsc", runscPath, "--state-dir", cfg.Root, "--platform", plat, "--", "/bin/true",
	})
	if code != 0 {
		return check{"FAIL", "sandbox", fmt.Sprintf("openshell run /bin/true: exit %d: %s", code, strings.TrimSpace(errb.String()))}
	}
	return check{"ok", "sandbox", fmt.Sprintf("openshell run /bin/true: %s", time.Since(start).Round(time.Millisecond))}
}
