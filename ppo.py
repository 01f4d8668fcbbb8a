"""PPO for a causal LM: the clipped losses, KL control, the value head's start, and the update loop.

Sources: lm-human-preferences (LHP: train_policy.py, policy.py, language/model.py), CleanRL ppo.py,
and "The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024, "N+ details").
Implementation details (the policy side of 1-4 lives in policy.py, the rewards and advantages of 4-7
in advantages.py, the rest here):
  1. The value head is a Linear(hidden, 1) on the policy's last hidden state with zero weights (LHP
     model.py); its bias starts at the mean score of the first rollout batch, so V is exactly that
     constant at step 1. LHP can start V at 0 because its rewards are normalised to mean 0; ours
     pass through a sigmoid (mean ~0.5), and V = 0 then makes every early token's advantage a ramp
     over position, not a measure of quality.
  2. Log-probs come from logits divided by the sampling temperature, in fp32 (LHP policy.py
     analyze_responses). PPO rollouts sample that same untruncated tempered softmax (top_k=0,
     top_p=1, as TRL and the N+ reference); cfg.top_p applies to feedback samples and best-of-n only
     (policy.py `rollout` says why).
  3. Dropout is off in rollouts *and* updates (model.eval()): the first PPO ratio is 1 (N+ details).
  4. Everything after the first EOS is masked; a response without EOS loses missing_eos_penalty
     (N+ details, TRL).
  5. Reward = -beta * KL on every response token, plus the score on the last real token (LHP
     compute_rewards).
  6. beta is fixed or follows LHP's adaptive controller:
     err = clip(kl/target - 1, -0.2, 0.2); beta *= 1 + err*n/horizon.
  7. The advantage: GAE (gamma=1, lam=0.95, LHP/TRL), or a critic-free group baseline over the k
     samples of a prompt: RLOO (Ahmadian et al. 2024) or GRPO (Shao et al. 2024). advantage_norm:
     whitened over real tokens (auto for GAE and RLOO, LHP), over sequences (batch), by the group's
     std (auto for GRPO), or not at all.
  8. Clipped surrogate, and for GAE the clipped value loss 0.5*max(...), vf_coef 0.1 (LHP
     PPOTrainer.loss); GRPO adds beta * k3 KL to the reference as a loss term instead of a reward.
  9. ppo_epochs passes over shuffled minibatches (LHP train); micro-batch losses are token-weighted
     so gradient accumulation gives exactly the gradient of the whole minibatch (rows of similar
     length share a micro-batch).
 10. Adam with the value head in its own parameter group (vf_learning_rate: at the policy's 1e-5 a
     zero-started head barely learns), both learning rates decaying linearly to 0
     (LHP lrnow = lr * (1 - frac); CleanRL).
 11. Global grad-norm clip, approx_kl (k3) logging and optional early stop on it (CleanRL).
 12. A mean KL below -1 warns (TRL); a NaN/inf loss raises NonFiniteLossError before
     optimizer.step().
 13. Several ranks (torchrun, dist.py): the policy is DDP-wrapped, each rank samples and scores its
     own prompts, whitening and every statistic use global sums, and the minibatches are cut from
     one global permutation, so N ranks x batch b take the update of one process with batch N*b
     (ppo_step says how).
"""
from __future__ import annotations

import dataclasses
import warnings
from collections import defaultdict
from contextlib import nullcontext

import torch

from plumbing import dist
from advantages import compute_rewards, kl_penalty, masked_mean, masked_var
from policy import (PolicyWithValueHead, Rollout, decode_responses, response_forward, rollout,
                    token_logprobs)


