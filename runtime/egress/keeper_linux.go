package egress

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// envServe marks the serving process: the keeper starts the same binary
// with the same command and this variable set.
const envServe = "OPENSHELL_EGRESS_SERVE"

// envKeeper marks the keeper once it has re-exec'd itself with only
// keeperCaps; it says which child and descriptors it has
// (keeperState.encode).
const envKeeper = "OPENSHELL_EGRESS_KEEPER"

// keeperCaps are all the keeper keeps once the serving process runs:
// CAP_KILL to signal the serving process (another uid) and end what is
// left in its cgroup, and CAP_DAC_READ_SEARCH to read the operator's
// policy file and the inference providers' credential files wherever
// they are. Everything else it does as the owner of what it touches
// (root's state and audit directories, the cgroups it made), and the
// policy copy takes the gateway's group from its setgid directory, so
// CAP_CHOWN goes too.
var keeperCaps = []int{unix.CAP_KILL, unix.CAP_DAC_READ_SEARCH}

// runKeeper is the gateway's keeper: the process the runtime starts and
// records. It runs as root and reads nothing the sandbox sends: it holds
// the sockets only until the serving process has them. It
//   - copies the policy file to <state dir>/gateway/policy.yaml, readable
//     by the gateway's group only, on every change and on SIGHUP (the
//     operator's file may sit where the gateway's user cannot read);
//   - opens the audit file for the serving process, and rotates it when
//     the serving process asks (keeperchan_linux.go);
//   - makes the serving process's cgroup (memory.max, pids.max);
//   - forks, from a thread that has dropped the bounding set and set
//     no_new_privs and Landlock, the serving process as the gateway user;
//   - re-execs itself from another thread with a bounding set of
//     keeperCaps, no inheritable or ambient capabilities and
//     no_new_privs: every thread of the new image holds keeperCaps only
//     (capabilities are per thread, and a cgo binary cannot change every
//     thread's in place);
//   - forwards SIGTERM, SIGINT and SIGHUP, and ends when it ends, removing
//     the cgroup. When the keeper is killed the serving process reads EOF
//     on its lifeline and exits, and the runtime removes the cgroup.
func runKeeper(configFile string) error {
	if v := os.Getenv(envKeeper); v != "" {
		return runKeeperReduced(configFile, v)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ready := readyPipe{os.NewFile(fdReady, "ready")}
	fail := ready.fail
	var pc processConfig
	if err := readGatewayConfig(configFile, &pc); err != nil {
		return fail(err)
	}
	c := pc.Confine.WithDefaults()
	if c.UID == 0 || c.GID == 0 {
		return fail(fmt.Errorf("gateway config %s: the gateway may not run as uid 0 or gid 0", configFile))
	}
	log = log.With("sandbox", pc.Sandbox)

	dir := filepath.Join(filepath.Dir(configFile), "gateway")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fail(fmt.Errorf("gateway dir: %w", err))
	}
	// setgid: what the keeper writes here later is the gateway group's
	// without CAP_CHOWN.
	if err := errors.Join(os.Chown(dir, 0, c.GID), os.Chmod(dir, 0o750|os.ModeSetgid)); err != nil {
		return fail(fmt.Errorf("gateway dir: %w", err))
	}
	mirror := filepath.Join(dir, "policy.yaml")
	if err := mirrorPolicy(pc.PolicyFile, mirror, c.GID); err != nil {
		return fail(err)
	}
	audit, err := os.OpenFile(pc.AuditFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fail(fmt.Errorf("open audit log: %w", err))
	}
	defer audit.Close()
	// The serving process writes it through the descriptor only, and
	// gets each new file after a rotation the same way: the file stays
	// root's, and the audit directory is not open to it.
	// The serving process reaches its directory through a descriptor
	// too: the state directory's parents need not be open to its user.
	dirf, err := os.Open(dir)
	if err != nil {
		return fail(fmt.Errorf("gateway dir: %w", err))
	}
	defer dirf.Close()
	viaFD := func(name string) string { return fmt.Sprintf("/proc/self/fd/%d/%s", fdDir, name) }
	serveCfg := pc.Config
	serveCfg.PolicyFile = viaFD("policy.yaml")
	serveCfg.AuditFile = fmt.Sprintf("/proc/self/fd/%d", fdAudit)
	caf, upf, err := openCAFiles(&serveCfg)
	if err != nil {
		return fail(err)
	}
	defer caf.Close()
	defer upf.Close()
	if err := writeShared(filepath.Join(dir, "gateway.json"), mustJSON(serveCfg), c.GID); err != nil {
		return fail(err)
	}
	serveFile := viaFD("gateway.json")

	// A benchmark build (confine_bench_on.go) makes no cgroup and no
	// ruleset, and starts the serving process as root from a thread that
	// drops nothing.
	var cgroups []string
	var rs *ruleset
	if !benchUnconfined {
		if cgroups, err = makeCgroups(pc.Sandbox, c); err != nil {
			return fail(err)
		}
		if rs, err = gatewayRuleset(dir); err != nil {
			_ = RemoveGatewayCgroups(pc.Sandbox)
			return fail(err)
		}
		if rs == nil {
			log.Warn("Landlock is not available on this kernel: the gateway's files are guarded by its user only")
		} else {
			defer rs.Close()
		}
	}

	args := os.Args[1:]
	if len(args) > 0 {
		args = args[:len(args)-1]
	}
	// Clipped: appending must not write over os.Args, which the re-exec
	// reuses.
	cmd := exec.Command("/proc/self/exe", append(slices.Clip(args), serveFile)...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(append(os.Environ(), c.goRuntimeEnv()...), envServe+"=1")
	for fd := fdDNSUDP; fd <= fdReady; fd++ {
		cmd.ExtraFiles = append(cmd.ExtraFiles, os.NewFile(uintptr(fd), "inherited"))
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, audit, dirf, caf, upf)
	auditCh, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		_ = RemoveGatewayCgroups(pc.Sandbox)
		return fail(fmt.Errorf("audit channel: %w", err))
	}
	auditKeeper, auditChild := os.NewFile(uintptr(auditCh[0]), "audit-channel"), os.NewFile(uintptr(auditCh[1]), "audit-channel")
	defer auditKeeper.Close()
	lifeR, lifeW, err := os.Pipe()
	if err != nil {
		_ = RemoveGatewayCgroups(pc.Sandbox)
		return fail(fmt.Errorf("lifeline: %w", err))
	}
	defer lifeW.Close()
	cmd.ExtraFiles = append(cmd.ExtraFiles, auditChild, lifeR)
	cmd.Env = append(cmd.Env,
		fmt.Sprintf("%s=%d", envAuditFD, 3+len(cmd.ExtraFiles)-2),
		fmt.Sprintf("%s=%d", envLifeline, 3+len(cmd.ExtraFiles)-1))
	creds, err := startCredentials(pc, cmd)
	if err != nil {
		_ = RemoveGatewayCgroups(pc.Sandbox)
		return fail(err)
	}
	defer creds.Close()
	// Open /dev/null here: the forking thread cannot once Landlock holds it.
	null, err := os.Open(os.DevNull)
	if err != nil {
		_ = RemoveGatewayCgroups(pc.Sandbox)
		return fail(err)
	}
	defer null.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, os.Stderr, os.Stderr
	// No parent-death signal: the forking thread ends when the keeper
	// re-execs. The lifeline ends the serving process instead.
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if !benchUnconfined {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(c.UID), Gid: uint32(c.GID), Groups: []uint32{}}
	}
	if err := onLockedThread(func() error {
		if !benchUnconfined {
			if err := dropThread(rs); err != nil {
				return err
			}
		}
		return cmd.Start()
	}, nil); err != nil {
		_ = RemoveGatewayCgroups(pc.Sandbox)
		return fail(fmt.Errorf("start the gateway's serving process: %w", err))
	}
	if err := joinCgroups(cgroups, cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = RemoveGatewayCgroups(pc.Sandbox)
		return fail(err)
	}
	// The sockets and the ready pipe are the serving process's now: it
	// says ready, or the runtime sees the pipe close when it exits.
	for _, f := range cmd.ExtraFiles {
		_ = f.Close()
	}
	ready.f = nil
	if benchUnconfined {
		log.Warn("gateway NOT confined: benchmark build (openshell_unconfined_bench)", "pid", cmd.Process.Pid, "uid", 0)
	} else {
		log.Info("gateway confined", "pid", cmd.Process.Pid, "uid", c.UID, "gid", c.GID,
			"memory_max", c.MemoryMax, "pids_max", c.PidsMax, "procs", c.Procs, "cgroups", cgroups, "landlock_abi", LandlockABI())
	}

	ks := keeperState{Child: cmd.Process.Pid, Audit: int(auditKeeper.Fd()), Lifeline: int(lifeW.Fd()), Cred: -1}
	if f, ok := creds.(*os.File); ok {
		ks.Cred = int(f.Fd())
	}
	err = reexecReduced(ks)
	// The new image takes these descriptors by number: their files must
	// not be collected (and closed) before the exec.
	runtime.KeepAlive(auditKeeper)
	runtime.KeepAlive(lifeW)
	runtime.KeepAlive(creds)
	// Still here: the keeper could not shed its capabilities. It ends,
	// and the serving process with it (fail closed).
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	_ = RemoveGatewayCgroups(pc.Sandbox)
	return fmt.Errorf("gateway keeper: %w", err)
}

