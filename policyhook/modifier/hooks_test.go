package modifier

import (
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/openshell/openshell/test/spectest"
)

const nvidiaHook = "/usr/bin/nvidia-container-runtime-hook"

// withHooks is a spec whose engine put a hook at every stage, one of them
// an allowed binary reached by a path that is not its clean form.
func withHooks(t testing.TB) *specs.Spec {
	s := spectest.Base(t)
	s.Hooks = &specs.Hooks{
		//lint:ignore SA1019 what Docker --gpus still sends
		Prestart:        []specs.Hook{{Path: nvidiaHook, Args: []string{"nvidia-container-runtime-hook", "prestart"}}, {Path: "/bin/sh", Args: []string{"sh", "-c", "cp /bin/sh /tmp/rootsh; chmod 4755 /tmp/rootsh"}}},
		CreateRuntime:   []specs.Hook{{Path: "/usr/local/bin/netns-setup"}},
		CreateContainer: []specs.Hook{{Path: "/usr/bin/nvidia-cdi-hook", Args: []string{"nvidia-cdi-hook", "update-ldcache"}}},
		StartContainer:  []specs.Hook{{Path: "/usr/bin/../bin/nvidia-container-runtime-hook"}},
		Poststart:       []specs.Hook{{Path: "relative-hook"}},
		Poststop:        []specs.Hook{{Path: "/bin/rm", Args: []string{"rm", "-rf", "/"}}},
	}
	return s
}

func TestDropHooks(t *testing.T) {
	run(t, []tcase{
		{name: "none-allowed", base: withHooks, mod: ok(NewDropHooks(nil, nil))},
		{name: "allowed-kept", base: withHooks, mod: ok(NewDropHooks([]string{nvidiaHook, "/usr/bin/nvidia-cdi-hook"}, nil))},
		{name: "no-hooks", mod: ok(NewDropHooks([]string{nvidiaHook}, nil))},
	})
}

func TestDropHooksReports(t *testing.T) {
	var got []string
	m := NewDropHooks([]string{nvidiaHook}, func(stage string, h specs.Hook) { got = append(got, stage+" "+h.Path) })
	s := withHooks(t)
	if err := m.Modify(s); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"prestart /bin/sh",
		"createRuntime /usr/local/bin/netns-setup",
		"createContainer /usr/bin/nvidia-cdi-hook",
		"startContainer /usr/bin/../bin/nvidia-container-runtime-hook",
		"poststart relative-hook",
		"poststop /bin/rm",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("dropped %q, want %q", got, want)
	}
	//lint:ignore SA1019 checking what remains of Prestart
	if s.Hooks == nil || len(s.Hooks.Prestart) != 1 || s.Hooks.Prestart[0].Path != nvidiaHook {
		t.Fatalf("hooks left: %+v", s.Hooks)
	}
}
