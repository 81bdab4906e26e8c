//go:build !openshell_unconfined_bench

package egress

import (
	"bufio"
	"go/build/constraint"
	"os"
	"strings"
	"testing"
)

// TestProductionBuildConfined fails if a build without the benchmark tag
// would serve unconfined: benchUnconfined is false, and the file that
// sets it true is built with that tag and under no other condition.
func TestProductionBuildConfined(t *testing.T) {
	if benchUnconfined {
		t.Fatal("benchUnconfined is true in a build without the tag openshell_unconfined_bench: the gateway would serve unconfined")
	}
	const tag = "openshell_unconfined_bench"
	for file, want := range map[string]bool{"confine_bench_on.go": true, "confine_bench_off.go": false} {
		expr := buildConstraint(t, file)
		// Every tag a production build could have, save the benchmark's.
		without := expr.Eval(func(t string) bool { return t != tag })
		with := expr.Eval(func(t string) bool { return t == tag })
		if without == want || with != want {
			t.Errorf("%s: build constraint %q: want it built only %s the tag %s", file, expr, map[bool]string{true: "with", false: "without"}[want], tag)
		}
	}
}

// buildConstraint is file's //go:build line.
func buildConstraint(t *testing.T, file string) constraint.Expr {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if strings.HasPrefix(line, "package ") {
			break
		}
		if constraint.IsGoBuild(line) {
			expr, err := constraint.Parse(line)
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			return expr
		}
	}
	t.Fatalf("%s has no //go:build line", file)
	return nil
}
