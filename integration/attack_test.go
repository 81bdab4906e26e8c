package integration

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/openshell/openshell/test/rootfs"
)

// The attack corpus: each case is an escape tried for real on runsc, as
// the image, the agent or the pod's author would try it, with the defence
// that stops it. A case fails when the attack gets through, so removing a
// defence turns its case red. `make attack` runs only these.
//
// Every case prints three lines:
//
//	ATTACK area/name: what the attacker does
//	  defence: what stops it
//	  verdict: held (evidence) | ESCAPED (evidence)
type attackCase struct {
	area, name string
	attack     string
	defence    string
	// run tries the attack; escaped is true when it got through.
	run func(t *testing.T, e *attackEnv) (escaped bool, evidence string)
}

// attackEnv is what every case shares: a host directory with a secret
// that no sandbox may read or write, and the attacker binary.
type attackEnv struct {
	host     string // a host directory, outside every image
	secret   string // the content of host/secret
	attacker string // the static attacker binary on the host
}

var (
	attackerOnce sync.Once
	attackerBin  string
	attackerErr  error
)

// buildAttacker builds testdata/attacker once, static, so any image can
// run it.
func buildAttacker(dir string) (string, error) {
	attackerOnce.Do(func() {
		attackerBin = filepath.Join(dir, "attacker")
		c := exec.Command("go", "build", "-o", attackerBin, "./testdata/attacker")
		c.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := c.CombinedOutput(); err != nil {
			attackerErr = fmt.Errorf("build attacker: %v\n%s", err, out)
		}
	})
	return attackerBin, attackerErr
}

func newAttackEnv(t *testing.T) *attackEnv {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	bin, err := buildAttacker(binDir)
	if err != nil {
		t.Fatal(err)
	}
	// On the host's root the sandbox (nobody) runs it from the host: a
	// world-readable copy, since binDir is root's alone.
	pub, err := os.MkdirTemp("", "openshell-attack-bin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(pub) })
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(pub, "attacker")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pub, 0o755); err != nil {
		t.Fatal(err)
	}
	host := t.TempDir()
	b := make([]byte, 8)
	rand.Read(b)
	secret := "HOST-SECRET-" + hex.EncodeToString(b)
	if err := os.MkdirAll(filepath.Join(host, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"secret", "data/secret"} {
		if err := os.WriteFile(filepath.Join(host, f), []byte(secret+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The sandbox runs as nobody: a host directory it could write to if
	// it reached it is the strongest test of a write escape, and one it
	// can traverse to (t.TempDir's parent is root's alone) the strongest
	// test of a read escape.
	if err := os.Chmod(host, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(host), 0o755); err != nil {
		t.Fatal(err)
	}
	return &attackEnv{host: host, secret: secret, attacker: bin}
}

// image builds a busybox image with the attacker at /bin/attacker, then
// lets the case plant what it wants in it (links, directories).
func (e *attackEnv) image(t *testing.T, plant func(root string)) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "rootfs")
	if err := rootfs.Busybox(root); err != nil {
		t.Fatal(err)
	}
	e.arm(t, root, plant)
	return root
}

// arm puts the attacker at /bin/attacker in a busybox root, with /work
// and /data open to anyone, then lets the case plant what it wants.
func (e *attackEnv) arm(t *testing.T, root string, plant func(root string)) {
	t.Helper()
	data, err := os.ReadFile(e.attacker)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "attacker"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"work", "data"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o777); err != nil {
			t.Fatal(err)
		}
		os.Chmod(filepath.Join(root, d), 0o777)
	}
	if plant != nil {
		plant(root)
	}
}

func symlink(t *testing.T, target, at string) {
	t.Helper()
	os.RemoveAll(at)
	if err := os.Symlink(target, at); err != nil {
		t.Fatal(err)
	}
}

// inImage runs cmd under policyYAML with image as the root.
func inImage(t *testing.T, image, policyYAML string, cmd ...string) result {
	t.Helper()
	return openshellRun(t, noConfig, []string{"--rootfs", image}, policyYAML, cmd...)
}

// leaked reports whether the host's secret shows anywhere in r.
func (e *attackEnv) leaked(r result) bool {
	return strings.Contains(r.stdout, e.secret) || strings.Contains(r.stderr, e.secret)
}

func (e *attackEnv) readVerdict(r result) (bool, string) {
	if e.leaked(r) {
		return true, "the host secret was read: " + firstLine(r.stdout)
	}
	return false, fmt.Sprintf("exit %d, no secret; %s", r.code, firstLine(r.stdout+r.stderr))
}

