package runtime

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/openshell/openshell/runtime/inference"
)

// InferenceConfig is the [inference] table: the host's model providers.
//
//	[inference.providers.openai]
//	base_url = "https://api.openai.com/v1"
//	api = "openai"                    # or "anthropic"
//	auth = "bearer"                   # or "x-api-key", "none"
//	credential = "file:/etc/openshell/keys/openai"   # or "env:OPENAI_API_KEY"
//	headers = { "OpenAI-Organization" = "org-..." }
//	cost_per_input_token = 0.00000015
//	cost_per_output_token = 0.0000006
type InferenceConfig struct {
	Providers map[string]inference.Provider `toml:"providers"`
}

func (c InferenceConfig) validate(file string) error {
	var errs []error
	for name, p := range c.Providers {
		p.Name = name
		if err := p.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", file, err))
		}
	}
	return errors.Join(errs...)
}

// ProviderList is the providers, named, in a stable order: what a
// gateway is given (never a key).
func (c InferenceConfig) ProviderList() []inference.Provider {
	var out []inference.Provider
	for _, name := range slices.Sorted(maps.Keys(c.Providers)) {
		p := c.Providers[name]
		p.Name = name
		out = append(out, p)
	}
	return out
}
