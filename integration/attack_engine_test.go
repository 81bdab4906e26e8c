package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// attackIDs numbers the engine cases' containers: runsc finds ids by
// prefix, so they all have one length.
var attackIDs atomic.Int32

// engineRun runs args in a bundle over an attack image under
// openshell-runtime, as an engine would, after edit has changed the
// engine's spec (the pod author's part).
func (e *attackEnv) engineRun(t *testing.T, config string, annotations map[string]string, edit func(*specs.Spec), args ...string) result {
	t.Helper()
	r := e.engineRunKeep(t, config, annotations, edit, args...)
	assertRuntimeClean(t)
	return r
}

// engineRunKeep is engineRun for a case that still runs a container of
// its own: it checks for leftovers itself.
func (e *attackEnv) engineRunKeep(t *testing.T, config string, annotations map[string]string, edit func(*specs.Spec), args ...string) result {
	t.Helper()
	return e.engineRunImageKeep(t, config, annotations, nil, edit, args...)
}

// engineRunImage is engineRun over an image the case plants in.
func (e *attackEnv) engineRunImage(t *testing.T, config string, annotations map[string]string, plant func(root string), edit func(*specs.Spec), args ...string) result {
	t.Helper()
	r := e.engineRunImageKeep(t, config, annotations, plant, edit, args...)
	assertRuntimeClean(t)
	return r
}

func (e *attackEnv) engineRunImageKeep(t *testing.T, config string, annotations map[string]string, plant func(root string), edit func(*specs.Spec), args ...string) result {
	t.Helper()
	bundle := busyboxBundle(t, annotations, args...)
	e.arm(t, filepath.Join(bundle, "rootfs"), plant)
	if edit != nil {
		s := readBundleSpec(t, bundle)
		edit(s)
		writeBundleSpec(t, bundle, s)
	}
	id := fmt.Sprintf("attack-%04d", attackIDs.Add(1))
	return ortWith(t, config, "run", "--bundle", bundle, id)
}

// replaceMount puts m in place of the spec's mount at its destination.
func replaceMount(s *specs.Spec, m specs.Mount) {
	for i := range s.Mounts {
		if s.Mounts[i].Destination == m.Destination {
			s.Mounts[i] = m
			return
		}
	}
	s.Mounts = append(s.Mounts, m)
}

const enginePolicy = `version: "1.0"
sandbox:
  filesystem:
    system_paths: []
    allowed_reads: [/bin, /etc]
    allowed_writes: [/tmp]
`

