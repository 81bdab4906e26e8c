#!/usr/bin/env bash
# make gpu-check: on a host with an NVIDIA GPU and PyTorch (no network
# needed), run one CUDA program outside any sandbox and inside an openshell
# sandbox through nvproxy, in the same run, and print nvidia-smi and the
# ratio. Exits 0 with a SKIP line on a host without a GPU.
set -euo pipefail
BIN=${BIN:-bin}
RUNS=${GPU_RUNS:-3}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
	echo "SKIP gpu-check: no NVIDIA GPU here (nvidia-smi missing or failing)"
	exit 0
fi
for b in openshell runsc; do
	[ -x "$BIN/$b" ] || { echo "gpu-check: $BIN/$b is missing: run make build runsc (on a machine with the module proxy) and bring $BIN along" >&2; exit 1; }
done
echo "== nvidia-smi"
nvidia-smi
PY=${PYTHON:-$(command -v python3)}
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
	echo "gpu-check: $PY has no PyTorch with CUDA; set PYTHON=/path/to/python" >&2
	exit 1
fi

echo "== openshell doctor"
"$BIN/openshell" doctor --config /nonexistent/config.toml | grep -E 'gpu|runsc|platform' || true

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
cat >"$tmp/gpu.yaml" <<'POLICY'
version: "1.0"
name: gpu-check
sandbox:
  filesystem:
    allowed_reads: [/opt, /usr/local]
    allowed_writes: [/tmp]
  process:
    max_processes: 512
  resources:
    max_open_files: 65536
  environment:
    HOME: /tmp
  gpu:
    enabled: true
    devices: [all]
    capabilities: [compute, utility]
POLICY

cat >"$tmp/matmul.py" <<'PROG'
import json, time, torch
dev = torch.device("cuda")
n = 8192
a = torch.randn(n, n, device=dev)
b = torch.randn(n, n, device=dev)
for _ in range(3):
    (a @ b).sum().item()
torch.cuda.synchronize()
t0 = time.perf_counter()
iters = 50
for _ in range(iters):
    c = a @ b
torch.cuda.synchronize()
secs = time.perf_counter() - t0
print(json.dumps({"gpu": torch.cuda.get_device_name(0), "secs": secs, "tflops": 2 * n**3 * iters / secs / 1e12, "check": float(c[0, 0])}))
PROG

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
outside=() inside=()
for i in $(seq "$RUNS"); do
	o=$("$PY" "$tmp/matmul.py")
	# The sandbox does not see the host's temporary directory: the
	# program comes in on stdin.
	s=$("$BIN/openshell" run --config /nonexistent/config.toml --runsc "$BIN/runsc" --policy "$tmp/gpu.yaml" -- "$PY" - <"$tmp/matmul.py" 2>"$tmp/err") || { cat "$tmp/err" >&2; exit 1; }
	echo "outside: $o"
	echo "inside:  $s"
	outside+=("$(echo "$o" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["secs"])')")
	inside+=("$(echo "$s" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["secs"])')")
done
mo=$(printf '%s\n' "${outside[@]}" | median)
mi=$(printf '%s\n' "${inside[@]}" | median)
echo "== 50 x 8192^2 fp32 matmul, median of $RUNS: outside ${mo}s, openshell (nvproxy) ${mi}s, ratio $(awk -v a="$mi" -v b="$mo" 'BEGIN {printf "%.3f", a/b}')x"
