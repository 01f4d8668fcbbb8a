"""Reward model for code: an encoder scores (intent, code), trained with Bradley-Terry on synthetic feedback;
then LHP gain/bias calibration, sigmoid-then-clip normalisation, and the rule-weighted PPO reward.

  synthetic feedback (feedback.py) -> pairs (chosen, rejected) -> RewardModel -> raw score r
  PPO reward = w_rm * clip(sigmoid((gain * r + bias) / scale), lo, hi) + sum_i w_i * rule_i

The reward model never sees the reference snippet; only the synthetic annotator that labelled its training
pairs did. The feedback functions are re-exported here so callers need one import (`reward.rule_signals`).
Run alone: `python reward.py --config quick --train_limit=0 [--reward_max_train_pairs=N]` (no policy samples).
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import dist
from config import ConfigError, die
from models import position_ids  # a causal-LM backbone is left-padded like the policy
from feedback import build_preference_pairs, pair_counts_by_kind, pairing, rule_signals
from runfolder import write_jsonl

HEAD_FILE = "reward_head.pt"  # LayerNorm + scalar head + calibration, next to the HF encoder files
RULE_WEIGHTS = {"syntax": "w_syntax", "exec": "w_exec", "similarity": "w_similarity", "quality": "w_quality"}  # rule signal -> Config field


# ----------------------------------------------------------------------------- model
def encode_pairs_text(intent: str, code: str) -> tuple[str, str]:
    """The one place that formats reward-model input: a tokenizer text pair, `[CLS] intent [SEP] code [SEP]`
    for BERT-style encoders. Never the reference. (MiniLM's uncased WordPiece drops case and indentation.)"""
    return intent.strip(), code


def tokenize_pairs(tokenizer, intents: list[str], codes: list[str], max_len: int) -> dict[str, torch.Tensor]:
    pairs = [encode_pairs_text(i, c) for i, c in zip(intents, codes, strict=True)]
    return tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first", max_length=max_len,
                     padding=True, return_tensors="pt")


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden [B, T, H], mask [B, T] -> [B, H]: mean over real tokens only (MiniLM is a mean-pooling encoder)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden [B, T, H], mask [B, T] -> [B, H] at each row's last real token, under left or right padding
    (the largest position whose mask is 1). LHP and InstructGPT read the reward off the final token."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # [B, T]
    last = torch.where(mask.bool(), pos, -1).max(1).values  # [B]
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def tokenize_causal(tokenizer, intents: list[str], codes: list[str], max_len: int, fmt: str) -> dict[str, torch.Tensor]:
    """Causal-LM reward input: the policy's own prompt, then the code, then EOS (the token the reward is read at),
    right-padded; over-long inputs lose prompt tokens first, as in SFT (data.collate_right)."""
    import data

    prompts = tokenizer([data.format_prompt(i, tokenizer, fmt) for i in intents], add_special_tokens=False)
    targets = tokenizer([data.format_target(c, tokenizer) for c in codes], add_special_tokens=False)
    batch = data.collate_right(prompts["input_ids"], targets["input_ids"], tokenizer.pad_token_id, max_len)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


