#!/usr/bin/env bash
# The GPU check (issue 13 item 5): on a CUDA machine, one JSON line per check, from the repository root:
#
#     bash benchmarks/gpu_check.sh                 # needs a CUDA GPU (not yet run on one: none was lent so far)
#     bash benchmarks/gpu_check.sh --dry_run       # the same steps on the CPU, tiny shapes, no 4-bit: 0 failed here
#
# Checks, each one line {"check": ..., "ok": ..., ...}:
#   gpu           the device(s) seen by torch
#   scoring       benchmarks/bench_scoring.py on a random-weight Qwen2.5-0.5B-sized model (built from its config,
#                 no download), float32 and bfloat16 rows: ratio against the upstream-style loop, floor_fraction
#   sampling      benchmarks/bench_sampling.py on the same shape in bfloat16: batched sampler vs upstream's loop
#   rewardbench   Preference_Comparison/Reward_Bench/ours.py end to end on data/demo_rewardbench.jsonl with the
#                 embedded SmolLM2-135M-Instruct in bfloat16 and float32: accuracies, max |dP|, verdicts changed;
#                 with 2+ GPUs also under torchrun, one process per GPU (equal to one process within 1e-3)
#   qlora         DPO/train_preferences.py, two DPO steps with 4-bit QLoRA (--load_in_4bit) on the random
#                 Qwen2.5-0.5B-sized model: steps, final loss, peak GPU memory
# Exit status: 1 at once (with one line) without a CUDA GPU, else the number of failed checks (0: all passed).
# Environment: PY (the Python to use, default .venv/bin/python or python), GPU_CHECK_DIR (where runs go, default a
# new temporary folder; the logs of a failed check are there).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
DRY=0
[ "${1:-}" = "--dry_run" ] && DRY=1
OUT=${GPU_CHECK_DIR:-$(mktemp -d -t ipo-gpu-check.XXXXXX)}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "$DRY" = 1 ]; then
    DEVICE=cpu SHAPE=tiny FOURBIT="" ROUNDS=1 SCORE_PAIRS="--n_pairs 4" SAMPLE="--num_prompts 2 --max_new_tokens 8"
    SAMPLE_DEVICE="--random_model tiny --random_device cpu"
else
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo '{"check": "gpu", "ok": false, "error": "no CUDA GPU visible to torch: run this on a GPU machine (or --dry_run)"}'
        exit 1
    fi
    DEVICE=cuda SHAPE=qwen2.5-0.5b FOURBIT="--load_in_4bit" ROUNDS=3 SCORE_PAIRS="" SAMPLE=""
    SAMPLE_DEVICE="--random_model qwen2.5-0.5b --random_device cuda"
fi
SMOLLM2=$("$PY" -m ipo.assets smollm2)
FAILED=0

# report NAME RC STDOUT_FILE STDERR_FILE: every JSON object line of the check's stdout, tagged with the check's
# name and ok; a check that failed (or printed nothing) gives one line with its exit status and last error line.
report() {
    "$PY" - "$@" <<'EOF'
import json, sys
name, rc, out, err = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
lines = [line for line in open(out, encoding="utf-8", errors="replace") if line.startswith("{")]
for line in lines:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        continue
    print(json.dumps({"check": name, "ok": rc == 0, **row}), flush=True)
if rc != 0 or not lines:
    tail = [l.strip() for l in open(err, encoding="utf-8", errors="replace") if l.strip()][-1:] or [""]
    print(json.dumps({"check": name, "ok": False, "rc": rc, "error": tail[0][:300], "log": err}), flush=True)
EOF
}

# run NAME COMMAND...: run a check, its output in $OUT/NAME.{out,err}; counts a failure.
run() {
    local name=$1
    shift
    "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
    local rc=$?
    report "$name" "$rc" "$OUT/$name.out" "$OUT/$name.err"
    [ "$rc" = 0 ] || FAILED=$((FAILED + 1))
}

# --- gpu ------------------------------------------------------------------------------------------------------
run gpu "$PY" -c '
import json, torch
n = torch.cuda.device_count()
print(json.dumps({"device_count": n, "devices": [torch.cuda.get_device_name(i) for i in range(n)],
                  "capability": [list(torch.cuda.get_device_capability(i)) for i in range(n)],
                  "torch": torch.__version__, "cuda": torch.version.cuda,
                  "bf16_native": bool(n) and torch.cuda.is_bf16_supported(including_emulation=False)}))'

# --- scoring and sampling benchmarks on the random Qwen2.5-0.5B-sized model -----------------------------------
# shellcheck disable=SC2086
run scoring "$PY" benchmarks/bench_scoring.py --device "$DEVICE" --random_model "$SHAPE" --rounds "$ROUNDS" \
    --agreement_data none $SCORE_PAIRS
# shellcheck disable=SC2086
run sampling "$PY" benchmarks/bench_sampling.py --only_random --no_dpo $SAMPLE_DEVICE $SAMPLE

