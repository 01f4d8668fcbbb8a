"""The reward side: the reward model (reward_model.py) trained with Bradley-Terry on synthetic
feedback, then LHP gain/bias calibration, sigmoid-then-clip normalisation, and the rule-weighted PPO
reward.

  synthetic feedback (feedback.py) -> pairs (chosen, rejected) -> RewardModel -> raw score r
  PPO reward = w_rm * clip(sigmoid((gain * r + bias) / scale), lo, hi) + sum_i w_i * rule_i

The reward model never sees the reference snippet; only the synthetic annotator that labelled its
training pairs did. Run alone: `python reward.py --config quick --train_limit=0
[--reward_max_train_pairs=N]` (no policy samples).
"""
from __future__ import annotations

import json
import math
import random
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import config
from plumbing import config_cli
import data
from plumbing import dist
from plumbing import models
from plumbing import runfolder
from config import ConfigError, die
from plumbing.console import Interrupted
from feedback import build_preference_pairs, judge, pair_counts_by_kind, pairing
from reward_model import RewardModel, check_finite, score_texts
from rules import rule_signals

# rule signal -> Config field
RULE_WEIGHTS = {"syntax": "w_syntax", "exec": "w_exec", "similarity": "w_similarity",
                "quality": "w_quality"}


# ------------------------------------------------------------------- the loss and held-out accuracy
def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected), mean over pairs [B] (Bradley & Terry 1952; InstructGPT
    eq. 1)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def evaluate_pairs(rm: RewardModel, tokenizer, pairs: list[dict], device: torch.device, ctx=None,
                   by_kind: bool = False) -> dict:
    """{loss, accuracy} of the Bradley-Terry model on held-out pairs (a tie counts as wrong), plus
    accuracy_by_kind {rejected_kind: accuracy} when asked. Each distinct (intent, code) is scored
    once."""
    texts = list(dict.fromkeys((p["intent"], c) for p in pairs
                               for c in (p["chosen"], p["rejected"])))
    r = score_texts(rm, tokenizer, [t[0] for t in texts], [t[1] for t in texts], device,
                    ctx=ctx)  # [U]
    where = {t: i for i, t in enumerate(texts)}
    r_chosen = r[[where[(p["intent"], p["chosen"])] for p in pairs]]  # [N]
    r_rejected = r[[where[(p["intent"], p["rejected"])] for p in pairs]]  # [N]
    correct = r_chosen > r_rejected  # [N]
    out = {"loss": bradley_terry_loss(r_chosen, r_rejected).item(),
           "accuracy": correct.float().mean().item()}
    if by_kind:
        out["accuracy_by_kind"] = accuracy_by(correct, [p["rejected_kind"] for p in pairs])
        out["accuracy_by_pairing"] = accuracy_by(correct, [pairing(p) for p in pairs])
        out["pairs_by_pairing"] = pair_counts_by_kind(pairs, by="pairing")
    return out


def accuracy_by(correct: torch.Tensor, groups: list[str]) -> dict[str, float]:
    """correct [N] bool, one group label per pair -> {group: share correct}, groups in sorted
    order."""
    return {g: correct[[x == g for x in groups]].float().mean().item()
            for g in sorted(set(groups))}