# ----------------------------------------------------------------------------- the losses
def ppo_policy_loss(*, logprobs, old_logprobs, advantages, mask, cliprange: float):
    """Clipped surrogate (Schulman et al. 2017; LHP/CleanRL names).
    -> (pg_loss, clipfrac, approx_kl)"""
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
    """Clipped value loss: V may move at most cliprange_value from its rollout value (LHP).
    -> (v_loss, clipfrac)"""
    # [B, R]
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    v_loss_unclipped = (values - returns) ** 2
    v_loss_clipped = (v_clipped - returns) ** 2
    v_loss = 0.5 * masked_mean(torch.max(v_loss_unclipped, v_loss_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((v_loss_clipped > v_loss_unclipped).float(), mask)
    return v_loss, clipfrac


def minibatch_loss(policy, mb: Rollout, cfg, ctx) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """The loss of one micro-batch (token-mean) -> (loss, stats, new log-probs [b, r]). GAE adds the
    clipped value loss; GRPO adds beta * k3 KL to the reference (DeepSeekMath eq. 3-4); RLOO has the
    KL in its reward."""
    mb_mask = mb.response_mask.bool()  # [b, r]
    with ctx:
        logits, vpred = response_forward(policy, mb.query_ids, mb.query_mask, mb.response_ids)
    mb_logprobs, _ = token_logprobs(logits, mb.response_ids, cfg.temperature)
    pg_loss, pg_clipfrac, approx_kl = ppo_policy_loss(
        logprobs=mb_logprobs, old_logprobs=mb.logprobs, advantages=mb.advantages, mask=mb_mask,
        cliprange=cfg.cliprange)
    loss = pg_loss
    stats = {"loss/policy": pg_loss, "policy/clipfrac": pg_clipfrac, "policy/approx_kl": approx_kl}
    if cfg.advantage == "gae":
        v_loss, v_clipfrac = ppo_value_loss(values=vpred.float(), old_values=mb.values,
                                            returns=mb.returns, mask=mb_mask,
                                            cliprange_value=cfg.cliprange_value)
        loss = loss + cfg.vf_coef * v_loss
        stats.update({"loss/value": v_loss, "value/clipfrac": v_clipfrac})
    elif cfg.advantage == "grpo":
        kl_loss = masked_mean(kl_penalty(mb_logprobs, mb.ref_logprobs, kind="k3"), mb_mask)
        loss = loss + mb.kl_coef * kl_loss
        stats["loss/kl"] = kl_loss
    return loss, stats, mb_logprobs


# ----------------------------------------------------------------------------- KL control
class FixedKLController:
    def __init__(self, coef: float):
        self.value = coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass  # a fixed beta ignores the measured KL


class AdaptiveKLController:
    """LHP train_policy.py: move beta so the per-response KL tracks `target`, at most 20% per
    `horizon` episodes."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        err = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + err * n_steps / self.horizon


def make_kl_controller(cfg) -> FixedKLController | AdaptiveKLController:
    return (AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
            else FixedKLController(cfg.init_kl_coef))


# ------------------------------------------------------------------------- the value head's start
def init_value_bias(policy: PolicyWithValueHead, ro: Rollout, final_scores: torch.Tensor,
                    reduce=None) -> Rollout:
    """Detail 1: a fresh head (zero weights) outputs its bias everywhere, so setting the bias to the
    batch's mean final score makes V exactly that constant; the rollout's stored values are set to
    match. With `reduce` the mean is over every rank's batch, so all replicas get the same bias."""
    if policy.value_head.weight.abs().max() != 0:
        raise ValueError("init_value_bias needs a fresh value head (zero weights); "
                         "a trained head keeps its values")
    final_scores = torch.as_tensor(final_scores, dtype=torch.float32)
    c = float(final_scores.mean() if reduce is None else
              reduce(final_scores.sum()) / reduce(torch.tensor(float(final_scores.numel()))))
    with torch.no_grad():
        policy.value_head.bias.fill_(c)
    return dataclasses.replace(ro, values=torch.where(ro.response_mask.bool(), c, 0.0))


# ----------------------------------------------------------------------------- the optimizer
class NonFiniteLossError(RuntimeError):
    """A NaN/inf loss or gradient; raised before optimizer.step(), so the weights are still the last
    good ones."""


def make_optimizer(policy: PolicyWithValueHead, cfg) -> torch.optim.Optimizer:
    """Adam, eps=1e-5 (CleanRL), no weight decay (LHP), the value head in its own group at
    vf_learning_rate (detail 10). fused=True updates all parameters in one kernel pass: ~5x faster
    than the per-tensor loop on CPU."""
    head = list(policy.value_head.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in policy.parameters() if id(p) not in head_ids]
    groups = [{"params": body, "lr": cfg.learning_rate, "name": "policy"},
              {"params": head, "lr": cfg.vf_learning_rate, "name": "value_head"}]
    for g in groups:
        # set_lr scales from these, so a resumed run gets the same schedule
        g["initial_lr"] = g["lr"]
    return torch.optim.AdamW(groups, eps=1e-5, weight_decay=0.0, fused=True)


def lr_fraction(step: int, cfg) -> float:
    """CleanRL `frac = 1 - (iteration - 1) / num_iterations` with a 0-based step: 1 at the first
    step, 1/N at the last, so no step has lr 0 (LHP anneals lrnow = lr * (1 - frac) the same way). 1
    when lr_decay is off. With lr_warmup_steps = W, step s < W is further scaled by (s + 1) / W
    (OpenRLHF's lr_warmup_ratio does the same): Adam's first update moves every weight by ~lr
    whatever the gradient's size, so a full-lr first step is the largest of the run (cpu preset, lr
    1e-5: approx_kl 0.037 at step 1, <= 0.007 afterwards)."""
    decay = 1.0 - step / cfg.ppo_steps if cfg.lr_decay else 1.0
    warm = min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else 1.0
    return decay * warm


def set_lr(optimizer: torch.optim.Optimizer, frac: float) -> None:
    for g in optimizer.param_groups:
        # any optimizer: its first lr is the schedule's base
        g["lr"] = g.setdefault("initial_lr", g["lr"]) * frac


# ----------------------------------------------------------------------------- the update
def ppo_step(policy, optimizer, rollout, cfg, ctx=None, scaler=None) -> dict[str, float]:
    """ppo_epochs passes over shuffled minibatches of `rollout` (filled by
    advantages.compute_rewards); each minibatch is cut into micro-batches whose token-weighted
    gradients add up to its own (detail 9).

    Several ranks (detail 13): `policy` is DDP-wrapped and `rollout` is this rank's b rows of a
    global batch of W*b, rank r holding global rows r*b .. r*b+b-1. One permutation of the global
    batch (rank 0's) cuts every rank's minibatches, and each rank runs its own rows of each one; its
    loss is weighted by its token share of the *global* minibatch times W, because DDP averages
    gradients over the W ranks. The update is therefore that of one process with the whole batch, up
    to float summation order (tests/test_dist.py checks it)."""
    ctx = nullcontext() if ctx is None else ctx
    # A disabled scaler makes scale/unscale_/step plain backward and optimizer.step.
    if scaler is None:
        scaler = torch.amp.GradScaler("cpu", enabled=False)
    # Detail 3: no dropout, so on the first minibatch new log-probs == old ones (ratio 1).
    policy.eval()
    B, device = rollout.query_ids.shape[0], rollout.query_ids.device  # B: this rank's rows
    lengths = rollout.query_mask.sum(1) + rollout.response_mask.sum(1)  # [B] real tokens per row
    sums, ratio_dev, epochs_run = defaultdict(list), None, 0
    for epoch in range(cfg.ppo_epochs):
        b_inds = dist.global_permutation(B, device)  # [W*B] one shuffle of every rank's rows
        for start in range(0, len(b_inds), cfg.mini_batch_size):
            mb_inds = dist.local_rows(b_inds[start:start + cfg.mini_batch_size], B)  # may be none
            # Rows of similar length share a micro-batch, so trim() cuts more padding; the sum is
            # the same gradient.
            mb_inds = mb_inds[torch.argsort(lengths[mb_inds], stable=True)]
            # The global minibatch's tokens, and one zero-weighted row if none of it is ours.
            mb_tokens = dist.all_reduce_sum(rollout.response_mask[mb_inds].sum())
            mb_inds, scale = dist.rows_or_dummy(mb_inds)
            acc, bad = defaultdict(float), None
            optimizer.zero_grad(set_to_none=True)
            micros = list(range(0, len(mb_inds), cfg.micro_batch_size))
            for micro in micros:
                mb = rollout.index(mb_inds[micro:micro + cfg.micro_batch_size]).trim()
                with dist.no_sync(policy, last=micro == micros[-1]):
                    loss, stats, mb_logprobs = minibatch_loss(policy, mb, cfg, ctx)
                    weight = dist.token_share(mb.response_mask.sum(), mb_tokens, scale)  # detail 9
                    bad = bad or _nonfinite(loss, stats)
                    # One process stops at once; several must first finish DDP's backward.
                    if bad and dist.world_size() == 1:
                        break
                    scaler.scale(loss * weight).backward()
                if ratio_dev is None:  # the first micro-batch, before any update: ratio 1
                    ratio_dev = _ratio_dev(mb_logprobs, mb)
                _accumulate(acc, stats, weight)
            _raise_if_nonfinite(bad, epoch)
            grad_norm = _clip_and_step(policy, optimizer, scaler, cfg, epoch)
            _record(sums, acc, grad_norm, cfg)
        epochs_run += 1
        if cfg.target_kl and sums["policy/approx_kl"][-1] > cfg.target_kl:
            break  # CleanRL: stop the epochs once the last minibatch's approx_kl passes target_kl
    ratio_dev = dist.all_reduce_max(ratio_dev.float()).item()
    return _step_stats(rollout, cfg, sums, ratio_dev, epochs_run)


def _nonfinite(loss: torch.Tensor, stats: dict) -> str | None:
    """None for a finite loss; else the message, with every statistic of the micro-batch."""
    if torch.isfinite(loss):
        return None
    return "non-finite PPO loss (" + ", ".join(f"{k}={v.item()}" for k, v in stats.items()) + ")"


def _raise_if_nonfinite(bad: str | None, epoch: int) -> None:
    """Every rank raises together, before any optimizer step, if any rank met a non-finite loss."""
    if dist.any_flag(bad is not None):
        raise NonFiniteLossError(f"{bad or 'non-finite PPO loss on another rank'} at epoch "
                                 f"{epoch}; weights are from the last good step")


def _ratio_dev(mb_logprobs: torch.Tensor, mb: Rollout) -> torch.Tensor:
    """max |ratio - 1| over a micro-batch's real tokens: ~1e-7 before any update (N+ details)."""
    ratio = (mb_logprobs.detach() - mb.logprobs).exp()
    return torch.where(mb.response_mask.bool(), ratio - 1, 0).abs().max()


def _accumulate(acc: dict, stats: dict, weight: torch.Tensor) -> None:
    """Add a micro-batch's statistics weighted by its token share of the global minibatch (weight
    / world_size), so the sums over micro-batches and ranks are the minibatch's token means."""
    for name, v in stats.items():
        acc[name] += v.detach() * weight / dist.world_size()


def _clip_and_step(policy, optimizer, scaler, cfg, epoch: int) -> torch.Tensor:
    """Clip the global gradient norm (detail 11), then step; -> the norm before clipping."""
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
    if not scaler.is_enabled() and not torch.isfinite(grad_norm):  # fp16's scaler skips those
        raise NonFiniteLossError(f"non-finite gradient norm at epoch {epoch}; "
                                 "weights are unchanged")
    scaler.step(optimizer)
    scaler.update()
    return grad_norm


def _record(sums: dict, acc: dict, grad_norm: torch.Tensor, cfg) -> None:
    """Append one minibatch's statistics (summed over ranks) and its gradient norm to `sums`."""
    names = sorted(acc)  # one all-reduce for every statistic of the minibatch
    totals = dist.all_reduce_sum(
        torch.stack([torch.as_tensor(acc[n], dtype=torch.float32) for n in names]))
    for name, v in zip(names, totals.tolist()):
        sums[name].append(v)
    sums["policy/grad_norm"].append(float(grad_norm))
    # How often the clip binds: when it binds on every step, Adam moves ~lr whatever the signal.
    sums["policy/grad_clipped"].append(float(grad_norm > cfg.max_grad_norm))


def _step_stats(ro: Rollout, cfg, sums, ratio_dev, epochs_run) -> dict[str, float]:
    """Rollout statistics of the global batch: every mean is over all ranks' rows
    (dist.global_mean), so the logged numbers and the KL the controller sees do not depend on the
    world size."""
    mask = ro.response_mask.bool()
    kl = torch.where(mask, kl_penalty(ro.logprobs, ro.ref_logprobs, kind=cfg.kl_estimator), 0.0)
    mean_kl = dist.global_mean(kl.sum(1)).item()  # nats per response (LHP objective/kl)
    if mean_kl < -1:
        warnings.warn(f"objective/kl = {mean_kl:.2f} < -1: the policy's log-probs do not match "
                      "its samples; check that generation and log-probs use the same temperature, "
                      "top_k and masks (TRL guard)")
    stats = {name: sum(v) / len(v) for name, v in sums.items()}
    stats.update({
        "objective/kl": mean_kl, "objective/kl_coef": ro.kl_coef,
        "objective/score": dist.global_mean(ro.scores).item(),
        # nats per response, from the full softmax
        "objective/entropy": dist.global_mean(ro.entropy.sum(1)).item(),
        "response/length_mean": dist.global_mean(ro.response_mask.sum(1).float()).item(),
        "response/eos_fraction": dist.global_mean(ro.eos.float()).item(),
        # Samples whose advantage is non-zero: a zero-spread group or a filtered unfinished answer
        # teaches nothing.
        "policy/active_fraction": dist.global_mean((ro.advantages.abs().sum(1) > 0).float()).item(),
        # max |ratio - 1| on the first micro-batch: ~1e-7 unless a mismatch
        "policy/first_ratio_dev": ratio_dev,
        "ppo/epochs": float(epochs_run),
    })
    # CleanRL: how much of the return variance the rollout values explain (1 = all)
    if cfg.advantage == "gae":
        reduce = dist.all_reduce_sum if dist.world_size() > 1 else None
        unexplained = masked_var(ro.returns - ro.values, mask, reduce=reduce)
        stats["value/explained_variance"] = (1 - unexplained
                                             / masked_var(ro.returns, mask, reduce=reduce)).item()
    return stats


def train_ppo_iteration(policy, ref_model, optimizer, kl_ctl, query_ids, query_mask, tokenizer,
                        score_fn, cfg, ctx=None, scaler=None, step: int = 0,
                        init_value: bool = False):
    """Rollout -> score the decoded responses -> rewards/advantages -> PPO update -> adapt beta (LHP
    PPOTrainer.step). With samples_per_prompt = k the caller passes each prompt k times, in
    consecutive rows. score_fn(list[str]) -> Tensor[B]; None scores 0 (a pure-KL step). `step`
    (0-based) sets the lr schedule; init_value sets a fresh value head's bias from this batch
    (detail 1). Returns (stats, rollout, responses). Several ranks: `policy` is DDP-wrapped, the
    query rows are this rank's share, sampling and scoring go through the unwrapped module, and
    whitening, the value bias, the stats and the KL controller use the global batch."""
    set_lr(optimizer, lr_fraction(step, cfg))
    core = dist.unwrap(policy)  # generate and no-grad scoring need no gradient sync
    reduce = dist.all_reduce_sum if dist.world_size() > 1 else None
    ro = rollout(core, ref_model, query_ids, query_mask, tokenizer, cfg, ctx=ctx)
    responses = decode_responses(ro, tokenizer)
    scores = score_fn(responses) if score_fn is not None else torch.zeros(len(responses))
    scores = torch.as_tensor(scores, dtype=torch.float32, device=ro.eos.device).reshape(-1)  # [B]
    if init_value and cfg.advantage == "gae":
        ro = init_value_bias(core, ro, scores - cfg.missing_eos_penalty * (~ro.eos).float(),
                             reduce=reduce)
    ro = compute_rewards(ro, scores, kl_coef=kl_ctl.value, cfg=cfg, reduce=reduce)
    stats = ppo_step(policy, optimizer, ro, cfg, ctx=ctx, scaler=scaler)
    stats["policy/lr"] = optimizer.param_groups[0]["lr"]
    # LHP: the global batch's KL
    kl_ctl.update(stats["objective/kl"], n_steps=len(responses) * dist.world_size())
    return stats, ro, responses
