"""From scores to advantages: the masked statistics, the per-token KL penalty, GAE, the group
baselines (RLOO, GRPO), advantage normalisation, and `compute_rewards`, which fills a rollout's
rewards, advantages and returns before the PPO update.

Implementation details 4-7 of ppo.py's numbered list live here; ppo.py keeps the losses and update.
"""
from __future__ import annotations

import dataclasses

import torch

from policy import Rollout

ADVANTAGES = ("gae", "rloo", "grpo")  # advantage estimators (Config.advantage)


# ----------------------------------------------------------------------------- masked statistics
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None,
                reduce=None) -> torch.Tensor:
    """Mean over entries where mask is true (TRL/LHP). torch.where, not x*mask, so a NaN under the
    mask stays out. `reduce` (e.g. dist.all_reduce_sum) turns the sum and the count into global
    ones: the mean over every rank's entries, so N ranks x batch b whiten exactly as one process
    with batch N*b. None: this tensor alone."""
    mask = mask.bool()
    kept = torch.where(mask, x, torch.zeros_like(x))
    if dim is not None:
        return kept.sum(dim) / mask.sum(dim)
    return kept.sum() / mask.sum() if reduce is None else reduce(kept.sum()) / reduce(mask.sum())


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True,
               reduce=None) -> torch.Tensor:
    mean = masked_mean(x, mask, reduce=reduce)
    # two passes: the global mean first, then the spread
    var = masked_mean((x - mean) ** 2, mask, reduce=reduce)
    if unbiased:
        n = mask.bool().sum() if reduce is None else reduce(mask.bool().sum())
        if n < 2:
            raise ValueError("masked_var needs at least 2 unmasked entries for Bessel's "
                             f"correction, got {int(n)}")
        var = var * n / (n - 1)  # TRL masked_var: Bessel's correction
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  reduce=None) -> torch.Tensor:
    """(x - mean) / std over the masked entries; shift_mean=False keeps the mean (LHP utils.whiten,
    for rewards). With `reduce`, mean and std are those of every rank's entries together (see
    masked_mean)."""
    mean, var = masked_mean(x, mask, reduce=reduce), masked_var(x, mask, reduce=reduce)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def _count(mask: torch.Tensor, reduce=None) -> int:
    n = mask.bool().sum()
    return int(n if reduce is None else reduce(n))


# ----------------------------------------------------------------------------- KL penalty and GAE
def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
               kind: str = "k1") -> torch.Tensor:
    """Per-token KL(pi || ref) estimate from the sampled token (Schulman, "Approximating KL
    divergence")."""
    logr = ref_logprobs - logprobs  # [B, R]
    if kind == "k1":
        return -logr  # unbiased, can be negative per token (LHP)
    if kind == "k3":
        return (logr.exp() - 1) - logr  # unbiased and >= 0, lower variance
    raise ValueError(f"kl estimator must be k1 or k3, got {kind!r}")


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016) as LHP's reverse loop; masked steps are skipped: they pass the
    running advantage and next value through untouched and get advantage 0, so they contribute
    nothing."""
    mask = mask.to(rewards.dtype)  # [B, T]
    advantages = torch.zeros_like(rewards)  # [B, T]
    lastgaelam = torch.zeros_like(rewards[:, 0])  # [B]
    # [B] V after the last real token is 0 (the episode ends)
    nextvalues = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        gae = delta + gamma * lam * lastgaelam
        advantages[:, t] = gae * mask[:, t]
        lastgaelam = torch.where(mask[:, t] > 0, gae, lastgaelam)
        nextvalues = torch.where(mask[:, t] > 0, values[:, t], nextvalues)
    # [B, T] the value target (LHP: returns = advantages + values)
    returns = advantages + values * mask
    return advantages, returns


# ----------------------------------------------------------------------------- group baselines
def group_view(x: torch.Tensor, k: int) -> torch.Tensor:
    """[P*k] -> [P, k]: rollouts put the k samples of prompt p in rows p*k .. p*k+k-1
    (repeat_interleave)."""
    if k < 2:
        raise ValueError(f"a group baseline needs samples_per_prompt >= 2, got {k}: with one "
                         "sample per prompt there is no other sample to compare with "
                         "(use advantage=gae)")
    if x.shape[0] % k:
        raise ValueError(f"{x.shape[0]} rollouts do not split into groups of {k}")
    return x.reshape(-1, k)


def rloo_advantages(seq_rewards: torch.Tensor, k: int,
                    keep: torch.Tensor | None = None) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, "Back to Basics"): each sample's baseline is the mean of the
    other k - 1 sequence rewards of its prompt. seq_rewards [P*k] (score - beta * summed KL) ->
    advantages [P*k]. `keep` [P*k] bool (missing_eos="filter"): only kept samples enter a baseline,
    a dropped sample gets 0, and a sample with no kept partner gets 0 (nothing to compare it
    with)."""
    r = group_view(seq_rewards, k)  # [P, k]
    f = torch.ones_like(r) if keep is None else group_view(keep.to(r.dtype), k)  # [P, k] 1 = kept
    others = (f.sum(1, keepdim=True) - f)  # [P, k] kept partners of each sample
    # [P, k] leave-one-out mean
    baseline = ((r * f).sum(1, keepdim=True) - r * f) / others.clamp(min=1)
    return torch.where((others > 0) & (f > 0), r - baseline, 0.0).reshape(-1)