class RewardModel(nn.Module):
    """backbone -> pool -> LayerNorm -> Linear(H, 1) -> raw score [B]. Two backbones:
      * kind="encoder": a sentence encoder on the text pair (intent, code), masked mean pool (MiniLM's own pooling);
      * kind="causal": a causal LM (e.g. the SFT policy, as InstructGPT §3.5 and LHP initialise the RM) on the
        policy's prompt + code + EOS, last-token pooling. Cased, and it keeps whitespace, which MiniLM drops.
    `gain`/`bias` (floats) are the LHP calibration, applied by `normalize_reward`, not by forward."""

    def __init__(self, backbone: nn.Module, max_len: int = 128, kind: str = "encoder", fmt: str = "chat"):
        super().__init__()
        if kind not in ("encoder", "causal"):
            raise ValueError(f"RewardModel kind must be encoder or causal, got {kind!r}")
        hidden = backbone.config.hidden_size
        self.encoder, self.kind, self.fmt = backbone, kind, fmt  # `encoder` keeps old checkpoints' key names
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(hidden + 1))  # LHP reward head init
        nn.init.zeros_(self.head.bias)
        self.gain, self.bias, self.max_len = 1.0, 0.0, max_len

    def tokenize(self, tokenizer, intents: list[str], codes: list[str]) -> dict[str, torch.Tensor]:
        if self.kind == "causal":
            return tokenize_causal(tokenizer, intents, codes, self.max_len, self.fmt)
        return tokenize_pairs(tokenizer, intents, codes, self.max_len)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "causal":
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1,
                               position_ids=position_ids(attention_mask), output_hidden_states=True, use_cache=False)
            pooled = last_token(out.hidden_states[-1], attention_mask)  # [B, H] after the final norm
        else:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            pooled = masked_mean(hidden, attention_mask)  # [B, H]
        return self.head(self.norm(pooled)).squeeze(-1)  # [B]

    def save(self, folder: str | Path) -> None:
        """HF backbone files + HEAD_FILE into an existing folder (the caller saves the tokenizer there too)."""
        self.encoder.save_pretrained(folder)
        torch.save({"norm": self.norm.state_dict(), "head": self.head.state_dict(), "gain": float(self.gain),
                    "bias": float(self.bias), "max_len": int(self.max_len), "kind": self.kind, "fmt": self.fmt},
                   Path(folder) / HEAD_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> "RewardModel":
        from transformers import AutoModel, AutoModelForCausalLM

        folder = Path(folder)
        if not (folder / HEAD_FILE).is_file():
            raise ConfigError(f"{folder}: no {HEAD_FILE}; not a reward-model checkpoint")
        state = torch.load(folder / HEAD_FILE, map_location="cpu", weights_only=True)
        kind = state.get("kind", "encoder")
        loader = AutoModelForCausalLM if kind == "causal" else AutoModel
        rm = cls(loader.from_pretrained(folder, dtype=torch.float32), max_len=state["max_len"], kind=kind,
                 fmt=state.get("fmt", "chat"))
        rm.norm.load_state_dict(state["norm"])
        rm.head.load_state_dict(state["head"])
        rm.gain, rm.bias = state["gain"], state["bias"]
        return rm


# ----------------------------------------------------------------------------- Bradley-Terry training
def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected), mean over pairs [B] (Bradley & Terry 1952; InstructGPT eq. 1)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def _check_finite(x: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(x)
    if bad.any():
        i = int(bad.nonzero()[0, 0]) if x.dim() else 0
        raise FloatingPointError(f"{what} is not finite ({x.flatten()[i].item()} at index {i})")


def score_texts(rm: RewardModel, tokenizer, intents: list[str], codes: list[str], device: torch.device,
                batch_size: int = 32, ctx=None, stop=None, desc: str | None = None) -> torch.Tensor:
    """Raw scores [B] (float32, CPU) in eval mode without grad; batches are length-sorted to cut padding.
    desc: a progress bar; stop() -> True raises Interrupted before the next batch (PPO's reward passes neither)."""
    import contextlib

    from tqdm import tqdm

    order = sorted(range(len(codes)), key=lambda i: len(intents[i]) + len(codes[i]))
    out = torch.empty(len(codes), dtype=torch.float32)
    was_training = rm.training
    rm.eval()
    starts = tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", dynamic_ncols=True,
                  disable=desc is None or not dist.is_main())
    with torch.no_grad(), (ctx or contextlib.nullcontext()):
        for start in starts:
            if stop is not None and stop():
                from console import Interrupted

                starts.close()
                raise Interrupted(f"{desc or 'reward-model scoring'}: stopped after {start}/{len(order)} texts")
            idx = order[start:start + batch_size]
            batch = rm.tokenize(tokenizer, [intents[i] for i in idx], [codes[i] for i in idx])
            out[idx] = rm(**{k: v.to(device) for k, v in batch.items()}).float().cpu()
    rm.train(was_training)
    _check_finite(out, "reward-model score")
    return out


