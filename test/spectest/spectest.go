// Package spectest builds the OCI specs that modifier tests start from.
package spectest

import (
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-tools/generate"
)

// Base returns runtime-tools' default Linux spec (what `runc spec` and
// most engines start from), rooted at the bundle's "rootfs".
func Base(t testing.TB) *specs.Spec {
	t.Helper()
	g, err := generate.New("linux")
	if err != nil {
		t.Fatalf("default spec: %v", err)
	}
	g.SetRootPath("rootfs")
	g.SetProcessArgs([]string{"/usr/bin/agent"})
	return g.Config
}

// Engine returns Base with what Docker adds: volumes, its /etc files, a
// host-network namespace path and a seccomp profile.
func Engine(t testing.TB) *specs.Spec {
	t.Helper()
	s := Base(t)
	s.Mounts = append(s.Mounts,
		specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: "/var/lib/docker/containers/x/resolv.conf", Options: []string{"rbind", "rprivate"}},
		specs.Mount{Destination: "/workspace", Type: "bind", Source: "/home/user/project", Options: []string{"rbind", "rw"}},
		specs.Mount{Destination: "/secrets", Type: "bind", Source: "/home/user/.aws", Options: []string{"rbind", "ro"}},
	)
	g := generate.Generator{Config: s}
	if err := g.AddOrReplaceLinuxNamespace("network", "/proc/1/ns/net"); err != nil {
		t.Fatal(err)
	}
	g.AddProcessRlimits("RLIMIT_NPROC", 1<<20, 1<<20)
	s.Linux.Seccomp = &specs.LinuxSeccomp{DefaultAction: specs.ActErrno}
	return s
}
