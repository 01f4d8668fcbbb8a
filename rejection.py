"""Rejection-sampling fine-tuning, the cheap RL baseline beside PPO (system `sft-rs`), and the PPO
prompt order that reads the same scored samples.

Llama 2's RLHF (Touvron et al. 2023, §3.2.3), RAFT (Dong et al. 2023), ReST (Gulcehre et al. 2023)
and Expert Iteration (Havrilla et al. 2024, as good as PPO at small scale) all do the same thing:
draw k samples per prompt from the current policy, keep the best one by the reward, and fine-tune on
the kept samples. Here:
  - the k samples are the reward stage's SFT samples (policy_samples.jsonl), so nothing new is
  drawn;
  - "best" is by the very reward PPO optimises (reward.make_score_fn: the calibrated RM plus the
    weighted rule signals), so if sft-rs gains and PPO does not, the estimator is at fault, not the
    reward;
  - one SFT pass on them, starting from the SFT checkpoint, with the SFT stage's optimiser and
    schedule (rlhf.stage_rejection_sampling, sft.train_sft).
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from plumbing import console
import data
from plumbing import dist
from plumbing import runfolder
from config import ConfigError

# the reward stage's k SFT samples per intent, one row per intent
SAMPLES_FILE = "policy_samples.jsonl"
# the same samples (blanks dropped) with their PPO rewards
REWARDS_FILE = "policy_sample_rewards.jsonl"
# samples per score_fn call: the stop check and the progress bar move between calls
SCORE_BATCH = 64


# ----------------------------------------------------------------------------- the samples on disk
def write_policy_samples(chosen: list, samples: dict[int, list[str]], path) -> None:
    """One row per intent: question_id, intent, reference and its k samples (the reward stage writes
    it)."""
    runfolder.write_jsonl([{"question_id": e.question_id, "intent": e.intent,
                            "reference": e.snippet, "samples": samples[e.question_id]}
                           for e in chosen if e.question_id in samples], path)


def read_policy_samples(path) -> list[dict]:
    rows = runfolder.read_jsonl(path)
    for i, r in enumerate(rows):
        if not (isinstance(r.get("samples"), list) and all(isinstance(s, str) for s in r["samples"])
                and isinstance(r.get("intent"), str) and isinstance(r.get("reference"), str)):
            raise data.DataError(f"{path}: row {i + 1} needs intent, reference and a list of "
                                 "sample strings")
    return rows


def write_scored(rows: list[dict], groups: list[list[float]], path) -> None:
    runfolder.write_jsonl([dict(r, rewards=g) for r, g in zip(rows, groups)], path)


def read_scored(path, rows: list[dict]) -> list[list[float]] | None:
    """The cached rewards of score_groups(rows, ...), or None when the cache does not match rows
    (other intents or samples: a cache from another policy_samples.jsonl is never trusted)."""
    cached = runfolder.read_jsonl(path)
    if ([(c.get("question_id"), c.get("samples")) for c in cached]
            != [(r["question_id"], r["samples"]) for r in rows]):
        return None
    groups = [c.get("rewards") for c in cached]
    ok = all(isinstance(g, list) and len(g) == len(r["samples"])
             and all(isinstance(x, (int, float)) for x in g) for g, r in zip(groups, rows))
    return [[float(x) for x in g] for g in groups] if ok else None


def nonblank(rows: list[dict]) -> list[dict]:
    """Blank samples dropped, and rows left without samples skipped: what score_groups scores."""
    rows = [dict(r, samples=[s for s in r["samples"] if s.strip()]) for r in rows]
    return [r for r in rows if r["samples"]]


# ----------------------------------------------------------------------------- scoring and picking
def split_groups(flat: list, sizes: list[int]) -> list[list]:
    """flat values -> consecutive groups of the given sizes."""
    groups, start = [], 0
    for n in sizes:
        groups.append(flat[start:start + n])
        start += n
    return groups


def best_per_group(rewards: list[float], sizes: list[int]) -> list[int]:
    """rewards, flat over groups of the given sizes -> the index within each group of its highest
    reward; ties keep the first (as best_of_n). Empty groups are not allowed."""
    if any(n < 1 for n in sizes):
        raise ValueError("every group needs at least one sample")
    return [max(range(n), key=lambda j: (group[j], -j))
            for group, n in zip(split_groups(rewards, sizes), sizes)]


def score_groups(rows: list[dict], score_fn, stop=None) -> list[list[float]]:
    """Rows of policy samples, blanks already dropped (nonblank) -> each row's rewards by
    score_fn(intents, references, codes) -> [N]. Scored SCORE_BATCH samples at a time (sandboxed
    exec makes it long); stop() -> True raises Interrupted."""
    flat = [(r, s) for r in rows for s in r["samples"]]
    rewards, bar = [], tqdm(range(0, len(flat), SCORE_BATCH), desc="scoring policy samples",
                            unit="batch", dynamic_ncols=True, disable=not dist.is_main())
    for start in bar:
        if stop is not None and stop():
            bar.close()
            raise console.Interrupted(f"policy-sample scoring: stopped after {start}/{len(flat)} "
                                      "samples")
        part = flat[start:start + SCORE_BATCH]
        rewards += [float(x) for x in score_fn([r["intent"] for r, _ in part],
                                               [r["reference"] for r, _ in part],
                                               [s for _, s in part])]
    return split_groups(rewards, [len(r["samples"]) for r in rows])


def select_examples(rows: list[dict], score_fn,
                    stop=None) -> tuple[list[data.Example], list[float]]:
    """The best sample of each intent by score_fn(intents, references, codes) -> [N] rewards; rows
    whose samples are all empty are skipped. -> (training examples with the kept sample as the
    snippet, the kept rewards)."""
    rows = nonblank(rows)
    return pick_best(rows, score_groups(rows, score_fn, stop))


def pick_best(rows: list[dict],
              groups: list[list[float]]) -> tuple[list[data.Example], list[float]]:
    """Scored rows (score_groups) -> (one training example per row, its best sample as the snippet;
    its reward)."""
    picks = best_per_group([x for g in groups for x in g], [len(g) for g in groups])
    kept = [data.Example(question_id=r["question_id"], intent=r["intent"], snippet=r["samples"][j])
            for r, j in zip(rows, picks)]
    return kept, [g[j] for g, j in zip(groups, picks)]


# ----------------------------------------------------------------------------- in the pipeline
def scored_policy_samples(run, reward_fn) -> tuple[list[dict], list[list[float]]]:
    """The reward stage's k SFT samples per train intent and their PPO rewards, on every rank. Rank
    0 scores them once (sandboxed exec) and caches them in policy_sample_rewards.jsonl: sft-rs and
    --prompt_selection read them."""
    path, cache = run.out / SAMPLES_FILE, run.out / REWARDS_FILE
    if not path.exists():
        raise ConfigError(f"{path} is missing: the reward stage writes it when "
                          "--reward_policy_intents > 0")

    def score():
        rows = nonblank(read_policy_samples(path))
        groups = read_scored(cache, rows) if cache.exists() else None
        if groups is None:  # written only once complete: a stopped scoring starts over on --resume
            groups = score_groups(rows, reward_fn, stop=run.stopping)
            write_scored(rows, groups, cache)
        return rows, groups

    return console.rank0_section(score)


def best_examples(run, reward_fn) -> list[data.Example]:
    """sft-rs's training set: the best of the reward stage's k SFT samples per intent by the PPO
    reward, kept with its reward in sft_rs_examples.jsonl."""
    kept, rewards = pick_best(*scored_policy_samples(run, reward_fn))
    if dist.is_main():
        runfolder.write_jsonl([{"question_id": e.question_id, "intent": e.intent,
                                "snippet": e.snippet, "reward": r} for e, r in zip(kept, rewards)],
                              run.out / "sft_rs_examples.jsonl")
    run.log(f"sft-rs: best of k by the PPO reward for {len(kept)} intents, mean kept reward "
            f"{sum(rewards) / max(len(rewards), 1):.4f}")
    return kept


# ----------------------------------------------------------------------------- PPO prompt order
def group_spread(rewards: list[float]) -> float:
    """Population std of one prompt's k rewards: 0 when every sample scored the same, so a group
    baseline (RLOO, GRPO) gives every sample advantage 0 and the prompt teaches nothing."""
    # exactly 0: the float mean of [0.2] * 3 leaves a 3e-17 residue
    if max(rewards) == min(rewards):
        return 0.0
    mean = sum(rewards) / len(rewards)
    return (sum((x - mean) ** 2 for x in rewards) / len(rewards)) ** 0.5


def disagreement_order(question_ids: list[int], spreads: dict[int, float]) -> list[int]:
    """PPO prompt order by disagreement (--prompt_selection=disagreement): the positions in
    question_ids of the prompts whose reward-stage samples disagree, largest spread first (ties by
    position). Prompts with spread 0 are dropped, as DAPO's dynamic sampling drops groups whose
    rewards are all equal (Yu et al. 2025, sec. 3.2); ranking by the spread is its continuous
    version. Prompts without samples are dropped too: their spread is unknown. The PPO loop cycles
    over the result."""
    scored = [(spreads[q], i) for i, q in enumerate(question_ids) if spreads.get(q, 0.0) > 0.0]
    return [i for _, i in sorted(scored, key=lambda t: (-t[0], t[1]))]


def prompt_order(run, train, reward_fn) -> list[int]:
    """Positions in train of the PPO prompts, in order (the loop cycles over them): a seeded
    permutation, or with --prompt_selection=disagreement the intents whose reward-stage samples
    disagree most first."""
    if run.cfg.prompt_selection == "random":
        gen = torch.Generator().manual_seed(run.cfg.seed)
        return torch.randperm(len(train), generator=gen).tolist()
    rows, groups = scored_policy_samples(run, reward_fn)
    spreads = {r["question_id"]: group_spread(g) for r, g in zip(rows, groups)}
    order = disagreement_order([e.question_id for e in train], spreads)
    if not order:
        raise ConfigError("--prompt_selection=disagreement: no train intent's samples disagree "
                          "under the PPO reward")
    run.log(f"ppo prompts: {len(order)} train intents whose {len(groups[0])} samples disagree, of "
            f"{len(rows)} sampled (largest reward spread first; "
            f"{sum(1 for g in groups if not group_spread(g))} with equal rewards dropped)")
    return order
