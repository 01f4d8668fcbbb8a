"""The reward model itself: backbone -> pool -> LayerNorm -> Linear(H, 1) -> raw score, its input
format, save/load, and scoring texts in batches without grad.

The reward model never sees the reference snippet; only the synthetic annotator that labelled its
training pairs did (feedback.py). Training (Bradley-Terry), calibration and the PPO reward built on
its scores are in reward.py.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import data
from plumbing import dist
from config import ConfigError
from plumbing.console import Interrupted
from plumbing.models import position_ids  # a causal-LM backbone is left-padded like the policy

HEAD_FILE = "reward_head.pt"  # LayerNorm + scalar head + calibration, next to the HF encoder files


# ----------------------------------------------------------------------------- input
def encode_pairs_text(intent: str, code: str) -> tuple[str, str]:
    """The one place that formats reward-model input: a tokenizer text pair, `[CLS] intent [SEP]
    code [SEP]` for BERT-style encoders. Never the reference. (MiniLM's uncased WordPiece drops case
    and indentation.)"""
    return intent.strip(), code


def tokenize_pairs(tokenizer, intents: list[str], codes: list[str],
                   max_len: int) -> dict[str, torch.Tensor]:
    pairs = [encode_pairs_text(i, c) for i, c in zip(intents, codes, strict=True)]
    return tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first",
                     max_length=max_len, padding=True, return_tensors="pt")


def tokenize_causal(tokenizer, intents: list[str], codes: list[str], max_len: int,
                    fmt: str) -> dict[str, torch.Tensor]:
    """Causal-LM reward input: the policy's own prompt, then the code, then EOS (the token the
    reward is read at), right-padded; over-long inputs lose prompt tokens first, as in SFT
    (data.collate_right)."""
    prompts = tokenizer([data.format_prompt(i, tokenizer, fmt) for i in intents],
                        add_special_tokens=False)
    targets = tokenizer([data.format_target(c, tokenizer) for c in codes], add_special_tokens=False)
    batch = data.collate_right(prompts["input_ids"], targets["input_ids"], tokenizer.pad_token_id,
                               max_len)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


# ----------------------------------------------------------------------------- pooling
def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden [B, T, H], mask [B, T] -> [B, H]: mean over real tokens only (MiniLM is a mean-pooling
    encoder)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden [B, T, H], mask [B, T] -> [B, H] at each row's last real token, under left or right
    padding (the largest position whose mask is 1). LHP and InstructGPT read the reward off the
    final token."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # [B, T]
    last = torch.where(mask.bool(), pos, -1).max(1).values  # [B]
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


# ----------------------------------------------------------------------------- model
class RewardModel(nn.Module):
    """backbone -> pool -> LayerNorm -> Linear(H, 1) -> raw score [B]. Two backbones:
      * kind="encoder": a sentence encoder on the text pair (intent, code), masked mean pool
        (MiniLM's own pooling);
      * kind="causal": a causal LM (e.g. the SFT policy, as InstructGPT §3.5 and LHP initialise the
        RM) on the policy's prompt + code + EOS, last-token pooling. Cased, and it keeps
        whitespace, which MiniLM drops.
    `gain`/`bias` (floats) are the LHP calibration, applied by `reward.normalize_reward`, not by
    forward."""

    def __init__(self, backbone: nn.Module, max_len: int = 128, kind: str = "encoder",
                 fmt: str = "chat"):
        super().__init__()
        if kind not in ("encoder", "causal"):
            raise ValueError(f"RewardModel kind must be encoder or causal, got {kind!r}")
        hidden = backbone.config.hidden_size
        # `encoder` keeps old checkpoints' key names
        self.encoder, self.kind, self.fmt = backbone, kind, fmt
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
                               position_ids=position_ids(attention_mask), output_hidden_states=True,
                               use_cache=False)
            # [B, H] after the final norm
            pooled = last_token(out.hidden_states[-1], attention_mask)
        else:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  **extra).last_hidden_state
            pooled = masked_mean(hidden, attention_mask)  # [B, H]
        return self.head(self.norm(pooled)).squeeze(-1)  # [B]

    def save(self, folder: str | Path) -> None:
        """HF backbone files + HEAD_FILE into an existing folder (the caller saves the tokenizer
        there too)."""
        self.encoder.save_pretrained(folder)
        torch.save({"norm": self.norm.state_dict(), "head": self.head.state_dict(),
                    "gain": float(self.gain), "bias": float(self.bias),
                    "max_len": int(self.max_len), "kind": self.kind, "fmt": self.fmt},
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
        rm = cls(loader.from_pretrained(folder, dtype=torch.float32), max_len=state["max_len"],
                 kind=kind, fmt=state.get("fmt", "chat"))
        rm.norm.load_state_dict(state["norm"])
        rm.head.load_state_dict(state["head"])
        rm.gain, rm.bias = state["gain"], state["bias"]
        return rm


# ----------------------------------------------------------------------------- scoring
def check_finite(x: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(x)
    if bad.any():
        i = int(bad.nonzero()[0, 0]) if x.dim() else 0
        raise FloatingPointError(f"{what} is not finite ({x.flatten()[i].item()} at index {i})")


def score_texts(rm: RewardModel, tokenizer, intents: list[str], codes: list[str],
                device: torch.device, batch_size: int = 32, ctx=None, stop=None,
                desc: str | None = None) -> torch.Tensor:
    """Raw scores [B] (float32, CPU) in eval mode without grad; batches are length-sorted to cut
    padding. desc: a progress bar; stop() -> True raises Interrupted before the next batch (PPO's
    reward passes neither)."""
    order = sorted(range(len(codes)), key=lambda i: len(intents[i]) + len(codes[i]))
    out = torch.empty(len(codes), dtype=torch.float32)
    was_training = rm.training
    rm.eval()
    starts = tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", dynamic_ncols=True,
                  disable=desc is None or not dist.is_main())
    with torch.no_grad(), (ctx or contextlib.nullcontext()):
        for start in starts:
            if stop is not None and stop():
                starts.close()
                raise Interrupted(f"{desc or 'reward-model scoring'}: stopped after "
                                  f"{start}/{len(order)} texts")
            idx = order[start:start + batch_size]
            batch = rm.tokenize(tokenizer, [intents[i] for i in idx], [codes[i] for i in idx])
            out[idx] = rm(**{k: v.to(device) for k, v in batch.items()}).float().cpu()
    rm.train(was_training)
    check_finite(out, "reward-model score")
    return out
