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
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
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
	User string // the image's USER, e.g. "1002" or "www-data:www-data"
	// Files are written, mode 0644, in a second layer over rootfs: one
	// base directory serves images that differ in a few files.
	Files map[string]string
}

// Image is a built image: its manifest and every blob, by digest.
type Image struct {
	Manifest []byte
	Digest   digest.Digest // the manifest's
	Config   digest.Digest
	Layers   []digest.Digest
	Blobs    map[digest.Digest][]byte
}

// Build makes rootfs (and o.Files) an image.
func Build(rootfs string, o Options) (*Image, error) {
	base, err := layerTar(rootfs)
	if err != nil {
		return nil, err
	}
	layers := [][]byte{base}
	if len(o.Files) > 0 {
		extra, err := filesTar(o.Files)
		if err != nil {
			return nil, err
		}
		layers = append(layers, extra)
	}
	img := &Image{Blobs: map[digest.Digest][]byte{}}
	var descs []v1.Descriptor
	for _, l := range layers {
		d := digest.FromBytes(l)
		img.Layers = append(img.Layers, d)
		img.Blobs[d] = l
		descs = append(descs, v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: d, Size: int64(len(l))})
	}
	created := time.Unix(0, 0).UTC()
	config, err := json.Marshal(v1.Image{
		Created:  &created,
		Platform: v1.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config:   v1.ImageConfig{Cmd: o.Cmd, Env: o.Env, User: o.User},
		// Uncompressed layers: their diff IDs are their digests.
		RootFS: v1.RootFS{Type: "layers", DiffIDs: img.Layers},
	})
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	img.Config = digest.FromBytes(config)
	img.Blobs[img.Config] = config
	img.Manifest, err = json.Marshal(v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: img.Config, Size: int64(len(config))},
		Layers:    descs,
	})
	if err != nil {
		return nil, fmt.Errorf("image manifest: %w", err)
	}
	img.Digest = digest.FromBytes(img.Manifest)
	img.Blobs[img.Digest] = img.Manifest
	return img, nil
}

// WriteTar writes rootfs as an image to w.
func WriteTar(w io.Writer, rootfs string, o Options) error {
	img, err := Build(rootfs, o)
	if err != nil {
		return err
	}
	tag := o.Name[strings.LastIndex(o.Name, ":")+1:]
	index, err := json.Marshal(v1.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: v1.MediaTypeImageManifest, Digest: img.Digest, Size: int64(len(img.Manifest)),
			Annotations: map[string]string{"io.containerd.image.name": o.Name, v1.AnnotationRefName: tag},
		}},
	})
	if err != nil {
		return fmt.Errorf("image index: %w", err)
	}
	blob := func(d digest.Digest) string { return "blobs/sha256/" + d.Encoded() }
	var layerNames []string
	for _, l := range img.Layers {
		layerNames = append(layerNames, blob(l))
	}
	dockerManifest, err := json.Marshal([]map[string]any{{
		"Config": blob(img.Config), "RepoTags": []string{dockerName(o.Name)}, "Layers": layerNames,
	}})
	if err != nil {
		return fmt.Errorf("docker manifest: %w", err)
	}
	type file struct {
		name string
		data []byte
	}
	files := []file{{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)}}
	for _, d := range append(append(slices.Clone(img.Layers), img.Config), img.Digest) {
		files = append(files, file{blob(d), img.Blobs[d]})
	}
	files = append(files, file{"index.json", index}, file{"manifest.json", dockerManifest})
	tw := tar.NewWriter(w)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			return fmt.Errorf("image tar: %w", err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return fmt.Errorf("image tar: %w", err)
		}
	}
	return tw.Close()
}

// filesTar is a layer of regular files, parents implied.
func filesTar(files map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := slices.Sorted(maps.Keys(files))
	for _, name := range names {
		data := files[name]
		hdr := &tar.Header{Name: strings.TrimPrefix(name, "/"), Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
		if _, err := io.WriteString(tw, data); err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
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