# --- the RewardBench judge end to end --------------------------------------------------------------------------
rewardbench() {
    local common=(--model_name "$SMOLLM2" --dataset data/demo_rewardbench.jsonl --device "$DEVICE"
        --output_dir "$OUT/rewardbench" --overwrite --log_level warning)
    local start
    start=$(date +%s%N)
    "$PY" Preference_Comparison/Reward_Bench/ours.py "${common[@]}" --run_name bf16 --dtype bfloat16 >/dev/null || return 1
    local bf16_s
    bf16_s=$((($(date +%s%N) - start) / 1000000))
    "$PY" Preference_Comparison/Reward_Bench/ours.py "${common[@]}" --run_name fp32 --dtype float32 >/dev/null || return 1
    local gpus
    gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
    if [ "$DRY" = 0 ] && [ "$gpus" -ge 2 ]; then
        "$PY" -m torch.distributed.run --standalone --nproc_per_node "$gpus" Preference_Comparison/Reward_Bench/ours.py \
            "${common[@]}" --run_name bf16-dp --dtype bfloat16 >/dev/null || return 1
    fi
    "$PY" - "$OUT/rewardbench" "$bf16_s" <<'EOF'
import json, sys
from pathlib import Path
root, seconds = Path(sys.argv[1]), int(sys.argv[2]) / 1000  # milliseconds
def load(run):
    return {json.loads(l)["id"]: json.loads(l) for l in (root / run / "predictions.jsonl").read_text().splitlines()}
def metrics(run):
    return json.loads((root / run / "metrics.json").read_text())
bf16, fp32 = load("bf16"), load("fp32")
dp = [abs(bf16[k][f"p_yes_{s}"] - fp32[k][f"p_yes_{s}"]) for k in fp32 for s in ("chosen", "rejected")]
row = {"n_pairs": len(fp32), "accuracy_bf16": metrics("bf16")["accuracy"], "accuracy_fp32": metrics("fp32")["accuracy"],
       "max_abs_dp_bf16_vs_fp32": max(dp), "mean_abs_dp_bf16_vs_fp32": sum(dp) / len(dp),
       "verdicts_changed_bf16_vs_fp32": sum(bf16[k]["correct"] != fp32[k]["correct"] for k in fp32),
       "bf16_run_s": round(seconds, 1)}  # the whole script: start, model load, 64 scores, outputs
if (root / "bf16-dp").is_dir():
    dp_run = load("bf16-dp")
    row["data_parallel_world_size"] = json.loads((root / "bf16-dp" / "config.json").read_text())["resolved"]["world_size"]
    row["data_parallel_max_abs_dp"] = max(abs(dp_run[k]["p_yes_chosen"] - bf16[k]["p_yes_chosen"]) for k in bf16)
    row["data_parallel_equal"] = row["data_parallel_max_abs_dp"] <= 1e-3 and metrics("bf16-dp")["accuracy"] == row["accuracy_bf16"]
    if not row["data_parallel_equal"]:
        print(json.dumps(row)); sys.exit(1)
print(json.dumps(row))
EOF
}
run rewardbench rewardbench

# --- two DPO steps with 4-bit QLoRA on the random Qwen2.5-0.5B-sized model ------------------------------------
qlora() {
    "$PY" - "$OUT/random-$SHAPE" "$SHAPE" "$SMOLLM2" <<'EOF' || return 1
import sys
from ipo.modeling import load_tokenizer, random_causal_lm
folder, shape, tokenizer_dir = sys.argv[1:]
tokenizer = load_tokenizer(tokenizer_dir)
random_causal_lm(shape, "cpu", "bfloat16", tokenizer).save_pretrained(folder)
tokenizer.save_pretrained(folder)
EOF
    # shellcheck disable=SC2086
    "$PY" DPO/train_preferences.py --model_name_or_path "$OUT/random-$SHAPE" --dataset data/demo_rewardbench.jsonl \
        $FOURBIT --max_steps 2 --per_device_train_batch_size 2 --lora_r 8 --lora_alpha 16 --max_length 256 \
        --output_dir "$OUT/qlora" --run_name qlora --overwrite --log_level warning >/dev/null || return 1
    "$PY" - "$OUT/qlora/qlora" "$FOURBIT" <<'EOF'
import json, sys
from pathlib import Path
run, fourbit = Path(sys.argv[1]), bool(sys.argv[2])
summary = json.loads((run / "train_summary.json").read_text())
config = json.loads((run / "config.json").read_text())
row = {"steps": summary["steps"], "final_loss": summary["final_loss"], "load_in_4bit": fourbit,
       "model": "random Qwen2.5-0.5B-sized" if fourbit else "random tiny (dry run, no 4-bit)",
       "resolved": config.get("resolved", {})}
print(json.dumps(row, default=str))
sys.exit(0 if summary["steps"] == 2 and summary["final_loss"] == summary["final_loss"] else 1)
EOF
}
run qlora qlora

echo "{\"check\": \"summary\", \"ok\": $([ $FAILED = 0 ] && echo true || echo false), \"failed\": $FAILED, \"dry_run\": $([ $DRY = 1 ] && echo true || echo false), \"outputs\": \"$OUT\"}"
exit "$FAILED"
