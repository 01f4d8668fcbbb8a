"""The policy side of PPO for a causal LM: the policy with its value head, the frozen reference, the
one forward pass that gives response log-probs and values, and rollouts (sampling, then scoring the
finished sequences).

ppo.py holds the losses and the update, advantages.py the rewards and advantages. The policy side of
implementation details 1-4 in ppo.py's numbered list lives here.
"""
from __future__ import annotations

import copy
import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from plumbing.models import position_ids  # left padding: shared with the causal-LM reward model

# next to the HF weights, so AutoModelForCausalLM.from_pretrained(folder) still works
VALUE_HEAD_FILE = "value_head.pt"


# ----------------------------------------------------------------------------- policy + value head
class PolicyWithValueHead(nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)  # LHP: the value head starts at 0 (detail 1)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, logits_to_keep: int = 0):
        """-> (logits [B, T, V], values [B, T]); only the last `logits_to_keep` logits if > 0."""
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids(attention_mask), output_hidden_states=True,
                      logits_to_keep=logits_to_keep, use_cache=False)
        # hidden_states[-1] is after the final norm
        values = self.value_head(out.hidden_states[-1]).squeeze(-1)
        return out.logits, values

    def save(self, folder: str | Path) -> None:
        """HF weights (+config) into an existing folder, and the value head beside them in
        value_head.pt."""
        self.lm.save_pretrained(folder)
        torch.save(self.value_head.state_dict(), Path(folder) / VALUE_HEAD_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> PolicyWithValueHead:
        from transformers import AutoModelForCausalLM

        head = Path(folder) / VALUE_HEAD_FILE
        if not head.is_file():
            raise FileNotFoundError(f"{head}: no value head; "
                                    "wrap a plain LM with PolicyWithValueHead(lm) instead")
        policy = cls(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))
        policy.value_head.load_state_dict(torch.load(head, map_location="cpu", weights_only=True))
        return policy


def make_reference(lm) -> nn.Module:
    """The frozen KL anchor: a copy of the starting policy, eval mode, no gradients."""
    ref = copy.deepcopy(lm.lm if isinstance(lm, PolicyWithValueHead) else lm).eval()
    return ref.requires_grad_(False)


def response_forward(model, query_ids, query_mask, response_ids):
    """Logits [B, R, V] predicting each response token, and values [B, R] (None for a plain LM).
    The lm_head runs on the response positions only (logits_to_keep): prompt logits go unused."""
    R = response_ids.shape[1]
    input_ids = torch.cat([query_ids, response_ids], dim=1)  # [B, P+R]
    # Response positions are all attended: post-EOS tokens only ever precede other post-EOS tokens
    # (causal), so they cannot change a real token's output, and no attention row is empty.
    attention_mask = torch.cat([query_mask, torch.ones_like(response_ids)], dim=1)  # [B, P+R]
    # Also inside DDP, whose forward syncs grads.
    if isinstance(getattr(model, "module", model), PolicyWithValueHead):
        logits, values = model(input_ids, attention_mask, logits_to_keep=R + 1)
        # the state *before* token t predicts it and values it
        return logits[:, :-1], values[:, -R - 1:-1]
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids(attention_mask), logits_to_keep=R + 1, use_cache=False)
    return out.logits[:, :-1], None


