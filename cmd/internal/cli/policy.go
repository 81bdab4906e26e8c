package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-tools/generate"
	"github.com/pmezard/go-difflib/difflib"

	"github.com/openshell/openshell/policyhook"
	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/runtime"
)

// dryRunRoot stands in for the per-sandbox root directory the runtime
// creates; a dry run creates nothing.
const dryRunRoot = "/run/openshell/SANDBOX/root"

func runPolicy(ctx context.Context, s streams, args []string) int {
	sub := map[string]func(context.Context, streams, []string) int{
		"validate": runValidate,
		"compile":  runCompile,
		"explain":  runExplain,
		"reload":   runReload,
	}
	if len(args) > 0 {
		if f, ok := sub[args[0]]; ok {
			return f(ctx, s, args[1:])
		}
	}
	fmt.Fprintln(s.err, "usage: openshell policy validate FILE...\n       openshell policy compile FILE [--spec config.json] [--json]\n       openshell policy explain FILE\n       openshell policy reload SANDBOX")
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

func runCompile(_ context.Context, s streams, args []string) int {
	fs := newFlags(s, "policy compile", "policy compile FILE [--spec config.json] [--json]")
	specFile := fs.String("spec", "", "an OCI config.json to apply the policy to (default: a default spec on the host's root)")
	asJSON := fs.Bool("json", false, "print the resulting spec and flags as JSON instead of a diff")
	config := fs.String("config", runtime.DefaultConfigPath, "the runtime configuration (its allowed_hooks)")
	if err := fs.Parse(reorder(args)); err != nil {
		return exitUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitUsage
	}
	cfg, err := runtime.LoadConfig(*config)
	if err != nil {
		fmt.Fprintf(s.err, "openshell: %s\n", err)
		return exitFailed
	}
	p, err := policy.Load(fs.Arg(0))
	if err != nil {
		printErr(s, err)
		return exitFailed
	}
	base, bundle, err := loadBaseSpec(*specFile)
	if err != nil {
		fmt.Fprintf(s.err, "openshell: %s\n", err)
		return exitFailed
	}
	image := base.Root.Path
	if !filepath.IsAbs(image) {
		image = filepath.Join(bundle, image)
	}
	c, err := policyhook.Compile(p, policyhook.WithRootDir(dryRunRoot), policyhook.WithBundle(bundle), policyhook.WithUsers(policyhook.UsersInRoot(image)),
		policyhook.WithAllowedHooks(cfg.AllowedHooks))
	if err != nil {
		fmt.Fprintf(s.err, "openshell: %s\n", err)
		return exitFailed
	}
	before, err := json.MarshalIndent(base, "", "  ")
	if err != nil {
		fmt.Fprintf(s.err, "openshell: encode spec: %s\n", err)
		return exitFailed
	}
	if err := c.Apply(base); err != nil {
		fmt.Fprintf(s.err, "openshell: %s\n", err)
		return exitFailed
	}
	if *asJSON {
		out := compileOutput{Spec: base, RunscFlags: c.RunscFlags, TimeoutSeconds: c.Timeout.Seconds(),
			Policy: map[string]string{"file": p.File, "format": string(p.Format), "sha256": p.Hash}}
		for _, w := range c.Warnings {
			out.Warnings = append(out.Warnings, w.Error())
		}
		enc := json.NewEncoder(s.out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(s.err, "openshell: %s\n", err)
			return exitFailed
		}
		return exitOK
	}
	after, err := json.MarshalIndent(base, "", "  ")
	if err != nil {
		fmt.Fprintf(s.err, "openshell: encode spec: %s\n", err)
		return exitFailed
	}
	diff, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: difflib.SplitLines(string(before) + "\n"), B: difflib.SplitLines(string(after) + "\n"),
		FromFile: "config.json", ToFile: "config.json (policy " + p.File + ")", Context: 2,
	})
	if err != nil {
		fmt.Fprintf(s.err, "openshell: diff: %s\n", err)
		return exitFailed
	}
	fmt.Fprint(s.out, diff)
	fmt.Fprintf(s.out, "\nrunsc flags: %s\n", strings.Join(c.RunscFlags, " "))
	if c.Timeout > 0 {
		fmt.Fprintf(s.out, "wall-clock limit: %s (enforced by the runtime)\n", c.Timeout)
	}
	printWarnings(s, c.Warnings)
	return exitOK
}

// loadBaseSpec reads a config.json, or makes the default spec of a
// sandbox on the host's root (what `openshell run` starts from).
func loadBaseSpec(file string) (*specs.Spec, string, error) {
	if file == "" {
		g, err := generate.New("linux")
		if err != nil {
			return nil, "", fmt.Errorf("default spec: %w", err)
		}
		g.SetRootPath("/")
		g.SetProcessArgs([]string{"/bin/sh"})
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
	case "spec", "since", "config", "dir", "state-dir":
		return true
	}
	return false
}

func runExplain(_ context.Context, s streams, args []string) int {
	fs := newFlags(s, "policy explain", "policy explain FILE")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitUsage
	}
	p, err := policy.Load(fs.Arg(0))
	if err != nil {
		printErr(s, err)
		return exitFailed
	}
	c, err := policyhook.Compile(p, policyhook.WithRootDir(dryRunRoot), policyhook.WithUsers(policyhook.UsersInRoot("/")))
	if err != nil {
		fmt.Fprintf(s.err, "openshell: %s\n", err)
		return exitFailed
	}
	tw := tabwriter.NewWriter(s.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RULE\tENFORCED BY\tBLOCKS")
	for _, r := range policyhook.Explain(c) {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Rule, r.EnforcedBy, r.Blocks)
	}
	if err := tw.Flush(); err != nil {
		return exitFailed
	}
	printWarnings(s, c.Warnings)
	return exitOK
}
