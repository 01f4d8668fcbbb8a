"""Benchmark (not a test): one PPO step on 1 rank x batch B against N ranks x batch B/N (gloo, CPU), one run.

    python bench/ddp_bench.py [--model embedded:smollm2-135m-instruct] [--batch 8] [--ranks 2] [--cores 2]
                              [--response 32] [--epochs 4] [--micro 4] [--steps 2] [--warmup 1]

Both sides use the same cores: 1 rank with `cores` torch threads, N ranks with cores/N threads each, each rank
in its own process started by torch.multiprocessing and joined through dist.setup() exactly as torchrun would.
The same weights and the same B CoNaLa prompts (rank r samples rows r*B/N ..), exactly `response` tokens per
response (an EOS id no token has), one minibatch of B per epoch, micro-batches of `micro` rows per rank.
Prints seconds per step (rollout / update) for both, their ratio, and the update-equality check: one ppo_step
on one fixed rollout (sampled here once), by 1 rank and by N ranks each holding its rows, then the largest
absolute difference between the two sets of weights (AdamW, fused, as in training; float summation order is
the only difference, so ~1e-7 relative is expected, and Adam's first step moves every weight by ~lr).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_rank(rank: int, world: int, port: int, threads: int):
    sys.path.insert(0, str(ROOT))
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    from plumbing import dist

    torch.set_num_threads(threads)
    dist.setup(torch.device("cpu"), timeout_s=1800)


def bench_cfg(args):
    from config import make_config

    return make_config("quick", dict(batch_size=args.batch, mini_batch_size=args.batch, micro_batch_size=args.micro,
                                     ppo_epochs=args.epochs, max_new_tokens=args.response, temperature=0.7,
                                     top_p=1.0, learning_rate=3e-6, adaptive_kl=False, init_kl_coef=0.05))


def load_policy(workdir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    import ppo
    from policy import make_reference, PolicyWithValueHead, rollout

    return PolicyWithValueHead(AutoModelForCausalLM.from_pretrained(workdir / "policy", dtype=torch.float32))


def worker(rank: int, world: int, port: int, threads: int, args, workdir: str) -> None:
    """One rank: the update-equality step on the fixed rollout, then warm-up + timed PPO steps."""
    setup_rank(rank, world, port, threads)
    from types import SimpleNamespace

    import torch
    from transformers import AutoTokenizer

    import advantages
    from plumbing import dist
    import ppo
    from policy import make_reference, PolicyWithValueHead, rollout

    workdir, cfg = Path(workdir), bench_cfg(args)
    b = args.batch // world
    rows = slice(rank * b, (rank + 1) * b)
    reduce = dist.all_reduce_sum if world > 1 else None
    # 1. equality: this rank's rows of the fixed rollout, one ppo_step
    fixed = torch.load(workdir / "rollout.pt", weights_only=False)
    policy = load_policy(workdir)
    ro = advantages.compute_rewards(fixed["ro"].index(rows), fixed["scores"][rows], 0.05, cfg, reduce=reduce)
    model = dist.wrap_ddp(policy, torch.device("cpu"))
    torch.manual_seed(0)
    ppo.ppo_step(model, ppo.make_optimizer(policy, cfg), ro, cfg)
    if rank == 0:
        torch.save(torch.cat([p.detach().flatten() for p in policy.parameters()]), workdir / f"params-{world}.pt")
    # 2. timing
    tok = AutoTokenizer.from_pretrained(workdir / "policy")
    no_eos = SimpleNamespace(eos_token_id=len(tok), pad_token_id=tok.pad_token_id)  # an id no token has: R tokens
    policy = load_policy(workdir)
    ref = make_reference(policy.lm)
    model = dist.wrap_ddp(policy, torch.device("cpu"))
    opt = ppo.make_optimizer(policy, cfg)
    ids, mask = fixed["ro"].query_ids[rows], fixed["ro"].query_mask[rows]
    torch.manual_seed(1 + 1000 * rank)
    times = []
    for _ in range(args.warmup + args.steps):
        dist.barrier()
        t0 = time.perf_counter()
        ro = rollout(policy, ref, ids, mask, no_eos, cfg)
        scores = torch.linspace(0, 1, args.batch)[rows]  # free, fixed scores: the bench times PPO, not a reward model
        ro = advantages.compute_rewards(ro, scores, 0.05, cfg, reduce=reduce)
        t1 = time.perf_counter()
        ppo.ppo_step(model, opt, ro, cfg)
        dist.barrier()
        times.append((t1 - t0, time.perf_counter() - t1))
    if rank == 0:
        torch.save(times[args.warmup:], workdir / f"times-{world}.pt")
    dist.teardown()


def prepare(args, workdir: Path) -> None:
    """Save the policy and its tokenizer, sample one fixed rollout of the B prompts (for the equality check)."""
    sys.path.insert(0, str(ROOT))
    import torch

    import ppo
    from policy import make_reference, PolicyWithValueHead, rollout
    from config import make_config
    from data import generation_batch, load_splits
    from plumbing.models import load_causal_lm

    lm, tok = load_causal_lm(args.model, seed=0)
    lm.save_pretrained(workdir / "policy")
    tok.save_pretrained(workdir / "policy")
    train, _, _ = load_splits(make_config("quick", {"conala_path": str(ROOT / "conala-corpus")}))
    batch = generation_batch([e.intent for e in train[:args.batch]], tok, "chat", 96)
    policy = load_policy(workdir)
    torch.manual_seed(0)
    ro = rollout(policy, make_reference(policy.lm), batch["input_ids"], batch["attention_mask"], tok,
                     bench_cfg(args))
    ro = ppo.init_value_bias(policy, ro, torch.zeros(args.batch))  # fresh head: V = 0, the stored values match
    torch.save({"ro": ro, "scores": torch.linspace(0, 1, args.batch)}, workdir / "rollout.pt")


def main() -> None:
    sys.path.append(str(ROOT))
    from plumbing.cli_help import ArgumentParser  # one-line errors

    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--batch", type=int, default=8, help="the global batch (responses per PPO step)")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--cores", type=int, default=2, help="torch threads in all: 1 rank gets all, N ranks cores/N")
    p.add_argument("--micro", type=int, default=4, help="rows per forward pass on each rank")
    p.add_argument("--response", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up")
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args()
    if args.batch % args.ranks or args.cores % args.ranks:
        sys.exit(f"error: --batch {args.batch} and --cores {args.cores} must be multiples of --ranks {args.ranks}")
    import torch
    import torch.multiprocessing as mp

    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load:.2f}")
    if load > 0.5:
        print("warning: other processes are running; the figures below are not those of an idle machine")
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        workdir = Path(tmp)
        prepare(args, workdir)
        for world in (1, args.ranks):
            mp.spawn(worker, args=(world, free_port(), args.cores // world, args, str(workdir)), nprocs=world)
        times = {w: torch.load(workdir / f"times-{w}.pt") for w in (1, args.ranks)}
        diff = (torch.load(workdir / "params-1.pt") - torch.load(workdir / f"params-{args.ranks}.pt")).abs().max()
    print(f"\nmodel {args.model}, global batch {args.batch}, response {args.response} tokens, {args.epochs} epochs, "
          f"micro-batch {args.micro}, {args.cores} cores")
    print(f"{'layout':28} {'s/step':>8} {'rollout':>8} {'update':>8}")
    per_step = {}
    for w, ts in times.items():
        roll, upd = (sum(t[i] for t in ts) / len(ts) for i in (0, 1))
        per_step[w] = roll + upd
        label = f"{w} rank(s) x batch {args.batch // w}, {args.cores // w} thr"
        print(f"{label:28} {roll + upd:8.2f} {roll:8.2f} {upd:8.2f}")
    print(f"time per PPO step, {args.ranks} ranks / 1 rank: {per_step[args.ranks] / per_step[1]:.2f}")
    print(f"update equality, 1 rank x batch {args.batch} vs {args.ranks} ranks x batch {args.batch // args.ranks}: "
          f"max |weight difference| after one ppo_step = {diff.item():.3g}")


if __name__ == "__main__":
    main()
