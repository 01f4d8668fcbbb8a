"""Fork a finished run so that only a new PPO is paid for: python bench/ppo_variant.py SRC DST

DST gets SRC's config, checkpoint-sft/ and checkpoint-reward/ (hard links, no copy), its log lines and metrics
up to the reward stage, and its cached evaluations of every system except `ppo`. Then

    python rlhf.py --resume DST --stages ppo,eval --advantage=gae

trains PPO again from the same SFT policy and reward model, and evaluates only the new PPO: base, sft and
sft-bon come from SRC's cache, so the report's PPO - SFT CIs pair the new PPO with the very same SFT predictions.
This is how the README's gae / rloo / grpo table was made (each row one fork of the cpu run).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

KEEP_STAGES = ("sft", "reward")  # completed stages a fork keeps; ppo and eval are redone
DROP_STATS = ("ppo", "ppo_eval")  # metrics.jsonl stages that belong to the old PPO


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of src under dst (checkpoints are read-only once written: save_atomic replaces)."""
    shutil.copytree(src, dst, copy_function=os.link)


def fork(src: Path, dst: Path) -> None:
    if not (src / "state.json").exists() or not (src / "checkpoint-reward").exists():
        sys.exit(f"ppo_variant: {src} is not a run with a finished reward stage (state.json, checkpoint-reward/)")
    if dst.exists():
        sys.exit(f"ppo_variant: {dst} exists; pick a new folder")
    dst.mkdir(parents=True)
    for name in ("checkpoint-sft", "checkpoint-reward"):
        if (src / name).exists():
            link_tree(src / name, dst / name)
    for name in ("config.json", "argv.txt", "feedback_pairs.jsonl", "feedback_candidates_val.jsonl"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    state = json.loads((src / "state.json").read_text())
    state["completed"] = [s for s in state["completed"] if s in KEEP_STAGES]
    state["stage_seconds"] = {k: v for k, v in state["stage_seconds"].items() if k in KEEP_STAGES}
    state["evaluated"] = {k: v for k, v in state.get("evaluated", {}).items() if k != "ppo"}
    (dst / "state.json").write_text(json.dumps(state, indent=2))
    for name in state["evaluated"]:  # the report pairs with (and prints examples from) these predictions
        shutil.copy2(src / f"predictions-{name}.jsonl", dst / f"predictions-{name}.jsonl")
    keep = []
    for line in (src / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["stage"] in DROP_STATS or (row["stage"] == "eval" and row.get("system") == "ppo"):
            continue
        keep.append(line)
    (dst / "metrics.jsonl").write_text("\n".join(keep) + "\n")
    (dst / "pipeline.log").write_text(f"forked from {src} by bench/ppo_variant.py (sft, reward and the cached "
                                      f"evaluations of {', '.join(state['evaluated'])} kept)\n")
    print(f"{dst}: ready; next: python rlhf.py --resume {dst} --stages ppo,eval [--advantage=... etc.]")


if __name__ == "__main__":
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    from plumbing import cli_help

    cli_help.bench_main(lambda argv: fork(Path(argv[0]), Path(argv[1])), __doc__, n_args=2)  # --help, one-line errors
