package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-tools/generate"
	"github.com/pmezard/go-difflib/difflib"

	"github.com/openshell/openshell/nvproxy"
	"github.com/openshell/openshell/policyhook"
	"github.com/openshell/openshell/policyhook/modifier"
	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/runtime"
)

// dryRunID stands in for the sandbox id in the paths the runtime makes
// per sandbox (its root, network namespace, resolv.conf): a dry run
// creates nothing, and every path that holds it is a placeholder.
const dryRunID = "<sandbox-id>"

func runPolicy(ctx context.Context, s streams, args []string) int {
	sub := map[string]func(context.Context, streams, []string) int{
		"validate": runValidate,
		"compile":  runCompile,
		"explain":  runExplain,
		"reload":   runReload,
		"suggest":  runSuggest,
	}
	if len(args) > 0 {
		if f, ok := sub[args[0]]; ok {
			return f(ctx, s, args[1:])
		}
	}
	fmt.Fprintln(s.err, "usage: openshell policy validate FILE...\n       openshell policy compile FILE [--rootfs DIR | --spec config.json] [--host-gpus] [--json]\n       openshell policy explain FILE [--rootfs DIR | --spec config.json] [--host-gpus]\n       openshell policy reload SANDBOX\n       openshell policy suggest SANDBOX [--format seed|openshell] [-o FILE]")
	return exitUsage
}

func runValidate(_ context.Context, s streams, args []string) int {
	fs := newFlags(s, "policy validate", "policy validate FILE...")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return exitUsage
	}
	code := exitOK
	for _, f := range fs.Args() {
		p, err := policy.Load(f)
		if err == nil {
			err = policyhook.CheckHTTPRules(p)
		}
		if err != nil {
			printErr(s, err)
			code = exitFailed
			continue
		}
		printWarnings(s, p.Warnings)
		fmt.Fprintf(s.out, "%s: valid (%s)\n", f, p.Format)
	}
	return code
}

// printErr prints a policy error: each FieldError on its own line.
func printErr(s streams, err error) {
	var list policy.ErrorList
	if errors.As(err, &list) {
		for _, e := range list {
			fmt.Fprintf(s.err, "%s\n", e)
		}
		return
	}
	fmt.Fprintf(s.err, "openshell: %s\n", err)
}

func printWarnings(s streams, w policy.ErrorList) {
	for _, e := range w {
		fmt.Fprintf(s.err, "warning: %s\n", e)
	}
}

type compileOutput struct {
	Spec           *specs.Spec       `json:"spec"`
	RunscFlags     []string          `json:"runscFlags"`
	TimeoutSeconds float64           `json:"timeoutSeconds,omitempty"`
	Warnings       []string          `json:"warnings,omitempty"`
	Policy         map[string]string `json:"policy"`
}

// dryRun is what compile and explain share: the policy compiled and
// applied as the runtime would for a sandbox, with nothing created.
type dryRun struct {
	policy *policy.Policy
	before []byte // the base spec, before the policy
	spec   *specs.Spec
	c      *policyhook.Compiled
}

// dryRunFlags are compile's and explain's common flags.
type dryRunFlags struct {
	rootfs, spec, config *string
	hostGPUs             *bool
}

func addDryRunFlags(fs *flag.FlagSet) dryRunFlags {
	return dryRunFlags{
		rootfs:   fs.String("rootfs", "", "the image root, as openshell run --rootfs: the policy's paths and run_as_user names are taken from it"),
		spec:     fs.String("spec", "", "an OCI config.json to apply the policy to; its root.path is the image (default: the spec openshell run makes)"),
		config:   fs.String("config", runtime.DefaultConfigPath, "the runtime configuration (state root, allowed_hooks, gpu)"),
		hostGPUs: fs.Bool("host-gpus", false, "find a GPU policy's devices on this host, as the runtime does (default: a marked placeholder; nothing on the host is read)"),
	}
}

// compileDry compiles file through the runtime's own CompilePolicy, with
// the per-sandbox paths as placeholders and a GPU policy's devices as a
// placeholder unless the host's are asked for. Without --rootfs or
// --spec, a run_as_user name is a warning, not looked up.
func compileDry(file string, f dryRunFlags) (*dryRun, error) {
	if *f.rootfs != "" && *f.spec != "" {
		return nil, errors.New("give --rootfs or --spec, not both")
	}
	cfg, err := runtime.LoadConfig(*f.config)
	if err != nil {
		return nil, err
	}
	p, err := policy.Load(file)
	if err != nil {
		return nil, err
	}
	base, bundle, err := loadBaseSpec(*f.spec, *f.rootfs)
	if err != nil {
		return nil, err
	}
	// As runtime.Prepare: the image is the spec's root, made absolute.
	image := base.Root.Path
	if !filepath.IsAbs(image) {
		image = filepath.Join(bundle, image)
	}
	base.Root = &specs.Root{Path: image}
	before, err := marshalSpec(base)
	if err != nil {
		return nil, err
	}
	var extra []policyhook.Option
	if *f.rootfs == "" && *f.spec == "" {
		extra = append(extra, policyhook.WithoutUserLookup())
	}
	if !*f.hostGPUs {
		extra = append(extra, policyhook.WithGPUDiscoverer(nvproxy.Placeholder{}))
	}
	dir := filepath.Join(cfg.Root, dryRunID)
	c, err := runtime.CompilePolicy(p, cfg, extra...)(filepath.Join(dir, "root"), filepath.Join(dir, "bundle"), image)
	if err != nil {
		return nil, err
	}
	if err := c.Apply(base); err != nil {
		return nil, err
	}
	return &dryRun{policy: p, before: before, spec: base, c: c}, nil
}