// keeperState is what the keeper's reduced image is told of the serving
// process and its ends of the channels to it (descriptors; -1: none).
type keeperState struct {
	Child    int `json:"child"`
	Audit    int `json:"audit"`
	Lifeline int `json:"lifeline"`
	Cred     int `json:"cred"`
}

// reexecReduced re-execs the keeper, from a locked thread whose bounding
// set is keeperCaps, whose inheritable and ambient sets are empty and
// which has no_new_privs: root's execve gives the new image its bounding
// set as its permitted and effective sets, on every thread it will ever
// have. It returns only on failure.
func reexecReduced(ks keeperState) error {
	for _, fd := range []int{ks.Audit, ks.Lifeline, ks.Cred} {
		if fd < 0 {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("keep descriptor %d: %w", fd, err)
		}
	}
	env := append(os.Environ(), envKeeper+"="+string(mustJSON(ks)))
	exe, err := os.Executable()
	if err != nil {
		exe = "/proc/self/exe"
	}
	return onLockedThread(func() error {
		if err := limitThreadCaps(keeperCaps); err != nil {
			return err
		}
		return syscall.Exec("/proc/self/exe", append([]string{exe}, os.Args[1:]...), env)
	}, nil)
}

// limitThreadCaps leaves the calling (locked, never returned) thread a
// bounding set of keep only, no inheritable or ambient capabilities, and
// no_new_privs.
func limitThreadCaps(keep []int) error {
	for c := 0; c <= lastCap(); c++ {
		if slices.Contains(keep, c) {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clear inheritable capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	return nil
}

// capMask is the bit mask of caps.
func capMask(caps []int) uint64 {
	var m uint64
	for _, c := range caps {
		m |= 1 << uint(c)
	}
	return m
}

// checkKeeperCaps reports a keeper image that holds more than keeperCaps
// in any set, or lacks no_new_privs.
func checkKeeperCaps() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	keep := capMask(keeperCaps)
	join := func(lo, hi uint32) uint64 { return uint64(lo) | uint64(hi)<<32 }
	if eff, prm, inh := join(data[0].Effective, data[1].Effective), join(data[0].Permitted, data[1].Permitted), join(data[0].Inheritable, data[1].Inheritable); eff&^keep != 0 || prm&^keep != 0 || inh != 0 {
		return fmt.Errorf("the keeper holds effective %#x permitted %#x inheritable %#x, want at most %#x", eff, prm, inh, keep)
	}
	for c := 0; c <= lastCap(); c++ {
		if n, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); err == nil && n == 1 && !slices.Contains(keeperCaps, c) {
			return fmt.Errorf("capability %d is in the keeper's bounding set", c)
		}
	}
	if n, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); err != nil || n != 1 {
		return errors.New("the keeper has no no_new_privs")
	}
	return nil
}

