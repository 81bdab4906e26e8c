package modifier

import (
	"errors"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/test/golden"
	"github.com/openshell/openshell/test/spectest"
)

// tcase applies one modifier to a base spec and compares the whole result
// with testdata/<Test>/<name>.golden.json.
type tcase struct {
	name    string
	base    func(testing.TB) *specs.Spec
	mod     func() (SpecModifier, error)
	wantErr string // a substring of the constructor's or Modify's error
}

func run(t *testing.T, cases []tcase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base := tc.base
			if base == nil {
				base = spectest.Base
			}
			s := base(t)
			m, err := tc.mod()
			if err == nil && m != nil {
				err = m.Modify(s)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("modify: %v", err)
			}
			golden.JSON(t, t.Name(), s)
		})
	}
}

func ok(m SpecModifier) func() (SpecModifier, error) {
	return func() (SpecModifier, error) { return m, nil }
}

func rules(paths ...string) []policy.PathRule {
	r := make([]policy.PathRule, len(paths))
	for i, p := range paths {
		r[i] = policy.PathRule{Path: p}
	}
	return r
}

func TestRootView(t *testing.T) {
	view := func(fs policy.Filesystem) func() (SpecModifier, error) {
		return func() (SpecModifier, error) {
			return NewRootView(fs, ViewOptions{RootDir: "/run/openshell/s1/root", Bundle: "/bundles/s1"})
		}
	}
	run(t, []tcase{
		{name: "read-only-and-writable", mod: view(policy.Filesystem{
			ReadOnly: rules("/usr", "/sandbox", "/etc"), ReadWrite: rules("/sandbox/output")})},
		{name: "write-wins-over-read", mod: view(policy.Filesystem{
			ReadOnly: rules("/usr", "/tmp"), ReadWrite: rules("/tmp")})},
		{name: "kernel-paths-not-bound", mod: view(policy.Filesystem{
			ReadOnly: rules("/proc", "/dev/urandom", "/usr"), ReadWrite: rules("/dev/null")})},
		{name: "workdir", base: func(t testing.TB) *specs.Spec {
			s := spectest.Base(t)
			s.Process.Cwd = "/work/dir"
			return s
		}, mod: view(policy.Filesystem{ReadOnly: rules("/usr"), IncludeWorkdir: true})},
		{name: "engine-mounts-filtered", base: spectest.Engine, mod: view(policy.Filesystem{
			ReadOnly: rules("/etc", "/workspace")})},
		{name: "nothing-listed", mod: view(policy.Filesystem{})},
		// Binds of host directories at kernel paths are host directories,
		// not kernel filesystems: dropped, and /dev/shm gets a private
		// tmpfs. The kernel types at the same paths are kept.
		{name: "binds-at-kernel-paths", base: func(t testing.TB) *specs.Spec {
			s := spectest.Base(t)
			for _, d := range []string{"/proc", "/sys", "/dev", "/dev/shm", "/dev/mqueue", "/dev/pts", "/sys/fs/cgroup"} {
				s.Mounts = append(s.Mounts, specs.Mount{Destination: d, Type: "bind", Source: "/host" + d, Options: []string{"rbind", "rw"}})
			}
			return s
		}, mod: view(policy.Filesystem{ReadOnly: rules("/usr"), ReadWrite: rules("/tmp")})},
		// A "none" mount with a bind option is a bind to runsc, and to
		// every check after the view: dropped at /proc, read-only and
		// typed bind under /etc.
		{name: "none-typed-binds", base: func(t testing.TB) *specs.Spec {
			s := spectest.Base(t)
			s.Mounts = append(s.Mounts,
				specs.Mount{Destination: "/proc", Type: "none", Source: "/proc", Options: []string{"rbind", "rw"}},
				specs.Mount{Destination: "/etc", Source: "/srv/etc", Options: []string{"bind", "rw"}})
			return s
		}, mod: view(policy.Filesystem{ReadOnly: rules("/etc")})},
		// A volume the engine mounts read-only (readOnly: true, -v a:b:ro)
		// stays read-only under a writable policy path.
		{name: "engine-read-only-stays", base: func(t testing.TB) *specs.Spec {
			s := spectest.Base(t)
			s.Mounts = append(s.Mounts,
				specs.Mount{Destination: "/tmp/cfg", Type: "bind", Source: "/srv/cfg", Options: []string{"rbind", "ro"}},
				specs.Mount{Destination: "/tmp/data", Type: "bind", Source: "/srv/data", Options: []string{"rbind", "rw"}})
			return s
		}, mod: view(policy.Filesystem{ReadWrite: rules("/tmp")})},
		{name: "relative-root-dir", mod: func() (SpecModifier, error) {
			return NewRootView(policy.Filesystem{}, ViewOptions{RootDir: "root"})
		}, wantErr: `root directory "root" is not an absolute path`},
		{name: "relative-root-without-bundle", mod: func() (SpecModifier, error) {
			return NewRootView(policy.Filesystem{}, ViewOptions{RootDir: "/r"})
		}, wantErr: `root path "rootfs" is relative and no bundle was given`},
	})
}