// engineAttacks are what the engine's spec, written from a pod spec or a
// docker run line, can try (findings 2, 3, 7 and the join annotations).
func engineAttacks() []attackCase {
	pol := inline(enginePolicy)
	cases := []attackCase{
		{area: "engine", name: "bind-host-proc",
			attack:  "a bind of the host's /proc at /proc: see the host's processes",
			defence: "a kernel path is kept only as its kernel filesystem; the bind is dropped",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				pid := strconv.Itoa(os.Getpid())
				r := e.engineRun(t, runtimeConfig, pol, func(s *specs.Spec) { replaceMount(s, specMount("/proc", "/proc")) },
					"/bin/sh", "-c", "test -e /proc/"+pid+"/cmdline && echo HOST-PROC-VISIBLE; echo done")
				return strings.Contains(r.stdout, "HOST-PROC-VISIBLE"), fmt.Sprintf("exit %d; host pid %s not in the sandbox's /proc: %v", r.code, pid, !strings.Contains(r.stdout, "VISIBLE"))
			}},
		{area: "engine", name: "bind-host-sys",
			attack:  "a bind of the host's /sys at /sys: read the host's network interfaces",
			defence: "only sysfs is kept at /sys",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				var names []string
				ents, _ := os.ReadDir("/sys/class/net")
				for _, n := range ents {
					if n.Name() != "lo" {
						names = append(names, n.Name())
					}
				}
				r := e.engineRun(t, runtimeConfig, pol, func(s *specs.Spec) { replaceMount(s, specMount("/sys", "/sys")) }, "/bin/ls", "/sys/class/net")
				for _, n := range names {
					if strings.Contains(r.stdout, n) {
						return true, "saw the host's " + n
					}
				}
				return false, fmt.Sprintf("exit %d; sandbox's interfaces %q, host's %v", r.code, strings.TrimSpace(r.stdout), names)
			}},
		{area: "engine", name: "bind-host-dev",
			attack:  "a bind of the host's /dev at /dev: reach the host's devices",
			defence: "only a tmpfs is kept at /dev",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				r := e.engineRun(t, runtimeConfig, pol, func(s *specs.Spec) { replaceMount(s, specMount("/dev", "/dev")) }, "/bin/ls", "/dev")
				// What gVisor's own /dev holds; anything else came from
				// the host.
				gvisor := map[string]bool{}
				for _, n := range strings.Fields("char core fd full fuse net null ptmx pts random shm stderr stdin stdout tty urandom zero mqueue") {
					gvisor[n] = true
				}
				for _, n := range strings.Fields(r.stdout) {
					if !gvisor[n] {
						return true, "saw the host's /dev/" + n
					}
				}
				return false, fmt.Sprintf("exit %d; /dev is gVisor's: %q", r.code, strings.Join(strings.Fields(r.stdout), " "))
			}},
	}
	for _, dst := range []string{"/dev/shm", "/dev/mqueue"} {
		cases = append(cases, attackCase{area: "engine", name: "host-dir-at-" + strings.ReplaceAll(strings.TrimPrefix(dst, "/"), "/", "-"),
			attack:  "a host directory (hostPath, docker -v) bound rw at " + dst + " under a policy that writes only /tmp: write into it",
			defence: "a bind at a kernel path is not the kernel filesystem: dropped (/dev/shm becomes a private tmpfs)",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				r := e.engineRun(t, runtimeConfig, pol, func(s *specs.Spec) { replaceMount(s, specMount(dst, e.host, "rw")) },
					"/bin/sh", "-c", "cat "+dst+"/secret; /bin/attacker write "+dst+"/pwned")
				if created(filepath.Join(e.host, "pwned")) {
					return true, "wrote into the host directory"
				}
				return e.readVerdict(r)
			}})
	}
	cases = append(cases, attackCase{area: "engine", name: "gvisor-annotation-drops-seccomp",
		attack:  "annotations io.kubernetes.cri.container-name=c and dev.gvisor.internal.seccomp.c=RuntimeDefault: runsc drops the spec's whole seccomp filter, then exec under allow_exec: false",
		defence: "gVisor's own annotations (dev.gvisor.*) from the engine are refused; nothing starts",
		run: func(t *testing.T, e *attackEnv) (bool, string) {
			ann := inline(enginePolicy + "  process: {allow_exec: false}\n")
			ann["io.kubernetes.cri.container-name"] = "c"
			ann["dev.gvisor.internal.seccomp.c"] = "RuntimeDefault"
			r := e.engineRun(t, runtimeConfig, ann, nil, "/bin/sh", "-c", "/bin/true && echo EXEC-RAN; /bin/attacker clone-newuser")
			if strings.Contains(r.stdout, "EXEC-RAN") || strings.Contains(r.stdout, "ALLOWED") {
				return true, "the seccomp filter was gone: " + firstLine(r.stdout)
			}
			if r.code == 0 {
				return true, "started with gVisor's annotations"
			}
			return false, firstLine(r.stderr)
		}})
	cases = append(cases, attackCase{area: "engine", name: "nvproxy-annotation-spelt-1",
		attack:  "dev.gvisor.internal.nvproxy=1 (runsc's ParseBool reads it as true) under a policy with no gpu section",
		defence: "every value runsc takes for true is a GPU request, refused without a gpu policy",
		run: func(t *testing.T, e *attackEnv) (bool, string) {
			ann := inline(enginePolicy)
			ann["dev.gvisor.internal.nvproxy"] = "1"
			r := e.engineRun(t, runtimeConfig, ann, nil, "/bin/true")
			if r.code == 0 {
				return true, "started with nvproxy asked for"
			}
			return false, firstLine(r.stderr)
		}})
	cases = append(cases, attackCase{area: "engine", name: "volume-mount-point-through-image-link",
		attack:  "the image's /opt/app is a link to a host directory; a volume at /opt/app/vol makes runsc create its mount point there",
		defence: "the policy's /opt is the image's own, resolved inside it; the mount point is made inside that object",
		run: func(t *testing.T, e *attackEnv) (bool, string) {
			vol := t.TempDir()
			r := e.engineRunImage(t, runtimeConfig, inline(writePolicyBody([]string{"/opt"})), func(root string) {
				os.MkdirAll(root+"/opt", 0o755)
				symlink(t, e.host, root+"/opt/app")
			}, func(s *specs.Spec) {
				s.Mounts = append(s.Mounts, specMount("/opt/app/vol", vol, "ro"))
			}, "/bin/ls", "/opt/app")
			if created(filepath.Join(e.host, "vol")) {
				return true, "runsc made a directory in the host directory"
			}
			if strings.Contains(r.stdout, "secret") {
				return true, "the host directory is visible: " + firstLine(r.stdout)
			}
			return false, fmt.Sprintf("exit %d %s", r.code, firstLine(r.stdout+r.stderr))
		}})
	cases = append(cases, attackCase{area: "engine", name: "read-only-volume-under-writes",
		attack:  "a read-only volume (readOnly: true, -v src:dst:ro) at /tmp/cfg, under the policy's writable /tmp: rewrite it",
		defence: "an engine's ro stays ro: the policy only narrows",
		run: func(t *testing.T, e *attackEnv) (bool, string) {
			// Writable by anyone on the host: only the ro stands in the way.
			os.Chmod(filepath.Join(e.host, "data"), 0o777)
			r := e.engineRun(t, runtimeConfig, pol, func(s *specs.Spec) {
				s.Mounts = append(s.Mounts, specMount("/tmp/cfg", filepath.Join(e.host, "data"), "ro"))
			}, "/bin/attacker", "write", "/tmp/cfg/pwned")
			if created(filepath.Join(e.host, "data", "pwned")) {
				return true, "wrote into the read-only volume"
			}
			return false, firstLine(r.stdout)
		}})
	for _, stage := range []string{"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"} {
		cases = append(cases, attackCase{area: "engine", name: "hook-" + stage,
			attack:  "an OCI " + stage + " hook in the spec: runsc would run it on the host as root",
			defence: "hooks are dropped unless the runtime configuration's allowed_hooks names them",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				mark := filepath.Join(e.host, "hook-ran-"+stage)
				hook := specs.Hook{Path: "/bin/sh", Args: []string{"sh", "-c", "id > " + mark}}
				r := e.engineRun(t, runtimeConfig, pol, func(s *specs.Spec) {
					h := &specs.Hooks{}
					switch stage {
					case "prestart":
						//lint:ignore SA1019 the deprecated stage is the one engines still send
						h.Prestart = []specs.Hook{hook}
					case "createRuntime":
						h.CreateRuntime = []specs.Hook{hook}
					case "createContainer":
						h.CreateContainer = []specs.Hook{hook}
					case "startContainer":
						h.StartContainer = []specs.Hook{hook}
					case "poststart":
						h.Poststart = []specs.Hook{hook}
					case "poststop":
						h.Poststop = []specs.Hook{hook}
					}
					s.Hooks = h
				}, "/bin/true")
				time.Sleep(50 * time.Millisecond)
				if created(mark) {
					return true, "the hook ran on the host"
				}
				return false, fmt.Sprintf("exit %d; no hook ran", r.code)
			}})
	}
	cases = append(cases, attackCase{area: "resources", name: "builtin-memory",
		attack:  "a container that names no policy (the built-in one) allocates 3 GiB",
		defence: "the built-in policy caps memory at 2 GiB: the sandbox's cgroup kills it",
		run: func(t *testing.T, e *attackEnv) (bool, string) {
			t.Cleanup(func() {
				dirs, _ := filepath.Glob("/sys/fs/cgroup/*/openshell-attack")
				for _, d := range dirs {
					os.Remove(d)
				}
			})
			cgroup := func(s *specs.Spec) { s.Linux.CgroupsPath = "/openshell-attack/builtin-memory" }
			// The control: the same allocation under a policy with no
			// memory limit goes through, so the kill is the limit's.
			if r := e.engineRun(t, runtimeConfig, pol, cgroup, "/bin/attacker", "alloc", "3072"); !strings.Contains(r.stdout, "allocated 3072") {
				t.Fatalf("control: 3 GiB without a limit failed: exit %d %s%s", r.code, r.stdout, r.stderr)
			}
			r := e.engineRun(t, "/nonexistent/config.toml", nil, cgroup, "/bin/attacker", "alloc", "3072")
			if strings.Contains(r.stdout, "allocated 3072") {
				return true, "allocated 3 GiB"
			}
			return false, fmt.Sprintf("exit %d %s", r.code, firstLine(r.stdout))
		}})
	cases = append(cases, attackCase{area: "engine", name: "join-sandbox-other-policy",
		attack:  "the CRI annotations container-type=container and sandbox-id=<a running sandbox of ours>, with a wider policy: share its sandbox and egress",
		defence: "a container joins only a sandbox of ours that runs the same policy (sha256)",
		run: func(t *testing.T, e *attackEnv) (bool, string) {
			host := fmt.Sprintf("attack-%04d", attackIDs.Add(1))
			bundle := busyboxBundle(t, inline(enginePolicy), "/bin/sleep", "60")
			s := readBundleSpec(t, bundle)
			s.Annotations["io.kubernetes.cri.container-type"] = "sandbox"
			writeBundleSpec(t, bundle, s)
			if r := ort(t, "create", "--bundle", bundle, host); r.code != 0 {
				t.Fatalf("create the pod's sandbox: %s", r.stderr)
			}
			defer func() {
				ort(t, "kill", host, "KILL")
				ort(t, "delete", "--force", host)
				assertRuntimeClean(t)
			}()
			if r := ort(t, "start", host); r.code != 0 {
				t.Fatalf("start the pod's sandbox: %s", r.stderr)
			}
			ann := inline(writePolicyBody([]string{"/etc"}, "/data"))
			ann["io.kubernetes.cri.container-type"] = "container"
			ann["io.kubernetes.cri.sandbox-id"] = host
			r := e.engineRunKeep(t, runtimeConfig, ann, nil, "/bin/true")
			if r.code == 0 {
				return true, "joined a sandbox that runs another policy"
			}
			return false, firstLine(r.stderr)
		}})
	return cases
}

