package registry

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/openshell/openshell/test/image"
)

func TestRegistry(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "hello"), []byte("hi"), 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := image.Build(root, image.Options{Name: "x:1", Files: map[string]string{"/etc/passwd": "root:x:0:0::/:/bin/sh\n"}})
	if err != nil {
		t.Fatal(err)
	}
	var r Registry
	r.Add("e2e-test-images/busybox", "1.29-2", img)
	srv := httptest.NewServer(&r)
	defer srv.Close()
	get := func(method, path string) (int, http.Header, string) {
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(body)
	}
	for _, tc := range []struct {
		method, path string
		status       int
		digest       string
		body         string
	}{
		{"GET", "/v2/", 200, "", "{}"},
		{"GET", "/v2/e2e-test-images/busybox/manifests/1.29-2", 200, img.Digest.String(), string(img.Manifest)},
		{"HEAD", "/v2/e2e-test-images/busybox/manifests/1.29-2", 200, img.Digest.String(), ""},
		{"GET", "/v2/e2e-test-images/busybox/manifests/" + img.Digest.String(), 200, img.Digest.String(), string(img.Manifest)},
		{"GET", "/v2/e2e-test-images/busybox/blobs/" + img.Config.String(), 200, img.Config.String(), string(img.Blobs[img.Config])},
		{"GET", "/v2/e2e-test-images/busybox/manifests/latest", 404, "", ""},
		{"GET", "/v2/other/manifests/1.29-2", 404, "", ""},
		{"GET", "/v2/e2e-test-images/busybox/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000", 404, "", ""},
		{"PUT", "/v2/e2e-test-images/busybox/manifests/x", 405, "", ""},
	} {
		status, h, body := get(tc.method, tc.path)
		if status != tc.status || h.Get("Docker-Content-Digest") != tc.digest || (tc.body != "" && body != tc.body) {
			t.Errorf("%s %s: %d %q %.60q", tc.method, tc.path, status, h.Get("Docker-Content-Digest"), body)
		}
	}
	if len(img.Layers) != 2 {
		t.Errorf("Files made %d layers, want 2", len(img.Layers))
	}
}