def token_logprobs(logits, tokens, temperature: float, entropy: bool = False):
    """log pi(token) from logits / temperature, in fp32 (detail 2); optionally per-token entropy."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # [B, R, V]
    logprobs = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [B, R]
    return logprobs, (-(logp.exp() * logp).sum(-1) if entropy else None)


# ----------------------------------------------------------------------------- rollouts
@dataclass
class Rollout:
    """One PPO batch. P = prompt width (left-padded), R = response width (right-padded after EOS).
    """
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
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return Rollout(**{name: v[idx] if isinstance(v, torch.Tensor) else v
                          for name, v in fields.items()})

    def trim(self) -> Rollout:
        """Drop prompt columns that are padding in every row and response columns masked in every
        row: pure speed, their outputs are never used (a micro-batch is often much shorter than the
        whole batch)."""
        first = int(self.query_mask.bool().any(0).long().argmax())
        width = int(self.response_mask.sum(1).max())
        cut = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, v in cut.items():
            # [B, P] query tensors, [B, R] response tensors
            if isinstance(v, torch.Tensor) and v.dim() == 2:
                cut[name] = v[:, first:] if name.startswith("query") else v[:, :width]
        return Rollout(**cut)


def mask_after_eos(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """[B, R] 1 up to and including the first EOS, 0 after it (detail 4)."""
    is_eos = (response_ids == eos_token_id).long()
    return ((is_eos.cumsum(1) - is_eos) == 0).long()


@torch.no_grad()
def rollout(policy, ref_model, query_ids, query_mask, tokenizer, cfg, ctx=None) -> Rollout:
    """Sample responses with the KV cache, then a policy forward (log-probs + values) and a
    reference forward over the finished sequences. Scores stay 0: the caller scores decoded text
    (advantages.compute_rewards)."""
    ctx = nullcontext() if ctx is None else ctx
    policy.eval()  # detail 3
    with ctx:
        # Detail 2: sample the untruncated tempered softmax (top_k=0, top_p=1, as TRL and the N+
        # reference), the very distribution whose log-probs token_logprobs computes. Sampling with
        # top_p < 1 while scoring with the full softmax was measured on SmolLM2 at top_p 0.95: the
        # sampler's log-prob is 0.033 nats/token higher on 99% of tokens, 0.7-0.9 nats per response,
        # the size of the whole logged KL. cfg.top_p stays the seed's knob for synthetic-feedback
        # samples and best-of-n, where no log-prob is needed.
        seqs = policy.lm.generate(input_ids=query_ids, attention_mask=query_mask,
                                  do_sample=cfg.do_sample, temperature=cfg.temperature, top_p=1.0,
                                  top_k=0, max_new_tokens=cfg.max_new_tokens,
                                  eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    response_ids = seqs[:, query_ids.shape[1]:]  # [B, R]
    mask = mask_after_eos(response_ids, tokenizer.eos_token_id)  # [B, R]
    zero = torch.zeros(response_ids.shape, device=response_ids.device)  # [B, R] fp32
    ro = Rollout(query_ids=query_ids, query_mask=query_mask, response_ids=response_ids,
                 response_mask=mask, eos=(response_ids == tokenizer.eos_token_id).any(1),
                 logprobs=zero, ref_logprobs=zero, values=zero, entropy=zero, scores=zero[:, 0],
                 rewards=zero, advantages=zero, returns=zero)
    out = {name: zero.clone() for name in ("logprobs", "ref_logprobs", "values", "entropy")}
    # Score in micro-batches of similar length: bounded memory ([b, R, V] logits) and less padding
    # (trim()).
    order = torch.argsort(query_mask.sum(1) + mask.sum(1), stable=True)
    for i in range(0, len(order), cfg.micro_batch_size):
        idx = order[i:i + cfg.micro_batch_size]
        mb = ro.index(idx).trim()
        r = mb.response_ids.shape[1]
        with ctx:
            logits, values = response_forward(policy, mb.query_ids, mb.query_mask, mb.response_ids)
        out["logprobs"][idx, :r], out["entropy"][idx, :r] = token_logprobs(
            logits, mb.response_ids, cfg.temperature, entropy=True)
        out["values"][idx, :r] = values.float()
        with ctx:
            ref_logits, _ = response_forward(ref_model, mb.query_ids, mb.query_mask,
                                             mb.response_ids)
        ref_logprobs, _ = token_logprobs(ref_logits, mb.response_ids, cfg.temperature)
        out["ref_logprobs"][idx, :r] = ref_logprobs
    return dataclasses.replace(ro, **{name: torch.where(mask.bool(), v, 0.0)
                                      for name, v in out.items()})


def decode_responses(ro: Rollout, tokenizer) -> list[str]:
    """Response text up to (not including) EOS, for the reward function."""
    return [tokenizer.decode(ids[m.bool()], skip_special_tokens=True)
            for ids, m in zip(ro.response_ids, ro.response_mask)]
