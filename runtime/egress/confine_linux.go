package egress

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Confine is what the gateway is held to once its sockets are made: the
// unprivileged user it serves as, and the bounds of its cgroup.
type Confine struct {
	UID int `json:"uid"`
	GID int `json:"gid"`
	// MemoryMax (bytes) and PidsMax (tasks, threads included) bound the
	// serving process's own cgroup.
	MemoryMax int64 `json:"memory_max"`
	PidsMax   int   `json:"pids_max"`
	// Procs is the serving process's GOMAXPROCS.
	Procs int `json:"procs"`
}

// Defaults of the gateway's confinement: nobody/nogroup, 256 MiB and 256
// tasks (a Go process with a netpoller needs a few dozen threads).
const (
	DefaultGatewayUID       = 65534
	DefaultGatewayMemoryMax = 256 << 20
	DefaultGatewayPidsMax   = 256
	DefaultGatewayProcs     = 1
)

// WithDefaults is c with its zero fields at the gateway's defaults.
func (c Confine) WithDefaults() Confine {
	if c.UID == 0 && c.GID == 0 {
		c.UID, c.GID = DefaultGatewayUID, DefaultGatewayUID
	}
	if c.MemoryMax == 0 {
		c.MemoryMax = DefaultGatewayMemoryMax
	}
	if c.PidsMax == 0 {
		c.PidsMax = DefaultGatewayPidsMax
	}
	if c.Procs == 0 {
		c.Procs = DefaultGatewayProcs
	}
	return c
}

// goRuntimeEnv is what the serving process's Go runtime is told of its
// bounds, after whatever the environment said (the last of a name wins):
//   - GOMAXPROCS=Procs. One thread running Go by default: a sandbox's
//     gateway serves one agent, and this bounds the CPU a sandbox can
//     make its gateway spend on Go code to about Procs cores (the
//     latency runs could not tell 1 from 2: docs/egress.md).
//   - GOMEMLIMIT at three quarters of the cgroup's memory: the collector
//     works harder as the heap nears the bound instead of letting the
//     kernel kill the gateway there (which leaves the sandbox with no
//     network: closed, but down).
func (c Confine) goRuntimeEnv() []string {
	return []string{
		"GOMAXPROCS=" + strconv.Itoa(c.Procs),
		"GOMEMLIMIT=" + strconv.FormatInt(c.MemoryMax/4*3, 10),
	}
}

// dropThread takes from the calling thread, which must be locked and is
// never given back to Go, what no child of it may have: the capability
// bounding set and ambient set, and new privileges. It then applies the
// Landlock ruleset rs (where there is one). A child forked from this thread
// and exec'd as an unprivileged user starts with no capability at all and
// cannot regain one. The bounding set, no_new_privs and Landlock are
// per-thread, and Go cannot change them for every thread of a cgo binary
// (AllThreadsSyscall is ENOTSUP there), hence one thread, then fork.
func dropThread(rs *ruleset) error {
	for c := 0; c <= lastCap(); c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if rs != nil {
		if err := rs.restrictThread(); err != nil {
			return err
		}
	}
	return nil
}

func lastCap() int {
	data, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
			return n
		}
	}
	return unix.CAP_LAST_CAP
}

// CheckConfined reports what the calling process still holds that a
// confined gateway must not: it is run by the gateway before it says
// ready, so a confinement that did not take fails closed.
func CheckConfined() error {
	if err := CheckUnprivileged(); err != nil {
		return fmt.Errorf("gateway not confined: %w", err)
	}
	return nil
}

