package runtime

import (
	"context"
	"fmt"
	"strings"

	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/runtime/runsc"
)

// RunscBuildMark is in the version of openshell's runsc build (make
// runsc): gVisor's runsc at the pinned version plus the attribution sink
// (runsc/ module). Per-binary egress rules need it.
const RunscBuildMark = "+openshell"

// CheckAttribution refuses a policy with binary-scoped egress rules when
// runscPath is not openshell's build: stock runsc cannot say which binary
// opened a connection, and a rule that cannot be enforced is never
// accepted and dropped.
func CheckAttribution(ctx context.Context, runscPath string, p *policy.Policy) error {
	r := p.Network.ScopedRule()
	if r == nil {
		return nil
	}
	field := r.Field
	version, err := (&runsc.Runsc{Path: runscPath}).Check(ctx)
	if err != nil {
		return fmt.Errorf("%s names binaries: %w", field, err)
	}
	if !hasMark(version) {
		return fmt.Errorf("%s names binaries, and per-binary egress rules need openshell's runsc build (make runsc), which reports the binary behind each connection; %s is %q", field, runscPath, version)
	}
	return nil
}

func hasMark(version string) bool { return strings.Contains(version, RunscBuildMark) }

// LearnWithoutSink turns attribution off for a learning sandbox whose
// runsc is not openshell's build (CheckAttribution has already refused one
// whose policy names binaries), and says what that costs: the suggestion
// names no binaries. "" when nothing changed.
func (sb *Sandbox) LearnWithoutSink(ctx context.Context, runscPath string) string {
	if sb.Compiled == nil || !sb.Compiled.Attribution || sb.Compiled.Policy.Network.ScopedRule() != nil {
		// None asked, or CheckAttribution has seen the build already.
		return ""
	}
	if v, err := (&runsc.Runsc{Path: runscPath}).Check(ctx); err == nil && hasMark(v) {
		return ""
	}
	sb.Compiled.Attribution = false
	return "learning without openshell's runsc build (make runsc): the suggested policy will name no binaries"
}
