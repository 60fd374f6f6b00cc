#!/usr/bin/env bash
# Prepared GPU checks for a lent H100 or H200, in sections that each fit one session's device time:
#
#   bash bench/gpu_check.sh [memory|throughput|throughput-more|newton|hybrid]   # from the repository root (default: memory)
#
# hybrid (issue 29, about 5 minutes at most): FlexAttention, the attention op's GPU kernel, against the
# blockwise reference, forward and backward (tests/kernels/test_attention_flex.py's GPU case when pytest is
# there; bench/attention_kernels.py: error and time at 8K and 32K tokens, the 1.3B hybrid's heads), then a few
# training steps of configs/1b-hybrid.yaml at 32K tokens (peak memory, tokens/s and MFU against `baton memory`).
#
# newton (issue 21, about 4 minutes at most): Newton-parallel ParaGRU / ParaLSTM layers (Triton scans) against
# the token loop, T = 1K-64K (bench/newton_rnn.py --parts timing; the loop skipped past 20 s), then a few
# training steps of ParaLSTM at the 125m shape, 32K tokens.
#
# throughput (issue 20, about 8 minutes at most, every step time-boxed): `baton tune` for configs/1b.yaml
# (what a first start pays for kernel tuning), then configs/1b.yaml at 32K tokens eager and compiled with
# that tuning file (first-step seconds after), configs/125m.yaml at 64K eager and compiled (untuned: its
# head dims would need a tuning run of their own), and the GLA kernel table against fla at the 1b
# preset's heads (4 x K 256 x V 512) and at 16 x 128. Targets: 1b at >= 55K tok/s (>= 43% MFU), 125m
# >= 30% MFU, baton's kernels at least as fast as fla's chunk_gla. throughput-more: 1b at 64K, 125m at 32K.
#
# memory (issues 16 and 18, under 9 minutes):
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
# checks") in .whl/, which this script installs first. The memory cases run the kernels untuned
# (BATON_AUTOTUNE=0): tuning compiles every candidate, minutes on a fresh machine.
set -u
section=${1:-memory}
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
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/gpu_check/triton  # compiled kernels shared by all cases
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

if [[ $section == memory ]]; then
    export BATON_AUTOTUNE=0
    run_case 1b-full 160 configs/1b.yaml train.activation_checkpoint=full train.micro_tokens=65536
    run_case 125m-none 80 configs/125m.yaml train.activation_checkpoint=none
    run_case 125m-full 80 configs/125m.yaml train.activation_checkpoint=full
    # The delta rule (issue 18): its GPU path (reference + Triton state walk) against the reference
    # and, when importable, flash-linear-attention's chunk_gated_delta_rule, at the 1b-gdn head.
    timeout 150 python3 bench/kernels.py --gates gdn --lengths 8192 --tokens 32768 --heads 6 --dim 256 --ref-max 8192 \
        || echo "gdn kernel bench: exit $?"
fi

throughput() {  # config, tokens per step, seconds allowed per case, throughput.py options...
    local config=$1 tokens=$2 limit=$3
    shift 3
    python3 bench/throughput.py --config "$config" --tokens "$tokens" --steps 5 --limit "$limit" \
        --work /tmp/gpu_check/throughput "$@" data.eval_batches=1 checkpoint.every=0 \
        || echo "throughput $config $tokens: exit $?"
    cp bench/out/throughput.json "$out/throughput-$(basename "$config" .yaml)-$tokens.json" 2>/dev/null
}

if [[ $section == throughput ]]; then
    tuning=/tmp/gpu_check/tune-1b
    timeout 240 python3 -m baton.launch.cli tune configs/1b.yaml train.run_dir=$tuning || echo "baton tune: exit $?"
    throughput configs/1b.yaml 32768 120 --tuning $tuning/tuning.json
    (export BATON_AUTOTUNE=0; throughput configs/125m.yaml 65536 90)
    timeout 120 python3 bench/kernels.py --gates gla --lengths 8192 --tokens 32768 --heads 4 --dim 256 \
        --value-dim 512 || echo "kernels 4x256x512: exit $?"
    cp bench/out/kernels.json "$out/kernels-4x256x512.json" 2>/dev/null
    timeout 100 python3 bench/kernels.py --gates gla --lengths 8192 --tokens 32768 --heads 16 --dim 128 \
        || echo "kernels 16x128: exit $?"
    cp bench/out/kernels.json "$out/kernels-16x128.json" 2>/dev/null
fi

if [[ $section == throughput-more ]]; then
    export BATON_AUTOTUNE=0
    throughput configs/1b.yaml 65536 120
    throughput configs/125m.yaml 32768 90
fi

if [[ $section == newton ]]; then
    export BATON_AUTOTUNE=0
    timeout 150 python3 bench/newton_rnn.py --parts timing --seq-limit 20 || echo "newton_rnn: exit $?"
    cp bench/out/newton_rnn.json "$out/newton_rnn.json" 2>/dev/null
    run_case 125m-paralstm 90 configs/125m.yaml model.mixer=paralstm model.n_heads=12 data.tokens_per_batch=32768
fi

if [[ $section == hybrid ]]; then
    export BATON_AUTOTUNE=0
    if python3 -c "import pytest" 2>/dev/null; then
        timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention_flex.py || echo "flex tests: exit $?"
    fi
    timeout 150 python3 bench/attention_kernels.py --lengths 8192 32768 || echo "attention_kernels: exit $?"
    cp bench/out/attention_kernels.json "$out/attention_kernels.json" 2>/dev/null
    run_case 1b-hybrid 120 configs/1b-hybrid.yaml data.tokens_per_batch=32768
fi
