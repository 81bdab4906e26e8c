// Command openshell is openshell's command for people: validate, compile
// and explain policies (and, with the runtime, run commands sandboxed).
package main

import (
	"context"
	"os"

	"github.com/openshell/openshell/cmd/internal/cli"
)

func main() {
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