def evaluate_pairs(rm: RewardModel, tokenizer, pairs: list[dict], device: torch.device, ctx=None,
                   by_kind: bool = False) -> dict:
    """{loss, accuracy} of the Bradley-Terry model on held-out pairs (a tie counts as wrong), plus
    accuracy_by_kind {rejected_kind: accuracy} when asked. Each distinct (intent, code) is scored once."""
    texts = list(dict.fromkeys((p["intent"], c) for p in pairs for c in (p["chosen"], p["rejected"])))
    r = score_texts(rm, tokenizer, [t[0] for t in texts], [t[1] for t in texts], device, ctx=ctx)  # [U]
    where = {t: i for i, t in enumerate(texts)}
    r_chosen = r[[where[(p["intent"], p["chosen"])] for p in pairs]]  # [N]
    r_rejected = r[[where[(p["intent"], p["rejected"])] for p in pairs]]  # [N]
    correct = r_chosen > r_rejected  # [N]
    out = {"loss": bradley_terry_loss(r_chosen, r_rejected).item(), "accuracy": correct.float().mean().item()}
    if by_kind:
        out["accuracy_by_kind"] = accuracy_by(correct, [p["rejected_kind"] for p in pairs])
        out["accuracy_by_pairing"] = accuracy_by(correct, [pairing(p) for p in pairs])
        out["pairs_by_pairing"] = pair_counts_by_kind(pairs, by="pairing")
    return out


def accuracy_by(correct: torch.Tensor, groups: list[str]) -> dict[str, float]:
    """correct [N] bool, one group label per pair -> {group: share correct}, groups in sorted order."""
    return {g: correct[[x == g for x in groups]].float().mean().item() for g in sorted(set(groups))}


def ranks(x: list[float]) -> list[float]:
    """1-based ranks, ties get the mean of the ranks they span (the convention of Spearman's rho)."""
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
    """Spearman's rho: the Pearson correlation of the two rank vectors (ties averaged). NaN if either is constant."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"spearman needs two equal lists of >= 2 values, got {len(a)} and {len(b)}")
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va and vb else float("nan")


def policy_sample_agreement(rm: RewardModel, tokenizer, candidates: list[dict], device: torch.device) -> dict:
    """Spearman between the RM and the synthetic annotator over held-out *policy* samples (annotated candidates
    of kind 'policy'): do the two order the policy's own samples alike? Pooled over intents."""
    pol = [c for c in candidates if c["kind"] == "policy"]
    if len(pol) < 2:
        return {"n": len(pol), "spearman": float("nan")}
    r = score_texts(rm, tokenizer, [c["intent"] for c in pol], [c["code"] for c in pol], device)
    return {"n": len(pol), "spearman": spearman(r.tolist(), [c["score"] for c in pol])}