// CheckUnprivileged reports what the calling process holds that a
// process started by StartConfined must not: root's ids, groups, any
// capability, a bounding set, or the lack of no_new_privs.
func CheckUnprivileged() error {
	var errs []error
	if os.Getuid() == 0 || os.Geteuid() == 0 || os.Getgid() == 0 || os.Getegid() == 0 {
		errs = append(errs, fmt.Errorf("runs as uid %d gid %d", os.Geteuid(), os.Getegid()))
	}
	if gs, _ := os.Getgroups(); len(gs) > 0 {
		errs = append(errs, fmt.Errorf("has supplementary groups %v", gs))
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		errs = append(errs, fmt.Errorf("capget: %w", err))
	} else {
		for _, d := range data {
			if d.Effective|d.Permitted|d.Inheritable != 0 {
				errs = append(errs, fmt.Errorf("holds capabilities %+v", data))
				break
			}
		}
	}
	for c := 0; c <= lastCap(); c++ {
		if n, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); err == nil && n == 1 {
			errs = append(errs, fmt.Errorf("capability %d is in the bounding set", c))
			break
		}
	}
	if n, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); err != nil || n != 1 {
		errs = append(errs, errors.New("no_new_privs is not set"))
	}
	return errors.Join(errs...)
}

// Landlock, through the raw system calls: go-landlock applies a ruleset
// to every thread at once (AllThreadsSyscall), which a cgo binary cannot
// do, and the gateway's ruleset is applied to one thread before a fork.

// LandlockABI is the kernel's Landlock ABI version; 0 where Landlock is
// absent or disabled.
func LandlockABI() int {
	v, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, unix.LANDLOCK_CREATE_RULESET_VERSION)
	if errno != 0 {
		return 0
	}
	return int(v)
}

const (
	llFileRead  = unix.LANDLOCK_ACCESS_FS_READ_FILE
	llFileExec  = unix.LANDLOCK_ACCESS_FS_EXECUTE | unix.LANDLOCK_ACCESS_FS_READ_FILE
	llFileWrite = unix.LANDLOCK_ACCESS_FS_READ_FILE | unix.LANDLOCK_ACCESS_FS_WRITE_FILE | unix.LANDLOCK_ACCESS_FS_TRUNCATE
	llDirRead   = unix.LANDLOCK_ACCESS_FS_READ_FILE | unix.LANDLOCK_ACCESS_FS_READ_DIR
)

// ruleset is a Landlock ruleset being built: everything the kernel's ABI
// knows is handled (denied), then each rule gives back one path.
type ruleset struct {
	fd      int
	abi     int
	handled uint64
}

// handledFS is every filesystem right the ABI knows.
func handledFS(abi int) uint64 {
	h := uint64(unix.LANDLOCK_ACCESS_FS_MAKE_SYM<<1) - 1 // ABI 1: the first 13 rights
	if abi >= 2 {
		h |= unix.LANDLOCK_ACCESS_FS_REFER
	}
	if abi >= 3 {
		h |= unix.LANDLOCK_ACCESS_FS_TRUNCATE
	}
	if abi >= 5 {
		h |= unix.LANDLOCK_ACCESS_FS_IOCTL_DEV
	}
	return h
}

// newRuleset makes a ruleset for the running kernel; nil, nil where the
// kernel has no Landlock. Besides the filesystem it denies binding TCP
// ports (ABI 4: the gateway only dials) and, from ABI 6, signalling or
// reaching abstract sockets outside its own domain.
func newRuleset() (*ruleset, error) {
	abi := LandlockABI()
	if abi == 0 {
		return nil, nil
	}
	attr := struct{ fs, net, scoped uint64 }{fs: handledFS(abi)}
	size := unsafe.Sizeof(attr.fs)
	if abi >= 4 {
		attr.net = unix.LANDLOCK_ACCESS_NET_BIND_TCP
		size += unsafe.Sizeof(attr.net)
	}
	if abi >= 6 {
		attr.scoped = unix.LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | unix.LANDLOCK_SCOPE_SIGNAL
		size += unsafe.Sizeof(attr.scoped)
	}
	fd, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, uintptr(unsafe.Pointer(&attr)), size, 0)
	if errno != 0 {
		return nil, fmt.Errorf("landlock ruleset (ABI %d): %w", abi, errno)
	}
	return &ruleset{fd: int(fd), abi: abi, handled: attr.fs}, nil
}

