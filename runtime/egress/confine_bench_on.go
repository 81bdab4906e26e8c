//go:build openshell_unconfined_bench

package egress

import (
	"fmt"
	"os"
)

// benchUnconfined is true only in a build with the tag
// openshell_unconfined_bench, which the egress benchmark makes to measure
// what the confinement costs: its keeper starts the serving process as
// root, in no cgroup of its own, without dropping the bounding set,
// without no_new_privs or Landlock, and the serving process neither
// checks it is confined nor installs its seccomp filter. The process
// layout (keeper, reduced keeper, serving child) and everything else are
// those of a real build. Such a binary must never be installed.
const benchUnconfined = true

// envUnconfinedBench must be 1 for a benchmark build to run at all, so
// that it cannot pass for a real one.
const envUnconfinedBench = "OPENSHELL_UNCONFINED_BENCH"

func init() {
	if os.Getenv(envUnconfinedBench) != "1" {
		fmt.Fprintf(os.Stderr, "%s: REFUSING TO RUN: this binary was built with -tags openshell_unconfined_bench: its egress gateway runs as root with NO confinement (no user, cgroup, Landlock or seccomp). It is for benchmarks only; set %s=1 to run it anyway.\n", os.Args[0], envUnconfinedBench)
		os.Exit(2)
	}
	fmt.Fprintf(os.Stderr, "%s: WARNING: benchmark build (openshell_unconfined_bench): the egress gateway is NOT confined\n", os.Args[0])
}