def intent_batches(pairs: list[dict], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Pair indices per optimizer step: whole intents (all their pairs), shuffled, filled to >= batch_size pairs.
    InstructGPT §3.5 puts all K-choose-2 comparisons of a prompt in one batch: each candidate is encoded once
    per step instead of once per pair (~4x less compute here), and no candidate is seen in many steps."""
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
    """How many of the pair's two candidates are policy samples: 2 = policy>policy, the pairs PPO's reward faces."""
    return (pair["chosen_kind"] == "policy") + (pair["rejected_kind"] == "policy")


def subsample_pairs(pairs: list[dict], cap: int, seed: int, mode: str, log=print) -> list[dict]:
    """At most ~cap training pairs (0 = all).
    intents:      whole intents in a seeded random order, so the intent batches stay intact.
    policy_first: pairs with two policy samples, then one, then none, intents in a seeded order within each class.
                  PPO asks the RM to order the policy's own samples, and InstructGPT trains on nothing else (all
                  K-choose-2 comparisons of policy samples, §3.5). On the cpu preset's pairs, intents keeps 177
                  policy>policy pairs of 4,008 and policy_first 1,647 of 4,000, for 1.4x the distinct texts."""
    if not cap or cap >= len(pairs):
        return pairs
    if mode == "policy_first":
        keys = list(dict.fromkeys(p["question_id"] for p in pairs))
        random.Random(seed).shuffle(keys)
        rank = {k: i for i, k in enumerate(keys)}
        order = sorted(range(len(pairs)), key=lambda i: (-policy_count(pairs[i]), rank[pairs[i]["question_id"]]))
        kept = [pairs[i] for i in sorted(order[:cap])]  # file order: intent_batches regroups by intent
    elif mode == "intents":
        kept = [pairs[i] for i in intent_batches(pairs, cap, random.Random(seed))[0]]
    else:
        raise ValueError(f"unknown subsample mode {mode!r}")
    log(f"reward: subsampled the training pairs to {len(kept)} of {len(pairs)} (reward_max_train_pairs={cap}, "
        f"{mode}: {sum(policy_count(p) == 2 for p in kept)} policy>policy)")
    return kept


def pair_scores(rm: RewardModel, tokenizer, mb: list[dict], device: torch.device, ctx) -> tuple[torch.Tensor, ...]:
    """(r_chosen [B], r_rejected [B]) with grad, encoding each distinct (intent, code) of the minibatch once."""
    texts = list(dict.fromkeys((p["intent"], c) for p in mb for c in (p["chosen"], p["rejected"])))
    batch = dist.unwrap(rm).tokenize(tokenizer, [t[0] for t in texts], [t[1] for t in texts])
    with ctx:
        r = rm(**{k: v.to(device) for k, v in batch.items()}).float()  # [U]
    where = {t: i for i, t in enumerate(texts)}
    return (r[[where[(p["intent"], p["chosen"])] for p in mb]], r[[where[(p["intent"], p["rejected"])] for p in mb]])


def train_reward_model(rm: RewardModel, tokenizer, train_pairs: list[dict], val_pairs: list[dict], cfg,
                       device: torch.device, ctx, scaler=None, log=print, stop=None) -> list[dict]:
    """AdamW on the Bradley-Terry loss for cfg.reward_epochs, one intent group per batch (`intent_batches`).
    Returns one dict per epoch: epoch, train_loss, train_accuracy, val_loss, val_accuracy, seconds.
    Several ranks: reward_batch_size is the global batch; each rank takes its share of every step's pairs under
    DDP, its mean loss weighted by its share of the step's pairs (x W, as DDP averages), and the logged train
    numbers are sums over ranks: the update and the log are those of one process. stop() -> True on any rank
    stops every rank before its next batch (Interrupted; the caller decides what --resume redoes)."""
    from tqdm import tqdm

    if not train_pairs or not val_pairs:
        raise ConfigError(f"reward model needs training and held-out pairs, got {len(train_pairs)} and "
                          f"{len(val_pairs)}; raise --train_limit or --val_fraction")
    rm.max_len = cfg.reward_max_len
    rm.to(device)
    # find_unused_parameters: the encoder's pooler (mean pooling) or a causal LM's lm_head gets no gradient.
    model, W = dist.wrap_ddp(rm, device, find_unused_parameters=True), dist.world_size()
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.reward_learning_rate)
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)  # fp16 needs the caller's scaler
    rng, history = random.Random(cfg.seed), []
    for epoch in range(1, cfg.reward_epochs + 1):
        t0, rm_loss, rm_acc, seen = time.perf_counter(), 0.0, 0.0, 0
        rm.train()
        batches = intent_batches(train_pairs, cfg.reward_batch_size, rng)
        bar = tqdm(batches, desc=f"reward epoch {epoch}/{cfg.reward_epochs}", leave=False, disable=not dist.is_main())
        for step, idx in enumerate(bar):
            if stop is not None and dist.any_flag(stop()):  # every rank runs these batches: they stop together
                from console import Interrupted

                bar.close()
                raise Interrupted(f"reward model training: stopped in epoch {epoch}/{cfg.reward_epochs} after "
                                  f"{step}/{len(batches)} batches")
            mine, keep = dist.shard_or_dummy(idx)  # this rank's pairs of the step (keep = 0: none, a dummy)
            mb = [train_pairs[i] for i in mine]
            mb_r_chosen, mb_r_rejected = pair_scores(model, tokenizer, mb, device, ctx)  # [B], [B]
            loss = bradley_terry_loss(mb_r_chosen, mb_r_rejected)
            _check_finite(loss.detach(), f"reward loss at epoch {epoch} step {step}")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss * (keep * W * len(mb) / len(idx))).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(rm.parameters(), cfg.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            rm_loss += loss.item() * len(mb) * keep  # .item() is a sync point; fine at this size
            rm_acc += (mb_r_chosen > mb_r_rejected).sum().item() * keep
            seen += len(mb) * keep
            bar.set_postfix(loss=f"{rm_loss / max(seen, 1):.4f}", acc=f"{rm_acc / max(seen, 1):.3f}")
        rm_loss, rm_acc, seen = dist.all_reduce_sum(torch.tensor([rm_loss, rm_acc, seen], dtype=torch.float64)).tolist()
        val = evaluate_pairs(rm, tokenizer, val_pairs, device, ctx)
        history.append({"epoch": epoch, "train_loss": rm_loss / seen, "train_accuracy": rm_acc / seen,
                        "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                        "seconds": time.perf_counter() - t0})
        log(f"reward epoch {epoch}/{cfg.reward_epochs}: train loss {rm_loss / seen:.4f} acc {rm_acc / seen:.3f} | "
            f"held-out loss {val['loss']:.4f} acc {val['accuracy']:.3f} | {history[-1]['seconds']:.0f}s")
    return history


# ----------------------------------------------------------------------------- normalisation and PPO reward
def fit_calibration(raw_scores) -> tuple[float, float]:
    """LHP reward normalisation: (gain, bias) so that gain * raw + bias has mean 0 and std 1 on samples of the
    reference policy, "so the KL coefficient always has the same meaning" (lm-human-preferences)."""
    raw = torch.as_tensor(raw_scores, dtype=torch.float64).flatten()
    _check_finite(raw, "calibration score")
    std = raw.std(unbiased=False).item() if raw.numel() > 1 else 0.0
    if std < 1e-8:
        raise ValueError(f"cannot calibrate the reward model on {raw.numel()} scores with std {std:.2e}: "
                         "it gives (nearly) the same score to every sample")
    return 1.0 / std, -raw.mean().item() / std


def normalize_reward(raw, scale: float = 1.0, lo: float = 0.0, hi: float = 1.0, gain: float = 1.0,
                     bias: float = 0.0) -> torch.Tensor:
    """clip(sigmoid((gain * raw + bias) / scale), lo, hi) -> [B]. Non-finite input raises.

    Sigmoid first, then clip: the bounds are in reward units and the map stays monotone inside them.
    Clip-then-sigmoid would cut the *raw* score at lo/hi, so every raw score beyond a bound collapses onto
    one value and extreme scores saturate (tests/test_reward.py shows it)."""
    raw = torch.as_tensor(raw, dtype=torch.float32)
    _check_finite(raw, "raw reward-model score")
    if scale <= 0 or not lo < hi:
        raise ValueError(f"normalize_reward needs scale > 0 and lo < hi, got scale={scale}, lo={lo}, hi={hi}")
    return torch.sigmoid((gain * raw + bias) / scale).clamp(lo, hi)


def combined_reward(rm_norm: torch.Tensor, rules: list[dict] | None, cfg) -> torch.Tensor:
    """w_rm * rm_norm + sum_i w_i * rule_i -> [B]. A rule with non-zero weight must be present in every row
    (`exec` exists only when the caller ran the sandbox); rules may be None when every rule weight is 0."""
    rm_norm = torch.as_tensor(rm_norm, dtype=torch.float32)  # [B]
    _check_finite(rm_norm, "normalised reward-model score")
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
            hint = " (run sandbox.execute_many and pass exec_outcome, or set --w_exec=0)" if key == "exec" else ""
            raise ValueError(f"--{field}={weight} but rule signal {key!r} is missing in row {missing[0]}{hint}")
        values = torch.tensor([float(r[key]) for r in rules])  # [B]
        _check_finite(values, f"rule signal {key!r}")
        total = total + weight * values
    return total


def rm_reward(rm: RewardModel, tokenizer, intents: list[str], codes: list[str], device: torch.device, cfg,
              ctx=None) -> torch.Tensor:
    """The normalised reward-model score [B] with the model's stored calibration and the config's bounds."""
    raw = score_texts(rm, tokenizer, intents, codes, device, ctx=ctx)
    return normalize_reward(raw, cfg.reward_scale, cfg.reward_clip_min, cfg.reward_clip_max, rm.gain, rm.bias)


def make_score_fn(rm: RewardModel, tokenizer, cfg, device: torch.device, log=print):
    """The PPO reward as one function (LHP's make_score_fn): score_fn(intents, references, codes) -> [B]
    = w_rm * normalised RM score + the weighted rule signals. The rules see the train intent's reference (the
    annotator's chrF, syntax, sandboxed exec capped at the reference's, quality); with every rule weight 0 the
    reference is never read. PPO and rejection sampling (sft-rs) both call it, so they climb the same reward."""
    import feedback

    uses_rules = any(getattr(cfg, f) for f in RULE_WEIGHTS.values())

    def score_fn(intents: list[str], references: list[str], codes: list[str]) -> torch.Tensor:
        rm_norm = rm_reward(rm, tokenizer, intents, codes, device, cfg)
        rules = None
        if uses_rules and cfg.w_exec:  # exec needs the sandbox; judge runs each reference too, for the cap
            rules = [j["capped"] for j in feedback.judge(codes, references, cfg.exec_timeout_s, log=log)]
        elif uses_rules:
            rules = [rule_signals(c, r) for c, r in zip(codes, references)]
        return combined_reward(rm_norm, rules, cfg)

    return score_fn


# ----------------------------------------------------------------------------- CLI: the reward stage alone
def main(argv: list[str]) -> None:
    import config
    import config_cli
    import data
    import models
    import runfolder

    config_cli.console_fallback()
    cfg, extras = config_cli.parse_cli(argv, extra_flags=("debug", "overwrite"))
    train, val, _ = data.load_splits(cfg)  # bad data fails here, before --overwrite moves an old folder aside
    out = runfolder.prepare_output_dir(cfg, None, bool(extras.get("overwrite")), script="reward.py")  # locked
    config.save_config(cfg, out / "rlhf_config.json")
    runfolder.write_text(out / "argv.txt", " ".join(["reward.py", *argv]) + "\n")
    models.seed_everything(cfg.seed)
    device = models.resolve_device(cfg.device)
    dtype = models.resolve_dtype(cfg.dtype, device)
    t0 = time.perf_counter()
    train_pairs, val_pairs = build_preference_pairs(train, val, None, cfg)
    print(f"feedback: {len(train_pairs)} train / {len(val_pairs)} held-out pairs in {time.perf_counter() - t0:.0f}s")
    write_jsonl(train_pairs, out / "preference_pairs_train.jsonl")
    write_jsonl(val_pairs, out / "preference_pairs_val.jsonl")
    counts = {"train": pair_counts_by_kind(train_pairs), "val": pair_counts_by_kind(val_pairs),
              "train_pairing": pair_counts_by_kind(train_pairs, by="pairing")}
    print(f"pairs by rejected kind: train {counts['train']}  held-out {counts['val']}")
    train_pairs = subsample_pairs(train_pairs, cfg.reward_max_train_pairs, cfg.seed, cfg.reward_subsample, log=print)
    encoder, tok = models.load_encoder(cfg.reward_encoder, seed=cfg.seed)
    rm = RewardModel(encoder)
    history = train_reward_model(rm, tok, train_pairs, val_pairs, cfg, device, models.autocast_ctx(device, dtype),
                                 models.make_grad_scaler(device, dtype))
    refs = score_texts(rm, tok, [e.intent for e in train], [e.snippet for e in train], device)
    rm.gain, rm.bias = fit_calibration(refs)  # no policy samples here: calibrate on the reference snippets
    final = evaluate_pairs(rm, tok, val_pairs, device, by_kind=True)
    counts["train_used"] = pair_counts_by_kind(train_pairs)
    models.save_atomic(out / "checkpoint-reward", lambda d: (rm.save(d), tok.save_pretrained(d)))
    runfolder.write_text(out / "reward_history.json", json.dumps({"history": history, "pair_counts": counts,
                                                                 "held_out": final, "train_pairs_used": len(train_pairs)},
                                                                indent=2) + "\n")
    print(f"held-out pairwise accuracy {final['accuracy']:.3f}; by rejected kind "
          + ", ".join(f"{k} {v:.3f}" for k, v in final["accuracy_by_kind"].items()) + f"; wrote {out}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, ValueError, FloatingPointError) as e:
        if "--debug" in sys.argv:
            raise
        die(str(e))
