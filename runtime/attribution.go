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
	field := ""
	for _, r := range p.Network.Egress {
		if len(r.Binaries) > 0 {
			field = r.Field
			break
		}
	}
	if field == "" {
		return nil
	}
	version, err := (&runsc.Runsc{Path: runscPath}).Check(ctx)
	if err != nil {
		return fmt.Errorf("%s names binaries: %w", field, err)
	}
	if !strings.Contains(version, RunscBuildMark) {
		return fmt.Errorf("%s names binaries, and per-binary egress rules need openshell's runsc build (make runsc), which reports the binary behind each connection; %s is %q", field, runscPath, version)
	}
	return nil
}
