#!/usr/bin/env bash
# Runs the OCI runtime-tools validation programs against bare runsc and
# against openshell-runtime (under a permissive policy) in the same run,
# and prints a per-program diff.
#
# runtime-tools v0.9.0 is the only version the module proxy serves; it has
# no go.mod, and its validation helpers build only against runtime-spec
# v1.0.2 (and its runtimetest against selinux before v1.11). So it is built
# in a module of its own under .cache/, from the proxy, with those
# versions pinned.
#
#   test/runtimetools/run.sh [PROGRAM...]   (root; make conformance runs it)
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$repo/bin}
RUNSC=${RUNSC:-$BIN/runsc}
GO=${GO:-go}
[ "$(id -u)" = 0 ] || { echo "run.sh: needs root" >&2; exit 1; }
for b in "$RUNSC" "$BIN/openshell-runtime"; do
  [ -x "$b" ] || { echo "run.sh: $b missing (make build runsc)" >&2; exit 1; }
done

mod=$repo/.cache/runtime-tools
mkdir -p "$mod/out"
if [ ! -x "$mod/out/create.t" ] || [ ! -x "$mod/runtimetest" ]; then
  sed 's#^module .*#module openshell-runtime-tools#' "$repo/go.mod" > "$mod/go.mod"
  cp "$repo/go.sum" "$mod/go.sum"
  cat > "$mod/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "github.com/opencontainers/runtime-tools/validation/util"
	_ "github.com/urfave/cli"
)
EOF
  (cd "$mod" &&
    $GO get github.com/opencontainers/runtime-spec@v1.0.2 github.com/mndrix/tap-go \
      github.com/mrunalp/fileutils github.com/satori/go.uuid github.com/urfave/cli@v1.22.16 github.com/opencontainers/selinux@v1.10.2 >/dev/null 2>&1 &&
    $GO build -o out/ github.com/opencontainers/runtime-tools/validation/... &&
    CGO_ENABLED=0 $GO build -o . github.com/opencontainers/runtime-tools/cmd/runtimetest)
  for f in "$mod"/out/*; do case $f in *.t) ;; *) mv "$f" "$f.t" ;; esac; done
fi
src=$(cd "$mod" && $GO list -m -f '{{.Dir}}' github.com/opencontainers/runtime-tools)

work=$(mktemp -d /tmp/openshell-rtval.XXXXXX)
cleanup() {
  for n in "$work"/root-*/null-netns /var/run/runsc/null-netns; do
    [ -e "$n" ] && umount -l "$n" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
# The programs copy runtimetest (the checker that runs inside the
# container; static, for the busybox root) and the root filesystem from
# their working directory.
cp "$src/rootfs-$(go env GOARCH).tar.gz" "$mod/runtimetest" "$work/"

# Each runtime as runtime-tools calls it: one binary, runc's flags.
cat > "$work/runsc" <<EOF
#!/bin/sh
exec "$RUNSC" --root "$work/root-runsc" "\$@"
EOF
cp "$repo/test/policies/permissive.yaml" "$work/policy.yaml"
printf 'default_policy = "%s"\n' "$work/policy.yaml" > "$work/config.toml"
cat > "$work/openshell" <<EOF
#!/bin/sh
OPENSHELL_RUNSC="$RUNSC" exec "$BIN/openshell-runtime" --root "$work/root-openshell" --config "$work/config.toml" "\$@"
EOF
chmod +x "$work/runsc" "$work/openshell"

programs=("$@")
if [ ${#programs[@]} -eq 0 ]; then
  for t in "$mod"/out/*.t; do programs+=("$(basename "$t" .t)"); done
fi

# run PROGRAM RUNTIME: "pass", or "fail (first failing check)".
run() {
  local out
  out=$(cd "$work" && RUNTIME="$work/$2" timeout 120 "$mod/out/$1.t" 2>&1) && ! grep -q '^not ok' <<<"$out" && { echo pass; return; }
  local why
  why=$(grep -m1 -E '^not ok|error|Error' <<<"$out" | cut -c1-90)
  echo "fail (${why:-exit $?})"
}

pass_runsc=0 pass_os=0 regress=0
printf '%-36s %-8s %-8s %s\n' PROGRAM runsc openshell "openshell's first failure"
for p in "${programs[@]}"; do
  r=$(run "$p" runsc)
  o=$(run "$p" openshell)
  [ "$r" = pass ] && pass_runsc=$((pass_runsc + 1))
  [ "$o" = pass ] && pass_os=$((pass_os + 1))
  mark=""
  if [ "$r" = pass ] && [ "$o" != pass ]; then mark="  <- passes on runsc"; regress=$((regress + 1)); fi
  printf '%-36s %-8s %-8s %s%s\n' "$p" "${r%% *}" "${o%% *}" "$([ "$o" = pass ] || echo "${o#fail }")" "$mark"
done
echo
echo "passed: runsc $pass_runsc/${#programs[@]}, openshell-runtime $pass_os/${#programs[@]}; pass on runsc but not openshell: $regress"
