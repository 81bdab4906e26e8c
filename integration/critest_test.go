package integration

import (
	"bufio"
	"context"
	"encoding/xml"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/test/image"
	"github.com/openshell/openshell/test/registry"
	"github.com/openshell/openshell/test/rootfs"
)

// critestHandlers are the CRI runtime handlers critest runs against, in
// the same containerd: containerd's own runc shim with runc (the
// reference), and ours.
var critestHandlers = []string{"runc", "openshell"}

// TestCritest runs cri-tools' critest, the CRI conformance suite, against
// the runtime handler "openshell" and against runc in one containerd, and
// compares the results spec by spec. A spec that passes on runc and fails
// on openshell must be listed, with its reason, in
// testdata/critest-differences.txt; anything else that differs fails the
// test. Images come from a registry the test serves itself.
func TestCritest(t *testing.T) {
	if os.Getenv("OPENSHELL_CRITEST") == "0" {
		t.Skip("OPENSHELL_CRITEST=0")
	}
	if skipReason != "" {
		t.Skip(skipReason)
	}
	critest, err := engineBin("critest")
	if err != nil {
		t.Skip(err.Error() + " (make critest)")
	}
	cniBin, err := engineBin("cni")
	if err != nil {
		t.Skip(err.Error() + " (make cni)")
	}
	containerdBin, err := engineBin("containerd")
	if err != nil {
		t.Skip(err.Error())
	}
	runcShim, err := engineBin("containerd-shim-runc-v2")
	if err != nil {
		t.Skip(err.Error())
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc is not installed (make deps)")
	}
	if err := os.Symlink(runcShim, filepath.Join(binDir, "containerd-shim-runc-v2")); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}

	dir, err := os.MkdirTemp("", "openshell-it-critest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountBelow(dir); os.RemoveAll(dir) })

	registryAddr := serveCritestImages(t, dir)
	sock := startCritestContainerd(t, dir, containerdBin, cniBin, registryAddr)

	results := map[string]map[string]string{} // handler -> spec -> passed|failed|skipped
	for _, h := range critestHandlers {
		report := filepath.Join(dir, "junit-"+h+".xml")
		ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
		cmd := exec.CommandContext(ctx, critest,
			"--runtime-endpoint", "unix://"+sock, "--image-endpoint", "unix://"+sock,
			"--runtime-handler", h,
			"-ginkgo.junit-report", report, "-ginkgo.no-color", "-ginkgo.timeout", "24m")
		logPath := filepath.Join(dir, "critest-"+h+".log")
		logf, err := os.Create(logPath)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		start := time.Now()
		runErr := cmd.Run()
		cancel()
		logf.Close()
		res, err := readJUnit(report)
		if err != nil {
			log, _ := os.ReadFile(logPath)
			t.Fatalf("critest against %s: %v (%v)\n%s", h, err, runErr, tail(string(log), 4000))
		}
		results[h] = res
		t.Logf("critest against %s: %s in %s", h, countResults(res), time.Since(start).Round(time.Second))
		if out := os.Getenv("OPENSHELL_CRITEST_LOGS"); out != "" {
			_ = os.MkdirAll(out, 0o755)
			_ = exec.Command("cp", logPath, report, out).Run()
		}
	}

	known, err := readDifferences("testdata/critest-differences.txt")
	if err != nil {
		t.Fatal(err)
	}
	// A spec critest skips on openshell (a feature the handler does not
	// report) but runs and passes on runc differs too.
	var unexpected, fixed []string
	differ := 0
	for spec, ref := range results["runc"] {
		got := results["openshell"][spec]
		_, listed := known[spec]
		switch {
		case ref == "passed" && got != "passed" && !listed:
			unexpected = append(unexpected, spec+" ("+got+")")
		case ref == "passed" && got != "passed":
			differ++
		case listed:
			fixed = append(fixed, spec+" (runc: "+ref+", openshell: "+got+")")
		}
	}
	for spec := range known {
		if _, ok := results["runc"][spec]; !ok {
			t.Errorf("testdata/critest-differences.txt lists %q, which critest no longer runs", spec)
		}
	}
	slices.Sort(unexpected)
	slices.Sort(fixed)
	for _, f := range fixed {
		t.Errorf("no longer passes on runc and fails on openshell; take it out of testdata/critest-differences.txt: %s", f)
	}
	if len(unexpected) > 0 {
		t.Errorf("%d spec(s) pass on runc and fail on openshell, and testdata/critest-differences.txt does not say why:\n%s",
			len(unexpected), strings.Join(unexpected, "\n"))
	}
	t.Logf("%d spec(s) pass on runc and not on openshell, each for the reason testdata/critest-differences.txt gives", differ)
}

