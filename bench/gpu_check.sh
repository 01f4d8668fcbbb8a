#!/usr/bin/env bash
# The GPU lane in one go (README, "Many devices"): pytest -m gpu, then a few steps of --config research on one
# GPU, printing tokens/s per stage and peak GPU memory, and saying which checks ran and which were skipped.
#     bash bench/gpu_check.sh            # from the repo root, with the project's .venv (or PYTHON=...)
# Never run by us: this project has had no GPU. Exit status: non-zero if any check that ran failed.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")
status=0
echo "== environment"
$PY -c "import torch; print('torch', torch.__version__, '| CUDA', torch.cuda.is_available(), '| GPUs', torch.cuda.device_count(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
echo "== pytest -m gpu (each test says PASSED, FAILED or SKIPPED with its reason)"
$PY -m pytest -q -m gpu -rA tests/test_gpu.py 2>&1 | tee "$OUT/pytest.log" | grep -E "^(PASSED|FAILED|SKIPPED|ERROR)| passed| failed| skipped"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
if $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "== --config research, a few steps (64 train, 16 test, 3 PPO steps) -> $OUT/research"
  if $PY rlhf.py --config research --output_dir "$OUT/research" --train_limit=64 --test_limit=16 --sft_epochs=1 \
      --reward_policy_intents=16 --ppo_steps=3 --save_every=0 --eval_every=0 --bon_n=2 > "$OUT/research.log" 2>&1; then
    echo "research: RAN, passed"
    $PY bench/gpu_report.py "$OUT/research" || status=1
  else
    echo "research: RAN, FAILED (last lines of $OUT/research.log):"; tail -20 "$OUT/research.log"; status=1
  fi
else
  echo "research: SKIPPED (no CUDA device)"
fi
echo "== done: status $status; outputs in $OUT"
exit $status