// runKeeperReduced is the keeper after its re-exec: it serves the
// credential and audit channels and watches the policy file and the
// serving process, holding keeperCaps only.
func runKeeperReduced(configFile, state string) error {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	var ks keeperState
	if err := json.Unmarshal([]byte(state), &ks); err != nil || ks.Child <= 0 {
		return fmt.Errorf("gateway keeper: bad %s %q", envKeeper, state)
	}
	child := ks.Child
	var pc processConfig
	err := readGatewayConfig(configFile, &pc)
	if err == nil {
		err = checkKeeperCaps()
	}
	if err != nil {
		_ = unix.Kill(child, unix.SIGKILL)
		_ = RemoveGatewayCgroups(pc.Sandbox)
		return err
	}
	c := pc.Confine.WithDefaults()
	log = log.With("sandbox", pc.Sandbox)
	mirror := filepath.Join(filepath.Dir(configFile), "gateway", "policy.yaml")
	if ks.Cred >= 0 {
		go serveCredentials(os.NewFile(uintptr(ks.Cred), "credentials"), pc.PolicyFile, pc.InferenceProviders, os.Getenv)
	}
	go serveAuditRotation(ks.Audit, pc.AuditFile, log)
	// A change made while the keeper re-exec'd is copied now; the serving
	// process sees its copy change and reloads.
	stamp := fileStamp(pc.PolicyFile)
	src, serr := os.ReadFile(pc.PolicyFile)
	if cur, err := os.ReadFile(mirror); serr != nil || err != nil || !bytes.Equal(src, cur) {
		if err := mirrorPolicy(pc.PolicyFile, mirror, c.GID); err != nil {
			log.Warn("policy copy", "err", err)
		}
	}
	log.Info("gateway keeper reduced", "child", child, "caps", fmt.Sprintf("%#x", capMask(keeperCaps)))

	exited := make(chan error, 1)
	go func() {
		for {
			var ws unix.WaitStatus
			_, err := unix.Wait4(child, &ws, 0, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err == nil && !(ws.Exited() && ws.ExitStatus() == 0) {
				err = fmt.Errorf("%s", waitString(ws))
			}
			exited <- err
			return
		}
	}()
	signalChild := func(s syscall.Signal) { _ = unix.Kill(child, s) }
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	stopping := false
	for {
		select {
		case err := <-exited:
			if rerr := RemoveGatewayCgroups(pc.Sandbox); rerr != nil {
				log.Warn("gateway cgroup", "err", rerr)
			}
			if stopping {
				return nil
			}
			if err == nil {
				return errors.New("gateway serving process: exited")
			}
			return fmt.Errorf("gateway serving process: %w", err)
		case s := <-sigs:
			if s == syscall.SIGHUP {
				stamp = fileStamp(pc.PolicyFile)
				if err := mirrorPolicy(pc.PolicyFile, mirror, c.GID); err != nil {
					log.Warn("policy copy", "err", err)
				}
				signalChild(syscall.SIGHUP)
				continue
			}
			stopping = true
			signalChild(syscall.SIGTERM)
		case <-tick.C:
			if st := fileStamp(pc.PolicyFile); st != stamp {
				stamp = st
				if err := mirrorPolicy(pc.PolicyFile, mirror, c.GID); err != nil {
					log.Warn("policy copy", "err", err)
				}
				// Reload now rather than at the serving process's next look.
				signalChild(syscall.SIGHUP)
			}
		}
	}
}

// waitString says how a process ended, as os.ProcessState does.
func waitString(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exit status %d", ws.ExitStatus())
	case ws.Signaled():
		return "signal: " + ws.Signal().String()
	}
	return fmt.Sprintf("wait status %#x", uint32(ws))
}

