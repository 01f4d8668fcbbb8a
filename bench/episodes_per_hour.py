"""Episodes per CPU-hour of a run's RL stage, from its metrics.jsonl and config.json:

    python bench/episodes_per_hour.py RUN [RUN ...]

An episode is one sampled response that was scored and learned from (batch_size per PPO step). The figure is
batch_size / mean(time/step_seconds), so it counts rollout, scoring (RM + sandboxed exec) and the update, and
leaves out the curve points and checkpoints. Compare two runs only when they ran on the same machine with
nothing else running (machines here differ by up to ~3x); the printout names the steps it averaged.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def episodes_per_hour(run: Path) -> dict:
    cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").split("\n")
             if line.strip()]
    secs = [s["time/step_seconds"] for s in steps if s.get("stage") == "ppo" and "time/step_seconds" in s]
    if not secs:
        raise SystemExit(f"error: {run}/metrics.jsonl has no PPO step with time/step_seconds")
    mean = sum(secs) / len(secs)
    return {"run": str(run), "batch_size": cfg["batch_size"], "ppo_epochs": cfg["ppo_epochs"], "steps": len(secs),
            "seconds_per_step": mean, "episodes_per_hour": cfg["batch_size"] * 3600 / mean}


def main(argv: list[str]) -> int:
    print("| run | batch | epochs | steps | s/step | episodes per hour |\n|---|---|---|---|---|---|")
    for a in argv:
        r = episodes_per_hour(Path(a))
        print(f"| {r['run']} | {r['batch_size']} | {r['ppo_epochs']} | {r['steps']} | {r['seconds_per_step']:.1f} | "
              f"{r['episodes_per_hour']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    from plumbing import cli_help

    cli_help.bench_main(main, __doc__)  # --help, and one-line errors
