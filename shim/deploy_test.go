package shim

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// decodeManifests decodes every document of a manifest file, strictly,
// into the Kubernetes API type its kind names.
func decodeManifests(t *testing.T, path string) []any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []any
	for i, doc := range bytes.Split(data, []byte("\n---\n")) {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("%s doc %d: %v", path, i, err)
		}
		var obj any
		switch meta.Kind {
		case "RuntimeClass":
			obj = &nodev1.RuntimeClass{}
		case "Pod":
			obj = &corev1.Pod{}
		case "Namespace":
			obj = &corev1.Namespace{}
		case "ConfigMap":
			obj = &corev1.ConfigMap{}
		case "ServiceAccount":
			obj = &corev1.ServiceAccount{}
		case "ClusterRole":
			obj = &rbacv1.ClusterRole{}
		case "ClusterRoleBinding":
			obj = &rbacv1.ClusterRoleBinding{}
		case "DaemonSet":
			obj = &appsv1.DaemonSet{}
		default:
			t.Fatalf("%s doc %d: unexpected kind %q", path, i, meta.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("%s doc %d (%s): %v", path, i, meta.Kind, err)
		}
		out = append(out, obj)
	}
	return out
}

type containerdRuntime struct {
	RuntimeType          string         `toml:"runtime_type"`
	PodAnnotations       []string       `toml:"pod_annotations"`
	ContainerAnnotations []string       `toml:"container_annotations"`
	Options              map[string]any `toml:"options"`
}

// runtimeOf reads the openshell runtime from a containerd config snippet.
func runtimeOf(t *testing.T, data []byte) containerdRuntime {
	t.Helper()
	var cfg struct {
		Version int `toml:"version"`
		Plugins map[string]struct {
			Containerd struct {
				Runtimes map[string]containerdRuntime `toml:"runtimes"`
			} `toml:"containerd"`
		} `toml:"plugins"`
	}
	if err := toml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	rt, ok := cfg.Plugins["io.containerd.cri.v1.runtime"].Containerd.Runtimes["openshell"]
	if cfg.Version != 3 || !ok {
		t.Fatalf("no openshell runtime in a version 3 config: %+v", cfg)
	}
	return rt
}

func TestDeployContainerd(t *testing.T) {
	data, err := os.ReadFile("../deploy/containerd/openshell.toml")
	if err != nil {
		t.Fatal(err)
	}
	rt := runtimeOf(t, data)
	if rt.RuntimeType != RuntimeName || fmt.Sprint(rt.PodAnnotations) != "[io.openshell.*]" || rt.Options["ConfigPath"] != "/etc/openshell/config.toml" {
		t.Errorf("%+v", rt)
	}
}

func TestDeployKubernetes(t *testing.T) {
	var handler string
	for _, obj := range decodeManifests(t, "../deploy/kubernetes/runtimeclass.yaml") {
		switch o := obj.(type) {
		case *nodev1.RuntimeClass:
			handler = o.Handler
			if o.Overhead == nil || o.Overhead.PodFixed.Memory().IsZero() || o.Scheduling == nil || o.Scheduling.NodeSelector["openshell.io/runtime"] != "true" {
				t.Errorf("RuntimeClass needs overhead and scheduling: %+v", o)
			}
		case *corev1.Pod:
			if o.Spec.RuntimeClassName == nil || *o.Spec.RuntimeClassName != "openshell" || o.Annotations["io.openshell.policy"] == "" {
				t.Errorf("example pod needs runtimeClassName openshell and a policy annotation: %+v", o.ObjectMeta)
			}
		}
	}
	if handler != "openshell" {
		t.Fatalf("RuntimeClass handler %q, want the containerd runtime name openshell", handler)
	}
	var ds *appsv1.DaemonSet
	var cm *corev1.ConfigMap
	for _, obj := range decodeManifests(t, "../deploy/kubernetes/installer.yaml") {
		switch o := obj.(type) {
		case *appsv1.DaemonSet:
			ds = o
		case *corev1.ConfigMap:
			cm = o
		}
	}
	if ds == nil || cm == nil {
		t.Fatal("installer needs a DaemonSet and a ConfigMap")
	}
	rt := runtimeOf(t, []byte(cm.Data["containerd.toml"]))
	if rt.RuntimeType != RuntimeName {
		t.Errorf("installer's containerd runtime: %+v", rt)
	}
	script := strings.Join(ds.Spec.Template.Spec.InitContainers[0].Command, " ")
	for _, want := range []string{"openshell-runtime", "containerd-shim-openshell-v1", "runsc", "restart containerd", "openshell.io/runtime=true"} {
		if !strings.Contains(script, want) {
			t.Errorf("installer script lacks %q", want)
		}
	}
	mounts := map[string]bool{}
	for _, m := range ds.Spec.Template.Spec.InitContainers[0].VolumeMounts {
		mounts[filepath.Clean(m.MountPath)] = true
	}
	for _, want := range []string{"/host/usr/local/bin", "/host/etc/openshell", "/host/etc/containerd"} {
		if !mounts[want] {
			t.Errorf("installer does not mount %s", want)
		}
	}
}
