"""PPO for a causal LM: clipped surrogate, GAE, a value head and KL control, all on one screen.

Sources: lm-human-preferences (LHP: train_policy.py, policy.py, language/model.py), CleanRL ppo.py, and
"The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024, "N+ details"). Implementation details:
  1. The value head is a Linear(hidden, 1) on the policy's last hidden state, zero-initialised, so V starts at 0
     (LHP model.py: `fc_layer(..., scale=0 if head_name == 'value')`). One forward pass gives logits and values.
  2. Log-probs come from logits divided by the sampling temperature, in fp32 (LHP policy.py analyze_responses).
  3. Dropout is off in rollouts *and* updates (model.eval()), so the first PPO ratio is 1 (N+ details).
  4. Everything after the first EOS is masked; a response without EOS may be penalised (N+ details, TRL).
  5. Reward = -beta * KL on every response token, plus the score on the last real token (LHP compute_rewards).
  6. beta follows LHP's adaptive controller: err = clip(kl/target - 1, -0.2, 0.2); beta *= 1 + err*n/horizon.
  7. GAE with gamma=1, lam=0.95 over the response; advantages whitened over real tokens (LHP/TRL).
  8. Clipped surrogate and clipped value loss 0.5*max(...), vf_coef 0.1 (LHP PPOTrainer.loss).
  9. ppo_epochs passes over shuffled minibatches (LHP train); micro-batch losses are token-weighted so gradient
     accumulation gives exactly the gradient of the whole minibatch (rows of similar length share a micro-batch).
 10. Global grad-norm clip, approx_kl (k3) logging and optional early stop on it (CleanRL).
 11. A mean KL below -1 warns (TRL); a NaN/inf loss raises NonFiniteLossError before the optimizer step.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

VALUE_HEAD_FILE = "value_head.pt"  # next to the HF weights, so AutoModelForCausalLM.from_pretrained(folder) still works


# ----------------------------------------------------------------------------- the maths
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over entries where mask is true (TRL/LHP). torch.where, not x*mask, so a NaN under the mask stays out."""
    mask = mask.bool()
    kept = torch.where(mask, x, torch.zeros_like(x))
    return kept.sum() / mask.sum() if dim is None else kept.sum(dim) / mask.sum(dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.bool().sum()
        if n < 2:
            raise ValueError(f"masked_var needs at least 2 unmasked entries for Bessel's correction, got {int(n)}")
        var = var * n / (n - 1)  # TRL masked_var: Bessel's correction
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries; shift_mean=False keeps the mean (LHP utils.whiten, for rewards)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
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


# ----------------------------------------------------------------------------- policy + value head
def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Left padding: real tokens count from 0, as in HF generate (LHP model.py positions_for)."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


class PolicyWithValueHead(nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)  # LHP: the value head starts at 0 (detail 1)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, logits_to_keep: int = 0):
        """-> (logits [B, T, V] (only the last `logits_to_keep` positions if > 0), values [B, T])."""
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                      output_hidden_states=True, logits_to_keep=logits_to_keep, use_cache=False)
        values = self.value_head(out.hidden_states[-1]).squeeze(-1)  # hidden_states[-1] is after the final norm
        return out.logits, values

    def save(self, folder: str | Path) -> None:
        """HF weights (+config) into an existing folder, and the value head beside them in value_head.pt."""
        self.lm.save_pretrained(folder)
        torch.save(self.value_head.state_dict(), Path(folder) / VALUE_HEAD_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> PolicyWithValueHead:
        from transformers import AutoModelForCausalLM

        head = Path(folder) / VALUE_HEAD_FILE
        if not head.is_file():
            raise FileNotFoundError(f"{head}: no value head; wrap a plain LM with PolicyWithValueHead(lm) instead")
        policy = cls(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))
        policy.value_head.load_state_dict(torch.load(head, map_location="cpu", weights_only=True))
        return policy


