"""PPO for a causal LM: clipped surrogate, GAE or a group baseline, a value head and KL control, on one screen.

Sources: lm-human-preferences (LHP: train_policy.py, policy.py, language/model.py), CleanRL ppo.py, and
"The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024, "N+ details"). Implementation details:
  1. The value head is a Linear(hidden, 1) on the policy's last hidden state with zero weights (LHP model.py);
     its bias starts at the mean score of the first rollout batch, so V is exactly that constant at step 1.
     LHP can start V at 0 because its rewards are normalised to mean 0; ours pass through a sigmoid (mean ~0.5),
     and V = 0 then makes every early token's advantage a ramp over position, not a measure of quality.
  2. Log-probs come from logits divided by the sampling temperature, in fp32 (LHP policy.py analyze_responses).
     PPO rollouts sample that same untruncated tempered softmax (top_k=0, top_p=1, as TRL and the N+ reference);
     cfg.top_p applies to feedback samples and best-of-n only (policy.py `rollout` says why).
  3. Dropout is off in rollouts *and* updates (model.eval()), so the first PPO ratio is 1 (N+ details).
  4. Everything after the first EOS is masked; a response without EOS loses missing_eos_penalty (N+ details, TRL).
  5. Reward = -beta * KL on every response token, plus the score on the last real token (LHP compute_rewards).
  6. beta is fixed or follows LHP's adaptive controller: err = clip(kl/target - 1, -0.2, 0.2); beta *= 1 + err*n/horizon.
  7. The advantage: GAE (gamma=1, lam=0.95, LHP/TRL), or a critic-free group baseline over the k samples of a
     prompt: RLOO (Ahmadian et al. 2024) or GRPO (Shao et al. 2024). advantage_norm: whitened over real tokens
     (auto for GAE and RLOO, LHP), over sequences (batch), by the group's std (auto for GRPO), or not at all.
  8. Clipped surrogate, and for GAE the clipped value loss 0.5*max(...), vf_coef 0.1 (LHP PPOTrainer.loss); GRPO
     adds beta * k3 KL to the reference as a loss term instead of a reward.
  9. ppo_epochs passes over shuffled minibatches (LHP train); micro-batch losses are token-weighted so gradient
     accumulation gives exactly the gradient of the whole minibatch (rows of similar length share a micro-batch).
 10. Adam with the value head in its own parameter group (vf_learning_rate: at the policy's 1e-5 a zero-started
     head barely learns), both learning rates decaying linearly to 0 (LHP lrnow = lr * (1 - frac); CleanRL).
 11. Global grad-norm clip, approx_kl (k3) logging and optional early stop on it (CleanRL).
 12. A mean KL below -1 warns (TRL); a NaN/inf loss raises NonFiniteLossError before the optimizer step.
 13. Several ranks (torchrun, dist.py): the policy is DDP-wrapped, each rank samples and scores its own prompts,
     whitening and every statistic use global sums, and the minibatches are cut from one global permutation,
     so N ranks x batch b take the update of one process with batch N*b (ppo_step says how).
"""
from __future__ import annotations

import dataclasses
import warnings
from collections import defaultdict
from contextlib import nullcontext

import torch
from torch import nn

import dist
from policy import PolicyWithValueHead, Rollout, decode_responses, response_forward, rollout, token_logprobs

ADVANTAGES = ("gae", "rloo", "grpo")  # advantage estimators (Config.advantage)


