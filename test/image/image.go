// Package image writes a root filesystem as a container image tar that
// both `ctr images import` (OCI layout, index.json) and `docker load`
// (manifest.json) accept: test images with no registry.
package image

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Options describe the image.
type Options struct {
	Name string   // e.g. docker.io/library/busybox:openshell-test
	Cmd  []string // the image's default command
	Env  []string
}

// WriteTar writes rootfs as a one-layer image to w.
func WriteTar(w io.Writer, rootfs string, o Options) error {
	layer, err := layerTar(rootfs)
	if err != nil {
		return err
	}
	layerDigest := digest.FromBytes(layer)
	created := time.Unix(0, 0).UTC()
	config, err := json.Marshal(v1.Image{
		Created:  &created,
		Platform: v1.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config:   v1.ImageConfig{Cmd: o.Cmd, Env: o.Env},
		RootFS:   v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{layerDigest}},
	})
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	configDigest := digest.FromBytes(config)
	manifest, err := json.Marshal(v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: configDigest, Size: int64(len(config))},
		Layers:    []v1.Descriptor{{MediaType: v1.MediaTypeImageLayer, Digest: layerDigest, Size: int64(len(layer))}},
	})
	if err != nil {
		return fmt.Errorf("image manifest: %w", err)
	}
	manifestDigest := digest.FromBytes(manifest)
	tag := o.Name[strings.LastIndex(o.Name, ":")+1:]
	index, err := json.Marshal(v1.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: v1.MediaTypeImageManifest, Digest: manifestDigest, Size: int64(len(manifest)),
			Annotations: map[string]string{"io.containerd.image.name": o.Name, v1.AnnotationRefName: tag},
		}},
	})
	if err != nil {
		return fmt.Errorf("image index: %w", err)
	}
	blob := func(d digest.Digest) string { return "blobs/sha256/" + d.Encoded() }
	dockerManifest, err := json.Marshal([]map[string]any{{
		"Config": blob(configDigest), "RepoTags": []string{dockerName(o.Name)}, "Layers": []string{blob(layerDigest)},
	}})
	if err != nil {
		return fmt.Errorf("docker manifest: %w", err)
	}
	tw := tar.NewWriter(w)
	for _, f := range []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{blob(layerDigest), layer},
		{blob(configDigest), config},
		{blob(manifestDigest), manifest},
		{"index.json", index},
		{"manifest.json", dockerManifest},
	} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			return fmt.Errorf("image tar: %w", err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return fmt.Errorf("image tar: %w", err)
		}
	}
	return tw.Close()
}

// WriteFile writes the image tar to path.
func WriteFile(path, rootfs string, o Options) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if err := WriteTar(f, rootfs, o); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// dockerName drops docker.io/library/, which docker load does not show.
func dockerName(name string) string {
	return strings.TrimPrefix(strings.TrimPrefix(name, "docker.io/"), "library/")
}

// layerTar is rootfs as an uncompressed tar, owned by root, in a stable
// order.
func layerTar(rootfs string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(rootfs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(rootfs, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.ModTime = time.Unix(0, 0)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(tw, f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("layer from %s: %w", rootfs, err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}
