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

import console
import data
import runfolder

SAMPLES_FILE = "policy_samples.jsonl"  # the reward stage's k SFT samples per intent, one row per intent
REWARDS_FILE = "policy_sample_rewards.jsonl"  # the same samples (blanks dropped) with their PPO rewards


def write_policy_samples(chosen: list, samples: dict[int, list[str]], path) -> None:
    """One row per intent: question_id, intent, reference and its k samples (the reward stage writes it)."""
    runfolder.write_jsonl([{"question_id": e.question_id, "intent": e.intent, "reference": e.snippet,
                         "samples": samples[e.question_id]} for e in chosen if e.question_id in samples], path)


def read_policy_samples(path) -> list[dict]:
    rows = runfolder.read_jsonl(path)
    for i, r in enumerate(rows):
        if not (isinstance(r.get("samples"), list) and all(isinstance(s, str) for s in r["samples"])
                and isinstance(r.get("intent"), str) and isinstance(r.get("reference"), str)):
            raise data.DataError(f"{path}: row {i + 1} needs intent, reference and a list of sample strings")
    return rows


def write_scored(rows: list[dict], groups: list[list[float]], path) -> None:
    runfolder.write_jsonl([dict(r, rewards=g) for r, g in zip(rows, groups)], path)


def read_scored(path, rows: list[dict]) -> list[list[float]] | None:
    """The cached rewards of score_groups(rows, ...), or None when the cache does not match rows (other
    intents or samples: a cache from another policy_samples.jsonl is never trusted)."""
    cached = runfolder.read_jsonl(path)
    if [(c.get("question_id"), c.get("samples")) for c in cached] != [(r["question_id"], r["samples"]) for r in rows]:
        return None
    groups = [c.get("rewards") for c in cached]
    ok = all(isinstance(g, list) and len(g) == len(r["samples"]) and all(isinstance(x, (int, float)) for x in g)
             for g, r in zip(groups, rows))
    return [[float(x) for x in g] for g in groups] if ok else None


def nonblank(rows: list[dict]) -> list[dict]:
    """Blank samples dropped, and rows left without samples skipped: what score_groups scores."""
    rows = [dict(r, samples=[s for s in r["samples"] if s.strip()]) for r in rows]
    return [r for r in rows if r["samples"]]


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


def score_groups(rows: list[dict], score_fn, stop=None) -> tuple[list[dict], list[list[float]]]:
    """rows of policy samples -> (the rows with blank samples dropped and rows left empty skipped, each kept row's
    rewards by score_fn(intents, references, codes) -> [N]). Scored SCORE_BATCH samples at a time (sandboxed exec
    makes it long); stop() -> True raises Interrupted."""
    import dist
    from tqdm import tqdm

    rows = nonblank(rows)
    flat = [(r, s) for r in rows for s in r["samples"]]
    rewards, bar = [], tqdm(range(0, len(flat), SCORE_BATCH), desc="scoring policy samples", unit="batch",
                            dynamic_ncols=True, disable=not dist.is_main())
    for start in bar:
        if stop is not None and stop():
            bar.close()
            raise console.Interrupted(f"policy-sample scoring: stopped after {start}/{len(flat)} samples")
        part = flat[start:start + SCORE_BATCH]
        rewards += [float(x) for x in score_fn([r["intent"] for r, _ in part], [r["reference"] for r, _ in part],
                                               [s for _, s in part])]
    groups, start = [], 0
    for r in rows:
        groups.append(rewards[start:start + len(r["samples"])])
        start += len(r["samples"])
    return rows, groups


def select_examples(rows: list[dict], score_fn, stop=None) -> tuple[list[data.Example], list[float]]:
    """The best sample of each intent by score_fn(intents, references, codes) -> [N] rewards; rows whose samples
    are all empty are skipped. -> (training examples with the kept sample as the snippet, the kept rewards)."""
    return pick_best(*score_groups(rows, score_fn, stop))


def pick_best(rows: list[dict], groups: list[list[float]]) -> tuple[list[data.Example], list[float]]:
    """Scored rows (score_groups) -> (one training example per row, its best sample as the snippet; its reward)."""
    picks = best_per_group([x for g in groups for x in g], [len(g) for g in groups])
    kept = [data.Example(question_id=r["question_id"], intent=r["intent"], snippet=r["samples"][j])
            for r, j in zip(rows, picks)]
    return kept, [g[j] for g, j in zip(groups, picks)]


def group_spread(rewards: list[float]) -> float:
    """Population std of one prompt's k rewards: 0 when every sample scored the same, so a group baseline
    (RLOO, GRPO) gives every sample advantage 0 and the prompt teaches nothing."""
    if max(rewards) == min(rewards):  # exactly 0: the float mean of [0.2] * 3 leaves a 3e-17 residue
        return 0.0
    mean = sum(rewards) / len(rewards)
    return (sum((x - mean) ** 2 for x in rewards) / len(rewards)) ** 0.5


def disagreement_order(question_ids: list[int], spreads: dict[int, float]) -> list[int]:
    """PPO prompt order by disagreement (--prompt_selection=disagreement): the positions in question_ids of the
    prompts whose reward-stage samples disagree, largest spread first (ties by position). Prompts with spread 0
    are dropped, as DAPO's dynamic sampling drops groups whose rewards are all equal (Yu et al. 2025, sec. 3.2);
    ranking by the spread is its continuous version. Prompts without samples are dropped too: their spread is
    unknown. The PPO loop cycles over the result."""
    scored = [(spreads[q], i) for i, q in enumerate(question_ids) if spreads.get(q, 0.0) > 0.0]
    return [i for _, i in sorted(scored, key=lambda t: (-t[0], t[1]))]
