// Command containerd-shim-openshell-v1 is the containerd shim for the
// runtime type io.openshell.v1.
package main

import (
	"context"

	"github.com/openshell/openshell/shim"
)

func main() {
	shim.Run(context.Background())
}