// created reports whether path exists on the host, removing it if so.
func created(path string) bool {
	_, err := os.Lstat(path)
	if err == nil {
		os.Remove(path)
		return true
	}
	return false
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 160 {
		s = s[:160] + "..."
	}
	return s
}

const imagePolicy = `version: "1.0"
sandbox:
  filesystem:
    system_paths: []
    allowed_reads: [/bin, /etc]
    allowed_writes: [/tmp]
`

func readPolicy(paths ...string) string {
	return fmt.Sprintf("version: \"1.0\"\nsandbox:\n  filesystem:\n    system_paths: []\n    allowed_reads: [/bin, %s]\n    allowed_writes: [/tmp]\n", strings.Join(paths, ", "))
}

// writePolicyBody reads /bin and reads, writes /tmp and writes.
func writePolicyBody(reads []string, writes ...string) string {
	return fmt.Sprintf("version: \"1.0\"\nsandbox:\n  filesystem:\n    system_paths: []\n    allowed_reads: [%s]\n    allowed_writes: [%s]\n",
		strings.Join(append([]string{"/bin"}, reads...), ", "), strings.Join(append([]string{"/tmp"}, writes...), ", "))
}

// filesystemAttacks are escapes through the image's links and the agent's
// own (finding 1 of the hardening issue).
func filesystemAttacks() []attackCase {
	return []attackCase{
		{area: "filesystem", name: "image-link-to-host-root",
			attack:  "the image's /lib64 is a symlink to /; the policy reads /lib64; read the host's files through it",
			defence: "bind sources resolved inside the image: / is the image's own root",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				img := e.image(t, func(root string) { symlink(t, "/", root+"/lib64") })
				return e.readVerdict(inImage(t, img, readPolicy("/lib64"), "/bin/cat", "/lib64"+e.host+"/secret"))
			}},
		{area: "filesystem", name: "image-link-absolute-host-dir",
			attack:  "the image's /lib64 is a symlink to a host directory's absolute path",
			defence: "the target is a name inside the image, where it does not exist: the path is dropped",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				img := e.image(t, func(root string) { symlink(t, e.host, root+"/lib64") })
				return e.readVerdict(inImage(t, img, readPolicy("/lib64"), "/bin/cat", "/lib64/secret"))
			}},
		{area: "filesystem", name: "image-etc-dotdot",
			attack:  "the image's /etc is ../../../../<host dir>: climb out of the image root",
			defence: "a link that climbs above the image root is refused; nothing starts",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				img := e.image(t, func(root string) {
					os.RemoveAll(root + "/etc")
					symlink(t, strings.Repeat("../", 12)+strings.TrimPrefix(e.host, "/"), root+"/etc")
				})
				r := inImage(t, img, imagePolicy, "/bin/cat", "/etc/secret")
				if e.leaked(r) {
					return true, "read the host secret"
				}
				if r.code == 0 || !strings.Contains(r.stderr, "leaves its root") {
					return true, fmt.Sprintf("not refused: exit %d %s", r.code, firstLine(r.stderr))
				}
				return false, firstLine(r.stderr)
			}},
		{area: "filesystem", name: "image-linked-parent",
			attack:  "the image's /opt is a link to a host directory; the policy lists /opt/data",
			defence: "every component of the path is resolved inside the image",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				img := e.image(t, func(root string) { symlink(t, e.host, root+"/opt") })
				return e.readVerdict(inImage(t, img, readPolicy("/opt/data"), "/bin/cat", "/opt/data/secret"))
			}},
		{area: "filesystem", name: "image-linked-workdir",
			attack:  "the image's WORKDIR /work is a link to a host directory; the OpenShell policy has include_workdir: read and write there",
			defence: "the workdir is resolved inside the image like every policy path",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				img := e.image(t, func(root string) { os.RemoveAll(root + "/work"); symlink(t, e.host, root+"/work") })
				pol := "version: 1\nfilesystem_policy:\n  include_workdir: true\n  read_only: [/bin]\nprocess: {run_as_user: \"65534\", run_as_group: \"65534\"}\n"
				r := openshellRun(t, noConfig, []string{"--rootfs", img, "--workdir", "/work"}, pol, "/bin/sh", "-c", "cat /work/secret; /bin/attacker write /work/pwned")
				if created(filepath.Join(e.host, "pwned")) {
					return true, "wrote into the host directory"
				}
				return e.readVerdict(r)
			}},
		{area: "filesystem", name: "image-work-link-to-etc",
			attack:  "the image's /work is a link to /etc; the policy makes /work writable: read the host's /etc/hostname",
			defence: "/etc is the image's /etc",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				img := e.image(t, func(root string) { os.RemoveAll(root + "/work"); symlink(t, "/etc", root+"/work") })
				r := inImage(t, img, writePolicyBody(nil, "/work"), "/bin/cat", "/work/hostname")
				host, _ := os.ReadFile("/etc/hostname")
				if hn := strings.TrimSpace(string(host)); hn != "" && hn != "busybox" && strings.Contains(r.stdout, hn) {
					return true, "read the host's hostname " + hn
				}
				return false, fmt.Sprintf("exit %d, read %q", r.code, strings.TrimSpace(r.stdout))
			}},
		{area: "filesystem", name: "image-data-dotdot-write",
			attack:  "the image's /data is ../../<host dir>, writable by the policy: create a file there",
			defence: "a link that climbs above the image root is refused; nothing starts",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				img := e.image(t, func(root string) {
					os.RemoveAll(root + "/data")
					symlink(t, strings.Repeat("../", 12)+strings.TrimPrefix(e.host, "/"), root+"/data")
				})
				r := inImage(t, img, writePolicyBody(nil, "/data"), "/bin/attacker", "write", "/data/pwned")
				if created(filepath.Join(e.host, "pwned")) {
					return true, "created a file in the host directory"
				}
				return false, fmt.Sprintf("exit %d %s", r.code, firstLine(r.stderr))
			}},
		{area: "filesystem", name: "agent-planted-link",
			attack:  "an agent plants cache -> <host dir> in its writable workspace; a later sandbox on the host's root lists the workspace's cache",
			defence: "on the host's root only root-owned links are followed; the agent's (uid 65534) is refused",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				ws := t.TempDir()
				os.Chmod(ws, 0o777)
				bin := filepath.Dir(e.attacker)
				plant := fmt.Sprintf("version: \"1.0\"\nsandbox:\n  filesystem:\n    system_paths: []\n    allowed_reads: [%s]\n    allowed_writes: [%s]\n", bin, ws)
				if r := openshellRun(t, noConfig, nil, plant, e.attacker, "symlink", e.host, ws+"/cache"); !strings.Contains(r.stdout, "ALLOWED") {
					return false, "the agent could not plant the link: " + firstLine(r.stdout+r.stderr)
				}
				later := fmt.Sprintf("version: \"1.0\"\nsandbox:\n  filesystem:\n    system_paths: []\n    allowed_reads: [/bin, /usr, /lib, /lib64, %s/cache]\n", ws)
				r := openshellRun(t, noConfig, nil, later, "/bin/cat", ws+"/cache/secret")
				if e.leaked(r) {
					return true, "the later sandbox read the host directory"
				}
				if !strings.Contains(r.stderr, "untrusted") {
					return true, "not refused: " + firstLine(r.stderr)
				}
				return false, firstLine(r.stderr)
			}},
		{area: "filesystem", name: "listed-shadow",
			attack:  "the policy lists /etc/shadow itself: read the password hashes",
			defence: "credential files are masked even when listed",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				// World-readable, as some images ship it: only the mask
				// stands between the agent and the hashes.
				img := e.image(t, func(root string) { os.Chmod(root+"/etc/shadow", 0o644) })
				r := inImage(t, img, readPolicy("/etc/shadow"), "/bin/cat", "/etc/shadow")
				if strings.Contains(r.stdout, "secret-hash") {
					return true, "read " + firstLine(r.stdout)
				}
				return false, fmt.Sprintf("exit %d, read %q", r.code, r.stdout)
			}},
		{area: "filesystem", name: "shadow-through-etc",
			attack:  "the policy reads /etc: read /etc/shadow inside it",
			defence: "credential files under a visible directory are masked",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				img := e.image(t, func(root string) { os.Chmod(root+"/etc/shadow", 0o644) })
				r := inImage(t, img, imagePolicy, "/bin/cat", "/etc/shadow")
				if strings.Contains(r.stdout, "secret-hash") {
					return true, "read " + firstLine(r.stdout)
				}
				return false, fmt.Sprintf("exit %d, read %q", r.code, r.stdout)
			}},
		{area: "network", name: "agent-edits-own-policy",
			attack:  "the policy file is the repository's .openshell/policy.yaml, in the agent's writable workspace: the agent adds an egress rule and hot reload takes it",
			defence: "a policy file inside a writable path is refused at create; nothing starts",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				ws := t.TempDir()
				os.MkdirAll(filepath.Join(ws, ".openshell"), 0o755)
				pf := filepath.Join(ws, ".openshell", "policy.yaml")
				os.WriteFile(pf, []byte(fmt.Sprintf("version: \"1.0\"\nsandbox:\n  filesystem:\n    allowed_writes: [/tmp, %s]\n", ws)), 0o644)
				c := exec.Command(openshellBin, "run", "--config", "/nonexistent/config.toml", "--runsc", runscBin, "--state-dir", stateDir, "--policy", pf, "--", "/bin/true")
				out, err := c.CombinedOutput()
				assertNothingLeft(t, stateDir)
				if err == nil {
					return true, "the sandbox started with its policy in its own workspace"
				}
				return false, firstLine(string(out))
			}},
		{area: "network", name: "agent-swaps-policy-link",
			attack:  "the policy is reached through a link in the agent's writable workspace (.openshell -> a safe dir): the agent replaces the link with its own directory and policy",
			defence: "a policy looked up through a directory the sandbox can write is refused at create",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				ws, safe := t.TempDir(), t.TempDir()
				pf := filepath.Join(safe, "policy.yaml")
				os.WriteFile(pf, []byte(fmt.Sprintf("version: \"1.0\"\nsandbox:\n  filesystem:\n    allowed_writes: [/tmp, %s]\n", ws)), 0o644)
				os.Symlink(safe, filepath.Join(ws, ".openshell"))
				c := exec.Command(openshellBin, "run", "--config", noConfig, "--runsc", runscBin, "--state-dir", stateDir, "--policy", filepath.Join(ws, ".openshell", "policy.yaml"), "--", "/bin/true")
				out, err := c.CombinedOutput()
				assertNothingLeft(t, stateDir)
				if err == nil {
					return true, "the sandbox started with its policy behind a link it can replace"
				}
				return false, firstLine(string(out))
			}},
		{area: "filesystem", name: "write-read-only-path",
			attack:  "write into a path the policy only reads",
			defence: "read-only binds",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				img := e.image(t, nil)
				r := inImage(t, img, imagePolicy, "/bin/attacker", "write", "/etc/pwned")
				if created(filepath.Join(img, "etc", "pwned")) {
					return true, "wrote into the image's /etc"
				}
				return false, firstLine(r.stdout)
			}},
	}
}