// hostTrustStores are where hosts keep the CA bundle their TLS stacks
// read (Debian and Ubuntu; RHEL and Fedora; openSUSE; Alpine).
var hostTrustStores = []string{
	"/etc/ssl/certs/ca-certificates.crt",
	"/etc/pki/tls/certs/ca-bundle.crt",
	"/etc/ssl/ca-bundle.pem",
	"/etc/ssl/cert.pem",
}

// openCAFiles opens the sandbox's CA and the bundle servers are verified
// against (the config's, or the host's trust store) for the serving
// process, and points cfg at the descriptors it will have them on. A nil
// file is one the config does not name: the serving process gets none.
func openCAFiles(cfg *Config) (ca, upstream *os.File, err error) {
	if cfg.CAFile != "" {
		if ca, err = os.Open(cfg.CAFile); err != nil {
			return nil, nil, fmt.Errorf("sandbox CA: %w", err)
		}
		cfg.CAFile = fmt.Sprintf("/proc/self/fd/%d", fdCA)
	}
	names := hostTrustStores
	if cfg.UpstreamCA != "" {
		names = []string{cfg.UpstreamCA}
	}
	for _, n := range names {
		if upstream, err = os.Open(n); err == nil {
			cfg.UpstreamCA = fmt.Sprintf("/proc/self/fd/%d", fdUpstreamCA)
			return ca, upstream, nil
		}
	}
	if cfg.UpstreamCA != "" {
		ca.Close()
		return nil, nil, fmt.Errorf("egress.upstream_ca_file: %w", err)
	}
	// No trust store on this host: servers cannot be verified, so no
	// terminated endpoint can be served (the serving process fails them).
	cfg.UpstreamCA = ""
	return ca, nil, nil
}

// mirrorPolicy copies the policy file to dst, atomically. Where src
// cannot be read dst is removed, so the serving process's reload fails
// the way it would on src itself (and its running rules stay).
func mirrorPolicy(src, dst string, gid int) error {
	data, err := os.ReadFile(src)
	if err != nil {
		_ = os.Remove(dst)
		return fmt.Errorf("gateway policy: %w", err)
	}
	return writeShared(dst, data, gid)
}

// writeShared writes data to path atomically as root:gid 0640.
func writeShared(path string, data []byte, gid int) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	err = errors.Join(err, tmp.Chown(0, gid), tmp.Chmod(0o640), tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func mustJSON(v any) []byte {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic(err)
	}
	return data
}
