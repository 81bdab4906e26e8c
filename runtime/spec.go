package runtime

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/openshell/openshell/policyhook/modifier"
)

// Spec is an OCI spec being prepared: loaded once, modified, and flushed
// only when everything that modifies it has succeeded. It is flushed into
// the sandbox's own bundle, never over the engine's: the engine's bundle
// stays as it was, so a failed create changes nothing and the same bundle
// can be run again.
type Spec interface {
	// Load reads the spec. It must be called before Modify and Flush;
	// later calls return the same spec, with its modifications.
	Load() (*specs.Spec, error)
	// Modify applies m to the loaded spec, in memory.
	Modify(m modifier.SpecModifier) error
	// Flush writes the modified spec to path.
	Flush(path string) error
}

// NewFileSpec is a Spec loaded from a bundle's config.json.
func NewFileSpec(path string) Spec { return &fileSpec{path: path} }

// NewMemorySpec is a Spec that starts in memory.
func NewMemorySpec(s *specs.Spec) Spec { return &memorySpec{spec: s} }

type memorySpec struct{ spec *specs.Spec }

func (m *memorySpec) Load() (*specs.Spec, error) {
	if m.spec == nil {
		return nil, fmt.Errorf("load spec: no spec")
	}
	return m.spec, nil
}

func (m *memorySpec) Modify(mod modifier.SpecModifier) error {
	if m.spec == nil {
		return fmt.Errorf("modify spec: not loaded")
	}
	if mod == nil {
		return nil
	}
	return mod.Modify(m.spec)
}

type fileSpec struct {
	memorySpec
	path string
}

func (f *fileSpec) Load() (*specs.Spec, error) {
	if f.spec != nil {
		return f.spec, nil
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	var s specs.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("load spec %s: %w", f.path, err)
	}
	f.spec = &s
	return f.spec, nil
}

// Flush writes config.json atomically (0600: a spec may carry secrets in
// its environment), so a crash midway leaves no half-written spec.
func (m *memorySpec) Flush(path string) error {
	if m.spec == nil {
		return fmt.Errorf("flush spec: not loaded")
	}
	data, err := json.MarshalIndent(m.spec, "", "  ")
	if err != nil {
		return fmt.Errorf("flush spec: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config.json-")
	if err != nil {
		return fmt.Errorf("flush spec: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("flush spec: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("flush spec: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("flush spec: %w", err)
	}
	return nil
}