def make_optimizer(policy: nn.Module, cfg) -> torch.optim.Optimizer:
    """Adam over the LM and the value head, eps=1e-5 (CleanRL), no weight decay (LHP). fused=True updates all
    parameters in one kernel pass: ~5x faster than the default per-tensor loop on CPU (135M params: 0.5 -> 0.1 s)."""
    return torch.optim.AdamW(policy.parameters(), lr=cfg.learning_rate, eps=1e-5, weight_decay=0.0, fused=True)


def make_reference(lm) -> nn.Module:
    """The frozen KL anchor: a copy of the starting policy, eval mode, no gradients."""
    ref = copy.deepcopy(lm.lm if isinstance(lm, PolicyWithValueHead) else lm).eval()
    return ref.requires_grad_(False)


def response_forward(model, query_ids, query_mask, response_ids):
    """Logits [B, R, V] predicting each response token, and values [B, R] (None for a plain LM).
    The lm_head runs on the response positions only (logits_to_keep): prompt logits are never used."""
    R = response_ids.shape[1]
    input_ids = torch.cat([query_ids, response_ids], dim=1)  # [B, P+R]
    # Response positions are all attended: post-EOS tokens only ever precede other post-EOS tokens (causal),
    # so they cannot change a real token's output, and no attention row is empty.
    attention_mask = torch.cat([query_mask, torch.ones_like(response_ids)], dim=1)  # [B, P+R]
    if isinstance(model, PolicyWithValueHead):
        logits, values = model(input_ids, attention_mask, logits_to_keep=R + 1)
        return logits[:, :-1], values[:, -R - 1:-1]  # the state *before* token t predicts it and values it
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                logits_to_keep=R + 1, use_cache=False)
    return out.logits[:, :-1], None