// policyChoiceAttacks are the pod author choosing the policy (finding 4).
func policyChoiceAttacks() []attackCase {
	strict := "/nonexistent/config.toml" // the secure defaults
	shadowHead := func() string {
		b, _ := os.ReadFile("/etc/shadow")
		line, _, _ := strings.Cut(string(b), "\n")
		return line
	}
	refused := func(r result, mustNotShow ...string) (bool, string) {
		if r.code == 0 {
			return true, "the container started"
		}
		for _, s := range mustNotShow {
			if s != "" && (strings.Contains(r.stderr, s) || strings.Contains(r.stdout, s)) {
				return true, "the error echoed " + strconv.Quote(firstLine(s))
			}
		}
		return false, firstLine(r.stderr)
	}
	return []attackCase{
		{area: "policy-choice", name: "annotation-host-file",
			attack:  "io.openshell.policy=/etc/shadow: read a host file through the parse error in pod events",
			defence: "an annotation names a policy in policy_dir, or a path under policy_paths; file contents are never echoed",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				r := e.engineRun(t, strict, map[string]string{"io.openshell.policy": "/etc/shadow"}, nil, "/bin/true")
				return refused(r, shadowHead())
			}},
		{area: "policy-choice", name: "annotation-host-file-echo",
			attack:  "io.openshell.policy=<a host file whose first key is a secret>: the unknown-field error echoes it",
			defence: "paths only under policy_paths, and an annotation-chosen file's errors show places, not content",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				f := filepath.Join(e.host, "credentials")
				os.WriteFile(f, []byte("version: \"1.0\"\nsandbox: {}\n"+e.secret+": x\n"), 0o600)
				return refused(e.engineRun(t, strict, map[string]string{"io.openshell.policy": f}, nil, "/bin/true"), e.secret)
			}},
		{area: "policy-choice", name: "annotation-own-file",
			attack:  "io.openshell.policy=<a permissive file the pod author placed on the node>",
			defence: "absolute paths only under the configuration's policy_paths (none by default)",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				pf := writePolicy(t, enginePolicy)
				return refused(e.engineRun(t, strict, map[string]string{"io.openshell.policy": pf}, nil, "/bin/true"))
			}},
		{area: "policy-choice", name: "annotation-traversal",
			attack:  "io.openshell.policy=../../../etc/shadow: climb out of policy_dir",
			defence: "a name is letters, digits, '.', '_' and '-' only",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				return refused(e.engineRun(t, strict, map[string]string{"io.openshell.policy": "../../../etc/shadow"}, nil, "/bin/true"), shadowHead())
			}},
		{area: "policy-choice", name: "inline-by-default",
			attack:  "io.openshell.policy.inline with a policy of the pod author's own",
			defence: "inline policies are refused unless allow_inline_policy = true",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				return refused(e.engineRun(t, strict, inline(enginePolicy), nil, "/bin/true"))
			}},
		{area: "policy-choice", name: "ceiling-widened-by-name",
			attack:  "name a policy in policy_dir that writes /data, above the operator's ceiling (writes /tmp only)",
			defence: "ceiling_policy: an annotation-chosen policy may only narrow it; the widened fields are named",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				dir := t.TempDir()
				os.WriteFile(filepath.Join(dir, "ceiling.yaml"), []byte(enginePolicy), 0o644)
				os.WriteFile(filepath.Join(dir, "wide.yaml"), []byte(writePolicyBody([]string{"/etc"}, "/data")), 0o644)
				cfg := writeConfig(t, fmt.Sprintf("policy_dir = %q\nceiling_policy = %q\n", dir, filepath.Join(dir, "ceiling.yaml")))
				r := e.engineRun(t, cfg, map[string]string{"io.openshell.policy": "wide"}, nil, "/bin/true")
				if esc, ev := refused(r); esc {
					return esc, ev
				}
				if !strings.Contains(r.stderr, "allowed_writes") {
					return true, "refused without naming the widened field: " + firstLine(r.stderr)
				}
				return false, firstLine(r.stderr)
			}},
		{area: "policy-choice", name: "ceiling-widened-inline",
			attack:  "an inline policy that allows exec where the operator's ceiling forbids it",
			defence: "ceiling_policy holds inline policies too",
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				dir := t.TempDir()
				os.WriteFile(filepath.Join(dir, "ceiling.yaml"), []byte(enginePolicy+"  process: {allow_exec: false}\n"), 0o644)
				cfg := writeConfig(t, fmt.Sprintf("allow_inline_policy = true\nceiling_policy = %q\n", filepath.Join(dir, "ceiling.yaml")))
				return refused(e.engineRun(t, cfg, inline(enginePolicy+"  process: {allow_exec: true}\n"), nil, "/bin/true"))
			}},
	}
}