func TestTmp(t *testing.T) {
	run(t, []tcase{
		{name: "writable", mod: func() (SpecModifier, error) { return NewTmp(64, true) }},
		{name: "read-only", mod: func() (SpecModifier, error) { return NewTmp(8, false) }},
		{name: "replaces-engine-tmp", base: func(t testing.TB) *specs.Spec {
			s := spectest.Base(t)
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/tmp/", Type: "bind", Source: "/tmp"})
			return s
		}, mod: func() (SpecModifier, error) { return NewTmp(64, true) }},
		// A volume inside /tmp (critest's hostPath volumes, docker -v
		// /data:/tmp/data) stays visible: the tmpfs goes before it.
		{name: "volume-inside-tmp", base: func(t testing.TB) *specs.Spec {
			s := spectest.Base(t)
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/tmp/data", Type: "bind", Source: "/srv/data", Options: []string{"rbind", "rw"}})
			return s
		}, mod: func() (SpecModifier, error) { return NewTmp(64, true) }},
		{name: "zero-size", mod: func() (SpecModifier, error) { return NewTmp(0, true) }, wantErr: "size 0 MiB is not positive"},
	})
}

func TestMaskCredentials(t *testing.T) {
	withEtc := func(t testing.TB) *specs.Spec {
		s := spectest.Base(t)
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc", Type: "bind", Source: "/img/etc", Options: []string{"rbind", "ro"}})
		return s
	}
	run(t, []tcase{
		{name: "etc-visible", base: withEtc, mod: ok(NewMaskCredentials(nil))},
		{name: "etc-not-visible", mod: ok(NewMaskCredentials(nil))},
		// A policy that lists /etc/shadow itself still gets the mask.
		{name: "listed-file-masked", base: func(t testing.TB) *specs.Spec {
			s := withEtc(t)
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/shadow", Type: "bind", Source: "/img/etc/shadow", Options: []string{"rbind", "ro"}})
			return s
		}, mod: ok(NewMaskCredentials([]string{"/etc/shadow"}))},
		{name: "already-covered", base: func(t testing.TB) *specs.Spec {
			s := withEtc(t)
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/shadow", Type: "bind", Source: "/dev/null"})
			return s
		}, mod: ok(NewMaskCredentials([]string{"/etc/shadow"}))},
	})
}

// runsc drops the spec's whole seccomp filter for these two; every other
// dev.gvisor. name is refused too, and nvproxy's is left to the GPU
// modifier when allowed.
func TestRefuseGVisorAnnotations(t *testing.T) {
	with := func(kv ...string) func(testing.TB) *specs.Spec {
		return func(t testing.TB) *specs.Spec {
			s := spectest.Base(t)
			s.Annotations = map[string]string{}
			for i := 0; i < len(kv); i += 2 {
				s.Annotations[kv[i]] = kv[i+1]
			}
			return s
		}
	}
	refuse := func() (SpecModifier, error) { return NewRefuseGVisorAnnotations("dev.gvisor.internal.nvproxy"), nil }
	run(t, []tcase{
		{name: "seccomp-off", base: with("io.kubernetes.cri.container-name", "c", "dev.gvisor.internal.seccomp.c", "RuntimeDefault"), mod: refuse,
			wantErr: `annotations "dev.gvisor.internal.seccomp.c": gVisor's own annotations`},
		{name: "flags-and-mounts", base: with("dev.gvisor.bundle.experimental-high-performance", "true", "dev.gvisor.spec.mount.x.type", "bind"), mod: refuse,
			wantErr: `"dev.gvisor.bundle.experimental-high-performance", "dev.gvisor.spec.mount.x.type"`},
		{name: "upper-case", base: with("DEV.GVISOR.flag.platform", "ptrace"), mod: refuse, wantErr: `"DEV.GVISOR.flag.platform"`},
		{name: "nvproxy-left-to-gpu", base: with("dev.gvisor.internal.nvproxy", "true", "io.kubernetes.cri.container-name", "c"), mod: refuse},
	})
}

