package nvproxy

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"
)

// CDIKind is the vendor and class NVIDIA's CDI specs name GPUs with.
const CDIKind = "nvidia.com/gpu"

// A Generator makes a CDI spec for this host's NVIDIA GPUs, for hosts
// whose CDI directories have none (nvidia-ctk cdi generate never ran).
type Generator func() (*cdispecs.Spec, error)

// CDI is where Expose looks for CDI specs when no engine injected the
// GPUs itself.
type CDI struct {
	// SpecDirs are searched in order, later ones winning, as every CDI
	// consumer does (/etc/cdi, /var/run/cdi by default).
	SpecDirs []string
	// Generate is asked when no spec dir names the GPUs; nil: nobody is.
	Generate Generator
}

// cdiNames are the qualified CDI names of the policy's GPUs.
func cdiNames(devices []string) []string {
	out := make([]string, 0, len(devices))
	for _, d := range devices {
		out = append(out, CDIKind+"="+d)
	}
	return out
}

// injectCDI applies the CDI edits for names to s, from the spec dirs or
// else from a generated spec. It says where the devices came from; ok is
// false (with the reasons) when neither has them all.
func (c *CDI) injectCDI(s *specs.Spec, names []string) (from string, ok bool, why []string, err error) {
	if len(c.SpecDirs) > 0 {
		// Auto-refresh would start an fsnotify watcher per sandbox; one
		// scan at create is what a runtime needs.
		cache, cerr := cdi.NewCache(cdi.WithSpecDirs(c.SpecDirs...), cdi.WithAutoRefresh(false))
		var missing, files []string
		for _, n := range names {
			if d := cache.GetDevice(n); d != nil {
				files = append(files, d.GetSpec().GetPath())
			} else {
				missing = append(missing, n)
			}
		}
		if len(missing) == 0 {
			slices.Sort(files)
			if _, err := cache.InjectDevices(s, names...); err != nil {
				return "", false, nil, fmt.Errorf("CDI: %w", err)
			}
			return "CDI spec " + strings.Join(slices.Compact(files), ", "), true, nil, nil
		}
		w := fmt.Sprintf("no CDI device %s in %s", strings.Join(missing, ", "), strings.Join(c.SpecDirs, ", "))
		if cerr != nil {
			w += fmt.Sprintf(" (%v)", cerr)
		}
		why = append(why, w)
	}
	if c.Generate == nil {
		return "", false, why, nil
	}
	raw, gerr := c.Generate()
	if gerr != nil {
		return "", false, append(why, fmt.Sprintf("generating a CDI spec: %v", gerr)), nil
	}
	edits, missing, err := generatedEdits(raw, names)
	if err != nil {
		return "", false, nil, err
	}
	if len(missing) > 0 {
		var have []string
		for _, d := range raw.Devices {
			have = append(have, d.Name)
		}
		return "", false, nil, fmt.Errorf("GPU %s is not on this host: its devices are %s", strings.Join(missing, ", "), strings.Join(have, ", "))
	}
	if err := edits.Apply(s); err != nil {
		return "", false, nil, fmt.Errorf("CDI: %w", err)
	}
	return "a CDI spec generated from the host driver", true, nil, nil
}

// generatedEdits are a generated spec's common edits plus those of the
// named devices, checked as the CDI cache checks a spec file.
func generatedEdits(raw *cdispecs.Spec, names []string) (*cdi.ContainerEdits, []string, error) {
	if raw == nil {
		return nil, nil, errors.New("CDI: the generator returned no spec")
	}
	if raw.Kind != CDIKind {
		return nil, nil, fmt.Errorf("CDI: the generated spec is for %s, not %s", raw.Kind, CDIKind)
	}
	edits := &cdi.ContainerEdits{ContainerEdits: &cdispecs.ContainerEdits{}}
	edits.Append(&cdi.ContainerEdits{ContainerEdits: &raw.ContainerEdits})
	var missing []string
	for _, n := range names {
		_, _, name := parser.ParseDevice(n)
		i := slices.IndexFunc(raw.Devices, func(d cdispecs.Device) bool { return d.Name == name })
		switch {
		case i >= 0:
			edits.Append(&cdi.ContainerEdits{ContainerEdits: &raw.Devices[i].ContainerEdits})
		case name == "all":
			// nvcdi names "all" only when asked to merge; it is every GPU.
			for i := range raw.Devices {
				edits.Append(&cdi.ContainerEdits{ContainerEdits: &raw.Devices[i].ContainerEdits})
			}
		default:
			missing = append(missing, name)
		}
	}
	if err := edits.Validate(); err != nil {
		return nil, nil, fmt.Errorf("CDI: the generated spec: %w", err)
	}
	return edits, missing, nil
}