def ranks(x: list[float]) -> list[float]:
    """1-based ranks, ties get the mean of the ranks they span (the convention of Spearman's
    rho)."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    out = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for t in range(i, j + 1):
            out[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho: the Pearson correlation of the two rank vectors (ties averaged). NaN if
    either is constant."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"spearman needs two equal lists of >= 2 values, got {len(a)} and "
                         f"{len(b)}")
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va and vb else float("nan")


def policy_sample_agreement(rm: RewardModel, tokenizer, candidates: list[dict],
                            device: torch.device) -> dict:
    """Spearman between the RM and the synthetic annotator over held-out *policy* samples (annotated
    candidates of kind 'policy'): do the two order the policy's own samples alike? Pooled over
    intents."""
    pol = [c for c in candidates if c["kind"] == "policy"]
    if len(pol) < 2:
        return {"n": len(pol), "spearman": float("nan")}
    r = score_texts(rm, tokenizer, [c["intent"] for c in pol], [c["code"] for c in pol], device)
    return {"n": len(pol), "spearman": spearman(r.tolist(), [c["score"] for c in pol])}


# --------------------------------------------------------------------------- Bradley-Terry training
def intent_batches(pairs: list[dict], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Pair indices per optimizer step: whole intents (all their pairs), shuffled, filled to >=
    batch_size pairs. InstructGPT §3.5 puts all K-choose-2 comparisons of a prompt in one batch:
    each candidate is encoded once per step instead of once per pair (~4x less compute here), and no
    candidate is seen in many steps."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault((p["question_id"], p["intent"]), []).append(i)
    keys = list(groups)
    rng.shuffle(keys)
    batches, current = [], []
    for key in keys:
        current += groups[key]
        if len(current) >= batch_size:
            batches.append(current)
            current = []
    return batches + ([current] if current else [])


def policy_count(pair: dict) -> int:
    """How many of the pair's two candidates are policy samples: 2 = policy>policy, the pairs PPO's
    reward faces."""
    return (pair["chosen_kind"] == "policy") + (pair["rejected_kind"] == "policy")


def subsample_pairs(pairs: list[dict], cap: int, seed: int, mode: str, log=print) -> list[dict]:
    """At most ~cap training pairs (0 = all).
    intents:      whole intents in a seeded random order, so the intent batches stay intact.
    policy_first: pairs with two policy samples, then one, then none, intents in a seeded order
                  within each class. PPO asks the RM to order the policy's own samples, and
                  InstructGPT trains on nothing else (all K-choose-2 comparisons of policy samples,
                  §3.5). On the cpu preset's pairs, intents keeps 177 policy>policy pairs of 4,008
                  and policy_first 1,647 of 4,000, for 1.4x the distinct texts."""
    if not cap or cap >= len(pairs):
        return pairs
    if mode == "policy_first":
        keys = list(dict.fromkeys(p["question_id"] for p in pairs))
        random.Random(seed).shuffle(keys)
        rank = {k: i for i, k in enumerate(keys)}
        order = sorted(range(len(pairs)),
                       key=lambda i: (-policy_count(pairs[i]), rank[pairs[i]["question_id"]]))
        # file order: intent_batches regroups by intent
        kept = [pairs[i] for i in sorted(order[:cap])]
    elif mode == "intents":
        kept = [pairs[i] for i in intent_batches(pairs, cap, random.Random(seed))[0]]
    else:
        raise ValueError(f"unknown subsample mode {mode!r}")
    log(f"reward: subsampled the training pairs to {len(kept)} of {len(pairs)} "
        f"(reward_max_train_pairs={cap}, {mode}: {sum(policy_count(p) == 2 for p in kept)} "
        "policy>policy)")
    return kept


def pair_scores(rm: RewardModel, tokenizer, mb: list[dict], device: torch.device,
                ctx) -> tuple[torch.Tensor, ...]:
    """(r_chosen [B], r_rejected [B]) with grad, encoding each distinct (intent, code) of the
    minibatch once."""
    texts = list(dict.fromkeys((p["intent"], c) for p in mb for c in (p["chosen"], p["rejected"])))
    batch = dist.unwrap(rm).tokenize(tokenizer, [t[0] for t in texts], [t[1] for t in texts])
    with ctx:
        r = rm(**{k: v.to(device) for k, v in batch.items()}).float()  # [U]
    where = {t: i for i, t in enumerate(texts)}
    return (r[[where[(p["intent"], p["chosen"])] for p in mb]],
            r[[where[(p["intent"], p["rejected"])] for p in mb]])


def train_reward_model(rm: RewardModel, tokenizer, train_pairs: list[dict], val_pairs: list[dict],
                       cfg, device: torch.device, ctx, scaler=None, log=print,
                       stop=None) -> list[dict]:
    """AdamW on the Bradley-Terry loss for cfg.reward_epochs, one intent group per batch
    (`intent_batches`). Returns one dict per epoch: epoch, train_loss, train_accuracy, val_loss,
    val_accuracy, seconds. Several ranks: reward_batch_size is the global batch; each rank takes its
    share of every step's pairs under DDP, its mean loss weighted by its share of the step's pairs
    (x W, as DDP averages), and the logged train numbers are sums over ranks: the update and the log
    are those of one process. stop() -> True on any rank stops every rank before its next batch
    (Interrupted; the caller decides what --resume redoes)."""
    if not train_pairs or not val_pairs:
        raise ConfigError(f"reward model needs training and held-out pairs, got {len(train_pairs)} "
                          f"and {len(val_pairs)}; raise --train_limit or --val_fraction")
    rm.max_len = cfg.reward_max_len
    rm.to(device)
    # find_unused_parameters: the encoder's pooler (mean pooling) or a causal LM's lm_head gets no
    # gradient.
    model, W = dist.wrap_ddp(rm, device, find_unused_parameters=True), dist.world_size()
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.reward_learning_rate)
    # fp16 needs the caller's scaler
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    rng, history = random.Random(cfg.seed), []
    for epoch in range(1, cfg.reward_epochs + 1):
        t0, rm_loss, rm_acc, seen = time.perf_counter(), 0.0, 0.0, 0
        rm.train()
        batches = intent_batches(train_pairs, cfg.reward_batch_size, rng)
        bar = tqdm(batches, desc=f"reward epoch {epoch}/{cfg.reward_epochs}", leave=False,
                   disable=not dist.is_main())
        for step, idx in enumerate(bar):
            # every rank runs these batches: they stop together
            if stop is not None and dist.any_flag(stop()):
                bar.close()
                raise Interrupted(f"reward model training: stopped in epoch "
                                  f"{epoch}/{cfg.reward_epochs} after {step}/{len(batches)} "
                                  "batches")
            # this rank's pairs of the step (keep = 0: none, a dummy)
            mine, keep = dist.shard_or_dummy(idx)
            mb = [train_pairs[i] for i in mine]
            mb_r_chosen, mb_r_rejected = pair_scores(model, tokenizer, mb, device, ctx)  # [B], [B]
            loss = bradley_terry_loss(mb_r_chosen, mb_r_rejected)
            check_finite(loss.detach(), f"reward loss at epoch {epoch} step {step}")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss * (keep * W * len(mb) / len(idx))).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(rm.parameters(), cfg.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            rm_loss += loss.item() * len(mb) * keep  # .item() is a sync point; fine at this size
            rm_acc += (mb_r_chosen > mb_r_rejected).sum().item() * keep
            seen += len(mb) * keep
            bar.set_postfix(loss=f"{rm_loss / max(seen, 1):.4f}",
                            acc=f"{rm_acc / max(seen, 1):.3f}")
        totals = torch.tensor([rm_loss, rm_acc, seen], dtype=torch.float64)
        rm_loss, rm_acc, seen = dist.all_reduce_sum(totals).tolist()
        val = evaluate_pairs(rm, tokenizer, val_pairs, device, ctx)
        history.append({"epoch": epoch, "train_loss": rm_loss / seen,
                        "train_accuracy": rm_acc / seen,
                        "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                        "seconds": time.perf_counter() - t0})
        log(f"reward epoch {epoch}/{cfg.reward_epochs}: train loss {rm_loss / seen:.4f} "
            f"acc {rm_acc / seen:.3f} | held-out loss {val['loss']:.4f} "
            f"acc {val['accuracy']:.3f} | {history[-1]['seconds']:.0f}s")
    return history


# --------------------------------------------------------------------- normalisation and PPO reward
def fit_calibration(raw_scores) -> tuple[float, float]:
    """LHP reward normalisation: (gain, bias) so that gain * raw + bias has mean 0 and std 1 on
    samples of the reference policy, "so the KL coefficient always has the same meaning"
    (lm-human-preferences)."""
    raw = torch.as_tensor(raw_scores, dtype=torch.float64).flatten()
    check_finite(raw, "calibration score")
    std = raw.std(unbiased=False).item() if raw.numel() > 1 else 0.0
    if std < 1e-8:
        raise ValueError(f"cannot calibrate the reward model on {raw.numel()} scores with std "
                         f"{std:.2e}: it gives (nearly) the same score to every sample")
    return 1.0 / std, -raw.mean().item() / std


def normalize_reward(raw, scale: float = 1.0, lo: float = 0.0, hi: float = 1.0, gain: float = 1.0,
                     bias: float = 0.0) -> torch.Tensor:
    """clip(sigmoid((gain * raw + bias) / scale), lo, hi) -> [B]. Non-finite input raises.

    Sigmoid first, then clip: the bounds are in reward units and the map stays monotone inside them.
    Clip-then-sigmoid would cut the *raw* score at lo/hi, so every raw score beyond a bound
    collapses onto one value and extreme scores saturate (tests/test_reward.py shows it)."""
    raw = torch.as_tensor(raw, dtype=torch.float32)
    check_finite(raw, "raw reward-model score")
    if scale <= 0 or not lo < hi:
        raise ValueError(f"normalize_reward needs scale > 0 and lo < hi, got scale={scale}, "
                         f"lo={lo}, hi={hi}")
    return torch.sigmoid((gain * raw + bias) / scale).clamp(lo, hi)


def combined_reward(rm_norm: torch.Tensor, rules: list[dict] | None, cfg) -> torch.Tensor:
    """w_rm * rm_norm + sum_i w_i * rule_i -> [B]. A rule with non-zero weight must be present in
    every row (`exec` exists only when the caller ran the sandbox); rules may be None when every
    rule weight is 0."""
    rm_norm = torch.as_tensor(rm_norm, dtype=torch.float32)  # [B]
    check_finite(rm_norm, "normalised reward-model score")
    total = cfg.w_rm * rm_norm
    for key, field in RULE_WEIGHTS.items():
        weight = getattr(cfg, field)
        if weight == 0:
            continue
        if rules is None or len(rules) != len(rm_norm):
            raise ValueError(f"--{field}={weight} needs one rule-signal dict per response, got "
                             f"{'None' if rules is None else len(rules)} for {len(rm_norm)}")
        missing = [i for i, r in enumerate(rules) if key not in r]
        if missing:
            hint = (" (run sandbox.execute_many and pass exec_outcome, or set --w_exec=0)"
                    if key == "exec" else "")
            raise ValueError(f"--{field}={weight} but rule signal {key!r} is missing in row "
                             f"{missing[0]}{hint}")
        values = torch.tensor([float(r[key]) for r in rules])  # [B]
        check_finite(values, f"rule signal {key!r}")
        total = total + weight * values
    return total


def rm_reward(rm: RewardModel, tokenizer, intents: list[str], codes: list[str],
              device: torch.device, cfg, ctx=None) -> torch.Tensor:
    """The normalised reward-model score [B] with the model's stored calibration and the config's
    bounds."""
    raw = score_texts(rm, tokenizer, intents, codes, device, ctx=ctx)
    return normalize_reward(raw, cfg.reward_scale, cfg.reward_clip_min, cfg.reward_clip_max,
                            rm.gain, rm.bias)


def make_score_fn(rm: RewardModel, tokenizer, cfg, device: torch.device, log=print):
    """The PPO reward as one function (LHP's make_score_fn): score_fn(intents, references, codes) ->
    [B] = w_rm * normalised RM score + the weighted rule signals. The rules see the train intent's
    reference (the annotator's chrF, syntax, sandboxed exec capped at the reference's, quality);
    with every rule weight 0 the reference is never read. PPO and rejection sampling (sft-rs) both
    call it, so they climb the same reward."""
    uses_rules = any(getattr(cfg, f) for f in RULE_WEIGHTS.values())

    def score_fn(intents: list[str], references: list[str], codes: list[str]) -> torch.Tensor:
        rm_norm = rm_reward(rm, tokenizer, intents, codes, device, cfg)
        rules = None
        # exec needs the sandbox; judge runs each reference too, for the cap
        if uses_rules and cfg.w_exec:
            rules = [j["capped"] for j in judge(codes, references, cfg.exec_timeout_s, log=log)]
        elif uses_rules:
            rules = [rule_signals(c, r) for c, r in zip(codes, references)]
        return combined_reward(rm_norm, rules, cfg)

    return score_fn


def load_score_fn(folder, cfg, device: torch.device, log=print):
    """make_score_fn on the reward model saved in `folder` (checkpoint-reward/), loaded onto
    `device`."""
    rm = RewardModel.load(folder).to(device)
    return make_score_fn(rm, models.load_tokenizer(str(folder)), cfg, device, log=log)


# ---------------------------------------------------------------------- CLI: the reward stage alone
def main(argv: list[str]) -> None:
    config_cli.console_fallback()
    cfg, extras = config_cli.parse_cli(argv, extra_flags=("debug", "overwrite"))
    # bad data fails here, before --overwrite moves a folder aside
    train, val, _ = data.load_splits(cfg)
    # locked
    out = runfolder.prepare_output_dir(cfg, None, bool(extras.get("overwrite")), script="reward.py")
    config.save_config(cfg, out / "rlhf_config.json")
    runfolder.write_text(out / "argv.txt", " ".join(["reward.py", *argv]) + "\n")
    models.seed_everything(cfg.seed)
    device = models.resolve_device(cfg.device)
    dtype = models.resolve_dtype(cfg.dtype, device)
    t0 = time.perf_counter()
    train_pairs, val_pairs = build_preference_pairs(train, val, None, cfg)
    print(f"feedback: {len(train_pairs)} train / {len(val_pairs)} held-out pairs in "
          f"{time.perf_counter() - t0:.0f}s")
    runfolder.write_jsonl(train_pairs, out / "preference_pairs_train.jsonl")
    runfolder.write_jsonl(val_pairs, out / "preference_pairs_val.jsonl")
    counts = {"train": pair_counts_by_kind(train_pairs), "val": pair_counts_by_kind(val_pairs),
              "train_pairing": pair_counts_by_kind(train_pairs, by="pairing")}
    print(f"pairs by rejected kind: train {counts['train']}  held-out {counts['val']}")
    train_pairs = subsample_pairs(train_pairs, cfg.reward_max_train_pairs, cfg.seed,
                                  cfg.reward_subsample, log=print)
    encoder, tok = models.load_encoder(cfg.reward_encoder, seed=cfg.seed)
    rm = RewardModel(encoder)
    history = train_reward_model(rm, tok, train_pairs, val_pairs, cfg, device,
                                 models.autocast_ctx(device, dtype),
                                 models.make_grad_scaler(device, dtype))
    refs = score_texts(rm, tok, [e.intent for e in train], [e.snippet for e in train], device)
    # no policy samples here: calibrate on the reference snippets
    rm.gain, rm.bias = fit_calibration(refs)
    final = evaluate_pairs(rm, tok, val_pairs, device, by_kind=True)
    counts["train_used"] = pair_counts_by_kind(train_pairs)
    models.save_atomic(out / "checkpoint-reward", lambda d: (rm.save(d), tok.save_pretrained(d)))
    summary = {"history": history, "pair_counts": counts, "held_out": final,
               "train_pairs_used": len(train_pairs)}
    runfolder.write_text(out / "reward_history.json", json.dumps(summary, indent=2) + "\n")
    print(f"held-out pairwise accuracy {final['accuracy']:.3f}; by rejected kind "
          + ", ".join(f"{k} {v:.3f}" for k, v in final["accuracy_by_kind"].items())
          + f"; wrote {out}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, ValueError, FloatingPointError) as e:
        if "--debug" in sys.argv:
            raise
        die(str(e))