func runCompile(_ context.Context, s streams, args []string) int {
	fs := newFlags(s, "policy compile", "policy compile FILE [--rootfs DIR | --spec config.json] [--host-gpus] [--json]")
	df := addDryRunFlags(fs)
	asJSON := fs.Bool("json", false, "print the resulting spec and flags as JSON instead of a diff")
	if err := fs.Parse(reorder(args)); err != nil {
		return exitUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitUsage
	}
	d, err := compileDry(fs.Arg(0), df)
	if err != nil {
		printErr(s, err)
		return exitFailed
	}
	p, c := d.policy, d.c
	if *asJSON {
		out := compileOutput{Spec: d.spec, RunscFlags: c.RunscFlags, TimeoutSeconds: c.Timeout.Seconds(),
			Policy: map[string]string{"file": p.File, "format": string(p.Format), "sha256": p.Hash}}
		for _, w := range c.Warnings {
			out.Warnings = append(out.Warnings, w.Error())
		}
		enc := json.NewEncoder(s.out)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false) // the <sandbox-id> placeholders stay readable
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(s.err, "openshell: %s\n", err)
			return exitFailed
		}
		return exitOK
	}
	after, err := marshalSpec(d.spec)
	if err != nil {
		fmt.Fprintf(s.err, "openshell: %s\n", err)
		return exitFailed
	}
	diff, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: difflib.SplitLines(string(d.before) + "\n"), B: difflib.SplitLines(string(after) + "\n"),
		FromFile: "config.json", ToFile: "config.json (policy " + p.File + ")", Context: 2,
	})
	if err != nil {
		fmt.Fprintf(s.err, "openshell: diff: %s\n", err)
		return exitFailed
	}
	fmt.Fprint(s.out, diff)
	fmt.Fprintf(s.out, "\nrunsc flags: %s\n", strings.Join(c.RunscFlags, " "))
	if p.GPU != nil {
		fmt.Fprintln(s.out, "  plus the driver flags the runtime chooses at start (--nvproxy-driver-version, after checking the host's driver)")
	}
	if c.Timeout > 0 {
		fmt.Fprintf(s.out, "wall-clock limit: %s (enforced by the runtime)\n", c.Timeout)
	}
	fmt.Fprintf(s.out, "placeholders: %s stands for the sandbox's id in the paths the runtime makes for it", dryRunID)
	if c.Egress {
		fmt.Fprint(s.out, " (root, network namespace, resolv.conf)")
	}
	fmt.Fprintln(s.out)
	printWarnings(s, c.Warnings)
	return exitOK
}

// marshalSpec is a spec as indented JSON, with the <sandbox-id>
// placeholders left readable.
func marshalSpec(sp *specs.Spec) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(sp); err != nil {
		return nil, fmt.Errorf("encode spec: %w", err)
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// loadBaseSpec reads a config.json, or makes the spec `openshell run`
// starts from, on rootfs (the host's root when empty).
func loadBaseSpec(file, rootfs string) (*specs.Spec, string, error) {
	if file == "" {
		if rootfs == "" {
			rootfs = "/"
		}
		image, err := filepath.Abs(rootfs)
		if err != nil {
			return nil, "", fmt.Errorf("rootfs: %w", err)
		}
		g, err := generate.New("linux")
		if err != nil {
			return nil, "", fmt.Errorf("default spec: %w", err)
		}
		g.SetRootPath(image)
		g.SetProcessArgs([]string{"/bin/sh"})
		g.SetHostname("openshell")
		modifier.SetEnv(g.Config, "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
		return g.Config, "/", nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, "", fmt.Errorf("read spec: %w", err)
	}
	var sp specs.Spec
	if err := json.Unmarshal(data, &sp); err != nil {
		return nil, "", fmt.Errorf("parse spec %s: %w", file, err)
	}
	if sp.Root == nil || sp.Root.Path == "" {
		return nil, "", fmt.Errorf("spec %s has no root.path", file)
	}
	bundle, err := filepath.Abs(filepath.Dir(file))
	if err != nil {
		return nil, "", fmt.Errorf("bundle of %s: %w", file, err)
	}
	return &sp, bundle, nil
}

// reorder moves flags before positional arguments, so that
// `compile FILE --json` works as well as `compile --json FILE`, and
// `audit SANDBOX --json` as `audit --json SANDBOX`.
func reorder(args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			pos = append(pos, args[i+1:]...)
			i = len(args)
		case strings.HasPrefix(a, "-") && a != "-":
			flags = append(flags, a)
			if !strings.Contains(a, "=") && takesValue(a) && i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
		default:
			pos = append(pos, a)
		}
	}
	return append(flags, pos...)
}

// takesValue lists the flags of the commands that reorder whose value is
// the next argument.
func takesValue(flag string) bool {
	switch strings.TrimLeft(flag, "-") {
	case "spec", "rootfs", "since", "config", "dir", "state-dir", "pid", "format", "o", "policy":
		return true
	}
	return false
}

func runExplain(_ context.Context, s streams, args []string) int {
	fs := newFlags(s, "policy explain", "policy explain FILE [--rootfs DIR | --spec config.json] [--host-gpus]")
	df := addDryRunFlags(fs)
	if err := fs.Parse(reorder(args)); err != nil {
		return exitUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitUsage
	}
	d, err := compileDry(fs.Arg(0), df)
	if err != nil {
		printErr(s, err)
		return exitFailed
	}
	tw := tabwriter.NewWriter(s.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RULE\tENFORCED BY\tBLOCKS")
	for _, r := range policyhook.Explain(d.c) {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Rule, r.EnforcedBy, r.Blocks)
	}
	if err := tw.Flush(); err != nil {
		return exitFailed
	}
	printWarnings(s, d.c.Warnings)
	return exitOK
}