// validatorAttacks are policies built to slip past validation (finding 9):
// none may start a sandbox.
func validatorAttacks() []attackCase {
	bad := func(name, attack, defence, policyYAML string, check func(r result) (bool, string)) attackCase {
		return attackCase{area: "validator", name: name, attack: attack, defence: defence,
			run: func(t *testing.T, e *attackEnv) (bool, string) {
				start := time.Now()
				r := inImage(t, e.image(t, nil), policyYAML, "/bin/true")
				if r.code == 0 {
					return true, "the sandbox started"
				}
				if d := time.Since(start); d > 20*time.Second {
					return true, fmt.Sprintf("refusal took %s", d)
				}
				if strings.ContainsAny(r.stderr, "\x00\x1b") {
					return true, "a control character reached the terminal"
				}
				if check != nil {
					return check(r)
				}
				return false, firstLine(r.stderr)
			}}
	}
	egress := func(host string) string {
		return imagePolicy + "  network:\n    allowed_egress: [{host: " + host + ", port: 443}]\n"
	}
	many := strings.Builder{}
	many.WriteString("version: \"1.0\"\nsandbox:\n  filesystem:\n    allowed_reads: [/0")
	for i := 1; i < 75000; i++ {
		fmt.Fprintf(&many, ",/%d", i)
	}
	many.WriteString("]\n")
	// One bad endpoint behind an alias, listed ten times per policy, in a
	// hundred policies: a validator that follows aliases reports it 1,000
	// times over.
	bomb := "version: 1\nfilesystem_policy: {read_only: [/bin]}\nprocess: {run_as_user: \"65534\"}\nnetwork_policies:\n"
	bomb += "  p0: {name: p0, endpoints: &l [" + strings.TrimSuffix(strings.Repeat("{host: \"bad host\", port: 0}, ", 10), ", ") + "]}\n"
	for i := 1; i < 100; i++ {
		bomb += fmt.Sprintf("  p%d: {name: p%d, endpoints: *l}\n", i, i)
	}
	return []attackCase{
		bad("wildcard-tld-trailing-dot", "egress to *.com. (a trailing dot past the top-level check)", "one host normal form before every check", egress(`"*.com."`), nil),
		bad("wildcard-public-suffix", "egress to *.co.uk", "wildcards never cover a public suffix", egress(`"*.co.uk"`), nil),
		bad("merge-key", "a <<: merge key in network_policies becomes a network policy named <<", "merge keys refused",
			"version: 1\nfilesystem_policy: {read_only: [/bin]}\nprocess: {run_as_user: \"65534\"}\nnetwork_policies:\n  <<: {name: x, endpoints: [{host: a.example, port: 443}]}\n", nil),
		bad("alias-bomb", "one bad value behind nested aliases multiplied into 28,000 errors", "anchors and aliases refused; at most 50 errors", bomb,
			func(r result) (bool, string) {
				if n := strings.Count(r.stderr, "\n"); n > 60 {
					return true, fmt.Sprintf("%d lines of errors", n)
				}
				return false, firstLine(r.stderr)
			}),
		bad("escape-in-path", "a path with a terminal escape and a newline, to forge the error output", "control characters refused and escaped", "version: \"1.0\"\nsandbox:\n  filesystem:\n    allowed_reads: [\"/tmp/\\e[31mx\\nforged: ok\"]\n", nil),
		bad("nul-in-path", "a NUL in a path", "control characters refused", "version: \"1.0\"\nsandbox:\n  filesystem:\n    allowed_reads: [\"/bin\\0/x\"]\n", nil),
		bad("writable-proc", "/proc/sys made writable", "writable kernel paths refused", "version: \"1.0\"\nsandbox:\n  filesystem:\n    allowed_writes: [/proc/sys]\n", nil),
		bad("dotdot-path", "a policy path with ..", "paths are clean and absolute", "version: \"1.0\"\nsandbox:\n  filesystem:\n    allowed_reads: [/bin/../../etc]\n", nil),
		bad("75k-paths", "75,000 paths: quadratic validation held a node for 19 s", "bounded counts, linear validation", many.String(), nil),
	}
}