// processAttacks try for privileges and namespaces (findings 5, 6, 8).
func processAttacks() []attackCase {
	var cases []attackCase
	for _, a := range []struct{ name, what string }{
		{"clone-newuser", "clone(CLONE_NEWUSER): a user namespace, past unshare's denial"},
		{"clone-newnet", "clone(CLONE_NEWNET): a network namespace of its own"},
		{"clone-newns", "clone(CLONE_NEWNS): a mount namespace of its own"},
		{"clone-newpid", "clone(CLONE_NEWPID): a pid namespace of its own"},
		{"clone3-newuser", "clone3 with CLONE_NEWUSER in its struct"},
		{"unshare-newuser", "unshare(CLONE_NEWUSER)"},
		{"raw-socket", "a raw ICMP socket"},
		{"packet-socket", "an AF_PACKET socket"},
		{"mount-tmpfs", "mount a tmpfs over /tmp"},
		{"setuid-root", "setuid(0)"},
	} {
		cases = append(cases, attackCase{area: "process", name: a.name,
			attack:  a.what,
			defence: "the sandbox's seccomp filter, no capabilities, no new privileges",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				r := inImage(t, e.image(t, nil), imagePolicy, "/bin/attacker", a.name, "/tmp")
				return strings.Contains(r.stdout, "ALLOWED"), firstLine(r.stdout + r.stderr)
			}})
	}
	// The same, under a policy whose allowlist names the syscall: the
	// denial must still come first.
	allowlist := imagePolicy + "  process:\n    seccomp: {default_action: SCMP_ACT_ERRNO, allowed_syscalls: [" + strings.Join(attackerSyscalls, ", ") + "]}\n"
	for _, name := range []string{"raw-socket", "clone-newuser", "chmod-setuid"} {
		cases = append(cases, attackCase{area: "process", name: name + "-allowlisted",
			attack:  name + " under a policy whose seccomp allowlist names the syscall",
			defence: "openshell's denials go before the policy's allowlist (runsc takes the first rule that matches)",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				r := inImage(t, e.image(t, nil), allowlist, "/bin/attacker", name, "/tmp/f")
				if !strings.Contains(r.stdout, "ALLOWED") && !strings.Contains(r.stdout, "DENIED") {
					return false, "the attacker did not run under the allowlist: " + firstLine(r.stdout+r.stderr)
				}
				return strings.Contains(r.stdout, "ALLOWED"), firstLine(r.stdout)
			}})
	}
	for _, a := range []string{"chmod-setuid", "chmod-setgid", "fchmod-setuid", "open-setuid", "mknod-setuid"} {
		cases = append(cases, attackCase{area: "process", name: a,
			attack:  a + " on a file in a writable bind, for a host user to run later",
			defence: "seccomp refuses set-id modes; checked from the host side",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				img := e.image(t, nil)
				r := inImage(t, img, writePolicyBody(nil, "/data"), "/bin/attacker", a, "/data/f")
				st, err := os.Stat(filepath.Join(img, "data", "f"))
				if err == nil && st.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
					return true, "the host file is " + st.Mode().String()
				}
				return false, firstLine(r.stdout)
			}})
	}
	for _, u := range []struct{ name, spelling string }{
		{"root-00", `"00"`}, {"root-0000", `"0000"`}, {"root-yaml-000", `000`}, {"group-root-00", `"1000", run_as_group: "00"`},
		{"uid-minus-one", `"4294967295"`},
	} {
		cases = append(cases, attackCase{area: "process", name: u.name,
			attack:  "run_as_user: " + u.spelling,
			defence: "ids parsed as numbers: 0 in any spelling and (uid_t)-1 refused; nothing starts",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				pol := imagePolicy + "  process: {run_as_user: " + u.spelling + "}\n"
				r := inImage(t, e.image(t, nil), pol, "/bin/id", "-u")
				if r.code == 0 {
					return true, "started as uid " + strings.TrimSpace(r.stdout)
				}
				return false, firstLine(r.stderr)
			}})
	}
	return cases
}

