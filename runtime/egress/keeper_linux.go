package egress

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// envServe marks the serving process: the keeper starts the same binary
// with the same command and this variable set.
const envServe = "OPENSHELL_EGRESS_SERVE"

// runKeeper is the gateway's keeper: the process the runtime starts and
// records. It runs as root and reads nothing the sandbox sends: it holds
// the sockets only until the serving process has them. It
//   - copies the policy file to <state dir>/gateway/policy.yaml, readable
//     by the gateway's group only, on every change and on SIGHUP (the
//     operator's file may sit where the gateway's user cannot read);
//   - opens the audit file for the serving process;
//   - makes the serving process's cgroup (memory.max, pids.max);
//   - forks, from a thread that has dropped the bounding set and set
//     no_new_privs and Landlock, the serving process as the gateway user;
//   - forwards SIGTERM, SIGINT and SIGHUP, and ends when it ends, removing
//     the cgroup. When the keeper is killed the kernel kills the serving
//     process (Pdeathsig), and the runtime removes the cgroup.
func runKeeper(configFile string) error {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ready := readyPipe{os.NewFile(fdReady, "ready")}
	fail := ready.fail
	var pc processConfig
	if err := readGatewayConfig(configFile, &pc); err != nil {
		return fail(err)
	}
	c := pc.Confine.withDefaults()
	if c.UID == 0 || c.GID == 0 {
		return fail(fmt.Errorf("gateway config %s: the gateway may not run as uid 0 or gid 0", configFile))
	}
	log = log.With("sandbox", pc.Sandbox)

	dir := filepath.Join(filepath.Dir(configFile), "gateway")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fail(fmt.Errorf("gateway dir: %w", err))
	}
	if err := errors.Join(os.Chown(dir, 0, c.GID), os.Chmod(dir, 0o750)); err != nil {
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
	// The serving process reopens it through /proc/self/fd: only its
	// group may, and only with the descriptor (the audit directory is
	// not open to it).
	if err := errors.Join(audit.Chown(0, c.GID), audit.Chmod(0o660)); err != nil {
		return fail(fmt.Errorf("audit log: %w", err))
	}
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

	cgroups, err := makeCgroups(pc.Sandbox, c)
	if err != nil {
		return fail(err)
	}
	rs, err := gatewayRuleset(dir, pc.AuditFile)
	if err != nil {
		_ = RemoveGatewayCgroups(pc.Sandbox)
		return fail(err)
	}
	if rs == nil {
		log.Warn("Landlock is not available on this kernel: the gateway's files are guarded by its user only")
	} else {
		defer rs.Close()
	}

	args := os.Args[1:]
	if len(args) > 0 {
		args = args[:len(args)-1]
	}
	cmd := exec.Command("/proc/self/exe", append(args, serveFile)...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(os.Environ(), envServe+"=1")
	for fd := fdDNSUDP; fd <= fdReady; fd++ {
		cmd.ExtraFiles = append(cmd.ExtraFiles, os.NewFile(uintptr(fd), "inherited"))
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, audit, dirf, caf, upf)
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
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(c.UID), Gid: uint32(c.GID), Groups: []uint32{}},
		Pdeathsig:  syscall.SIGKILL,
	}
	// Pdeathsig fires when the forking thread ends: it lives until the
	// serving process does.
	done := make(chan struct{})
	if err := onLockedThread(func() error {
		if err := dropThread(rs); err != nil {
			return err
		}
		return cmd.Start()
	}, done); err != nil {
		close(done)
		_ = RemoveGatewayCgroups(pc.Sandbox)
		return fail(fmt.Errorf("start the gateway's serving process: %w", err))
	}
	if err := joinCgroups(cgroups, cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		close(done)
		_ = RemoveGatewayCgroups(pc.Sandbox)
		return fail(err)
	}
	// The sockets and the ready pipe are the serving process's now: it
	// says ready, or the runtime sees the pipe close when it exits.
	for _, f := range cmd.ExtraFiles {
		_ = f.Close()
	}
	ready.f = nil
	log.Info("gateway confined", "pid", cmd.Process.Pid, "uid", c.UID, "gid", c.GID,
		"memory_max", c.MemoryMax, "pids_max", c.PidsMax, "cgroups", cgroups, "landlock_abi", LandlockABI())

	exited := make(chan error, 1)
	go func() {
		exited <- cmd.Wait()
		close(done)
	}()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	stamp := fileStamp(pc.PolicyFile)
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
			return fmt.Errorf("gateway serving process: %w", err)
		case s := <-sigs:
			if s == syscall.SIGHUP {
				stamp = fileStamp(pc.PolicyFile)
				if err := mirrorPolicy(pc.PolicyFile, mirror, c.GID); err != nil {
					log.Warn("policy copy", "err", err)
				}
				_ = cmd.Process.Signal(syscall.SIGHUP)
				continue
			}
			stopping = true
			_ = cmd.Process.Signal(syscall.SIGTERM)
		case <-tick.C:
			if st := fileStamp(pc.PolicyFile); st != stamp {
				stamp = st
				if err := mirrorPolicy(pc.PolicyFile, mirror, c.GID); err != nil {
					log.Warn("policy copy", "err", err)
				}
				// Reload now rather than at the serving process's next look.
				_ = cmd.Process.Signal(syscall.SIGHUP)
			}
		}
	}
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
