package image

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestWriteTar(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	os.WriteFile(filepath.Join(root, "bin", "busybox"), []byte("ELF"), 0o755)
	os.Symlink("busybox", filepath.Join(root, "bin", "sh"))
	var buf bytes.Buffer
	if err := WriteTar(&buf, root, Options{Name: "docker.io/library/bb:test", Cmd: []string{"/bin/sh"}}); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		files[h.Name] = data
	}
	var index v1.Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index: %s %v", files["index.json"], err)
	}
	m := index.Manifests[0]
	if m.Annotations["io.containerd.image.name"] != "docker.io/library/bb:test" || m.Annotations[v1.AnnotationRefName] != "test" {
		t.Errorf("annotations %v", m.Annotations)
	}
	var manifest v1.Manifest
	json.Unmarshal(files["blobs/sha256/"+m.Digest.Encoded()], &manifest)
	if len(manifest.Layers) != 1 {
		t.Fatalf("manifest %+v", manifest)
	}
	layer := files["blobs/sha256/"+manifest.Layers[0].Digest.Encoded()]
	lr := tar.NewReader(bytes.NewReader(layer))
	seen := map[string]string{}
	for {
		h, err := lr.Next()
		if err != nil {
			break
		}
		seen[h.Name] = h.Linkname
	}
	if _, ok := seen["bin/"]; !ok || seen["bin/sh"] != "busybox" {
		t.Errorf("layer entries %v", seen)
	}
	var docker []struct {
		Config   string
		RepoTags []string
	}
	if err := json.Unmarshal(files["manifest.json"], &docker); err != nil || docker[0].RepoTags[0] != "bb:test" || files[docker[0].Config] == nil {
		t.Errorf("docker manifest %s", files["manifest.json"])
	}
}