// serveCritestImages builds the images critest pulls from busybox and
// serves them at the address it returns, 127.0.0.1:port.
func serveCritestImages(t *testing.T, dir string) string {
	t.Helper()
	base := filepath.Join(dir, "busybox")
	if err := rootfs.Busybox(base); err != nil {
		t.Fatal(err)
	}
	pause := filepath.Join(dir, "pause")
	build := exec.Command("go", "build", "-o", pause, "../test/pause")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build pause: %v\n%s", err, out)
	}
	pauseBin, err := os.ReadFile(pause)
	if err != nil {
		t.Fatal(err)
	}
	passwd := "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	group := "root:x:0:\nnogroup:x:65534:\n"
	web := func(port string) image.Options {
		return image.Options{
			// As nginx does, it records its pid (critest's pid namespace
			// specs read it).
			Cmd:   []string{"/bin/sh", "-c", "(mkdir -p /var/run && echo $$ > /var/run/nginx.pid) 2>/dev/null; exec /bin/httpd -f -p " + port + " -h /www"},
			Files: map[string]string{"/www/index.html": "<title>Welcome to nginx!</title>\n"},
		}
	}
	with := func(o image.Options, files map[string]string) image.Options {
		if o.Files == nil {
			o.Files = map[string]string{}
		}
		for k, v := range files {
			o.Files[k] = v
		}
		return o
	}
	images := map[string]image.Options{
		"e2e-test-images/busybox:1.29-2":                              {Cmd: []string{"/bin/sh"}},
		"e2e-test-images/nginx:1.14-2":                                web("80"),
		"e2e-test-images/httpd:2.4.39-4":                              web("80"),
		"k8s-staging-cri-tools/hostnet-nginx-amd64:latest":            web("12003"),
		"k8s-staging-cri-tools/test-image-user-uid:latest":            {Cmd: []string{"/bin/sh"}, User: "1002"},
		"k8s-staging-cri-tools/test-image-user-username:latest":       with(image.Options{Cmd: []string{"/bin/sh"}, User: "www-data"}, map[string]string{"/etc/passwd": passwd + "www-data:x:33:33:www-data:/var/www:/bin/sh\n", "/etc/group": group + "www-data:x:33:\n"}),
		"k8s-staging-cri-tools/test-image-user-uid-group:latest":      {Cmd: []string{"/bin/sh"}, User: "1003:1003"},
		"k8s-staging-cri-tools/test-image-user-username-group:latest": with(image.Options{Cmd: []string{"/bin/sh"}, User: "www-data:www-data"}, map[string]string{"/etc/passwd": passwd + "www-data:x:33:33:www-data:/var/www:/bin/sh\n", "/etc/group": group + "www-data:x:33:\n"}),
		"k8s-staging-cri-tools/test-image-predefined-group:latest":    with(image.Options{Cmd: []string{"/bin/sh"}, User: "1000"}, map[string]string{"/etc/passwd": passwd + "user-defined-in-image:x:1000:1000::/home:/bin/sh\n", "/etc/group": group + "user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n"}),
		"k8s-staging-cri-tools/test-image-latest:latest":              {Cmd: []string{"/bin/sh"}},
		"k8s-staging-cri-tools/test-image-tag:test":                   {Cmd: []string{"/bin/sh"}},
		"k8s-staging-cri-tools/test-image-tag:all":                    {Cmd: []string{"/bin/sh"}},
		"k8s-staging-cri-tools/test-image-tags:1":                     {Cmd: []string{"/bin/sh"}},
		"k8s-staging-cri-tools/test-image-tags:2":                     {Cmd: []string{"/bin/sh"}},
		"k8s-staging-cri-tools/test-image-tags:3":                     {Cmd: []string{"/bin/sh"}},
		"k8s-staging-cri-tools/test-image-1:latest":                   {Cmd: []string{"/bin/sh"}},
		"k8s-staging-cri-tools/test-image-2:latest":                   {Cmd: []string{"/bin/sh"}},
		"k8s-staging-cri-tools/test-image-3:latest":                   {Cmd: []string{"/bin/sh"}},
		"pause:openshell-critest":                                     {Cmd: []string{"/pause"}},
		"e2e-test-images/nonewprivs:1.3":                              {Cmd: []string{"/bin/sh"}},
	}
	var reg registry.Registry
	for ref, o := range images {
		repo, tag, _ := strings.Cut(ref, ":")
		o.Name = ref
		o.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
		// One image per repository, as critest's image tests expect:
		// the tags of a repository share it, repositories differ.
		o = with(o, map[string]string{"/image": repo + "\n"})
		var img *image.Image
		var err error
		if repo == "pause" {
			o.Files = nil
			img, err = buildWithFile(base, o, "pause", pauseBin)
		} else {
			img, err = image.Build(base, o)
		}
		if err != nil {
			t.Fatalf("image %s: %v", ref, err)
		}
		reg.Add(repo, tag, img)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: &reg, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// buildWithFile builds an image of base plus one executable at /name.
func buildWithFile(base string, o image.Options, name string, data []byte) (*image.Image, error) {
	dir, err := os.MkdirTemp("", "openshell-it-image")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := exec.Command("cp", "-a", base+"/.", dir).Run(); err != nil {
		return nil, fmt.Errorf("copy %s: %w", base, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o755); err != nil {
		return nil, err
	}
	return image.Build(dir, o)
}

// startCritestContainerd starts a containerd of critest's own: the CRI
// with a bridge CNI network (critest's pods are not host-network), the
// test registry as a plain-HTTP host, and the two handlers.
func startCritestContainerd(t *testing.T, dir, bin, cniBin, registryAddr string) string {
	t.Helper()
	const bridge = "oshcrit0"
	if _, err := netlink.LinkByName(bridge); err == nil {
		t.Fatalf("a link %s already exists: another critest run, or a leftover (ip link del %s)", bridge, bridge)
	}
	forward, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(bridge); err == nil {
			_ = netlink.LinkDel(l)
		}
		// The bridge plugin turns forwarding on for its gateway.
		if len(forward) > 0 {
			_ = os.WriteFile("/proc/sys/net/ipv4/ip_forward", forward, 0o644)
		}
	})
	netd := filepath.Join(dir, "net.d")
	// critest names its images by their public registries and creates
	// containers by those names; containerd's mirror configuration sends
	// every pull for them to the test registry instead.
	hosts := fmt.Sprintf("server = \"http://%s\"\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", registryAddr, registryAddr)
	if err := os.MkdirAll(netd, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"registry.k8s.io", "gcr.io", registryAddr} {
		d := filepath.Join(dir, "certs.d", host)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(hosts), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	conflist := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "openshell-critest", "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.213.7.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}},
  {"type": "portmap", "backend": "nftables", "capabilities": {"portMappings": true}}
]}`, bridge, filepath.Join(dir, "ipam"))
	policy, err := os.ReadFile("../test/policies/permissive.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "containerd.sock")
	config := containerdConfig(dir, sock) + fmt.Sprintf(`[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = %q
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "%s/pause:openshell-critest"
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [%q]
    conf_dir = %q
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.openshell]
    runtime_type = "io.openshell.v1"
    pod_annotations = ["io.openshell.*"]
    container_annotations = ["io.openshell.*"]
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.openshell.options]
      ConfigPath = %q
