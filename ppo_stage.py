"""The PPO stage's parts, in the order rlhf.stage_ppo uses them: the learner it trains (policy,
reference, optimizer), this rank's rows of a step, one iteration with its score function, the step's
log line, and the end of a step (the KL budget, the checkpoint, a stop signal, the curve point).

The PPO maths and the update itself are in ppo.py; what a resume restores is in resume.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from plumbing import console
import data
from plumbing import dist
from plumbing import models
import overoptimization
import ppo
from plumbing import resume
import sft
from plumbing.console import Interrupted
from policy import PolicyWithValueHead, make_reference

RESUME_NOTE = "PPO continues from its last checkpoint on --resume"


@dataclass
class Learner:
    """What PPO trains and checkpoints: the policy with its value head, `model` (the same policy,
    DDP-wrapped under torchrun), the frozen reference, the tokenizer and prompt format, the
    optimizer, the KL controller and the grad scaler (fp16 only)."""
    policy: PolicyWithValueHead
    model: torch.nn.Module
    ref: torch.nn.Module
    tok: object
    fmt: str
    opt: torch.optim.Optimizer
    kl_ctl: object
    scaler: torch.amp.GradScaler


def load_learner(run, env: dict, sft_path: str, resume_dir: Path | None) -> Learner:
    """The SFT policy (or checkpoint-ppo-<step>/ on a resume, restored later by resume.restore_ppo)
    with its value head, a frozen copy of the SFT weights as the reference, a fresh optimizer and KL
    controller."""
    cfg, device = run.cfg, env["device"]
    base_lm, tok = models.load_causal_lm(sft_path, seed=cfg.seed)
    policy = PolicyWithValueHead.load(resume_dir) if resume_dir else PolicyWithValueHead(base_lm)
    ref = make_reference(base_lm)  # a frozen copy of the SFT weights, taken before any update
    policy.to(device), ref.to(device)
    # no critic (a group baseline): the value head gets no gradient
    model = dist.wrap_ddp(policy, device, find_unused_parameters=cfg.advantage != "gae")
    return Learner(policy=policy, model=model, ref=ref, tok=tok,
                   fmt=data.resolve_prompt_format(tok, cfg.prompt_format),
                   opt=ppo.make_optimizer(policy, cfg), kl_ctl=ppo.make_kl_controller(cfg),
                   scaler=models.make_grad_scaler(device, env["dtype"]))


def prompts_per_step(cfg) -> int:
    """Prompts per PPO step (batch_size counts responses, samples_per_prompt of each prompt); every
    rank takes an equal share of them."""
    n_prompts = cfg.batch_size // cfg.samples_per_prompt  # batch_size counts responses
    if n_prompts % dist.world_size():
        raise dist.EveryRankError(f"--batch_size={cfg.batch_size} gives {n_prompts} prompts per "
                                  f"PPO step, which do not split over {dist.world_size()} ranks; "
                                  f"use a multiple of {dist.world_size() * cfg.samples_per_prompt}")
    return n_prompts


def step_examples(train, order: list[int], step: int, n_prompts: int, k: int) -> list:
    """This rank's rows of PPO step `step`: its contiguous block of the step's n_prompts prompts
    (the loop cycles over `order`), each prompt k times in adjacent rows (its k samples)."""
    mine = dist.shard(list(range(n_prompts)))  # this rank's prompts
    return [train[order[(step * n_prompts + i) % len(order)]] for i in mine for _ in range(k)]


def first_curve_point(run, env: dict, learner: Learner, start: int, done_by_budget: bool) -> None:
    """The over-optimisation curve starts at the SFT policy, KL 0; a resume first draws the point a
    stop skipped at its last step (resume.missing_curve_kl)."""
    if run.cfg.eval_every and start == 0:  # the curve starts at the SFT policy, KL 0
        kl = 0.0
    else:  # on a resume: the point a stop skipped, if any
        kl = resume.missing_curve_kl(run, start, final=done_by_budget)
    if kl is not None:
        with console.on_interrupt(RESUME_NOTE):
            overoptimization.curve_point(run, env, learner.policy.lm, learner.tok, start, kl)


def iteration(run, env: dict, learner: Learner, exs: list, reward_fn, step: int,
              init_value: bool) -> tuple[dict, list[str]]:
    """One PPO step on these rows (ppo.train_ppo_iteration): rollout, score, update. Each response
    is scored by the PPO reward (reward.make_score_fn) on the code it contains, against its row's
    intent and reference. A non-finite loss saves the state in checkpoint-ppo-nonfinite/ and stops
    every rank."""
    cfg, device = run.cfg, env["device"]
    q = data.generation_batch([e.intent for e in exs], learner.tok, learner.fmt, cfg.max_prompt_len)

    def score_fn(responses: list[str]) -> torch.Tensor:
        return reward_fn([e.intent for e in exs], [e.snippet for e in exs],
                         [data.extract_code(r) for r in responses])

    try:
        stats, _, responses = ppo.train_ppo_iteration(
            learner.model, learner.ref, learner.opt, learner.kl_ctl, q["input_ids"].to(device),
            q["attention_mask"].to(device), learner.tok, score_fn, cfg, env["ctx"], learner.scaler,
            step=step, init_value=init_value)
    except ppo.NonFiniteLossError as e:
        save_ppo(run, learner, step, "checkpoint-ppo-nonfinite")
        raise dist.EveryRankError(f"PPO step {step + 1}: {e}; state saved in "
                                  "checkpoint-ppo-nonfinite/") from None
    return stats, responses


def log_line(done: int, total: int, stats: dict, responses: list[str]) -> str:
    """The console line of PPO step `done`: proxy score, KL and its coefficient, clip fraction,
    approx KL, explained variance, response length, step time and the start of one response."""
    ev = stats.get("value/explained_variance", float("nan"))  # no critic: no explained variance
    return (f"ppo {done}/{total}  score {stats['objective/score']:.3f}  "
            f"kl {stats['objective/kl']:.3f}  kl_coef {stats['objective/kl_coef']:.4f}  "
            f"clipfrac {stats['policy/clipfrac']:.3f}  approx_kl {stats['policy/approx_kl']:.4f}  "
            f"ev {ev:.2f}  len {stats['response/length_mean']:.1f}  "
            f"{stats['time/step_seconds']:.1f}s  e.g. {responses[0][:60]!r}")


def end_of_step(run, env: dict, learner: Learner, done: int, kl: float, bar) -> bool:
    """After PPO step `done` (1-based): the KL budget, the checkpoint, a stop signal, the curve
    point. True when PPO ends at this step."""
    cfg = run.cfg
    # A pre-registered KL budget ends the run early: past some KL the gold score falls while the
    # proxy still rises (Gao et al. 2022, fig. 1), so the budget is fixed before a run, never chosen
    # from its results.
    over_budget = bool(cfg.kl_budget) and kl > cfg.kl_budget
    if over_budget:
        run.log(f"ppo: rollout KL {kl:.3f} > --kl_budget={cfg.kl_budget}: stopping at step "
                f"{done} of {cfg.ppo_steps}")
    last, stop = done == cfg.ppo_steps or over_budget, run.agree_stop()
    saved = last or stop or (cfg.save_every and done % cfg.save_every == 0)
    if saved:
        save_ppo(run, learner, done, f"checkpoint-ppo-{done}")
    if stop:  # also at the last step: checkpoint-final and this step's curve point come on --resume
        bar.close()  # a bar left open is redrawn under the "interrupted:" line
        raise Interrupted(f"PPO stopped after step {done}; checkpoint-ppo-{done}/ saved; "
                          f"{RESUME_NOTE}")
    if cfg.eval_every and (done % cfg.eval_every == 0 or last):  # over-optimisation curve
        try:
            overoptimization.curve_point(run, env, learner.policy.lm, learner.tok, done, kl)
        except Interrupted as e:  # the stop came during the curve point: keep the step, redraw it
            if not saved:
                save_ppo(run, learner, done, f"checkpoint-ppo-{done}")
            bar.close()
            raise Interrupted(f"PPO stopped after step {done} ({e}); checkpoint-ppo-{done}/ saved; "
                              f"{RESUME_NOTE}, drawing this step's curve point first") from None
    return last


def save_ppo(run, learner: Learner, step: int, name: str) -> None:
    """checkpoint-ppo-<step>/: the policy with its value head, and the trainer state a resume
    restores."""
    # every rank: it gathers the RNG states
    state = resume.trainer_state(learner.opt, learner.kl_ctl, step)

    def write(d):
        learner.policy.save(d)
        sft.save_policy(learner.policy.lm, learner.tok, d, run.cfg)
        torch.save(state, d / "trainer_state.pt")

    dist.save_on_main(run.out / name, write)
