"""The sharpening control on validation only, for a finished run: SFT's sampled gold on the curve's validation
intents at each temperature, with the curve's seeds (so T = the rollout temperature reproduces the curve's
step-0 point, and every temperature pairs with the curve's PPO points intent by intent):

    python bench/sharpening_probe.py RUN [--temperatures=0.4,0.6,0.8]

It prints one row per temperature; the full control (SFT at the best temperature on all test intents, as system
sft-sharp) is `rlhf.py --resume RUN --stages=eval --sharpen_temperatures=...`.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import config  # noqa: E402
from plumbing import config_checks  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402
from plumbing import models  # noqa: E402
import report  # noqa: E402


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0])
    temps = [0.4, 0.6, 0.8]
    for a in argv[1:]:
        if a.startswith("--temperatures="):
            temps = [float(t) for t in config_checks.split_names(a.split("=", 1)[1])]
    cfg = config.load_config(run_dir / "config.json")
    _, val, _ = data.load_splits(cfg)
    lm, tok = models.load_causal_lm(str(run_dir / "checkpoint-sft"), seed=cfg.seed)
    run = report.Run(Path("/tmp/sharpening-probe"), cfg, writer=False)
    env = {"device": models.resolve_device("cpu"), "ctx": nullcontext()}
    print(f"| temperature | SFT sampled gold ({cfg.eval_samples} samples x {cfg.eval_slice} validation intents) | SE |")
    print("|---|---|---|")
    for t in temps:
        got = evaluate.sample_and_judge(run, env, lm, tok, val[:cfg.eval_slice], cfg.eval_samples, t, f"T={t}")
        g = got["per"]["sampled_gold"]
        print(f"| {t} | {evaluate.mean(g):.4f} | {evaluate.standard_error(g):.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    from plumbing import cli_help  # noqa: E402

    cli_help.bench_main(main, __doc__)  # --help, and one-line errors
