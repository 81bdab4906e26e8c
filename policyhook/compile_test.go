package policyhook

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/nvproxy"
	"github.com/openshell/openshell/policyhook/modifier"
	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/test/golden"
	"github.com/openshell/openshell/test/spectest"
)

func load(t testing.TB, file string) *policy.Policy {
	t.Helper()
	p, err := policy.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestExamplesCompile is the round trip: every example loads, compiles and
// applies to a default spec, and the result is pinned by a golden spec.
func TestExamplesCompile(t *testing.T) {
	files, _ := filepath.Glob("../examples/*.yaml")
	if len(files) < 3 {
		t.Fatalf("found %d examples", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			p := load(t, f)
			// No GPU discoverer: a GPU policy gets no device nodes, and nothing
			// on the host is read (nvproxy tests the discoverers).
			c, err := Compile(p, WithRootDir("/run/openshell/s/root"), WithBundle("/bundle"))
			if err != nil {
				t.Fatal(err)
			}
			s := spectest.Base(t)
			if err := c.Apply(s); err != nil {
				t.Fatal(err)
			}
			p.Hash = "" // pinned separately; examples may be re-commented
			s.Annotations["io.openshell.policy.sha256"] = ""
			golden.JSON(t, "examples/"+strings.TrimSuffix(filepath.Base(f), ".yaml"), struct {
				Spec       *specs.Spec
				RunscFlags []string
				Timeout    time.Duration
				Warnings   []string
			}{s, c.RunscFlags, c.Timeout, warnings(c)})
		})
	}
}

