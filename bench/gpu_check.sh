#!/usr/bin/env bash
# The memory and delta-rule issues' GPU checks, one prepared script for a lent H100 or H200 (under 9 minutes):
#
#   bash bench/gpu_check.sh        # from the repository root, on the GPU machine
#
# Trains a few steps of each case and prints, as soon as the case ends, its peak GPU memory,
# tokens per second and MFU (baton's own per-rank records), next to what `baton memory`
# predicts for it:
#   1b-full     configs/1b.yaml, 65,536 tokens per micro-batch (and per step), full checkpointing
#   125m-none   configs/125m.yaml, 65,536 tokens, no checkpointing
#   125m-full   configs/125m.yaml, 65,536 tokens, full checkpointing
# Targets (issue 16): 1b-full peak <= 60 GiB on an 80 GB H100; 125m-full <= 12 GiB.
# Results also go to $OUT/gpu_check.jsonl (bench/out/ when OUT is unset).
#
# The GPU machine has torch and Triton but not omegaconf: carry its wheels (README, "GPU
# checks") in .whl/, which this script installs first. Kernels run untuned (BATON_AUTOTUNE=0):
# tuning compiles every candidate, minutes on a fresh machine.
set -u
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
export BATON_AUTOTUNE=0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'Triton', triton.__version__)"

common=(data.tokens_per_batch=65536 data.eval_batches=1 train.steps=5 train.log_every=1 train.eval_every=1000
        checkpoint.every=0 data.cache_dir=/tmp/gpu_check/data)

run_case() {  # name, seconds allowed, config, overrides...
    local name=$1 limit=$2 config=$3
    shift 3
    local dir=/tmp/gpu_check/$name
    rm -rf "$dir"
    local predicted
    predicted=$(python3 -m baton.launch.cli memory "$config" "${common[@]}" "$@" 2>/dev/null | awk '/^  total/ {print $2}')
    local start=$SECONDS
    timeout "$limit" python3 -m baton.launch.cli train "$config" "${common[@]}" "$@" train.run_dir="$dir" \
        > "$dir.log" 2>&1
    local code=$?
    python3 - "$name" "$dir" "$code" "$((SECONDS - start))" "${predicted:-?}" "$out/gpu_check.jsonl" <<'EOF'
import json, sys
from pathlib import Path
name, run, code, seconds, predicted, results = sys.argv[1:]
path = Path(run) / "profile" / "rank0.jsonl"
steps = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
later = steps[1:] or steps  # the first step compiles the kernels
row = {"case": name, "exit": int(code), "seconds": int(seconds), "steps": len(steps), "predicted_gib": predicted}
if steps:
    row["peak_gib"] = round(max(s["peak_mem_gb"] for s in steps), 2)
    row["tokens_per_s"] = round(sum(s["tokens"] for s in later) / sum(s["step_s"] for s in later))
    mfu = [s["mfu"] for s in later if s.get("mfu") is not None]
    row["mfu"] = round(sum(mfu) / len(mfu), 3) if mfu else None
print(json.dumps(row), flush=True)
with open(results, "a") as f:
    f.write(json.dumps(row) + "\n")
if int(code) != 0:
    print(Path(run + ".log").read_text()[-1500:], flush=True)
EOF
}

run_case 1b-full 160 configs/1b.yaml train.activation_checkpoint=full train.micro_tokens=65536
run_case 125m-none 80 configs/125m.yaml train.activation_checkpoint=none
run_case 125m-full 80 configs/125m.yaml train.activation_checkpoint=full
# The delta rule (issue 18): its GPU path (reference + Triton state walk) against the reference
# and, when importable, flash-linear-attention's chunk_gated_delta_rule, at the 1b-gdn head.
timeout 150 python3 bench/kernels.py --gates gdn --lengths 8192 --tokens 32768 --heads 6 --dim 256 --ref-max 8192 \
    || echo "gdn kernel bench: exit $?"
