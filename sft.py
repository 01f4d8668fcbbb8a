"""Supervised fine-tuning: the SFT stage, and the one SFT pass of rejection sampling (sft-rs).

Next-token NLL on the snippet tokens only (intent tokens are labelled -100), AdamW with linear
decay, gradient accumulation over micro-batches, DDP over ranks. Also `save_policy`, how every
policy checkpoint (SFT, sft-rs, PPO) is written so that plain transformers answers as the pipeline
does.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import config
import data
from plumbing import dist
from plumbing import models
from plumbing.console import Interrupted


def sft_loss(lm, batch, ctx):
    """Summed next-token NLL over snippet tokens (labels != -100) and their count, so gradient
    accumulation over micro-batches gives the exact token-mean of the whole batch."""
    with ctx:
        logits = lm(input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"]).logits  # [B, T, V]
    labels = batch["labels"][:, 1:]  # [B, T-1]: token t+1 is predicted at position t
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                          reduction="sum")
    return nll, (labels != -100).sum()


def validation_loss(lm, tok, fmt, examples, cfg, ctx, device) -> float:
    """Token-mean NLL over `examples`; several ranks share the micro-batches and sum their
    totals."""
    lm.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in dist.shard(list(range(0, len(examples), cfg.sft_micro_batch_size)), strided=True):
            batch = data.sft_batch(examples[i:i + cfg.sft_micro_batch_size], tok, fmt,
                                   cfg.sft_max_len)
            nll, n = sft_loss(lm, {k: v.to(device) for k, v in batch.items()}, ctx)
            total, count = total + nll.item(), count + n.item()
    total, count = dist.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64)).tolist()
    return total / max(count, 1)


def train_sft(run, env: dict, lm, tok, train, val, name: str) -> None:
    """sft_epochs passes over `train` (logged as stage `name`); see rlhf.stage_sft."""
    cfg, device, ctx = run.cfg, env["device"], env["ctx"]
    lm.to(device)
    model, W = dist.wrap_ddp(lm, device), dist.world_size()  # lm stays the module that is saved
    fmt = data.resolve_prompt_format(tok, cfg.prompt_format)
    n_steps = max(1, math.ceil(len(train) * cfg.sft_epochs / cfg.sft_batch_size))
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.cat([torch.randperm(len(train), generator=gen)
                       for _ in range(math.ceil(cfg.sft_epochs))]).tolist()
    opt = torch.optim.AdamW(lm.parameters(), lr=cfg.sft_learning_rate, weight_decay=0.0, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / n_steps)
    scaler = models.make_grad_scaler(device, env["dtype"])
    run.stat(name, 0, val_loss=validation_loss(lm, tok, fmt, val, cfg, ctx, device))
    bar = tqdm(range(n_steps), desc=name, unit="step", dynamic_ncols=True,
               disable=not dist.is_main())
    for step in bar:
        lm.train()
        chunk = [train[i] for i in order[step * cfg.sft_batch_size:(step + 1) * cfg.sft_batch_size]]
        batches, keep = micro_batches(chunk, tok, fmt, cfg, device)
        n_tokens = dist.all_reduce_sum(sum((b["labels"][:, 1:] != -100).sum() for b in batches)
                                       * int(keep))
        total = 0.0
        for j, b in enumerate(batches):
            with dist.no_sync(model, last=j == len(batches) - 1):
                nll, _ = sft_loss(model, b, ctx)
                scaler.scale(nll * keep * W / n_tokens).backward()
            total += nll.item() * keep
        total = dist.all_reduce_sum(torch.tensor(total, dtype=torch.float64)).item()
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0).item()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sched.step()
        loss = total / n_tokens.item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"SFT loss is {loss} at step {step}; lower "
                                     "--sft_learning_rate or use fp32")
        bar.set_postfix(loss=f"{loss:.3f}")
        run.stat(name, step + 1, loss=loss, grad_norm=grad_norm, lr=sched.get_last_lr()[0])
        if run.agree_stop():
            part = f"checkpoint-{name}-step{step + 1}"
            dist.save_on_main(run.out / part, lambda d: save_policy(lm, tok, d, cfg))
            bar.close()
            raise Interrupted(f"{name} stopped at step {step + 1}/{n_steps}; the partial policy is "
                              f"in {part}/ (usable with --policy); {name} restarts from scratch on "
                              "resume")
    val_loss = validation_loss(lm, tok, fmt, val, cfg, ctx, device)
    run.stat(name, n_steps, val_loss=val_loss)
    run.log(f"{name}: {n_steps} steps, final train loss {loss:.4f}, validation loss {val_loss:.4f} "
            f"on {len(val)} examples")


def micro_batches(chunk: list, tok, fmt: str, cfg, device) -> tuple[list[dict], float]:
    """One optimizer step's examples -> this rank's micro-batches on `device`, and keep (0.0: a rank
    without examples this step runs a dummy batch whose loss counts 0, dist.shard_or_dummy)."""
    chunk.sort(key=lambda e: len(e.intent) + len(e.snippet))  # similar lengths share a micro-batch
    chunk, keep = dist.shard_or_dummy(chunk, strided=True)
    micro = [chunk[i:i + cfg.sft_micro_batch_size]
             for i in range(0, len(chunk), cfg.sft_micro_batch_size)]
    return [{k: v.to(device) for k, v in data.sft_batch(m, tok, fmt, cfg.sft_max_len).items()}
            for m in micro], keep


def save_policy(lm, tok, folder: Path, cfg) -> None:
    """A policy checkpoint (SFT, sft-rs, PPO): the HF weights, the tokenizer and generation config,
    and the run's config."""
    lm.save_pretrained(folder)
    data.save_tokenizer_and_generation(lm, tok, folder, cfg)  # plain transformers answers as we do
    config.save_config(cfg, folder / "rlhf_config.json")  # the config travels with every checkpoint