# ----------------------------------------------------------------------------- the maths
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None, reduce=None) -> torch.Tensor:
    """Mean over entries where mask is true (TRL/LHP). torch.where, not x*mask, so a NaN under the mask stays out.
    `reduce` (e.g. dist.all_reduce_sum) turns the sum and the count into global ones: the mean over every rank's
    entries, so N ranks x batch b whiten exactly as one process with batch N*b. None: this tensor alone."""
    mask = mask.bool()
    kept = torch.where(mask, x, torch.zeros_like(x))
    if dim is not None:
        return kept.sum(dim) / mask.sum(dim)
    return kept.sum() / mask.sum() if reduce is None else reduce(kept.sum()) / reduce(mask.sum())


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, reduce=None) -> torch.Tensor:
    mean = masked_mean(x, mask, reduce=reduce)
    var = masked_mean((x - mean) ** 2, mask, reduce=reduce)  # two passes: the global mean first, then the spread
    if unbiased:
        n = mask.bool().sum() if reduce is None else reduce(mask.bool().sum())
        if n < 2:
            raise ValueError(f"masked_var needs at least 2 unmasked entries for Bessel's correction, got {int(n)}")
        var = var * n / (n - 1)  # TRL masked_var: Bessel's correction
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, reduce=None) -> torch.Tensor:
    """(x - mean) / std over the masked entries; shift_mean=False keeps the mean (LHP utils.whiten, for rewards).
    With `reduce`, mean and std are those of every rank's entries together (see masked_mean)."""
    mean, var = masked_mean(x, mask, reduce=reduce), masked_var(x, mask, reduce=reduce)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL(pi || ref) estimate from the sampled token (Schulman, "Approximating KL divergence")."""
    logr = ref_logprobs - logprobs  # [B, R]
    if kind == "k1":
        return -logr  # unbiased, can be negative per token (LHP)
    if kind == "k3":
        return (logr.exp() - 1) - logr  # unbiased and >= 0, lower variance
    raise ValueError(f"kl estimator must be k1 or k3, got {kind!r}")


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016) as LHP's reverse loop; masked steps are skipped: they pass the running
    advantage and next value through untouched and get advantage 0, so they contribute nothing."""
    mask = mask.to(rewards.dtype)  # [B, T]
    advantages = torch.zeros_like(rewards)  # [B, T]
    lastgaelam = torch.zeros_like(rewards[:, 0])  # [B]
    nextvalues = torch.zeros_like(rewards[:, 0])  # [B] V after the last real token is 0 (episode ends)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        gae = delta + gamma * lam * lastgaelam
        advantages[:, t] = gae * mask[:, t]
        lastgaelam = torch.where(mask[:, t] > 0, gae, lastgaelam)
        nextvalues = torch.where(mask[:, t] > 0, values[:, t], nextvalues)
    returns = advantages + values * mask  # [B, T] the value target (LHP: returns = advantages + values)
    return advantages, returns