// allow gives access back beneath path (a file or a directory). A path
// that does not exist is skipped: nothing there can be reached either.
func (r *ruleset) allow(path string, access uint64) error {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("landlock rule %s: %w", path, err)
	}
	defer unix.Close(fd)
	// struct landlock_path_beneath_attr is packed: u64 then s32.
	var attr [12]byte
	binary.NativeEndian.PutUint64(attr[:8], access&r.handled)
	binary.NativeEndian.PutUint32(attr[8:], uint32(fd))
	if _, _, errno := unix.Syscall6(unix.SYS_LANDLOCK_ADD_RULE, uintptr(r.fd), unix.LANDLOCK_RULE_PATH_BENEATH, uintptr(unsafe.Pointer(&attr[0])), 0, 0, 0); errno != 0 {
		return fmt.Errorf("landlock rule %s: %w", path, errno)
	}
	return nil
}

// restrictThread applies the ruleset to the calling thread, which must
// have no_new_privs set.
func (r *ruleset) restrictThread() error {
	if _, _, errno := unix.Syscall(unix.SYS_LANDLOCK_RESTRICT_SELF, uintptr(r.fd), 0, 0); errno != 0 {
		return fmt.Errorf("landlock restrict: %w", errno)
	}
	return nil
}

func (r *ruleset) Close() error { return unix.Close(r.fd) }

// gatewayRuleset is the gateway's view of the filesystem: read and
// execute the files its binary maps (the binary, its loader and
// libraries: exec needs them), read the loader's cache and the node's
// resolv.conf, read the directory holding its config and policy copy;
// nothing else: not /proc of other processes, not the state directory,
// not the host's files, not even its audit file by name (it writes the
// descriptors its keeper gives it).
func gatewayRuleset(confDir string) (*ruleset, error) {
	return execRuleset(
		landlockRule{"/etc/resolv.conf", llFileRead},
		landlockRule{confDir, llDirRead},
	)
}

// landlockRule gives access back beneath a path.
type landlockRule struct {
	path   string
	access uint64
}

// execRuleset allows executing the files this binary maps (the binary,
// its loader and libraries: exec of the same binary needs them) and
// reading the loader's cache, then extra; nil where the kernel has no
// Landlock.
func execRuleset(extra ...landlockRule) (*ruleset, error) {
	rs, err := newRuleset()
	if rs == nil || err != nil {
		return nil, err
	}
	mapped, err := mappedFiles()
	if err != nil {
		rs.Close()
		return nil, err
	}
	var errs []error
	for _, f := range mapped {
		errs = append(errs, rs.allow(f, llFileExec))
	}
	errs = append(errs, rs.allow("/etc/ld.so.cache", llFileRead))
	for _, r := range extra {
		errs = append(errs, rs.allow(r.path, r.access))
	}
	if err := errors.Join(errs...); err != nil {
		rs.Close()
		return nil, err
	}
	return rs, nil
}

// mappedFiles lists the files mapped into this process (the gateway's
// child is the same binary, so it maps the same ones).
func mappedFiles() ([]string, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	seen := map[string]bool{}
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || !strings.HasPrefix(fields[5], "/") || strings.HasSuffix(sc.Text(), "(deleted)") {
			continue
		}
		if p := fields[5]; !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, sc.Err()
}

// Cgroups. The gateway's serving process gets a cgroup of its own in the
// memory and pids controllers, named for its sandbox: the v2 hierarchy at
// /sys/fs/cgroup/openshell-egress/<id>, or on a v1 host
// /sys/fs/cgroup/{memory,pids}/openshell-egress/<id>.

// CgroupRoot is where cgroup hierarchies are mounted.
var CgroupRoot = "/sys/fs/cgroup"

const cgroupParent = "openshell-egress"

// GatewayCgroups are the cgroup directories of sandbox's gateway, made or
// not.
func GatewayCgroups(sandbox string) []string {
	if cgroupV2() {
		return []string{filepath.Join(CgroupRoot, cgroupParent, sandbox)}
	}
	return []string{
		filepath.Join(CgroupRoot, "memory", cgroupParent, sandbox),
		filepath.Join(CgroupRoot, "pids", cgroupParent, sandbox),
	}
}

func cgroupV2() bool {
	_, err := os.Stat(filepath.Join(CgroupRoot, "cgroup.controllers"))
	return err == nil
}