func TestDropPrivileges(t *testing.T) {
	run(t, []tcase{
		{name: "default-spec", mod: ok(NewDropPrivileges())},
		{name: "no-process", base: func(testing.TB) *specs.Spec { return &specs.Spec{} }, mod: ok(NewDropPrivileges())},
		{name: "unknown-capability", base: func(t testing.TB) *specs.Spec {
			s := spectest.Base(t)
			s.Process.Capabilities.Bounding = append(s.Process.Capabilities.Bounding, "CAP_TO_BE_ROOT")
			return s
		}, mod: ok(NewDropPrivileges()), wantErr: "process.capabilities: invalid capability: CAP_TO_BE_ROOT"},
	})
}

func TestUser(t *testing.T) {
	run(t, []tcase{
		{name: "nobody", mod: ok(NewUser(65534, 65534))},
		{name: "drops-additional-gids", base: func(t testing.TB) *specs.Spec {
			s := spectest.Base(t)
			s.Process.User = specs.User{UID: 0, GID: 0, AdditionalGids: []uint32{0, 27}, Umask: nil}
			return s
		}, mod: ok(NewUser(1000, 1000))},
	})
}

func TestRlimits(t *testing.T) {
	run(t, []tcase{
		{name: "all", mod: ok(NewRlimits(Limits{NoFile: 1024, NProc: 16, FSizeByte: 1 << 20}))},
		{name: "only-core", mod: ok(NewRlimits(Limits{}))},
		{name: "tightens-engine", base: spectest.Engine, mod: ok(NewRlimits(Limits{NoFile: 4096, NProc: 64}))},
	})
}

func TestResources(t *testing.T) {
	if NewResources(0, 0) != nil {
		t.Fatal("NewResources(0, 0) is not nil")
	}
	run(t, []tcase{
		{name: "memory-and-cpu", mod: ok(NewResources(512, 1.5))},
		{name: "engine-lower-memory-kept", base: func(t testing.TB) *specs.Spec {
			s := spectest.Base(t)
			lim := int64(64 << 20)
			s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &lim}
			return s
		}, mod: ok(NewResources(512, 0))},
	})
}

func TestSeccomp(t *testing.T) {
	sc := &policy.Seccomp{DefaultAction: "SCMP_ACT_ERRNO", Allowed: []string{"read", "write", "execve", "exit_group"}}
	run(t, []tcase{
		{name: "no-policy-filter", mod: func() (SpecModifier, error) { return NewSeccomp(nil, nil) }},
		{name: "allowlist", base: spectest.Engine, mod: func() (SpecModifier, error) { return NewSeccomp(sc, nil) }},
		{name: "no-exec", mod: func() (SpecModifier, error) { return NewSeccomp(sc, policy.ExecSyscalls) }},
		{name: "always-denied", mod: func() (SpecModifier, error) {
			return NewSeccomp(&policy.Seccomp{DefaultAction: "SCMP_ACT_ERRNO", Allowed: []string{"ptrace"}}, nil)
		}, wantErr: "ptrace is always denied"},
	})
}

func TestEnv(t *testing.T) {
	if NewEnv(nil) != nil {
		t.Fatal("NewEnv(nil) is not nil")
	}
	run(t, []tcase{
		{name: "set-and-replace", mod: ok(NewEnv([]policy.EnvVar{{Name: "PATH", Value: "/usr/bin"}, {Name: "HOME", Value: "/sandbox"}}))},
	})
}