def group_centred(scores: torch.Tensor, k: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """GRPO's numerator (Shao et al. 2024, DeepSeekMath §4.1): r - mean of its group, over kept
    samples. [P*k]"""
    r = group_view(scores, k)  # [P, k]
    f = torch.ones_like(r) if keep is None else group_view(keep.to(r.dtype), k)
    mean = (r * f).sum(1, keepdim=True) / f.sum(1, keepdim=True).clamp(min=1)  # [P, 1]
    return torch.where(f > 0, r - mean, 0.0).reshape(-1)


def group_std(x: torch.Tensor, k: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Per-group standard deviation (Bessel's correction, torch.std as TRL) over kept samples,
    broadcast back to [P*k]; a group with fewer than 2 kept samples has std 0."""
    r = group_view(x, k)  # [P, k]
    f = torch.ones_like(r) if keep is None else group_view(keep.to(r.dtype), k)
    n = f.sum(1, keepdim=True)  # [P, 1]
    mean = (r * f).sum(1, keepdim=True) / n.clamp(min=1)
    var = (((r - mean) * f) ** 2).sum(1, keepdim=True) / (n - 1).clamp(min=1)
    return var.sqrt().expand_as(r).reshape(-1)


def grpo_advantages(scores: torch.Tensor, k: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO: (r - group mean) / (group std + eps), std with Bessel's correction (torch.std, as TRL).
    The KL is a separate loss term, not in r. [P*k] -> [P*k]. A zero-spread group gives 0; a
    near-zero one is amplified up to 1/eps, which is why advantage_norm offers Dr. GRPO's "none"
    (Liu et al. 2025) and Lite PPO's "batch"."""
    return group_centred(scores, k) / (group_std(scores, k) + eps)


# ----------------------------------------------------------------------------- normalisation
def sequence_whiten(seq_adv: torch.Tensor, keep: torch.Tensor, reduce=None) -> torch.Tensor:
    """(A - mean) / std over the batch's kept *sequences*, each counting once whatever its length
    (Lite PPO's batch normalisation, Liu et al. 2025 "Tricks or Traps"). Token-weighted whitening
    instead lets a long outlier (e.g. one 48-token unfinished answer) set the mean and std of a
    batch of short ones. [B] -> [B]"""
    # Nothing to whiten against (e.g. every sample unfinished): no update signal.
    if _count(keep, reduce) < 2:
        return torch.zeros_like(seq_adv)
    return torch.where(keep, masked_whiten(seq_adv, keep, reduce=reduce), 0.0)


def normalise_advantages(seq_adv: torch.Tensor, raw: torch.Tensor, keep: torch.Tensor, k: int,
                         how: str, reduce=None, eps: float = 1e-4) -> torch.Tensor:
    """Sequence advantages [B] -> normalised [B] (advantage_norm): group divides by the std of its
    group's `raw` rewards (GRPO), batch whitens over sequences, none keeps the reward scale (plain
    RLOO, TRL; Dr. GRPO). "token" is applied later, over tokens (compute_rewards), as LHP/TRL whiten
    GAE advantages."""
    if how == "group":
        return torch.where(keep, seq_adv / (group_std(raw, k, keep) + eps), 0.0)
    if how == "batch":
        return sequence_whiten(seq_adv, keep, reduce=reduce)
    return seq_adv  # none, or token (done over tokens by the caller)


def advantage_norm(cfg) -> str:
    """cfg.advantage_norm, with "auto" resolved to each estimator's original: token whitening for
    GAE and RLOO (LHP/TRL PPO), the group std for GRPO (DeepSeekMath)."""
    how = getattr(cfg, "advantage_norm", "auto")
    if how == "auto":
        return "group" if cfg.advantage == "grpo" else "token"
    return how


# -------------------------------------------------------------------------- rewards -> advantages
def compute_rewards(ro: Rollout, scores: torch.Tensor, kl_coef: float, cfg, reduce=None) -> Rollout:
    """Fill scores, rewards, advantages and returns (details 4-7). `scores` [B] come from the
    caller, in reward units (the RM after LHP gain/bias and sigmoid-then-clip, plus weighted rule
    signals). The gain/bias makes one beta mean the same across reward models; after the sigmoid,
    beta trades KL nats against that 0-1 scale. `reduce` makes the whitening global over ranks; the
    k samples of a prompt always sit on one rank. cfg.missing_eos: "penalty" lowers an unfinished
    response's score by missing_eos_penalty (N+ details, TRL); "filter" gives it advantage 0 and
    leaves it out of every baseline and normalisation (DAPO's overlong filtering, Yu et al. 2025),
    so one truncated sample cannot set a step's direction."""
    mask = ro.response_mask.bool()  # [B, R]
    scores = torch.as_tensor(scores, dtype=torch.float32, device=mask.device).reshape(-1)  # [B]
    # [B, R]
    kl = torch.where(mask, kl_penalty(ro.logprobs, ro.ref_logprobs, kind=cfg.kl_estimator), 0.0)
    filtering = getattr(cfg, "missing_eos", "penalty") == "filter"
    # [B] the rows that learn, and the final score that each one gets (N+ details)
    keep = ro.eos.bool() if filtering else torch.ones_like(ro.eos, dtype=torch.bool)
    final = scores if filtering else scores - cfg.missing_eos_penalty * (~ro.eos).float()
    last = ro.response_mask.sum(1) - 1  # [B] index of the last real token (EOS, or the final token)
    rows = torch.arange(len(last), device=last.device)
    # GRPO keeps the KL out of the reward (it is a loss term in ppo.py's minibatch_loss); GAE and
    # RLOO put it in (LHP).
    rewards = torch.zeros_like(kl) if cfg.advantage == "grpo" else -kl_coef * kl  # [B, R]
    rewards[rows, last] += final
    norm = advantage_norm(cfg)
    if cfg.advantage == "gae":
        if cfg.whiten_rewards:
            whitened = masked_whiten(rewards, mask, shift_mean=False, reduce=reduce)
            rewards = torch.where(mask, whitened, 0.0)
        advantages, returns = compute_gae(rewards, ro.values, mask, gamma=cfg.gamma, lam=cfg.lam)
        advantages = torch.where(keep[:, None], advantages, 0.0)
    else:
        k = cfg.samples_per_prompt
        raw = rewards.sum(1) if cfg.advantage == "rloo" else final  # [B] what the baselines see
        estimator = rloo_advantages if cfg.advantage == "rloo" else group_centred
        seq = estimator(raw, k, keep)  # [B]
        seq = normalise_advantages(seq, raw, keep, k, norm, reduce=reduce)
        # one advantage for every token
        advantages = torch.where(mask, seq[:, None].expand_as(kl), 0.0)
        returns = torch.zeros_like(kl)  # no critic
    if norm == "token":
        tok_mask = mask & keep[:, None]  # [B, R] the kept rows' real tokens
        advantages = (torch.where(tok_mask, masked_whiten(advantages, tok_mask, reduce=reduce), 0.0)
                      if _count(tok_mask, reduce) >= 2 else torch.zeros_like(advantages))
    return dataclasses.replace(ro, scores=scores, rewards=rewards, advantages=advantages,
                               returns=returns, kl_coef=float(kl_coef))