// attackerSyscalls is what the attacker binary (a Go program) needs to
// start, plus the syscalls the allowlisted cases try.
var attackerSyscalls = []string{
	"read", "write", "close", "mmap", "munmap", "mprotect", "brk", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
	"pread64", "sched_yield", "madvise", "nanosleep", "getpid", "gettid", "clone", "execve", "fcntl", "sigaltstack",
	"prctl", "arch_prctl", "futex", "sched_getaffinity", "epoll_ctl", "epoll_pwait", "epoll_create1", "eventfd2",
	"tgkill", "openat", "prlimit64", "exit", "exit_group", "wait4", "socket", "chmod", "fchmodat", "set_tid_address",
	"getrandom", "rseq", "uname", "newfstatat", "fstat", "readlinkat", "getrlimit",
}

func TestAttack(t *testing.T) {
	e := newAttackEnv(t)
	var cases []attackCase
	cases = append(cases, filesystemAttacks()...)
	cases = append(cases, processAttacks()...)
	cases = append(cases, engineAttacks()...)
	cases = append(cases, policyChoiceAttacks()...)
	cases = append(cases, validatorAttacks()...)
	cases = append(cases, networkAttacks()...)
	held, escapedN := 0, 0
	for _, c := range cases {
		t.Run(c.area+"/"+c.name, func(t *testing.T) {
			escaped, evidence := c.run(t, e)
			verdict := "held"
			if escaped {
				verdict = "ESCAPED"
				escapedN++
			} else {
				held++
			}
			fmt.Printf("ATTACK %s/%s: %s\n  defence: %s\n  verdict: %s (%s)\n", c.area, c.name, c.attack, c.defence, verdict, evidence)
			if escaped {
				t.Errorf("%s/%s escaped: %s", c.area, c.name, evidence)
			}
		})
	}
	fmt.Printf("attack corpus: %d held, %d escaped (of %d cases)\n", held, escapedN, len(cases))
	if len(cases) < 40 {
		t.Errorf("the corpus has %d cases; it keeps at least 40", len(cases))
	}
}

// specMount is a bind of a host path in an engine's spec.
func specMount(dst, src string, opts ...string) specs.Mount {
	return specs.Mount{Destination: dst, Type: "bind", Source: src, Options: append([]string{"rbind"}, opts...)}
}
