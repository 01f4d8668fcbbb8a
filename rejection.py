"""Rejection-sampling fine-tuning, the cheap RL baseline beside PPO (system `sft-rs`).

Llama 2's RLHF (Touvron et al. 2023, §3.2.3), RAFT (Dong et al. 2023), ReST (Gulcehre et al. 2023) and Expert
Iteration (Havrilla et al. 2024, as good as PPO at small scale) all do the same thing: draw k samples per
prompt from the current policy, keep the best one by the reward, and fine-tune on the kept samples. Here:
  - the k samples are the reward stage's SFT samples (policy_samples.jsonl), so nothing new is drawn;
  - "best" is by the very reward PPO optimises (reward.make_score_fn: the calibrated RM plus the weighted rule
    signals), so if sft-rs gains and PPO does not, the estimator is at fault, not the reward;
  - one SFT pass on them, starting from the SFT checkpoint, with the SFT stage's optimiser and schedule.
"""
from __future__ import annotations

import data
import report

SAMPLES_FILE = "policy_samples.jsonl"  # the reward stage's k SFT samples per intent, one row per intent


def write_policy_samples(chosen: list, samples: dict[int, list[str]], path) -> None:
    """One row per intent: question_id, intent, reference and its k samples (the reward stage writes it)."""
    report.write_jsonl([{"question_id": e.question_id, "intent": e.intent, "reference": e.snippet,
                         "samples": samples[e.question_id]} for e in chosen if e.question_id in samples], path)


def read_policy_samples(path) -> list[dict]:
    rows = report.read_jsonl(path)
    for i, r in enumerate(rows):
        if not (isinstance(r.get("samples"), list) and all(isinstance(s, str) for s in r["samples"])
                and isinstance(r.get("intent"), str) and isinstance(r.get("reference"), str)):
            raise data.DataError(f"{path}: row {i + 1} needs intent, reference and a list of sample strings")
    return rows


def best_per_group(rewards: list[float], sizes: list[int]) -> list[int]:
    """rewards, flat over groups of the given sizes -> the index within each group of its highest reward;
    ties keep the first (as best_of_n). Empty groups are not allowed."""
    picks, start = [], 0
    for n in sizes:
        if n < 1:
            raise ValueError("every group needs at least one sample")
        group = rewards[start:start + n]
        picks.append(max(range(n), key=lambda j: (group[j], -j)))
        start += n
    return picks


SCORE_BATCH = 64  # samples per score_fn call: the stop check and the progress bar move between calls


def select_examples(rows: list[dict], score_fn, stop=None) -> tuple[list[data.Example], list[float]]:
    """The best sample of each intent by score_fn(intents, references, codes) -> [N] rewards; rows whose samples
    are all empty are skipped. -> (training examples with the kept sample as the snippet, the kept rewards).
    Scored SCORE_BATCH samples at a time (sandboxed exec makes it long); stop() -> True raises Interrupted."""
    import dist
    from tqdm import tqdm

    rows = [dict(r, samples=[s for s in r["samples"] if s.strip()]) for r in rows]
    rows = [r for r in rows if r["samples"]]
    flat = [(r, s) for r in rows for s in r["samples"]]
    rewards, bar = [], tqdm(range(0, len(flat), SCORE_BATCH), desc="sft-rs: scoring samples", unit="batch",
                            dynamic_ncols=True, disable=not dist.is_main())
    for start in bar:
        if stop is not None and stop():
            bar.close()
            raise report.Interrupted(f"sft-rs scoring: stopped after {start}/{len(flat)} samples")
        part = flat[start:start + SCORE_BATCH]
        rewards += [float(x) for x in score_fn([r["intent"] for r, _ in part], [r["reference"] for r, _ in part],
                                               [s for _, s in part])]
    picks = best_per_group(rewards, [len(r["samples"]) for r in rows])
    starts = [0]
    for r in rows:
        starts.append(starts[-1] + len(r["samples"]))
    kept = [data.Example(question_id=r["question_id"], intent=r["intent"], snippet=r["samples"][j])
            for r, j in zip(rows, picks)]
    return kept, [rewards[s + j] for s, j in zip(starts, picks)]
