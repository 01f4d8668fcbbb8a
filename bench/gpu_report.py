"""Tokens/s per stage and peak GPU memory of one finished rlhf.py run (bench/gpu_check.sh calls it).

    python bench/gpu_report.py RUN_DIR

Seconds come from state.json (stage_seconds), peak memory from state.json's peak_gpu_gib (rank 0, per stage,
written by rlhf.py on CUDA). Tokens per stage: SFT, every prompt + snippet token of the training split x epochs;
reward, the (intent, code) tokens of the training pairs x epochs (an upper bound: each distinct text of a batch is
encoded once); PPO, response tokens (response/length_mean x batch_size per step); eval, the tokens of the saved
predictions (a lower bound: the decoder also generated the text around the code it kept).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(run_dir: str) -> None:
    import config
    import data
    from plumbing import models
    import report
    from plumbing import runfolder

    out = Path(run_dir)
    cfg = config.load_config(out / "config.json")
    state = json.loads((out / "state.json").read_text())
    seconds, peak = state.get("stage_seconds", {}), state.get("peak_gpu_gib", {})
    rows = runfolder.read_jsonl(out / "metrics.jsonl")
    tok = models.load_tokenizer(str(out / "checkpoint-sft")) if (out / "checkpoint-sft").exists() else \
        models.load_tokenizer(cfg.policy_model)
    tokens = {}
    train, _, _ = data.load_splits(cfg)
    fmt = data.resolve_prompt_format(tok, cfg.prompt_format)
    tokens["sft"] = cfg.sft_epochs * sum(int(data.sft_batch(train[i:i + 64], tok, fmt, cfg.sft_max_len)
                                             ["attention_mask"].sum()) for i in range(0, len(train), 64))
    pairs_file = out / "preference_pairs_train.jsonl"
    if pairs_file.exists():
        rtok = models.load_tokenizer(str(out / "checkpoint-reward"))
        pairs = runfolder.read_jsonl(pairs_file)[:cfg.reward_max_train_pairs or None]
        lengths = [min(len(rtok(p["intent"], c)["input_ids"]), cfg.reward_max_len)
                   for p in pairs for c in (p["chosen"], p["rejected"])]
        tokens["reward"] = cfg.reward_epochs * sum(lengths)
    tokens["ppo"] = sum(r["response/length_mean"] * cfg.batch_size for r in rows if r["stage"] == "ppo")
    tokens["eval"] = sum(len(tok(r["prediction"])["input_ids"]) for f in out.glob("predictions-*.jsonl")
                         for r in runfolder.read_jsonl(f))
    print(f"{'stage':8} {'seconds':>9} {'tokens':>10} {'tokens/s':>10} {'peak GPU GiB':>13}")
    for stage in ("sft", "reward", "ppo", "eval"):
        s = seconds.get(stage)
        if s is None:
            print(f"{stage:8} {'not run':>9}")
            continue
        t = tokens.get(stage, 0)
        print(f"{stage:8} {s:9.1f} {t:10.0f} {t / s:10.1f} {peak.get(stage, float('nan')):13.2f}")


if __name__ == "__main__":
    from plumbing import cli_help

    cli_help.bench_main(lambda argv: main(argv[0]), __doc__)  # --help, and one-line errors
