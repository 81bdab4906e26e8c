package runtime

import (
	"strings"
	"testing"
)

func TestInferenceProvidersConfig(t *testing.T) {
	c, err := ParseConfig("c.toml", []byte(`
[inference.providers.openai]
base_url = "https://api.openai.com/v1"
api = "openai"
auth = "bearer"
credential = "file:/etc/openshell/keys/openai"
headers = { "OpenAI-Organization" = "org-1" }
cost_per_input_token = 0.000001
[inference.providers.ollama]
base_url = "http://10.0.0.5:11434/v1"
api = "openai"
auth = "none"
`))
	if err != nil {
		t.Fatal(err)
	}
	ps := c.Inference.ProviderList()
	if len(ps) != 2 || ps[0].Name != "ollama" || ps[1].Name != "openai" || ps[1].Headers["OpenAI-Organization"] != "org-1" || ps[1].CostPerInputToken != 0.000001 {
		t.Errorf("providers %+v", ps)
	}
	for _, tc := range []struct{ toml, want string }{
		{"[inference.providers.a]\nbase_url = \"https://h/v1\"\napi = \"openai\"\nauth = \"bearer\"\ncredential = \"sk-123\"\n", `c.toml: inference.providers.a.credential: "sk-123" is neither "file:/path" nor "env:NAME"`},
		{"[inference.providers.a]\nbase_url = \"https://h/v1\"\napi = \"openai\"\nauth = \"bearer\"\nkey = \"x\"\n", "unknown field"},
		{"[inference.providers.A]\nbase_url = \"https://h/v1\"\napi = \"openai\"\nauth = \"none\"\n", "not a provider name"},
	} {
		if _, err := ParseConfig("c.toml", []byte(tc.toml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.toml, err, tc.want)
		}
	}
}
