// Command openshell-runtime is a runc-compatible OCI runtime that runs
// every container in a gVisor sandbox under its openshell policy.
package main

import (
	"context"
	"os"

	"github.com/openshell/openshell/cmd/internal/ocicli"
)

func main() {
	os.Exit(ocicli.Main(context.Background(), os.Args[1:], ocicli.Stdio{In: os.Stdin, Out: os.Stdout, Err: os.Stderr}))
}
