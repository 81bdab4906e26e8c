//go:build !openshell_unconfined_bench

package egress

// benchUnconfined is false in every real build: the gateway confines its
// serving process (confine_bench_on.go says what the benchmark build
// leaves out).
const benchUnconfined = false