// TestCompileWithGateway: with a gateway, egress rules give the sandbox
// the runtime's namespace and runsc's own network stack, not "none".
func TestCompileWithGateway(t *testing.T) {
	p := load(t, "../examples/coding-agent.yaml")
	c, err := Compile(p, WithRootDir("/run/openshell/s/root"), WithBundle("/bundle"),
		WithGateway(modifier.GatewayNetwork{Netns: "/run/openshell/s/netns/sandbox", ResolvConf: "/run/openshell/s/resolv.conf", ProxyURL: "http://169.254.213.1:3128"}))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Egress || !slices.Contains(c.RunscFlags, FlagNetworkSandbox) || slices.Contains(c.RunscFlags, FlagNetworkNone) {
		t.Fatalf("Egress=%v flags=%v, want the sandbox network", c.Egress, c.RunscFlags)
	}
	s := spectest.Base(t)
	if err := c.Apply(s); err != nil {
		t.Fatal(err)
	}
	s.Annotations["io.openshell.policy.sha256"] = ""
	golden.JSON(t, "gateway/coding-agent", struct {
		Spec       *specs.Spec
		RunscFlags []string
	}{s, c.RunscFlags})

	none, err := Compile(load(t, "../examples/demo.yaml"), WithRootDir("/r"), WithGateway(modifier.GatewayNetwork{Netns: "/n", ResolvConf: "/c"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(none.Policy.Network.Egress) == 0 && (none.Egress || !slices.Contains(none.RunscFlags, FlagNetworkNone)) {
		t.Fatalf("a policy without egress rules got a network: %v", none.RunscFlags)
	}
}

// A policy with binaries asks for attribution and gets a read-only
// /proc (no process may write code into an allowed binary's memory); one
// without keeps /proc as the engine gave it.
func TestCompileBinaries(t *testing.T) {
	gw := WithGateway(modifier.GatewayNetwork{Netns: "/n", ResolvConf: "/c"})
	for _, c := range []struct {
		file       string
		scoped, ro bool
	}{
		{"../examples/git-only.yaml", true, true},
		{"../examples/coding-agent.yaml", false, false},
	} {
		comp, err := Compile(load(t, c.file), WithRootDir("/r"), WithBundle("/bundle"), gw)
		if err != nil {
			t.Fatal(err)
		}
		s := spectest.Base(t)
		if err := comp.Apply(s); err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/proc" })
		if i < 0 || comp.Attribution != c.scoped || slices.Contains(s.Mounts[i].Options, "ro") != c.ro {
			t.Errorf("%s: attribution %v, /proc %+v", c.file, comp.Attribution, s.Mounts)
		}
	}
}

func warnings(c *Compiled) []string {
	var out []string
	for _, w := range c.Warnings {
		out = append(out, w.Error())
	}
	return out
}

func TestCompileFailsClosed(t *testing.T) {
	c, err := Compile(load(t, "../examples/seed.yaml"), WithRootDir("/r"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(c.RunscFlags, FlagNetworkNone) || !slices.Contains(c.RunscFlags, FlagOCISeccomp) {
		t.Errorf("flags %v lack %s and %s", c.RunscFlags, FlagNetworkNone, FlagOCISeccomp)
	}
	w := strings.Join(warnings(c), "\n")
	if !strings.Contains(w, "examples/seed.yaml:11:7: sandbox.network.allowed_egress: 1 egress rule(s) are not active") {
		t.Errorf("no placed warning that egress is not active:\n%s", w)
	}
}

func TestCompileNeedsRootDir(t *testing.T) {
	if _, err := Compile(load(t, "../examples/seed.yaml")); err == nil || !strings.Contains(err.Error(), "root directory") {
		t.Fatalf("error = %v", err)
	}
}

func TestUsers(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(root, "etc", name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("passwd", "root:x:0:0::/root:/bin/sh\nsandbox:x:1001:1002::/sandbox:/bin/sh\n")
	write("group", "root:x:0:\nsandbox:x:1002:\nagents:x:2000:\n")
	parse := func(body string) *policy.Policy {
		p, err := policy.Parse("p.yaml", []byte("version: 1\nprocess: {"+body+"}\n"))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		body     string
		uid, gid uint32
		wantErr  string
	}{
		{body: "run_as_user: sandbox", uid: 1001, gid: 1002},
		{body: "run_as_user: sandbox, run_as_group: agents", uid: 1001, gid: 2000},
		{body: "run_as_user: \"1500\"", uid: 1500, gid: 1500},
		{body: "", uid: 65534, gid: 65534},
		{body: "run_as_user: ghost", wantErr: `process.run_as_user: "ghost": not found in the image's /etc/passwd`},
		{body: "run_as_user: sandbox, run_as_group: nogroup", wantErr: `process.run_as_group: "nogroup": not found in the image's /etc/group`},
	}
	for _, tc := range cases {
		c, err := Compile(parse(tc.body), WithRootDir("/r"), WithUsers(UsersInRoot(root)))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: error = %v, want %q", tc.body, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.body, err)
			continue
		}
		if c.UID != tc.uid || c.GID != tc.gid {
			t.Errorf("%s: %d:%d, want %d:%d", tc.body, c.UID, c.GID, tc.uid, tc.gid)
		}
	}
	// A name with no database to look it up in is an error, not root.
	if _, err := Compile(parse("run_as_user: sandbox"), WithRootDir("/r")); err == nil {
		t.Error("a user name compiled without a user database")
	}
	// An image whose /etc/passwd links out of the image cannot make the
	// lookup read the host's file.
	evil := t.TempDir()
	if err := os.MkdirAll(filepath.Join(evil, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "etc", "passwd"), filepath.Join(evil, "etc", "passwd")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := UsersInRoot(evil).LookupUser("sandbox"); err == nil {
		t.Error("lookup followed a symlink out of the image")
	}
}

// testGateway is the runtime's gateway network with placeholder paths.
var testGateway = modifier.GatewayNetwork{Netns: "/run/openshell/<sandbox-id>/netns/sandbox", ResolvConf: "/run/openshell/<sandbox-id>/resolv.conf", ProxyURL: "http://169.254.213.1:3128"}

// TestExplain pins explain's table: no network (seed, without a gateway),
// an L7 policy with passthrough, audit-only and binaries rules, and a GPU
// policy on a host without GPUs.
func TestExplain(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		opts       []Option
	}{
		{"seed", "../examples/seed.yaml", nil},
		{"seed-gateway", "../examples/seed.yaml", []Option{WithGateway(testGateway)}},
		{"l7", "testdata/explain/l7.yaml", []Option{WithGateway(testGateway), WithoutUserLookup()}},
		{"privacy", "testdata/explain/privacy.yaml", []Option{WithGateway(testGateway), WithoutUserLookup()}},
		{"gpu-no-host", "../examples/gpu.yaml", []Option{WithGPUDiscoverer(nvproxy.Placeholder{})}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Compile(load(t, tc.file), append([]Option{WithRootDir("/r")}, tc.opts...)...)
			if err != nil {
				t.Fatal(err)
			}
			var lines []string
			for _, r := range Explain(c) {
				lines = append(lines, r.Rule+" | "+r.EnforcedBy+" | "+r.Blocks)
			}
			for _, w := range c.Warnings {
				lines = append(lines, "warning: "+w.Error())
			}
			golden.Bytes(t, "explain/"+tc.name+".txt", []byte(strings.Join(lines, "\n")+"\n"))
		})
	}
}

// TestWithoutUserLookup: a user name with no image to look it up in is
// a warning at its field, and the default user stands in; a number is
// still a number.
func TestWithoutUserLookup(t *testing.T) {
	c, err := Compile(load(t, "testdata/explain/l7.yaml"), WithRootDir("/r"), WithUsers(UsersInRoot(t.TempDir())), WithoutUserLookup())
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(warnings(c), "\n")
	if c.UID != 65534 || c.GID != 65534 || !strings.Contains(w, "testdata/explain/l7.yaml:9:16: process.run_as_user: \"agent\" is looked up in the image's /etc/passwd when the sandbox is created") {
		t.Errorf("uid %d:%d, warnings:\n%s", c.UID, c.GID, w)
	}
	// With an image, a name it lacks is an error, as when a sandbox starts.
	if _, err := Compile(load(t, "testdata/explain/l7.yaml"), WithRootDir("/r"), WithoutUserLookup(), WithUsers(UsersInRoot(t.TempDir()))); err == nil {
		t.Error("a name missing from the image compiled")
	}
}

// fakeGPUs records what Expose asks of it.
type fakeGPUs struct{ calls []nvproxy.Request }

func (f *fakeGPUs) Discover(s *specs.Spec, req nvproxy.Request) (string, bool, error) {
	f.calls = append(f.calls, req)
	s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{Path: "/dev/nvidia0", Type: "c", Major: 195})
	return "fake", false, nil
}

// TestGPUDiscovererInjected: a GPU policy's devices come only from the
// discoverer the caller gives, once per Apply, never at Compile.
func TestGPUDiscovererInjected(t *testing.T) {
	f := &fakeGPUs{}
	c, err := Compile(load(t, "../examples/gpu.yaml"), WithRootDir("/r"), WithBundle("/b"), WithGPUDiscoverer(f))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.calls) != 0 {
		t.Fatalf("Compile asked the discoverer: %v", f.calls)
	}
	s := spectest.Base(t)
	if err := c.Apply(s); err != nil {
		t.Fatal(err)
	}
	if len(f.calls) != 1 || strings.Join(f.calls[0].Devices, ",") != "0" || !f.calls[0].Indexes["0"] {
		t.Fatalf("calls %+v", f.calls)
	}
	if s.Annotations[nvproxy.AnnotationDevicesFrom] != "fake" {
		t.Errorf("devices from %q", s.Annotations[nvproxy.AnnotationDevicesFrom])
	}
}

// TestGPUCompileNoHostIO compiles and applies a GPU policy in a child
// process that Landlock forbids every file access: with no discoverer
// and with the placeholder, nothing on the host is opened. The control:
// a read of a host file fails there.
func TestGPUCompileNoHostIO(t *testing.T) {
	const env = "OPENSHELL_TEST_NO_HOST_IO"
	if os.Getenv(env) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestGPUCompileNoHostIO$", "-test.v")
		cmd.Env = append(os.Environ(), env+"=1")
		out, err := cmd.CombinedOutput()
		if strings.Contains(string(out), "--- SKIP") {
			t.Skipf("child skipped:\n%s", out)
		}
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		t.Logf("child:\n%s", out)
		return
	}
	data, err := os.ReadFile("../examples/gpu.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Parse("gpu.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread() // Landlock binds this thread; the work stays on it
	if err := denyAllFiles(); err != nil {
		t.Skipf("landlock: %v", err)
	}
	if _, err := os.ReadFile("/etc/hostname"); err == nil {
		t.Fatal("control: a host file could still be read")
	}
	for _, d := range []nvproxy.Discoverer{nil, nvproxy.Placeholder{}} {
		var opts []Option
		if d != nil {
			opts = append(opts, WithGPUDiscoverer(d))
		}
		c, err := Compile(p, append(opts, WithRootDir("/r"))...)
		if err != nil {
			t.Fatal(err)
		}
		s := &specs.Spec{Process: &specs.Process{}, Root: &specs.Root{Path: "/"}, Linux: &specs.Linux{}}
		if err := c.Apply(s); err != nil {
			t.Fatalf("%T: %v", d, err)
		}
		t.Logf("%T: devices from %q", d, s.Annotations[nvproxy.AnnotationDevicesFrom])
	}
	// The host's discoverer, in the same child, is refused: the sandbox
	// of this test does hold.
	g := nvproxy.HostDevices{CDI: &nvproxy.CDI{SpecDirs: []string{"/etc/cdi", "/var/run/cdi"}}}
	if err := nvproxy.NewExpose(nvproxy.Options{GPU: &policy.GPU{Devices: []string{"all"}, Field: "gpu"}, Discoverer: g}).Modify(&specs.Spec{Process: &specs.Process{}}); err == nil {
		t.Error("the host discoverer found devices with every file forbidden")
	}
}

// denyAllFiles forbids the calling thread every Landlock file access.
func denyAllFiles() error {
	attr := unix.LandlockRulesetAttr{Handled_access_fs: unix.LANDLOCK_ACCESS_FS_EXECUTE | unix.LANDLOCK_ACCESS_FS_WRITE_FILE |
		unix.LANDLOCK_ACCESS_FS_READ_FILE | unix.LANDLOCK_ACCESS_FS_READ_DIR | unix.LANDLOCK_ACCESS_FS_REMOVE_DIR |
		unix.LANDLOCK_ACCESS_FS_REMOVE_FILE | unix.LANDLOCK_ACCESS_FS_MAKE_CHAR | unix.LANDLOCK_ACCESS_FS_MAKE_DIR |
		unix.LANDLOCK_ACCESS_FS_MAKE_REG | unix.LANDLOCK_ACCESS_FS_MAKE_SOCK | unix.LANDLOCK_ACCESS_FS_MAKE_FIFO |
		unix.LANDLOCK_ACCESS_FS_MAKE_BLOCK | unix.LANDLOCK_ACCESS_FS_MAKE_SYM}
	fd, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, uintptr(unsafe.Pointer(&attr)), 8, 0) // ABI 1: the fs field only
	if errno != 0 {
		return errno
	}
	defer unix.Close(int(fd))
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	if _, _, errno := unix.Syscall(unix.SYS_LANDLOCK_RESTRICT_SELF, fd, 0, 0); errno != 0 {
		return errno
	}
	return nil
}

// BenchmarkCompileAndApply is the cost the runtime pays per sandbox start:
// parse, validate, compile and apply a typical policy.
func BenchmarkCompileAndApply(b *testing.B) {
	data, err := os.ReadFile("../examples/coding-agent.yaml")
	if err != nil {
		b.Fatal(err)
	}
	base := spectest.Base(b)
	b.ReportAllocs()
	for b.Loop() {
		p, err := policy.Parse("coding-agent.yaml", data)
		if err != nil {
			b.Fatal(err)
		}
		c, err := Compile(p, WithRootDir("/r"), WithBundle("/b"))
		if err != nil {
			b.Fatal(err)
		}
		s := *base
		proc := *base.Process
		s.Process = &proc
		s.Mounts = slices.Clone(base.Mounts)
		lin := *base.Linux
		s.Linux = &lin
		s.Annotations = nil
		if err := c.Apply(&s); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApply is the modify step alone, on an already compiled policy.
func BenchmarkApply(b *testing.B) {
	p := load(b, "../examples/coding-agent.yaml")
	c, err := Compile(p, WithRootDir("/r"), WithBundle("/b"))
	if err != nil {
		b.Fatal(err)
	}
	base := spectest.Base(b)
	b.ReportAllocs()
	for b.Loop() {
		s := *base
		proc := *base.Process
		s.Process = &proc
		s.Mounts = slices.Clone(base.Mounts)
		lin := *base.Linux
		s.Linux = &lin
		s.Annotations = nil
		if err := c.Apply(&s); err != nil {
			b.Fatal(err)
		}
	}
}

// TestCompileDropsHooks: the engine's hooks run on the host as root, so
// only the allowed ones are kept, each dropped one is a warning, and the
// GPU decision still sees the engine's hooks before they go.
func TestCompileDropsHooks(t *testing.T) {
	const nvidia = "/usr/bin/nvidia-container-runtime-hook"
	spec := func(t *testing.T) *specs.Spec {
		s := spectest.Base(t)
		s.Hooks = &specs.Hooks{
			CreateRuntime: []specs.Hook{{Path: "/bin/sh", Args: []string{"sh", "-c", "id > /tmp/pwned"}}},
			Poststop:      []specs.Hook{{Path: "/usr/local/bin/allowed"}},
		}
		return s
	}
	p := load(t, "../examples/seed.yaml")
	for _, tc := range []struct {
		name     string
		allowed  []string
		wantKept []string
		wantWarn []string
	}{
		{name: "default drops all", wantWarn: []string{
			"config.json: hooks.createRuntime: dropped /bin/sh: a hook runs on the host as root, and only the runtime configuration's allowed_hooks are kept",
			"config.json: hooks.poststop: dropped /usr/local/bin/allowed",
		}},
		{name: "allowed kept", allowed: []string{"/usr/local/bin/allowed"}, wantKept: []string{"/usr/local/bin/allowed"},
			wantWarn: []string{"hooks.createRuntime: dropped /bin/sh"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Compile(p, WithRootDir("/run/openshell/s/root"), WithBundle("/bundle"), WithAllowedHooks(tc.allowed))
			if err != nil {
				t.Fatal(err)
			}
			before := len(c.Warnings)
			s := spec(t)
			if err := c.Apply(s); err != nil {
				t.Fatal(err)
			}
			var kept []string
			if s.Hooks != nil {
				for _, h := range slices.Concat(s.Hooks.CreateRuntime, s.Hooks.Poststop) {
					kept = append(kept, h.Path)
				}
			}
			if !slices.Equal(kept, tc.wantKept) {
				t.Errorf("kept %v, want %v", kept, tc.wantKept)
			}
			got := warnings(c)[before:]
			if len(got) != len(tc.wantWarn) {
				t.Fatalf("warnings %q, want %d", got, len(tc.wantWarn))
			}
			for i, w := range tc.wantWarn {
				if !strings.Contains(got[i], w) {
					t.Errorf("warning %q lacks %q", got[i], w)
				}
			}
		})
	}

	// A policy without GPUs refuses Docker's --gpus hook, even though the
	// hook would be dropped: the GPU decision comes first.
	c, err := Compile(p, WithRootDir("/run/openshell/s/root"), WithBundle("/bundle"))
	if err != nil {
		t.Fatal(err)
	}
	s := spectest.Base(t)
	//lint:ignore SA1019 what Docker --gpus still sends
	s.Hooks = &specs.Hooks{Prestart: []specs.Hook{{Path: nvidia}}}
	if err := c.Apply(s); err == nil || !strings.Contains(err.Error(), "hook "+nvidia) {
		t.Fatalf("GPU request through a hook: %v", err)
	}
}

// TestCompileInferenceEnv: inference.set_env points the sandbox's SDKs at
// inference.local where the gateway serves it; the policy's own env wins;
// without a gateway, nothing is set (there is no inference.local).
func TestCompileInferenceEnv(t *testing.T) {
	f := filepath.Join(t.TempDir(), "p.yaml")
	data := `version: "1.0"
name: env
sandbox:
  environment:
    OPENAI_BASE_URL: "http://inference.local/v1/custom"
  inference:
    routing_endpoint: "https://api.openai.com/v1"
    set_env: true
`
	if err := os.WriteFile(f, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts []Option
		want []string
	}{
		{"gateway", []Option{WithGateway(testGateway)}, []string{
			"OPENAI_BASE_URL=http://inference.local/v1/custom",
			"OPENAI_API_KEY=" + modifier.InferenceOpenAIKey,
			"ANTHROPIC_BASE_URL=" + modifier.InferenceAnthropicBaseURL,
			"ANTHROPIC_API_KEY=" + modifier.InferenceAnthropicKey,
		}},
		{"no-gateway", nil, []string{"OPENAI_BASE_URL=http://inference.local/v1/custom"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Compile(load(t, f), append([]Option{WithRootDir("/r"), WithBundle("/bundle"), WithoutUserLookup()}, tc.opts...)...)
			if err != nil {
				t.Fatal(err)
			}
			s := spectest.Base(t)
			s.Process.Env = append(s.Process.Env, "OPENAI_API_KEY=sk-from-the-engine")
			if err := c.Apply(s); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range s.Process.Env {
				if strings.HasPrefix(e, "OPENAI_") || strings.HasPrefix(e, "ANTHROPIC_") {
					got = append(got, e)
				}
			}
			if tc.name == "no-gateway" {
				tc.want = append([]string{"OPENAI_API_KEY=sk-from-the-engine"}, tc.want...)
			}
			slices.Sort(got)
			slices.Sort(tc.want)
			if !slices.Equal(got, tc.want) {
				t.Errorf("env %q, want %q", got, tc.want)
			}
		})
	}
}

// explain must not claim a binary-scoped rule blocks what a later rule
// without binaries lets every executable do.
func TestExplainBinariesOverlap(t *testing.T) {
	scoped := policy.EgressRule{Field: "a", Host: "api.example.com", Ports: []int{80, 443}, Binaries: []string{"/usr/bin/curl"}}
	open := policy.EgressRule{Field: "b", Host: "*.example.com", Ports: []int{80}}
	other := policy.EgressRule{Field: "c", Host: "other.test", Ports: []int{80}}
	for _, c := range []struct {
		all  []policy.EgressRule
		want string
	}{
		{[]policy.EgressRule{scoped, other}, "connections from other executables, and from copies on writable paths"},
		{[]policy.EgressRule{scoped, open}, "nothing on 80: b allows every executable there"},
	} {
		rows := explainEndpoint(scoped, c.all)
		if got := rows[len(rows)-1].Blocks; got != c.want {
			t.Errorf("blocks %q, want %q", got, c.want)
		}
	}
}