def token_logprobs(logits, tokens, temperature: float, entropy: bool = False):
    """log pi(token) from logits / temperature, in fp32 (detail 2); optionally the per-token entropy."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # [B, R, V]
    logprobs = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [B, R]
    return logprobs, (-(logp.exp() * logp).sum(-1) if entropy else None)


# ----------------------------------------------------------------------------- rollouts
@dataclass
class Rollout:
    """One PPO batch. P = prompt width (left-padded), R = response width (right-padded after EOS)."""
    query_ids: torch.Tensor  # [B, P]
    query_mask: torch.Tensor  # [B, P] 1 on prompt tokens
    response_ids: torch.Tensor  # [B, R]
    response_mask: torch.Tensor  # [B, R] 1 up to and including the first EOS
    eos: torch.Tensor  # [B] bool: the response ended with EOS
    logprobs: torch.Tensor  # [B, R] log pi_old(token), fp32, temperature-scaled
    ref_logprobs: torch.Tensor  # [B, R] log pi_ref(token)
    values: torch.Tensor  # [B, R] V_old of the state before each token
    entropy: torch.Tensor  # [B, R] entropy of pi_old at each position
    scores: torch.Tensor  # [B] reward-model score, as given (before the missing-EOS penalty)
    rewards: torch.Tensor  # [B, R] -beta*KL per token + score on the last real token
    advantages: torch.Tensor  # [B, R] GAE, whitened over real tokens
    returns: torch.Tensor  # [B, R] value targets
    kl_coef: float = 0.0  # beta used for `rewards`

    def index(self, idx) -> Rollout:
        return Rollout(**{f.name: getattr(self, f.name)[idx] if isinstance(getattr(self, f.name), torch.Tensor)
                          else getattr(self, f.name) for f in dataclasses.fields(self)})

    def trim(self) -> Rollout:
        """Drop prompt columns that are padding in every row and response columns masked in every row:
        pure speed, their outputs are never used (a micro-batch is often much shorter than the whole batch)."""
        first = int(self.query_mask.bool().any(0).long().argmax())
        width = int(self.response_mask.sum(1).max())
        cut = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, v in cut.items():
            if isinstance(v, torch.Tensor) and v.dim() == 2:  # [B, P] query tensors, [B, R] response tensors
                cut[name] = v[:, first:] if name.startswith("query") else v[:, :width]
        return Rollout(**cut)


def mask_after_eos(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """[B, R] 1 up to and including the first EOS, 0 after it (detail 4)."""
    is_eos = (response_ids == eos_token_id).long()
    return ((is_eos.cumsum(1) - is_eos) == 0).long()


@torch.no_grad()
def rollout(policy, ref_model, query_ids, query_mask, tokenizer, cfg, ctx=None) -> Rollout:
    """Sample responses with the KV cache, then a policy forward (log-probs + values) and a reference forward
    over the finished sequences. Scores stay 0: the caller scores decoded text (compute_rewards)."""
    ctx = nullcontext() if ctx is None else ctx
    policy.eval()  # detail 3
    with ctx:
        # top_k=0 switches off HF's default top-k 50. Log-probs below are of the untruncated tempered softmax
        # (LHP/TRL); top_p < 1 samples from a slightly narrower one, which is why TRL fixes top_p=1.
        seqs = policy.lm.generate(input_ids=query_ids, attention_mask=query_mask, do_sample=cfg.do_sample,
                                  temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
                                  max_new_tokens=cfg.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    response_ids = seqs[:, query_ids.shape[1]:]  # [B, R]
    mask = mask_after_eos(response_ids, tokenizer.eos_token_id)  # [B, R]
    zero = torch.zeros(response_ids.shape, device=response_ids.device)  # [B, R] fp32
    ro = Rollout(query_ids=query_ids, query_mask=query_mask, response_ids=response_ids, response_mask=mask,
                 eos=(response_ids == tokenizer.eos_token_id).any(1), logprobs=zero, ref_logprobs=zero, values=zero,
                 entropy=zero, scores=zero[:, 0], rewards=zero, advantages=zero, returns=zero)
    out = {name: zero.clone() for name in ("logprobs", "ref_logprobs", "values", "entropy")}
    # Score in micro-batches of similar length: bounded memory ([b, R, V] logits) and less padding (trim()).
    order = torch.argsort(query_mask.sum(1) + mask.sum(1), stable=True)
    for i in range(0, len(order), cfg.micro_batch_size):
        idx = order[i:i + cfg.micro_batch_size]
        mb = ro.index(idx).trim()
        r = mb.response_ids.shape[1]
        with ctx:
            logits, values = response_forward(policy, mb.query_ids, mb.query_mask, mb.response_ids)
        out["logprobs"][idx, :r], out["entropy"][idx, :r] = token_logprobs(logits, mb.response_ids, cfg.temperature,
                                                                            entropy=True)
        out["values"][idx, :r] = values.float()
        with ctx:
            ref_logits, _ = response_forward(ref_model, mb.query_ids, mb.query_mask, mb.response_ids)
        out["ref_logprobs"][idx, :r] = token_logprobs(ref_logits, mb.response_ids, cfg.temperature)[0]
    return dataclasses.replace(ro, **{name: torch.where(mask.bool(), v, 0.0) for name, v in out.items()})


def decode_responses(ro: Rollout, tokenizer) -> list[str]:
    """Response text up to (not including) EOS, for the reward function."""
    return [tokenizer.decode(ids[m.bool()], skip_special_tokens=True)
            for ids, m in zip(ro.response_ids, ro.response_mask)]


def compute_rewards(ro: Rollout, scores: torch.Tensor, kl_coef: float, cfg) -> Rollout:
    """Fill scores, rewards, advantages (whitened) and returns (details 4-7). `scores` [B] are already normalised
    by the caller (LHP's gain/bias, so beta keeps its meaning)."""
    mask = ro.response_mask.bool()  # [B, R]
    scores = torch.as_tensor(scores, dtype=torch.float32, device=mask.device).reshape(-1)  # [B]
    kl = torch.where(mask, kl_penalty(ro.logprobs, ro.ref_logprobs, kind=cfg.kl_estimator), 0.0)  # [B, R]
    rewards = -kl_coef * kl
    final = scores - cfg.missing_eos_penalty * (~ro.eos).float()  # N+ details: no EOS -> lower score
    last = ro.response_mask.sum(1) - 1  # [B] index of the last real token (EOS, or the final token)
    rewards[torch.arange(len(last), device=last.device), last] += final
    if cfg.whiten_rewards:
        rewards = torch.where(mask, masked_whiten(rewards, mask, shift_mean=False), 0.0)
    advantages, returns = compute_gae(rewards, ro.values, mask, gamma=cfg.gamma, lam=cfg.lam)
    advantages = torch.where(mask, masked_whiten(advantages, mask), 0.0)
    return dataclasses.replace(ro, scores=scores, rewards=rewards, advantages=advantages, returns=returns,
                               kl_coef=float(kl_coef))


# ----------------------------------------------------------------------------- the update
class NonFiniteLossError(RuntimeError):
    """A NaN/inf loss or gradient; raised before optimizer.step(), so the weights are still the last good ones."""


def ppo_step(policy, optimizer, rollout, cfg, ctx=None, scaler=None) -> dict[str, float]:
    """ppo_epochs passes over shuffled minibatches of `rollout` (which compute_rewards has filled)."""
    ctx = nullcontext() if ctx is None else ctx
    if scaler is None:  # a disabled scaler makes scale/unscale_/step plain backward and optimizer.step
        scaler = torch.amp.GradScaler("cpu", enabled=False)
    policy.eval()  # detail 3: no dropout, so on the first minibatch new log-probs == old ones (ratio 1)
    B, sums, ratio_dev, epochs_run = rollout.query_ids.shape[0], defaultdict(list), None, 0
    lengths = rollout.query_mask.sum(1) + rollout.response_mask.sum(1)  # [B] real tokens per row
    for epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(B, device=rollout.query_ids.device)
        for start in range(0, B, cfg.mini_batch_size):
            mb_inds = perm[start:start + cfg.mini_batch_size]
            # Rows of similar length share a micro-batch, so trim() cuts more padding; the sum is the same gradient.
            mb_inds = mb_inds[torch.argsort(lengths[mb_inds], stable=True)]
            mb_tokens = rollout.response_mask[mb_inds].sum()
            acc = defaultdict(float)
            optimizer.zero_grad(set_to_none=True)
            for micro in range(0, len(mb_inds), cfg.micro_batch_size):
                mb = rollout.index(mb_inds[micro:micro + cfg.micro_batch_size]).trim()
                mb_mask = mb.response_mask.bool()  # [b, r]
                with ctx:
                    logits, vpred = response_forward(policy, mb.query_ids, mb.query_mask, mb.response_ids)
                mb_logprobs, _ = token_logprobs(logits, mb.response_ids, cfg.temperature)
                pg_loss, pg_clipfrac, approx_kl = ppo_policy_loss(
                    logprobs=mb_logprobs, old_logprobs=mb.logprobs, advantages=mb.advantages, mask=mb_mask,
                    cliprange=cfg.cliprange)
                v_loss, v_clipfrac = ppo_value_loss(values=vpred.float(), old_values=mb.values, returns=mb.returns,
                                                    mask=mb_mask, cliprange_value=cfg.cliprange_value)
                weight = mb_mask.sum() / mb_tokens  # token share of the minibatch (detail 9)
                loss = (pg_loss + cfg.vf_coef * v_loss) * weight
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(f"non-finite PPO loss (loss/policy={pg_loss.item()}, loss/value="
                                             f"{v_loss.item()}) at epoch {epoch}; weights are from the last good step")
                scaler.scale(loss).backward()
                if ratio_dev is None:  # first micro-batch, before any update: the ratio must be 1 (N+ details)
                    ratio = (mb_logprobs.detach() - mb.logprobs).exp()
                    ratio_dev = torch.where(mb_mask, ratio - 1, 0).abs().max().item()
                for name, v in (("loss/policy", pg_loss), ("loss/value", v_loss), ("policy/clipfrac", pg_clipfrac),
                                ("value/clipfrac", v_clipfrac), ("policy/approx_kl", approx_kl)):
                    acc[name] += v.detach() * weight
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            if not scaler.is_enabled() and not torch.isfinite(grad_norm):  # fp16's scaler skips such steps itself
                raise NonFiniteLossError(f"non-finite gradient norm at epoch {epoch}; weights are unchanged")
            scaler.step(optimizer)
            scaler.update()
            for name, v in acc.items():
                sums[name].append(float(v))
            sums["policy/grad_norm"].append(float(grad_norm))
        epochs_run += 1
        if cfg.target_kl and sums["policy/approx_kl"][-1] > cfg.target_kl:
            break  # CleanRL: stop the epochs once the last minibatch's approx_kl passes target_kl
    return _step_stats(rollout, cfg, sums, ratio_dev, epochs_run)


def _step_stats(ro: Rollout, cfg, sums, ratio_dev, epochs_run) -> dict[str, float]:
    mask = ro.response_mask.bool()
    kl = torch.where(mask, kl_penalty(ro.logprobs, ro.ref_logprobs, kind=cfg.kl_estimator), 0.0)
    mean_kl = kl.sum(1).mean().item()  # nats per response (LHP objective/kl)
    if mean_kl < -1:
        warnings.warn(f"objective/kl = {mean_kl:.2f} < -1: the policy's log-probs do not match its samples; "
                      "check that generation and log-probs use the same temperature, top_k and masks (TRL guard)")
    stats = {name: sum(v) / len(v) for name, v in sums.items()}
    stats.update({
        "objective/kl": mean_kl, "objective/kl_coef": ro.kl_coef, "objective/score": ro.scores.mean().item(),
        "objective/entropy": ro.entropy.sum(1).mean().item(),  # nats per response, exact from the full softmax
        # CleanRL: how much of the return variance the rollout values explain (1 = perfect, <= 0 = none)
        "value/explained_variance": (1 - masked_var(ro.returns - ro.values, mask)
                                     / masked_var(ro.returns, mask)).item(),
        "response/length_mean": ro.response_mask.sum(1).float().mean().item(),
        "response/eos_fraction": ro.eos.float().mean().item(),
        "policy/first_ratio_dev": ratio_dev,  # max |ratio - 1| on the first micro-batch: ~1e-7 unless a mismatch
        "ppo/epochs": float(epochs_run),
    })
    return stats


def train_ppo_iteration(policy, ref_model, optimizer, kl_ctl, query_ids, query_mask, tokenizer, score_fn, cfg,
                        ctx=None, scaler=None):
    """Rollout -> score the decoded responses -> rewards/GAE -> PPO update -> adapt beta (LHP PPOTrainer.step).
    score_fn(list[str]) -> Tensor[B]; None scores 0 (a pure-KL step). Returns (stats, rollout, responses)."""
    ro = rollout(policy, ref_model, query_ids, query_mask, tokenizer, cfg, ctx=ctx)
    responses = decode_responses(ro, tokenizer)
    scores = score_fn(responses) if score_fn is not None else torch.zeros(len(responses))
    ro = compute_rewards(ro, scores, kl_coef=kl_ctl.value, cfg=cfg)
    stats = ppo_step(policy, optimizer, ro, cfg, ctx=ctx, scaler=scaler)
    kl_ctl.update(stats["objective/kl"], n_steps=len(responses))  # LHP: after the step, with this batch's KL
    return stats, ro, responses
