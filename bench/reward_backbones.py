"""Both reward-model backbones on the same synthetic-feedback pairs: held-out accuracy per pairing (policy>policy
first) and Spearman with the annotator over held-out policy samples. Prints a table; asserts nothing.

    python bench/reward_backbones.py RUN_DIR [--backbones=encoder,policy] [--key=value ...]

RUN_DIR is an rlhf.py output folder whose reward stage has run: it reads preference_pairs_{train,val}.jsonl,
feedback_candidates_val.jsonl, config.json and the SFT policy (checkpoint-sft/, or the config's --policy), and
trains each backbone with the run's own settings (reward_epochs, lr, reward_max_train_pairs, seed). Config
overrides given here apply on top (e.g. --reward_epochs=2). Nothing in RUN_DIR is changed.

    --headline    score only the held-out policy>policy pairs (and the Spearman samples), not every pairing:
                  on the cpu run that is 181 of 4,165 held-out pairs, so the 135M causal RM's evaluation
                  costs ~1/20 of the full table's
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plumbing import config_cli  # noqa: E402
import data  # noqa: E402
import feedback  # noqa: E402
from plumbing import models  # noqa: E402
import reward  # noqa: E402
import reward_model  # noqa: E402
from plumbing import runfolder  # noqa: E402


def train_one(backbone: str, cfg, run: Path, train_pairs, val_pairs, val_cands, device) -> dict:
    ctx = models.autocast_ctx(device, models.resolve_dtype(cfg.dtype, device))
    models.seed_everything(cfg.seed)
    if backbone == "policy":
        lm, tok = models.load_causal_lm(cfg.policy or str(run / "checkpoint-sft"), seed=cfg.seed)
        rm = reward_model.RewardModel(lm, kind="causal", fmt=data.resolve_prompt_format(tok, cfg.prompt_format))
    else:
        encoder, tok = models.load_encoder(cfg.reward_encoder, seed=cfg.seed)
        rm = reward_model.RewardModel(encoder)
    t0 = time.perf_counter()
    history = reward.train_reward_model(rm.to(device), tok, train_pairs, val_pairs, cfg, device, ctx, log=print)
    held = reward.evaluate_pairs(rm, tok, val_pairs, device, ctx, by_kind=True)
    held.update(reward.policy_sample_agreement(rm, tok, val_cands, device), train_seconds=time.perf_counter() - t0,
                history=history)
    return held


def main(argv: list[str]) -> None:
    run = Path(argv[0])
    # The run's saved config with the overrides on top, checked as `rlhf.py --resume` checks them (a typo is an error)
    cfg, extras = config_cli.parse_cli(["--resume", str(run), *argv[1:]], extra_flags=("resume=", "headline", "backbones=",
                                                                                  "debug"))
    headline, backbones = bool(extras.get("headline")), extras.get("backbones", "encoder,policy")
    device = models.resolve_device(cfg.device)
    train_pairs = reward.subsample_pairs(runfolder.read_jsonl(run / "preference_pairs_train.jsonl"),
                                         cfg.reward_max_train_pairs, cfg.seed, cfg.reward_subsample)
    val_pairs = runfolder.read_jsonl(run / "preference_pairs_val.jsonl")
    if headline:
        val_pairs = [p for p in val_pairs if feedback.pairing(p) == "policy>policy"]
    val_cands = runfolder.read_jsonl(run / "feedback_candidates_val.jsonl")
    results = {b: train_one(b, cfg, run, train_pairs, val_pairs, val_cands, device) for b in backbones.split(",")}
    out = run.parent / f"{run.name}-reward-backbones.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{len(train_pairs)} training pairs, {len(val_pairs)} held-out pairs, "
          f"{results[next(iter(results))]['n']} held-out policy samples; wrote {out}")
    pairings = sorted({k for r in results.values() for k in r["accuracy_by_pairing"]},
                      key=lambda k: (k != "policy>policy", k))
    print("| pairing | pairs | " + " | ".join(results) + " |\n|---|---|" + "---|" * len(results))
    first = next(iter(results.values()))
    for k in pairings:
        print(f"| {k} | {first['pairs_by_pairing'].get(k, 0)} | "
              + " | ".join(f"{r['accuracy_by_pairing'].get(k, float('nan')):.3f}" for r in results.values()) + " |")
    print("| all pairs | " + str(len(val_pairs)) + " | " + " | ".join(f"{r['accuracy']:.3f}" for r in results.values())
          + " |\n| Spearman vs annotator (policy samples) | | "
          + " | ".join(f"{r['spearman']:.3f}" for r in results.values()) + " |\n| train seconds | | "
          + " | ".join(f"{r['train_seconds']:.0f}" for r in results.values()) + " |")


if __name__ == "__main__":
    from plumbing import cli_help  # noqa: E402

    cli_help.bench_main(main, __doc__)  # --help, and one-line errors
