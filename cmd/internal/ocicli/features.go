package ocicli

import (
	"context"
	"encoding/json"
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"

	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/runtime"
)

// cmdFeatures prints what this runtime supports, in the runtime-spec
// features format engines read (containerd asks for it at start).
func cmdFeatures(_ context.Context, e *env, args []string) error {
	if len(args) != 0 {
		return fmt.Errorf("features: takes no arguments")
	}
	data, err := json.MarshalIndent(Features(), "", "  ")
	if err != nil {
		return fmt.Errorf("features: %w", err)
	}
	_, err = fmt.Fprintf(e.stdio.Out, "%s\n", data)
	return err
}

// Features describes openshell-runtime: runsc's OCI support, narrowed by
// what a policy always takes away.
func Features() *features.Features {
	yes, no := true, false
	return &features.Features{
		OCIVersionMin: "1.0.0",
		OCIVersionMax: specs.Version,
		// runsc runs OCI hooks on the host, as runc does.
		Hooks:        []string{"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"},
		MountOptions: []string{"ro", "rw", "bind", "rbind", "nosuid", "nodev", "noexec", "private", "rprivate", "slave", "rslave", "shared", "rshared"},
		Linux: &features.Linux{
			Namespaces: []string{"pid", "network", "mount", "ipc", "uts", "user", "cgroup"},
			// Every policy drops all capabilities; none can be granted.
			Capabilities: []string{},
			Cgroup:       &features.Cgroup{V1: &yes, V2: &yes, Systemd: &yes},
			Seccomp: &features.Seccomp{
				Enabled:   &yes,
				Actions:   policy.SeccompActions,
				Operators: []string{"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"},
				Archs:     []string{"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"},
			},
			Apparmor: &features.Apparmor{Enabled: &no},
			Selinux:  &features.Selinux{Enabled: &no},
		},
		Annotations: map[string]string{
			"io.openshell.runtime.version": Version,
			"io.openshell.runtime.sandbox": "gvisor",
			runtime.AnnotationPolicy:       "a policy name in the policy directory, or an absolute path",
			runtime.AnnotationPolicyInline: "the policy's YAML",
		},
	}
}
