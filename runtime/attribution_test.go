package runtime

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openshell/openshell/policyhook"
	"github.com/openshell/openshell/policyhook/policy"
)

// fakeRunsc is a script that prints version as runsc --version would.
func fakeRunsc(t *testing.T, version string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "runsc")
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho 'runsc version "+version+"'\necho 'spec: 1.2.1'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckAttribution(t *testing.T) {
	scoped := &policy.Policy{Network: policy.Network{Egress: []policy.EgressRule{
		{Field: "sandbox.network.allowed_egress[0]", Host: "a.test"},
		{Field: "sandbox.network.allowed_egress[1]", Host: "b.test", Binaries: []string{"/usr/bin/git"}},
	}}}
	open := &policy.Policy{Network: policy.Network{Egress: []policy.EgressRule{{Field: "x", Host: "a.test"}}}}
	stock := fakeRunsc(t, "release-20260905.0")
	ours := fakeRunsc(t, "v0.0.0-20260905035102-160fafc42237"+RunscBuildMark)
	ctx := context.Background()
	if err := CheckAttribution(ctx, stock, scoped); err == nil || !strings.Contains(err.Error(), "allowed_egress[1] names binaries") || !strings.Contains(err.Error(), "make runsc") {
		t.Errorf("stock runsc with binaries: %v", err)
	}
	if err := CheckAttribution(ctx, ours, scoped); err != nil {
		t.Errorf("openshell's runsc: %v", err)
	}
	if err := CheckAttribution(ctx, stock, open); err != nil {
		t.Errorf("no binaries, stock runsc: %v", err)
	}
	if err := CheckAttribution(ctx, filepath.Join(t.TempDir(), "none"), scoped); err == nil {
		t.Error("a missing runsc passed")
	}
}

// A learning sandbox on stock runsc learns without binaries (warned); on
// openshell's build it keeps them; a policy naming binaries is not looked
// at again (CheckAttribution has run runsc --version for it already).
func TestLearnWithoutSink(t *testing.T) {
	open := &policy.Policy{Network: policy.Network{Egress: []policy.EgressRule{{Field: "x", Host: "a.test"}}}}
	scoped := &policy.Policy{Network: policy.Network{Egress: []policy.EgressRule{{Field: "x", Host: "a.test", Binaries: []string{"/usr/bin/git"}}}}}
	stock := fakeRunsc(t, "release-20260905.0")
	ours := fakeRunsc(t, "v0"+RunscBuildMark)
	for _, c := range []struct {
		p     *policy.Policy
		runsc string
		warn  bool
		keep  bool
	}{
		{open, stock, true, false},
		{open, ours, false, true},
		{scoped, stock, false, true},
	} {
		sb := &Sandbox{Compiled: &policyhook.Compiled{Policy: c.p, Attribution: true}}
		w := sb.LearnWithoutSink(context.Background(), c.runsc)
		if (w != "") != c.warn || sb.Compiled.Attribution != c.keep {
			t.Errorf("%s: warning %q, attribution %v", c.runsc, w, sb.Compiled.Attribution)
		}
	}
}
