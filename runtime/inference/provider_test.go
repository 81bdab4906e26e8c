package inference

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openshell/openshell/policyhook/policy"
)

func TestNormalizeURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://API.OpenAI.com:443/v1/": "https://api.openai.com/v1",
		"http://vllm:80/v1":              "http://vllm/v1",
		"http://vllm:8000":               "http://vllm:8000",
		"http://[::1]:8000/v1//":         "http://[::1]:8000/v1",
		"http://h/a/../v1":               "http://h/v1",
	} {
		if got, err := NormalizeURL(in); err != nil || got != want {
			t.Errorf("NormalizeURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"vllm:8000", "ftp://h/", "http://u:p@h/", "http://h/v1?x=1", "http://h/#f", "http:///v1"} {
		if _, err := NormalizeURL(bad); err == nil {
			t.Errorf("NormalizeURL(%q) accepted", bad)
		}
	}
}

func TestResolve(t *testing.T) {
	ps := []Provider{{Name: "openai", BaseURL: "https://api.openai.com/v1"}}
	for _, tc := range []struct {
		route    policy.Inference
		provider string
		err      string
	}{
		{policy.Inference{RoutingEndpoint: "https://API.openai.com/v1/"}, "openai", ""},
		{policy.Inference{Provider: "openai"}, "openai", ""},
		{policy.Inference{RoutingEndpoint: "https://api.openai.com/v2"}, "", ""},
		{policy.Inference{RoutingEndpoint: "https://evil.example/v1", Provider: "openai"}, "", "goes only to its own base_url"},
		{policy.Inference{Provider: "nope"}, "", "does not define"},
	} {
		got, err := Resolve(&tc.route, ps)
		var name string
		if got.Provider != nil {
			name = got.Provider.Name
		}
		if name != tc.provider || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("Resolve(%+v) = %q, %v; want %q, %q", tc.route, name, err, tc.provider, tc.err)
		}
	}
}

func TestProviderValidate(t *testing.T) {
	good := Provider{Name: "a", BaseURL: "https://h/v1", API: "openai", Auth: "bearer", Credential: "file:/etc/openshell/keys/a"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		change func(*Provider)
		want   string
	}{
		{func(p *Provider) { p.API = "gemini" }, `api: "gemini" is not openai or anthropic`},
		{func(p *Provider) { p.Auth = "basic" }, `auth: "basic" is not bearer`},
		{func(p *Provider) { p.Credential = "sk-123" }, `neither "file:/path" nor "env:NAME"`},
		{func(p *Provider) { p.Credential = "file:keys/a" }, "clean absolute path"},
		{func(p *Provider) { p.Auth, p.Credential = "none", "env:X" }, "is set, but auth is none"},
		{func(p *Provider) { p.Headers = map[string]string{"Authorization": "x"} }, "set by the router itself"},
		{func(p *Provider) { p.Headers = map[string]string{"X-A": "a\r\nb"} }, "line break"},
		{func(p *Provider) { p.BaseURL = "https://u:p@h/v1" }, "carries credentials"},
	} {
		p := good
		tc.change(&p)
		if err := p.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate() = %v, want %q", err, tc.want)
		}
	}
}

func TestReadCredential(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: credential files must be root-owned")
	}
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte("  sk-abcdef0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadCredential("file:"+key, nil); err != nil || got != "sk-abcdef0123456789" {
		t.Fatalf("ReadCredential = %q, %v", got, err)
	}
	link := filepath.Join(dir, "link")
	_ = os.Symlink(key, link)
	if _, err := ReadCredential("file:"+link, nil); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("a link: %v", err)
	}
	_ = os.Chmod(key, 0o640)
	if _, err := ReadCredential("file:"+key, nil); err == nil || !strings.Contains(err.Error(), "has mode 0640") {
		t.Errorf("group-readable: %v", err)
	}
	_ = os.Chmod(key, 0o600)
	_ = os.Chown(key, 1000, 0)
	if _, err := ReadCredential("file:"+key, nil); err == nil || !strings.Contains(err.Error(), "owned by uid 1000, not root") {
		t.Errorf("not root's: %v", err)
	}
	_ = os.WriteFile(filepath.Join(dir, "bad"), []byte("sk-a b"), 0o600)
	if _, err := ReadCredential("file:"+filepath.Join(dir, "bad"), nil); err == nil || strings.Contains(err.Error(), "sk-a") {
		t.Errorf("a key with a space: %v", err)
	}
	env := map[string]string{"K": "sk-env-0123456789"}
	if got, err := ReadCredential("env:K", func(k string) string { return env[k] }); err != nil || got != env["K"] {
		t.Errorf("env: %q %v", got, err)
	}
	if _, err := ReadCredential("env:MISSING", func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "not set") {
		t.Errorf("env missing: %v", err)
	}
}