// makeCgroups makes the gateway's cgroups with their bounds; on error it
// removes what it made.
func makeCgroups(sandbox string, c Confine) (dirs []string, err error) {
	if sandbox == "" || strings.ContainsAny(sandbox, "/\x00") || sandbox == "." || sandbox == ".." {
		return nil, fmt.Errorf("gateway cgroup: bad sandbox id %q", sandbox)
	}
	dirs = GatewayCgroups(sandbox)
	defer func() {
		if err != nil {
			_ = RemoveGatewayCgroups(sandbox)
		}
	}()
	write := func(dir, file, v string) error {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(v), 0); err != nil {
			return fmt.Errorf("gateway cgroup: %s: %w", file, err)
		}
		return nil
	}
	mem, pids := strconv.FormatInt(c.MemoryMax, 10), strconv.Itoa(c.PidsMax)
	if cgroupV2() {
		parent := filepath.Dir(dirs[0])
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return nil, fmt.Errorf("gateway cgroup: %w", err)
		}
		if err := write(parent, "cgroup.subtree_control", "+memory +pids"); err != nil {
			return nil, err
		}
		if err := os.Mkdir(dirs[0], 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("gateway cgroup: %w", err)
		}
		if err := errors.Join(write(dirs[0], "memory.max", mem), write(dirs[0], "memory.swap.max", "0"), write(dirs[0], "pids.max", pids)); err != nil {
			// memory.swap.max is absent without swap accounting: the
			// others must hold.
			if err := errors.Join(write(dirs[0], "memory.max", mem), write(dirs[0], "pids.max", pids)); err != nil {
				return nil, err
			}
		}
		return dirs, nil
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("gateway cgroup: %w", err)
		}
	}
	if err := write(dirs[0], "memory.limit_in_bytes", mem); err != nil {
		return nil, err
	}
	// Swap, where accounted, counts too; absent without swap accounting.
	_ = write(dirs[0], "memory.memsw.limit_in_bytes", mem)
	if err := write(dirs[1], "pids.max", pids); err != nil {
		return nil, err
	}
	return dirs, nil
}

// joinCgroups moves pid (every thread of it) into dirs.
func joinCgroups(dirs []string, pid int) error {
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("gateway cgroup: join %s: %w", d, err)
		}
	}
	return nil
}

// RemoveGatewayCgroups ends whatever is left in sandbox's gateway cgroups
// and removes them. It is safe to call when they do not exist.
func RemoveGatewayCgroups(sandbox string) error {
	if sandbox == "" || strings.ContainsAny(sandbox, "/\x00") || sandbox == "." || sandbox == ".." {
		return nil
	}
	var errs []error
	for _, d := range GatewayCgroups(sandbox) {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := removeCgroup(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeCgroup kills what is in dir and removes it, waiting up to a few
// seconds for the processes to go.
func removeCgroup(dir string) error {
	var err error
	for i := 0; i < 100; i++ {
		if err = unix.Rmdir(dir); err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		if i == 0 {
			killCgroup(dir)
		}
		sleepMs(50)
	}
	return fmt.Errorf("remove gateway cgroup %s: %w", dir, err)
}

func killCgroup(dir string) {
	if os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0) == nil {
		return
	}
	data, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func sleepMs(ms int) {
	ts := unix.NsecToTimespec(int64(ms) * 1e6)
	_ = unix.Nanosleep(&ts, nil)
}

// onLockedThread runs fn on a thread of its own that is never given back
// to Go (it ends when the goroutine does): what fn changes about the thread
// dies with it. The goroutine waits for done before it ends, so a child
// forked by fn with Pdeathsig keeps its parent thread until then.
func onLockedThread(fn func() error, done <-chan struct{}) error {
	ch := make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		ch <- fn()
		if done != nil {
			<-done
		}
	}()
	return <-ch
}

// ProbeConfinement makes and removes a gateway cgroup and reports the
// Landlock ABI: what doctor says about the gateway's confinement.
func ProbeConfinement() (cgroups []string, landlockABI int, err error) {
	id := fmt.Sprintf("doctor-probe-%d", os.Getpid())
	cgroups, err = makeCgroups(id, Confine{}.WithDefaults())
	if err == nil {
		err = RemoveGatewayCgroups(id)
	}
	return cgroups, LandlockABI(), err
}