func TestInferenceEnv(t *testing.T) {
	if NewInferenceEnv(false) != nil {
		t.Fatal("NewInferenceEnv(false) is not nil")
	}
	run(t, []tcase{
		{name: "set", mod: ok(NewInferenceEnv(true))},
		// The engine's key (docker run -e OPENAI_API_KEY=...) is
		// replaced, not kept beside the placeholder.
		{name: "replaces-engine-key", base: func(t testing.TB) *specs.Spec {
			s := spectest.Base(t)
			s.Process.Env = append(s.Process.Env, "OPENAI_API_KEY=sk-real-from-engine", "ANTHROPIC_BASE_URL=https://api.anthropic.com")
			return s
		}, mod: ok(NewInferenceEnv(true))},
	})
}

// An engine's spec can name a variable twice (image ENV plus -e); the
// policy's value must be the only one left, in the first one's place.
func TestSetEnv(t *testing.T) {
	for _, tc := range []struct{ env, want []string }{
		{nil, []string{"A=new"}},
		{[]string{"B=1"}, []string{"B=1", "A=new"}},
		{[]string{"A=old", "B=1"}, []string{"A=new", "B=1"}},
		{[]string{"B=1", "A=old", "AB=2", "A=again", "A="}, []string{"B=1", "A=new", "AB=2"}},
	} {
		s := &specs.Spec{Process: &specs.Process{Env: tc.env}}
		SetEnv(s, "A", "new")
		if !slices.Equal(s.Process.Env, tc.want) {
			t.Errorf("SetEnv over %q = %q, want %q", tc.env, s.Process.Env, tc.want)
		}
	}
}

func TestIsolateNetwork(t *testing.T) {
	run(t, []tcase{
		{name: "default-spec", mod: ok(NewIsolateNetwork())},
		{name: "drops-host-netns-path", base: spectest.Engine, mod: ok(NewIsolateNetwork())},
	})
}

func TestGatewayNetwork(t *testing.T) {
	n := GatewayNetwork{Netns: "/run/openshell/sb/netns/sandbox", ResolvConf: "/run/openshell/sb/resolv.conf", ProxyURL: "http://169.254.213.1:3128"}
	run(t, []tcase{
		{name: "default-spec", mod: ok(NewGatewayNetwork(n))},
		{name: "replaces-engine-netns", base: spectest.Engine, mod: ok(NewGatewayNetwork(n))},
		{name: "no-proxy-vars", mod: ok(NewGatewayNetwork(GatewayNetwork{Netns: n.Netns, ResolvConf: n.ResolvConf}))},
		{name: "needs-namespace", mod: ok(NewGatewayNetwork(GatewayNetwork{ResolvConf: n.ResolvConf})), wantErr: "namespace and resolv.conf are required"},
	})
}

func TestReadOnlyProc(t *testing.T) {
	noProc := modFunc(func(s *specs.Spec) error {
		s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/proc" })
		return nil
	})
	run(t, []tcase{
		{name: "default-spec", mod: ok(NewReadOnlyProc())},
		{name: "engine-spec", base: spectest.Engine, mod: ok(NewReadOnlyProc())},
		{name: "adds-one", mod: ok(List{}.Append(noProc, NewReadOnlyProc()))},
	})
}

func TestAnnotations(t *testing.T) {
	run(t, []tcase{
		{name: "recorded", mod: ok(NewAnnotations("agent", "abc123", "openshell-1.0"))},
	})
}

type failing struct{}

func (failing) Modify(*specs.Spec) error { return errors.New("boom") }

func TestListSkipsNilAndStops(t *testing.T) {
	called := 0
	l := List{}.Append(nil, modFunc(func(*specs.Spec) error { called++; return nil }), nil, failing{},
		modFunc(func(*specs.Spec) error { called++; return nil }))
	if len(l) != 3 {
		t.Fatalf("Append kept %d modifiers, want 3 (nil skipped)", len(l))
	}
	if err := l.Modify(&specs.Spec{}); err == nil || err.Error() != "boom" {
		t.Fatalf("Modify = %v, want boom", err)
	}
	if called != 1 {
		t.Fatalf("%d modifiers ran, want 1 (stop at the first error)", called)
	}
	if err := l.Modify(nil); err == nil {
		t.Fatal("Modify(nil) succeeded")
	}
}

type modFunc func(*specs.Spec) error

func (f modFunc) Modify(s *specs.Spec) error { return f(s) }
