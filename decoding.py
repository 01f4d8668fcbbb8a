"""Decoding: n answers per intent from a causal LM, greedy or sampled, batched by prompt length.

The reward stage samples SFT candidates with it, PPO's over-optimisation curve and stage 4
(evaluate.py) decode with it. Several ranks (torchrun): the decoding batches are dealt out over the
ranks and gathered, so greedy results are those of one process.
"""
from __future__ import annotations

from plumbing import console
import data
from plumbing import dist


def decode_batches(lm, tok, fmt: str, intents: list[str], cfg, ctx, *, sample: bool, n: int = 1,
                   desc: str = "decode", temperature: float | None = None,
                   top_p: float | None = None, seed: int | None = None,
                   stop=None) -> list[list[str]]:
    """Generate n answers per intent, batched by prompt length (less left padding), returned in
    input order. Greedy for evaluation; sampling with the config's temperature/top_p for
    synthetic-feedback candidates and best-of-n. Several ranks: the batches (the very batches one
    process would form) are dealt out over the ranks and the answers gathered on every rank, so
    greedy answers are those of a single process; samples are not (each rank has its own random
    stream), unless `seed` is given: then every batch draws from its own stream, seeded by seed +
    the batch's first position, so two models decoding the same intents share their random numbers
    batch by batch (common random numbers: paired differences carry less noise) and the samples do
    not depend on the number of ranks. temperature/top_p override the config's. stop() -> True (a
    stop signal) ends this rank's loop before its next batch; the ranks then agree and all raise
    Interrupted."""
    import torch

    order = sorted(range(len(intents)), key=lambda i: len(intents[i]))
    answers: list[list[str]] = [[] for _ in intents]
    lm.eval()
    # prompts sorted by length
    starts = dist.shard(list(range(0, len(order), cfg.eval_batch_size)), strided=True)
    done, bar = 0, console.progress(starts, desc=desc, unit="batch")
    for start in bar:
        if stop is not None and stop():
            break
        idx = order[start:start + cfg.eval_batch_size]
        batch = data.generation_batch([intents[i] for i in idx], tok, fmt, cfg.max_prompt_len)
        batch = {k: v.to(lm.device) for k, v in batch.items()}
        kwargs = dict(do_sample=True, temperature=temperature or cfg.temperature,
                      top_p=cfg.top_p if top_p is None else top_p, top_k=0) if sample else \
            dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        if seed is not None:
            torch.manual_seed(seed + start)
        with torch.no_grad(), ctx:
            out = lm.generate(**batch, max_new_tokens=cfg.max_new_tokens, num_return_sequences=n,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                              **kwargs)
        texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        for j, text in enumerate(texts):
            answers[idx[j // n]].append(data.extract_code(text))
        done += 1
    bar.close()  # also after a break: a bar left open is redrawn under the "interrupted:" line
    # Every rank reaches this line (a rank without the signal decodes its whole share), so they stop
    # together.
    if stop is not None and dist.any_flag(done < len(starts)):
        raise console.Interrupted(f"{desc}: stopped after {done}/{len(starts)} batches")
    if dist.world_size() > 1:
        mine = {i: a for i, a in enumerate(answers) if a}  # this rank's intents, by index
        for part in dist.gather_objects(mine):
            for i, a in part.items():
                answers[i] = a
    return answers


def greedy(lm, tok, intents: list[str], run, env, desc: str) -> list[str]:
    """One greedy answer per intent (evaluation's decode), on every rank."""
    lm.to(env["device"])
    fmt = data.resolve_prompt_format(tok, run.cfg.prompt_format)
    answers = decode_batches(lm, tok, fmt, intents, run.cfg, env["ctx"], sample=False, desc=desc,
                             stop=run.stopping)
    return [a[0] for a in answers]
