// Command runsc is gVisor's runsc, built from the gVisor module version
// openshell pins, with one addition: the "openshell" trace sink (package
// sink), which tells the sandbox's egress gateway which binary opened
// each TCP connection, by the connection's own local address. Stock
// runsc's trace points carry a connect's destination but not its local
// port, so concurrent connections to one host cannot be told apart from
// outside the sentry; per-binary egress rules need this build.
package main

import (
	"gvisor.dev/gvisor/runsc/cli/maincli"
	"gvisor.dev/gvisor/runsc/version"

	"github.com/openshell/openshell/runsc/sink"
)

// version.Version is set by the linker; referencing it keeps it linked.
var _ = version.Version()

func main() {
	sink.Register()
	maincli.Main()
}
