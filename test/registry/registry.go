// Package registry serves test images over the OCI distribution API, read
// only: enough for containerd (and the CRI's PullImage, which always asks
// a registry) to pull them, with no registry image or daemon. It is
// written here because none of the chosen dependencies has one, and a
// pull needs only four routes.
package registry

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strconv"
	"sync"

	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/openshell/openshell/test/image"
)

// Registry holds images by repository and tag. Its zero value is empty
// and ready.
type Registry struct {
	mu    sync.RWMutex
	tags  map[string]digest.Digest            // "repo:tag" -> manifest
	blobs map[string]map[digest.Digest][]byte // repo -> blobs
}

// Add serves img as repo:tag (repo without the host, e.g.
// "e2e-test-images/busybox").
func (r *Registry) Add(repo, tag string, img *image.Image) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tags == nil {
		r.tags, r.blobs = map[string]digest.Digest{}, map[string]map[digest.Digest][]byte{}
	}
	r.tags[repo+":"+tag] = img.Digest
	if r.blobs[repo] == nil {
		r.blobs[repo] = map[digest.Digest][]byte{}
	}
	for d, b := range img.Blobs {
		r.blobs[repo][d] = b
	}
}

var route = regexp.MustCompile(`^/v2/(.+)/(manifests|blobs)/([^/]+)$`)

func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		fail(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "this registry is read only")
		return
	}
	if req.URL.Path == "/v2/" || req.URL.Path == "/v2" {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		w.Write([]byte("{}"))
		return
	}
	m := route.FindStringSubmatch(req.URL.Path)
	if m == nil {
		fail(w, http.StatusNotFound, "NAME_UNKNOWN", "no such route")
		return
	}
	repo, kind, ref := m[1], m[2], m[3]
	r.mu.RLock()
	d, err := digest.Parse(ref)
	if err != nil && kind == "manifests" {
		d = r.tags[repo+":"+ref]
	}
	data, ok := r.blobs[repo][d]
	r.mu.RUnlock()
	if !ok {
		code := "BLOB_UNKNOWN"
		if kind == "manifests" {
			code = "MANIFEST_UNKNOWN"
		}
		fail(w, http.StatusNotFound, code, repo+" has no "+ref)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if kind == "manifests" {
		w.Header().Set("Content-Type", v1.MediaTypeImageManifest)
	}
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	if req.Method == http.MethodGet {
		w.Write(data)
	}
}

func fail(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}
