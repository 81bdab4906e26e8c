#!/usr/bin/env bash
# Times whole sandboxes, start to exit, in one run: /bin/true on the same
# busybox root filesystem through runc, bare runsc, openshell run and
# openshell-runtime run. Runs are interleaved so that the machine's noise
# falls on all of them alike; medians and ratios are printed, never a
# lone absolute time.
#
#   test/bench/sandboxes.sh [RUNS]        (root; make bench runs it)
set -euo pipefail

RUNS=${1:-15}
BIN=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/bin}
RUNSC=${RUNSC:-$BIN/runsc}
PLATFORM=${PLATFORM:-systrap}
[ "$(id -u)" = 0 ] || { echo "sandboxes.sh: needs root" >&2; exit 1; }
for b in "$RUNSC" "$BIN/openshell" "$BIN/openshell-runtime" /bin/busybox; do
  [ -x "$b" ] || { echo "sandboxes.sh: $b missing (make build runsc deps)" >&2; exit 1; }
done
command -v runc >/dev/null || { echo "sandboxes.sh: runc missing (make deps)" >&2; exit 1; }

work=$(mktemp -d /tmp/openshell-bench.XXXXXX)
cleanup() {
  for r in "$work"/state/*/null-netns "$work"/state/*/runsc/null-netns; do
    [ -e "$r" ] && umount -l "$r" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# One image for all: busybox with an applet link per command.
bundle=$work/bundle
rootfs=$bundle/rootfs
mkdir -p "$rootfs"/{bin,etc,tmp,proc,dev,sys}
cp /bin/busybox "$rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$rootfs/bin/$a"; done
echo 'nobody:x:65534:65534::/:/bin/sh' > "$rootfs/etc/passwd"
echo 'nogroup:x:65534:' > "$rootfs/etc/group"

(cd "$bundle" && runc spec)
sed -i 's/"terminal": true/"terminal": false/; s/"sh"$/"\/bin\/true"/' "$bundle/config.json"

policy=$work/policy.yaml
cat > "$policy" <<'YAML'
version: "1.0"
name: bench
sandbox:
  filesystem:
    system_paths: []
    allowed_reads: [/]
    allowed_writes: [/tmp]
YAML

mkdir -p "$work/state"
n=0
runc_run()      { runc --root "$work/state/runc" run --bundle "$bundle" "b$n" >/dev/null; }
# Bare runsc with the flags a policy gives it, so only openshell's own work differs.
runsc_run()     { "$RUNSC" --root "$work/state/runsc-bare" --platform="$PLATFORM" --network=none --oci-seccomp run --bundle "$bundle" "b$n" >/dev/null; }
openshell_run() { "$BIN/openshell" run --config /nonexistent --runsc "$RUNSC" --platform "$PLATFORM" --state-dir "$work/state/os" --rootfs "$rootfs" --policy "$policy" -- /bin/true >/dev/null; }
runtime_run()   { OPENSHELL_RUNSC=$RUNSC "$BIN/openshell-runtime" --config /nonexistent --root "$work/state/ort" run --bundle "$bundle" "b$n" >/dev/null; }

kinds=(runc_run runsc_run openshell_run runtime_run)
declare -A times
for k in "${kinds[@]}"; do "$k" </dev/null; done # warm the page cache
for ((i = 0; i < RUNS; i++)); do
  for k in "${kinds[@]}"; do
    n=$((n + 1))
    t0=$(date +%s%N)
    "$k" </dev/null
    t1=$(date +%s%N)
    times[$k]+="$(( (t1 - t0) / 1000 )) "
  done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
declare -A med
for k in "${kinds[@]}"; do med[$k]=$(echo "${times[$k]}" | median); done

echo "start-to-exit of /bin/true, busybox rootfs, $RUNS interleaved runs each, platform $PLATFORM, $(nproc) cores"
printf '%-28s %12s %10s %10s\n' "" "median (ms)" "vs runc" "vs runsc"
label() { case $1 in runc_run) echo "runc run";; runsc_run) echo "runsc run (bare)";; openshell_run) echo "openshell run";; runtime_run) echo "openshell-runtime run";; esac; }
for k in "${kinds[@]}"; do
  awk -v l="$(label "$k")" -v m="${med[$k]}" -v c="${med[runc_run]}" -v r="${med[runsc_run]}" \
    'BEGIN { printf "%-28s %12.1f %9.2fx %9.2fx\n", l, m/1000, m/c, m/r }'
done
