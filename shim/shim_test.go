package shim

import (
	"strings"
	"testing"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
)

func mustAny(t *testing.T, v any) *anypb.Any {
	t.Helper()
	a, err := typeurl.MarshalAnyToProto(v)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestRuntimeOptions(t *testing.T) {
	const bin = "/usr/local/bin/openshell-runtime"
	for _, tc := range []struct {
		name       string
		in         *anypb.Any
		wantBinary string
		wantConfig string
		wantRoot   string
		wantErr    string
	}{
		{name: "none (ctr, Docker)", wantBinary: bin},
		{name: "empty runc options", in: mustAny(t, &runcoptions.Options{}), wantBinary: bin},
		{name: "runc options kept", in: mustAny(t, &runcoptions.Options{Root: "/run/os", SystemdCgroup: true}), wantBinary: bin, wantRoot: "/run/os"},
		{name: "our binary named", in: mustAny(t, &runcoptions.Options{BinaryName: "/opt/bin/openshell-runtime"}), wantBinary: "/opt/bin/openshell-runtime"},
		{name: "CRI config path", in: mustAny(t, &runtimeoptions.Options{ConfigPath: "/etc/openshell/config.toml"}), wantBinary: bin, wantConfig: "/etc/openshell/config.toml"},
		{name: "another runtime refused", in: mustAny(t, &runcoptions.Options{BinaryName: "/usr/bin/runc"}), wantErr: `"/usr/bin/runc" as the runtime binary: only openshell-runtime applies openshell policies`},
		{name: "other options type refused", in: mustAny(t, &runcoptions.CheckpointOptions{Exit: true}), wantErr: "*options.CheckpointOptions are not supported"},
		{name: "undecodable refused", in: &anypb.Any{TypeUrl: "example.com/unknown", Value: []byte{1}}, wantErr: "decode runtime options"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var in typeurl.Any
			if tc.in != nil {
				in = tc.in
			}
			o, err := RuntimeOptions(in, bin)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.runc.BinaryName != tc.wantBinary || o.configPath != tc.wantConfig || o.runc.Root != tc.wantRoot {
				t.Fatalf("got binary %q config %q root %q", o.runc.BinaryName, o.configPath, o.runc.Root)
			}
		})
	}
}