`, filepath.Join(dir, "certs.d"), registryAddr, cniBin, netd, filepath.Join(dir, "openshell.toml"))
	for name, data := range map[string]string{
		filepath.Join(netd, "10-openshell-critest.conflist"): conflist,
		filepath.Join(dir, "critest.yaml"):                   string(policy),
		filepath.Join(dir, "openshell.toml"):                 fmt.Sprintf("default_policy = %q\n", filepath.Join(dir, "critest.yaml")),
		filepath.Join(dir, "config.toml"):                    config,
	} {
		if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "--config", filepath.Join(dir, "config.toml"))
	cmd.Env = append(os.Environ(), "PATH="+binDir+":"+os.Getenv("PATH"))
	var once sync.Once
	stop := func() {
		once.Do(func() {
			// critest leaves pods behind when a spec fails midway; their
			// shims and sandboxes outlive containerd unless removed first.
			if crictl, err := engineBin("crictl"); err == nil {
				ep := "unix://" + sock
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				out, err := exec.CommandContext(ctx, crictl, "--runtime-endpoint", ep, "--image-endpoint", ep, "rmp", "--all", "--force").CombinedOutput()
				cancel()
				if err != nil {
					fmt.Fprintf(os.Stderr, "removing critest's pods: %v\n%s", err, out)
				}
			}
			stopProcess(cmd, 20*time.Second)
			killShimsOf(dir)
			// The shared containerd removes what the runc shim keeps for
			// k8s.io when it stops; if it never started, that is ours to do.
			if ctrd.v == nil {
				runcRoot := filepath.Join("/run/containerd/runc", criNamespace)
				_ = unix.Unmount(filepath.Join(runcRoot, "null-netns"), unix.MNT_DETACH)
				_ = os.Remove(filepath.Join(runcRoot, "null-netns"))
				_ = os.RemoveAll(filepath.Join(runcRoot, "openshell"))
				_ = os.Remove(runcRoot)
			}
		})
	}
	ready := func() (string, error) {
		out, err := exec.Command(filepath.Join(filepath.Dir(bin), "ctr"), "-a", sock, "version").CombinedOutput()
		return string(out), err
	}
	if err := startDaemon(cmd, dir, stop, 30*time.Second, ready); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return sock
}

// killShimsOf ends the shims a containerd rooted in dir started and left
// running (found by their -address, which is in dir), and their
// sandboxes with them.
func killShimsOf(dir string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(data), "\x00")
		if !strings.Contains(args[0], "containerd-shim") || !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, dir+"/") }) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		i := slices.Index(args, "-id")
		if i > 0 && i+1 < len(args) {
			for _, rt := range []string{runscBin, "runc"} {
				_ = exec.Command(rt, "--root", filepath.Join("/run/containerd/runc", criNamespace), "delete", "--force", args[i+1]).Run()
			}
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// readJUnit maps each spec critest ran to passed, failed or skipped.
func readJUnit(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Suites []struct {
			Cases []struct {
				Name    string    `xml:"name,attr"`
				Status  string    `xml:"status,attr"`
				Failure *struct{} `xml:"failure"`
				Error   *struct{} `xml:"error"`
				Skipped *struct{} `xml:"skipped"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := map[string]string{}
	for _, s := range doc.Suites {
		for _, c := range s.Cases {
			if !strings.HasPrefix(c.Name, "[It]") {
				continue // BeforeSuite and the like
			}
			switch {
			case c.Skipped != nil || c.Status == "skipped" || c.Status == "pending":
				out[c.Name] = "skipped"
			case c.Failure != nil || c.Error != nil:
				out[c.Name] = "failed"
			default:
				out[c.Name] = "passed"
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no specs", path)
	}
	return out, nil
}

func countResults(res map[string]string) string {
	n := map[string]int{}
	for _, r := range res {
		n[r]++
	}
	return fmt.Sprintf("%d passed, %d failed, %d skipped", n["passed"], n["failed"], n["skipped"])
}

// readDifferences reads "spec<TAB>reason" lines; # starts a comment.
func readDifferences(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		spec, reason, ok := strings.Cut(line, "\t")
		if !ok || strings.TrimSpace(reason) == "" {
			return nil, fmt.Errorf("%s:%d: want spec<TAB>reason", path, n)
		}
		out[spec] = reason
	}
	return out, sc.Err()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