def ppo_policy_loss(*, logprobs, old_logprobs, advantages, mask, cliprange: float):
    """Clipped surrogate (Schulman et al. 2017; LHP/CleanRL names). Returns (pg_loss, clipfrac, approx_kl)."""
    logratio = logprobs - old_logprobs  # [B, R]
    ratio = torch.exp(logratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = masked_mean(torch.max(pg_loss1, pg_loss2), mask)
    with torch.no_grad():
        clipfrac = masked_mean((pg_loss2 > pg_loss1).float(), mask)
        approx_kl = masked_mean((ratio - 1) - logratio, mask)  # k3 (CleanRL)
    return pg_loss, clipfrac, approx_kl


def ppo_value_loss(*, values, old_values, returns, mask, cliprange_value: float):
    """Clipped value loss: V may move at most cliprange_value from its rollout value (LHP). -> (v_loss, clipfrac)"""
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)  # [B, R]
    v_loss_unclipped = (values - returns) ** 2
    v_loss_clipped = (v_clipped - returns) ** 2
    v_loss = 0.5 * masked_mean(torch.max(v_loss_unclipped, v_loss_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((v_loss_clipped > v_loss_unclipped).float(), mask)
    return v_loss, clipfrac


class FixedKLController:
    def __init__(self, coef: float):
        self.value = coef

    def update(self, current_kl: float, n_steps: int) -> None:  # a fixed beta ignores the measured KL
        pass


class AdaptiveKLController:
    """LHP train_policy.py: move beta so the per-response KL tracks `target`, at most 20% per `horizon` episodes."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        err = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + err * n_steps / self.horizon


def make_kl_controller(cfg) -> FixedKLController | AdaptiveKLController:
    return (AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
            else FixedKLController(cfg.init_kl_coef))



# ----------------------------------------------------------------------------- group baselines (k samples per prompt)
def group_view(x: torch.Tensor, k: int) -> torch.Tensor:
    """[P*k] -> [P, k]: rollouts put the k samples of prompt p in rows p*k .. p*k+k-1 (repeat_interleave)."""
    if k < 2:
        raise ValueError(f"a group baseline needs samples_per_prompt >= 2, got {k}: with one sample per prompt "
                         "there is no other sample to compare with (use advantage=gae)")
    if x.shape[0] % k:
        raise ValueError(f"{x.shape[0]} rollouts do not split into groups of {k}")
    return x.reshape(-1, k)


def rloo_advantages(seq_rewards: torch.Tensor, k: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, "Back to Basics"): each sample's baseline is the mean of the other k - 1
    sequence rewards of its prompt. seq_rewards [P*k] (score - beta * summed KL) -> advantages [P*k].
    `keep` [P*k] bool (missing_eos="filter"): only kept samples enter a baseline, a dropped sample gets 0, and a
    sample with no kept partner gets 0 (nothing to compare it with)."""
    r = group_view(seq_rewards, k)  # [P, k]
    f = torch.ones_like(r) if keep is None else group_view(keep.to(r.dtype), k)  # [P, k] 1 = kept
    others = (f.sum(1, keepdim=True) - f)  # [P, k] kept partners of each sample
    baseline = ((r * f).sum(1, keepdim=True) - r * f) / others.clamp(min=1)  # [P, k] leave-one-out mean
    return torch.where((others > 0) & (f > 0), r - baseline, 0.0).reshape(-1)


def group_centred(scores: torch.Tensor, k: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """GRPO's numerator (Shao et al. 2024, DeepSeekMath §4.1): r - mean of its group, over kept samples. [P*k]"""
    r = group_view(scores, k)  # [P, k]
    f = torch.ones_like(r) if keep is None else group_view(keep.to(r.dtype), k)
    mean = (r * f).sum(1, keepdim=True) / f.sum(1, keepdim=True).clamp(min=1)  # [P, 1]
    return torch.where(f > 0, r - mean, 0.0).reshape(-1)


def group_std(x: torch.Tensor, k: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Per-group standard deviation (Bessel's correction, torch.std as TRL) over kept samples, broadcast back to
    [P*k]; a group with fewer than 2 kept samples has std 0."""
    r = group_view(x, k)  # [P, k]
    f = torch.ones_like(r) if keep is None else group_view(keep.to(r.dtype), k)
    n = f.sum(1, keepdim=True)  # [P, 1]
    mean = (r * f).sum(1, keepdim=True) / n.clamp(min=1)
    var = (((r - mean) * f) ** 2).sum(1, keepdim=True) / (n - 1).clamp(min=1)
    return var.sqrt().expand_as(r).reshape(-1)


def grpo_advantages(scores: torch.Tensor, k: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO: (r - group mean) / (group std + eps), std with Bessel's correction (torch.std, as TRL). The KL is a
    separate loss term, not in r. [P*k] -> [P*k]. A zero-spread group gives 0; a near-zero one is amplified up
    to 1/eps, which is why advantage_norm offers Dr. GRPO's "none" (Liu et al. 2025) and Lite PPO's "batch"."""
    return group_centred(scores, k) / (group_std(scores, k) + eps)


def sequence_whiten(seq_adv: torch.Tensor, keep: torch.Tensor, reduce=None) -> torch.Tensor:
    """(A - mean) / std over the batch's kept *sequences*, each counting once whatever its length (Lite PPO's
    batch normalisation, Liu et al. 2025 "Tricks or Traps"). Token-weighted whitening instead lets a long
    outlier (e.g. one 48-token unfinished answer) set the mean and std of a batch of short ones. [B] -> [B]"""
    if _count(keep, reduce) < 2:  # nothing to whiten against (e.g. every sample unfinished): no update signal
        return torch.zeros_like(seq_adv)
    return torch.where(keep, masked_whiten(seq_adv, keep, reduce=reduce), 0.0)


def _count(mask: torch.Tensor, reduce=None) -> int:
    n = mask.bool().sum()
    return int(n if reduce is None else reduce(n))


def normalise_advantages(seq_adv: torch.Tensor, raw: torch.Tensor, keep: torch.Tensor, k: int, how: str,
                         reduce=None, eps: float = 1e-4) -> torch.Tensor:
    """Sequence advantages [B] -> normalised [B] (advantage_norm): group divides by the std of its group's `raw`
    rewards (GRPO), batch whitens over sequences, none keeps the reward scale (plain RLOO, TRL; Dr. GRPO).
    "token" is applied later, over tokens (compute_rewards), as LHP/TRL whiten GAE advantages."""
    if how == "group":
        return torch.where(keep, seq_adv / (group_std(raw, k, keep) + eps), 0.0)
    if how == "batch":
        return sequence_whiten(seq_adv, keep, reduce=reduce)
    return seq_adv  # none, or token (done over tokens by the caller)


def compute_rewards(ro: Rollout, scores: torch.Tensor, kl_coef: float, cfg, reduce=None) -> Rollout:
    """Fill scores, rewards, advantages and returns (details 4-7). `scores` [B] come from the caller, in reward
    units (the RM after LHP gain/bias and sigmoid-then-clip, plus weighted rule signals). The gain/bias makes
    one beta mean the same across reward models; after the sigmoid, beta trades KL nats against that 0-1 scale.
    `reduce` makes the whitening global over ranks; the k samples of a prompt always sit on one rank.
    cfg.missing_eos: "penalty" lowers an unfinished response's score by missing_eos_penalty (N+ details, TRL);
    "filter" gives it advantage 0 and leaves it out of every baseline and normalisation (DAPO's overlong
    filtering, Yu et al. 2025), so one truncated sample cannot set a step's direction."""
    mask = ro.response_mask.bool()  # [B, R]
    scores = torch.as_tensor(scores, dtype=torch.float32, device=mask.device).reshape(-1)  # [B]
    kl = torch.where(mask, kl_penalty(ro.logprobs, ro.ref_logprobs, kind=cfg.kl_estimator), 0.0)  # [B, R]
    filtering = getattr(cfg, "missing_eos", "penalty") == "filter"
    keep = ro.eos.bool() if filtering else torch.ones_like(ro.eos, dtype=torch.bool)  # [B] rows that learn
    final = scores if filtering else scores - cfg.missing_eos_penalty * (~ro.eos).float()  # N+ details
    last = ro.response_mask.sum(1) - 1  # [B] index of the last real token (EOS, or the final token)
    rows = torch.arange(len(last), device=last.device)
    # GRPO keeps the KL out of the reward (it is a loss term in ppo_step); GAE and RLOO put it in (LHP).
    rewards = torch.zeros_like(kl) if cfg.advantage == "grpo" else -kl_coef * kl  # [B, R]
    rewards[rows, last] += final
    norm = advantage_norm(cfg)
    if cfg.advantage == "gae":
        if cfg.whiten_rewards:
            rewards = torch.where(mask, masked_whiten(rewards, mask, shift_mean=False, reduce=reduce), 0.0)
        advantages, returns = compute_gae(rewards, ro.values, mask, gamma=cfg.gamma, lam=cfg.lam)
        advantages = torch.where(keep[:, None], advantages, 0.0)
    else:
        k = cfg.samples_per_prompt
        raw = rewards.sum(1) if cfg.advantage == "rloo" else final  # [B] the sequence reward each baseline sees
        seq = rloo_advantages(raw, k, keep) if cfg.advantage == "rloo" else group_centred(raw, k, keep)  # [B]
        seq = normalise_advantages(seq, raw, keep, k, norm, reduce=reduce)
        advantages = torch.where(mask, seq[:, None].expand_as(kl), 0.0)  # one advantage for every token
        returns = torch.zeros_like(kl)  # no critic
    if norm == "token":
        tok_mask = mask & keep[:, None]  # [B, R] the kept rows' real tokens
        advantages = (torch.where(tok_mask, masked_whiten(advantages, tok_mask, reduce=reduce), 0.0)
                      if _count(tok_mask, reduce) >= 2 else torch.zeros_like(advantages))
    return dataclasses.replace(ro, scores=scores, rewards=rewards, advantages=advantages, returns=returns,
                               kl_coef=float(kl_coef))


def advantage_norm(cfg) -> str:
    """cfg.advantage_norm, with "auto" resolved to each estimator's original: token whitening for GAE and RLOO
    (LHP/TRL PPO), the group std for GRPO (DeepSeekMath)."""
    how = getattr(cfg, "advantage_norm", "auto")
    if how == "auto":
        return "group" if cfg.advantage == "grpo" else "token"
    return how


def init_value_bias(policy: PolicyWithValueHead, ro: Rollout, final_scores: torch.Tensor, reduce=None) -> Rollout:
    """Detail 1: a fresh head (zero weights) outputs its bias everywhere, so setting the bias to the batch's mean
    final score makes V exactly that constant; the rollout's stored values are set to match. With `reduce` the
    mean is over every rank's batch, so all replicas get the same bias."""
    if policy.value_head.weight.abs().max() != 0:
        raise ValueError("init_value_bias needs a fresh value head (zero weights); a trained head keeps its values")
    final_scores = torch.as_tensor(final_scores, dtype=torch.float32)
    c = float(final_scores.mean() if reduce is None else
              reduce(final_scores.sum()) / reduce(torch.tensor(float(final_scores.numel()))))
    with torch.no_grad():
        policy.value_head.bias.fill_(c)
    return dataclasses.replace(ro, values=torch.where(ro.response_mask.bool(), c, 0.0))


# ----------------------------------------------------------------------------- the update
class NonFiniteLossError(RuntimeError):
    """A NaN/inf loss or gradient; raised before optimizer.step(), so the weights are still the last good ones."""


def make_optimizer(policy: PolicyWithValueHead, cfg) -> torch.optim.Optimizer:
    """Adam, eps=1e-5 (CleanRL), no weight decay (LHP), the value head in its own group at vf_learning_rate
    (detail 10). fused=True updates all parameters in one kernel pass: ~5x faster than the per-tensor loop on CPU."""
    head = list(policy.value_head.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in policy.parameters() if id(p) not in head_ids]
    groups = [{"params": body, "lr": cfg.learning_rate, "name": "policy"},
              {"params": head, "lr": cfg.vf_learning_rate, "name": "value_head"}]
    for g in groups:
        g["initial_lr"] = g["lr"]  # set_lr scales from these, so a resumed run gets the same schedule
    return torch.optim.AdamW(groups, eps=1e-5, weight_decay=0.0, fused=True)


def lr_fraction(step: int, cfg) -> float:
    """CleanRL `frac = 1 - (iteration - 1) / num_iterations` with a 0-based step: 1 at the first step, 1/N at the
    last, so no step has lr 0 (LHP anneals lrnow = lr * (1 - frac) the same way). 1 when lr_decay is off.
    With lr_warmup_steps = W, step s < W is further scaled by (s + 1) / W (OpenRLHF's lr_warmup_ratio does the
    same): Adam's first update moves every weight by ~lr whatever the gradient's size, so a full-lr first step
    is the largest of the run (cpu preset, lr 1e-5: approx_kl 0.037 at step 1, <= 0.007 afterwards)."""
    decay = 1.0 - step / cfg.ppo_steps if cfg.lr_decay else 1.0
    warm = min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else 1.0
    return decay * warm


def set_lr(optimizer: torch.optim.Optimizer, frac: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g.setdefault("initial_lr", g["lr"]) * frac  # any optimizer: its first lr is the schedule's base


def minibatch_loss(policy, mb: Rollout, cfg, ctx) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """The loss of one micro-batch (token-mean) -> (loss, stats, new log-probs [b, r]). GAE adds the clipped value
    loss; GRPO adds beta * k3 KL to the reference (DeepSeekMath eq. 3-4); RLOO has the KL in its reward."""
    mb_mask = mb.response_mask.bool()  # [b, r]
    with ctx:
        logits, vpred = response_forward(policy, mb.query_ids, mb.query_mask, mb.response_ids)
    mb_logprobs, _ = token_logprobs(logits, mb.response_ids, cfg.temperature)
    pg_loss, pg_clipfrac, approx_kl = ppo_policy_loss(logprobs=mb_logprobs, old_logprobs=mb.logprobs,
                                                      advantages=mb.advantages, mask=mb_mask, cliprange=cfg.cliprange)
    loss, stats = pg_loss, {"loss/policy": pg_loss, "policy/clipfrac": pg_clipfrac, "policy/approx_kl": approx_kl}
    if cfg.advantage == "gae":
        v_loss, v_clipfrac = ppo_value_loss(values=vpred.float(), old_values=mb.values, returns=mb.returns,
                                            mask=mb_mask, cliprange_value=cfg.cliprange_value)
        loss = loss + cfg.vf_coef * v_loss
        stats.update({"loss/value": v_loss, "value/clipfrac": v_clipfrac})
    elif cfg.advantage == "grpo":
        kl_loss = masked_mean(kl_penalty(mb_logprobs, mb.ref_logprobs, kind="k3"), mb_mask)
        loss = loss + mb.kl_coef * kl_loss
        stats["loss/kl"] = kl_loss
    return loss, stats, mb_logprobs


def ppo_step(policy, optimizer, rollout, cfg, ctx=None, scaler=None) -> dict[str, float]:
    """ppo_epochs passes over shuffled minibatches of `rollout` (which compute_rewards has filled).

    Several ranks (detail 13): `policy` is DDP-wrapped and `rollout` is this rank's b rows of a global batch of
    W*b, rank r holding global rows r*b .. r*b+b-1. One permutation of the global batch (rank 0's) cuts every
    rank's minibatches, and each rank runs its own rows of each one; its loss is weighted by its token share of
    the *global* minibatch times W, because DDP averages gradients over the W ranks. The update is therefore
    that of one process with the whole batch, up to float summation order (tests/test_dist.py checks it)."""
    ctx = nullcontext() if ctx is None else ctx
    if scaler is None:  # a disabled scaler makes scale/unscale_/step plain backward and optimizer.step
        scaler = torch.amp.GradScaler("cpu", enabled=False)
    policy.eval()  # detail 3: no dropout, so on the first minibatch new log-probs == old ones (ratio 1)
    W, r = dist.world_size(), dist.rank()
    B, sums, ratio_dev, epochs_run = rollout.query_ids.shape[0], defaultdict(list), None, 0
    lengths = rollout.query_mask.sum(1) + rollout.response_mask.sum(1)  # [B] real tokens per row
    for epoch in range(cfg.ppo_epochs):
        perm = dist.broadcast_tensor(torch.randperm(B * W, device=rollout.query_ids.device))  # [W*B] global rows
        for start in range(0, B * W, cfg.mini_batch_size):
            g_inds = perm[start:start + cfg.mini_batch_size]
            mb_inds = g_inds[(g_inds >= r * B) & (g_inds < (r + 1) * B)] - r * B  # this rank's rows of it
            # Rows of similar length share a micro-batch, so trim() cuts more padding; the sum is the same gradient.
            mb_inds = mb_inds[torch.argsort(lengths[mb_inds], stable=True)]
            mb_tokens = dist.all_reduce_sum(rollout.response_mask[mb_inds].sum())  # the global minibatch's tokens
            scale = 1.0
            if len(mb_inds) == 0:  # none of this minibatch is ours: one zero-weighted row keeps DDP's backward
                mb_inds, scale = torch.zeros(1, dtype=torch.long, device=perm.device), 0.0
            acc, bad = defaultdict(float), None
            optimizer.zero_grad(set_to_none=True)
            micros = list(range(0, len(mb_inds), cfg.micro_batch_size))
            for micro in micros:
                mb = rollout.index(mb_inds[micro:micro + cfg.micro_batch_size]).trim()
                with dist.no_sync(policy, last=micro == micros[-1]):
                    loss, stats, mb_logprobs = minibatch_loss(policy, mb, cfg, ctx)
                    weight = scale * W * mb.response_mask.sum() / mb_tokens  # token share of the minibatch (detail 9)
                    if not torch.isfinite(loss) and bad is None:
                        bad = "non-finite PPO loss (" + ", ".join(f"{k}={v.item()}" for k, v in stats.items()) + ")"
                    if W == 1 and bad:  # one process stops at once; several must first finish DDP's backward
                        break
                    scaler.scale(loss * weight).backward()
                if ratio_dev is None:  # first micro-batch, before any update: the ratio must be 1 (N+ details)
                    ratio = (mb_logprobs.detach() - mb.logprobs).exp()
                    ratio_dev = torch.where(mb.response_mask.bool(), ratio - 1, 0).abs().max()
                for name, v in stats.items():
                    acc[name] += v.detach() * weight / W
            if dist.any_flag(bad is not None):  # every rank raises together, before any optimizer step
                raise NonFiniteLossError(f"{bad or 'non-finite PPO loss on another rank'} at epoch {epoch}; "
                                         "weights are from the last good step")
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            if not scaler.is_enabled() and not torch.isfinite(grad_norm):  # fp16's scaler skips such steps itself
                raise NonFiniteLossError(f"non-finite gradient norm at epoch {epoch}; weights are unchanged")
            scaler.step(optimizer)
            scaler.update()
            names = sorted(acc)  # one all-reduce for every statistic of the minibatch
            totals = dist.all_reduce_sum(torch.stack([torch.as_tensor(acc[n], dtype=torch.float32) for n in names]))
            for name, v in zip(names, totals.tolist()):
                sums[name].append(v)
            sums["policy/grad_norm"].append(float(grad_norm))
            # How often the clip binds: when it binds on every step, Adam moves ~lr whatever the signal.
            sums["policy/grad_clipped"].append(float(grad_norm > cfg.max_grad_norm))
        epochs_run += 1
        if cfg.target_kl and sums["policy/approx_kl"][-1] > cfg.target_kl:
            break  # CleanRL: stop the epochs once the last minibatch's approx_kl passes target_kl
    ratio_dev = dist.all_reduce_max(ratio_dev.float()).item()
    return _step_stats(rollout, cfg, sums, ratio_dev, epochs_run)

def _step_stats(ro: Rollout, cfg, sums, ratio_dev, epochs_run) -> dict[str, float]:
    """Rollout statistics of the global batch: every mean is over all ranks' rows (dist.global_mean), so the
    logged numbers and the KL the controller sees do not depend on the world size."""
    mask = ro.response_mask.bool()
    kl = torch.where(mask, kl_penalty(ro.logprobs, ro.ref_logprobs, kind=cfg.kl_estimator), 0.0)
    mean_kl = dist.global_mean(kl.sum(1)).item()  # nats per response (LHP objective/kl)
    if mean_kl < -1:
        warnings.warn(f"objective/kl = {mean_kl:.2f} < -1: the policy's log-probs do not match its samples; "
                      "check that generation and log-probs use the same temperature, top_k and masks (TRL guard)")
    stats = {name: sum(v) / len(v) for name, v in sums.items()}
    stats.update({
        "objective/kl": mean_kl, "objective/kl_coef": ro.kl_coef, "objective/score": dist.global_mean(ro.scores).item(),
        "objective/entropy": dist.global_mean(ro.entropy.sum(1)).item(),  # nats per response, from the full softmax
        "response/length_mean": dist.global_mean(ro.response_mask.sum(1).float()).item(),
        "response/eos_fraction": dist.global_mean(ro.eos.float()).item(),
        # Samples whose advantage is non-zero: a zero-spread group or a filtered unfinished answer teaches nothing.
        "policy/active_fraction": dist.global_mean((ro.advantages.abs().sum(1) > 0).float()).item(),
        "policy/first_ratio_dev": ratio_dev,  # max |ratio - 1| on the first micro-batch: ~1e-7 unless a mismatch
        "ppo/epochs": float(epochs_run),
    })
    if cfg.advantage == "gae":  # CleanRL: how much of the return variance the rollout values explain (1 = all)
        reduce = dist.all_reduce_sum if dist.world_size() > 1 else None
        stats["value/explained_variance"] = (1 - masked_var(ro.returns - ro.values, mask, reduce=reduce)
                                             / masked_var(ro.returns, mask, reduce=reduce)).item()
    return stats


def train_ppo_iteration(policy, ref_model, optimizer, kl_ctl, query_ids, query_mask, tokenizer, score_fn, cfg,
                        ctx=None, scaler=None, step: int = 0, init_value: bool = False):
    """Rollout -> score the decoded responses -> rewards/advantages -> PPO update -> adapt beta (LHP
    PPOTrainer.step). With samples_per_prompt = k the caller passes each prompt k times, in consecutive rows.
    score_fn(list[str]) -> Tensor[B]; None scores 0 (a pure-KL step). `step` (0-based) sets the lr schedule;
    init_value sets a fresh value head's bias from this batch (detail 1). Returns (stats, rollout, responses).
    Several ranks: `policy` is DDP-wrapped, the query rows are this rank's share, sampling and scoring go through
    the unwrapped module, and whitening, the value bias, the stats and the KL controller use the global batch."""
    set_lr(optimizer, lr_fraction(step, cfg))
    core = dist.unwrap(policy)  # generate and no-grad scoring need no gradient sync
    reduce = dist.all_reduce_sum if dist.world_size() > 1 else None
    ro = rollout(core, ref_model, query_ids, query_mask, tokenizer, cfg, ctx=ctx)
    responses = decode_responses(ro, tokenizer)
    scores = score_fn(responses) if score_fn is not None else torch.zeros(len(responses))
    scores = torch.as_tensor(scores, dtype=torch.float32, device=ro.eos.device).reshape(-1)  # [B]
    if init_value and cfg.advantage == "gae":
        ro = init_value_bias(core, ro, scores - cfg.missing_eos_penalty * (~ro.eos).float(), reduce=reduce)
    ro = compute_rewards(ro, scores, kl_coef=kl_ctl.value, cfg=cfg, reduce=reduce)
    stats = ppo_step(policy, optimizer, ro, cfg, ctx=ctx, scaler=scaler)
    stats["policy/lr"] = optimizer.param_groups[0]["lr"]
    kl_ctl.update(stats["objective/kl"], n_steps=len(responses) * dist.world_size())  # LHP: the global batch's KL
    return stats, ro, responses
