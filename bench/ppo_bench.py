"""Benchmark (not a test): one PPO step (rollout + update) of ppo.py against TRL's PPOTrainer, same work, one run.

    python bench/ppo_bench.py [--model embedded:smollm2-135m-instruct] [--batch 8] [--response 32] [--epochs 4]

TRL runs in its own venv as a subprocess of this file (`--trl-worker`), so both are timed in one run:
    python -m venv bench/.venv-trl && bench/.venv-trl/bin/pip install -r bench/requirements.txt
(trl==1.12.0 is the last release with trl.experimental.ppo.PPOTrainer; torch==2.13.0 is pinned so pip takes the
local CPU wheel instead of downloading CUDA torch.)

Equal work, by construction:
  - the same weights (the policy is saved once to a folder both sides load), fp32 on CPU, the same threads;
  - the same B prompts (CoNaLa intents in the chat format), left-padded;
  - exactly R response tokens per prompt: TRL with stop_token=None, ours with an EOS id no token can have;
    sampling at temperature 0.7 with top_p=1, top_k=0 (TRL's fixed choice), so neither side sorts the vocabulary;
  - the same tiny 2-layer reward model (a sequence classifier on the same vocabulary), so scoring is ~free;
  - `epochs` passes, one minibatch of B per epoch, micro-batches of `micro` (gradient accumulation), so both take
    `epochs` optimizer steps; TRL's defaults gradient_checkpointing=True and bf16=True are switched off.
What differs is the implementation: TRL's API needs a separate value model (a second 135M backbone, run in the
rollout and trained alongside the policy) and computes logits at every position; ppo.py shares the policy's
backbone for the value head, runs the lm_head on response positions only, and puts rows of similar length in the
same micro-batch so that trimming all-padding columns removes most of the left padding.
Throughput: response tokens per second of a whole PPO step (LHP's elapsed/fps), and sequence tokens pushed through
the model per second (B x (P + R) x (2 scoring forwards + epochs)).
Achieved FLOP/s counts the *model* FLOPs of the algorithm once (2 x linear weights per token forward, x3 for
forward+backward, plus attention), identical for both sides, over each side's own time; the peak is a large fp32
torch.matmul measured here.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no tqdm bars from weight loading in the report
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF de-quantisation bar
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TRL_PYTHON = HERE / ".venv-trl" / "bin" / "python"


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(3):
            a @ b
        best = min(best, (time.perf_counter() - t) / 3)
    return 2 * n**3 / best / 1e9


def model_flops(model, B: int, P: int, R: int, epochs: int) -> float:
    """Model FLOPs of one PPO step: KV-cached generation, two scoring forwards (policy+value, reference), and
    `epochs` forward+backward passes (3x a forward) over the B x (P + R) sequences."""
    import torch

    n_lin = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    L, d = model.config.num_hidden_layers, model.config.hidden_size

    def tok(ctx):  # one token's forward: every linear weight once (multiply+add), attention over `ctx` keys
        return 2 * n_lin + 4 * L * d * ctx

    T = P + R
    generation = B * sum(tok(P + t) for t in range(R))
    forward = B * sum(tok(t + 1) for t in range(T))
    return generation + 2 * forward + epochs * 3 * forward


# ----------------------------------------------------------------------------- setup shared by both sides
def prepare(args, workdir: Path) -> dict:
    """Save the policy, its tokenizer and a tiny reward model to `workdir`; tokenise the B prompts."""
    sys.path.insert(0, str(ROOT))
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    from config import make_config
    from data import format_prompt, load_splits
    from plumbing.models import load_causal_lm

    lm, tok = load_causal_lm(args.model, seed=0)
    # <|im_end|> is both EOS and the default pad, and it occurs *inside* chat prompts: TRL derives its attention
    # mask from `ids != pad`, so give both sides a pad token that never occurs in a prompt.
    tok.pad_token, tok.padding_side = "<|endoftext|>", "left"
    lm.generation_config.pad_token_id = tok.pad_token_id
    lm.save_pretrained(workdir / "policy")
    tok.save_pretrained(workdir / "policy")
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_config(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id))
    rm.save_pretrained(workdir / "reward")
    train, _, _ = load_splits(make_config("quick", {"conala_path": str(ROOT / "conala-corpus")}))
    prompts = [format_prompt(e.intent, tok, "chat") for e in train[: args.batch]]
    ids = [x[-96:] for x in tok(prompts, add_special_tokens=False)["input_ids"]]
    return {"prompt_ids": ids, "flops": model_flops(lm, args.batch, max(map(len, ids)), args.response, args.epochs)}


# ----------------------------------------------------------------------------- ours
def run_ours(args, workdir: Path, prompt_ids) -> dict:
    sys.path.insert(0, str(ROOT))
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    import advantages
    import ppo
    from policy import make_reference, PolicyWithValueHead, rollout
    from config import make_config
    from data import collate_left

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(workdir / "policy")
    policy = PolicyWithValueHead(AutoModelForCausalLM.from_pretrained(workdir / "policy", dtype=torch.float32))
    ref = make_reference(policy.lm)
    rm = AutoModelForSequenceClassification.from_pretrained(workdir / "reward").eval()
    cfg = make_config("quick", dict(batch_size=args.batch, mini_batch_size=args.batch, micro_batch_size=args.micro,
                                    ppo_epochs=args.epochs, max_new_tokens=args.response, temperature=0.7, top_p=1.0,
                                    learning_rate=3e-6, adaptive_kl=False, init_kl_coef=0.05))
    opt = ppo.make_optimizer(policy, cfg)  # fused AdamW, as TRL's default optim (adamw_torch_fused)
    kl_ctl = ppo.make_kl_controller(cfg)
    batch = collate_left(prompt_ids, tok.pad_token_id)
    no_eos = SimpleNamespace(eos_token_id=len(tok), pad_token_id=tok.pad_token_id)  # an id no token has: R tokens
    times = []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        ro = rollout(policy, ref, batch["input_ids"], batch["attention_mask"], no_eos, cfg)
        with torch.no_grad():
            seq = torch.cat([ro.query_ids, ro.response_ids], 1)
            scores = rm(input_ids=seq, attention_mask=torch.cat([ro.query_mask, ro.response_mask], 1)).logits[:, 0]
        ro = advantages.compute_rewards(ro, scores, kl_ctl.value, cfg)
        t1 = time.perf_counter()
        stats = ppo.ppo_step(policy, opt, ro, cfg)
        kl_ctl.update(stats["objective/kl"], n_steps=args.batch)
        times.append((t1 - t0, time.perf_counter() - t1))
        assert ro.response_ids.shape[1] == args.response
    return {"steps": times[args.warmup:], "kl": stats["objective/kl"]}


# ----------------------------------------------------------------------------- TRL (runs in .venv-trl)
def run_trl(args, workdir: Path, prompt_ids) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_train_begin(self, *a, **k):
            self.marks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            self.marks.append(time.perf_counter())

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(workdir / "policy")
    policy = AutoModelForCausalLM.from_pretrained(workdir / "policy", dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(workdir / "policy", dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(workdir / "policy", num_labels=1, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(workdir / "reward", dtype=torch.float32)
    data = Dataset.from_dict({"input_ids": prompt_ids})
    n = args.warmup + args.steps
    config = PPOConfig(
        output_dir=str(workdir / "trl-out"), per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=args.batch // args.micro, num_mini_batches=1, num_ppo_epochs=args.epochs,
        response_length=args.response, temperature=0.7, total_episodes=args.batch * n, learning_rate=3e-6,
        kl_coef=0.05, stop_token=None, missing_eos_penalty=None, local_rollout_forward_batch_size=args.batch,
        num_sample_generations=0, gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True,
        report_to=[], save_strategy="no", disable_tqdm=True, logging_steps=1, seed=0, dataloader_num_workers=0)
    clock = Clock()
    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=data, eval_dataset=data, value_model=value, callbacks=[clock])
    trainer.train()
    steps = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    return {"steps": [(s, 0.0) for s in steps[args.warmup:]]}


# ----------------------------------------------------------------------------- driver
def main() -> None:
    sys.path.append(str(ROOT))
    from plumbing.cli_help import ArgumentParser  # one-line errors

    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--micro", type=int, default=4, help="rows per forward pass (gradient accumulation)")
    p.add_argument("--response", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--trl-worker", metavar="JSON", help=argparse.SUPPRESS)
    args = p.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.trl_worker:  # inside .venv-trl: read the prepared inputs, print one JSON line
        job = json.loads(Path(args.trl_worker).read_text())
        print("RESULT " + json.dumps(run_trl(args, Path(job["workdir"]), job["prompt_ids"])))
        return

    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.2f}")
    if load > 0.5:
        print("warning: other processes are running; with 2 threads a busy core stalls OpenMP's barriers and both "
              "sides slow down several-fold -- compare with --threads 1, or run on an idle machine")
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s")
    with tempfile.TemporaryDirectory(prefix="ppo-bench-") as tmp:
        workdir = Path(tmp)
        job = prepare(args, workdir)
        P = max(map(len, job["prompt_ids"]))
        print(f"model {args.model}, batch {args.batch} (micro {args.micro}), prompt width {P}, response {args.response}"
              f", {args.epochs} epochs; model work {job['flops'] / 1e12:.2f} TFLOP per step")
        results = {"ours (ppo.py)": run_ours(args, workdir, job["prompt_ids"])}
        if not args.skip_trl:
            if not TRL_PYTHON.exists():
                sys.exit(f"error: {TRL_PYTHON} missing; create it: python -m venv bench/.venv-trl && "
                         "bench/.venv-trl/bin/pip install -r bench/requirements.txt")
            (workdir / "job.json").write_text(json.dumps({"workdir": str(workdir), **job}))
            print(f"TRL subprocess ... (load average {os.getloadavg()[0]:.2f})")
            cmd = [str(TRL_PYTHON), __file__, "--trl-worker", str(workdir / "job.json")] + sys.argv[1:]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"error: TRL worker failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            results["TRL PPOTrainer 1.12.0"] = json.loads(line[-1][len("RESULT "):])
    print(f"\n{'implementation':24} {'s/step':>8} {'rollout':>8} {'update':>8} {'resp tok/s':>11} {'seq tok/s':>10}"
          f" {'GFLOP/s':>8} {'of peak':>8}")
    per_step = {}
    for name, res in results.items():
        total = min(r + u for r, u in res["steps"])  # best of the timed steps: least disturbed by other load
        roll, upd = min(res["steps"], key=sum)
        per_step[name] = total
        split = f"{roll:8.2f} {upd:8.2f}" if upd else f"{'-':>8} {'-':>8}"
        gflops = job["flops"] / total / 1e9
        tokens = args.batch * (P + args.response) * (2 + args.epochs)  # sequence tokens through the model
        print(f"{name:24} {total:8.2f} {split} {args.batch * args.response / total:11.1f} {tokens / total:10.1f}"
              f" {gflops:8.1f} {gflops / peak:8.1%}")
    if len(per_step) == 2:
        ours, trl = per_step.values()
        print(f"\nspeed-up over TRL: {trl / ours:.2f}x (goal >= 2x) -- seconds per PPO step, best of {args.steps}")
    print(f"load average at the end {os.getloadavg()[0]:.2f} (2 cores shared: other processes slow both sides)")


if __name__ == "__main__":
    main()
