"""RLHF for code on CoNaLa, end to end: SFT -> synthetic feedback + reward model -> PPO -> evaluation.

    python rlhf.py --config quick            # laptop CPU, embedded models, < 15 min
    python rlhf.py --config research         # one GPU, the full data
    python rlhf.py --config test             # tiny random models, seconds
    python rlhf.py --resume outputs/quick-20261124-040000   # continue after a kill or Ctrl-C

    torchrun --standalone --nproc_per_node=2 rlhf.py --config test   # 2 ranks (dist.py): DDP, rank 0 writes

Reads top to bottom: helpers (decoding) -> the four stages -> main. Every stage writes its checkpoint
atomically and marks itself done in state.json, which is what --resume reads (report.py owns the run folder).
Under torchrun every rank runs every stage on its share of the data; only rank 0 writes (dist.is_main()).
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import config
import config_checks
import config_cli
import console
import data
import dist
import model_specs
import models
import rejection
import report
import resume
import runfolder
from config import ConfigError, die
from decoding import decode_batches  # stage_reward samples SFT candidates with it
from console import Interrupted
from report import Run
from policy import make_reference, PolicyWithValueHead

EXTRA_FLAGS = ("resume=", "overwrite", "diagnose", "debug")
RANK_SEED_STRIDE = 1000  # rank r seeds with seed + 1000 r: independent samples per rank, rank 0 as one process


# ----------------------------------------------------------------------------- stage 1: SFT
def sft_loss(lm, batch, ctx):
    """Summed next-token NLL over snippet tokens (labels != -100) and their count, so gradient accumulation
    over micro-batches gives the exact token-mean of the whole batch."""
    import torch.nn.functional as F

    with ctx:
        logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [B, T, V]
    labels = batch["labels"][:, 1:]  # [B, T-1]: token t+1 is predicted at position t
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    return nll, (labels != -100).sum()


def validation_loss(lm, tok, fmt, examples, cfg, ctx, device) -> float:
    """Token-mean NLL over `examples`; several ranks share the micro-batches and sum their totals."""
    import torch

    lm.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in dist.shard(list(range(0, len(examples), cfg.sft_micro_batch_size)), strided=True):
            batch = data.sft_batch(examples[i:i + cfg.sft_micro_batch_size], tok, fmt, cfg.sft_max_len)
            nll, n = sft_loss(lm, {k: v.to(device) for k, v in batch.items()}, ctx)
            total, count = total + nll.item(), count + n.item()
    total, count = dist.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64)).tolist()
    return total / max(count, 1)


def stage_sft(run: Run, env: dict, train, val) -> None:
    """Supervised fine-tuning on (intent -> snippet), loss on the snippet tokens only; AdamW with linear decay.
    Several ranks: sft_batch_size is the global batch; each rank takes its share of every step's examples under
    DDP, and its summed NLL is divided by the global token count (x W, as DDP averages), so the update and the
    logged loss are those of one process."""
    lm, tok = models.load_causal_lm(run.cfg.policy_model, seed=run.cfg.seed)
    train_sft(run, env, lm, tok, train, val, "sft")
    dist.save_on_main(run.out / "checkpoint-sft", lambda d: save_policy(lm, tok, d, run.cfg))


def train_sft(run: Run, env: dict, lm, tok, train, val, name: str) -> None:
    """sft_epochs passes over `train` (logged as stage `name`); see stage_sft."""
    import torch
    from tqdm import tqdm

    cfg, device, ctx = run.cfg, env["device"], env["ctx"]
    lm.to(device)
    model, W = dist.wrap_ddp(lm, device), dist.world_size()  # lm stays the module that is saved
    fmt = data.resolve_prompt_format(tok, cfg.prompt_format)
    n_steps = max(1, math.ceil(len(train) * cfg.sft_epochs / cfg.sft_batch_size))
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.cat([torch.randperm(len(train), generator=gen) for _ in range(math.ceil(cfg.sft_epochs))]).tolist()
    opt = torch.optim.AdamW(lm.parameters(), lr=cfg.sft_learning_rate, weight_decay=0.0, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / n_steps)
    scaler = models.make_grad_scaler(device, env["dtype"])
    run.stat(name, 0, val_loss=validation_loss(lm, tok, fmt, val, cfg, ctx, device))
    bar = tqdm(range(n_steps), desc=name, unit="step", dynamic_ncols=True, disable=not dist.is_main())
    for step in bar:
        lm.train()
        chunk = [train[i] for i in order[step * cfg.sft_batch_size:(step + 1) * cfg.sft_batch_size]]
        chunk.sort(key=lambda e: len(e.intent) + len(e.snippet))  # similar lengths share a micro-batch
        chunk, keep = dist.shard_or_dummy(chunk, strided=True)  # keep = 0: a rank without examples this step
        micro = [chunk[i:i + cfg.sft_micro_batch_size] for i in range(0, len(chunk), cfg.sft_micro_batch_size)]
        batches = [{k: v.to(device) for k, v in data.sft_batch(m, tok, fmt, cfg.sft_max_len).items()} for m in micro]
        n_tokens = dist.all_reduce_sum(sum((b["labels"][:, 1:] != -100).sum() for b in batches) * int(keep))
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
            raise FloatingPointError(f"SFT loss is {loss} at step {step}; lower --sft_learning_rate or use fp32")
        bar.set_postfix(loss=f"{loss:.3f}")
        run.stat(name, step + 1, loss=loss, grad_norm=grad_norm, lr=sched.get_last_lr()[0])
        if run.agree_stop():
            part = f"checkpoint-{name}-step{step + 1}"
            dist.save_on_main(run.out / part, lambda d: save_policy(lm, tok, d, cfg))
            bar.close()
            raise Interrupted(f"{name} stopped at step {step + 1}/{n_steps}; the partial policy is in {part}/ "
                              f"(usable with --policy); {name} restarts from scratch on resume")
    val_loss = validation_loss(lm, tok, fmt, val, cfg, ctx, device)
    run.stat(name, n_steps, val_loss=val_loss)
    run.log(f"{name}: {n_steps} steps, final train loss {loss:.4f}, validation loss {val_loss:.4f} on {len(val)} "
            "examples")


def scored_policy_samples(run: Run, reward_fn) -> tuple[list[dict], list[list[float]]]:
    """The reward stage's k SFT samples per train intent and their PPO rewards, on every rank. Rank 0 scores them
    once (sandboxed exec) and caches them in policy_sample_rewards.jsonl: sft-rs and --prompt_selection read them."""
    path, cache = run.out / rejection.SAMPLES_FILE, run.out / rejection.REWARDS_FILE
    if not path.exists():
        raise ConfigError(f"{path} is missing: the reward stage writes it when --reward_policy_intents > 0")

    def score():
        rows = rejection.nonblank(rejection.read_policy_samples(path))
        groups = rejection.read_scored(cache, rows) if cache.exists() else None
        if groups is None:  # written only once complete: a stopped scoring starts over on --resume
            rows, groups = rejection.score_groups(rows, reward_fn, stop=run.stopping)
            rejection.write_scored(rows, groups, cache)
        return rows, groups

    return console.rank0_section(score)


def stage_rejection_sampling(run: Run, env: dict, reward_fn) -> None:
    """sft-rs (rejection.py): the best of the reward stage's k SFT samples per intent by the PPO reward, then
    one SFT pass on them from the SFT policy -> checkpoint-sft-rs/."""
    kept, rewards = rejection.pick_best(*scored_policy_samples(run, reward_fn))
    if dist.is_main():
        runfolder.write_jsonl([{"question_id": e.question_id, "intent": e.intent, "snippet": e.snippet, "reward": r}
                            for e, r in zip(kept, rewards)], run.out / "sft_rs_examples.jsonl")
    run.log(f"sft-rs: best of k by the PPO reward for {len(kept)} intents, mean kept reward "
            f"{sum(rewards) / max(len(rewards), 1):.4f}")
    lm, tok = models.load_causal_lm(sft_path(run, env), seed=run.cfg.seed)
    train_sft(run, env, lm, tok, kept, env["val"], "sft-rs")
    dist.save_on_main(run.out / "checkpoint-sft-rs", lambda d: save_policy(lm, tok, d, run.cfg))


def prompt_order(run: Run, train, reward_fn) -> list[int]:
    """Positions in train of the PPO prompts, in order (the loop cycles over them): a seeded permutation, or
    with --prompt_selection=disagreement the intents whose reward-stage samples disagree most first."""
    import torch

    if run.cfg.prompt_selection == "random":
        return torch.randperm(len(train), generator=torch.Generator().manual_seed(run.cfg.seed)).tolist()
    rows, groups = scored_policy_samples(run, reward_fn)
    spreads = {r["question_id"]: rejection.group_spread(g) for r, g in zip(rows, groups)}
    order = rejection.disagreement_order([e.question_id for e in train], spreads)
    if not order:
        raise ConfigError("--prompt_selection=disagreement: no train intent's samples disagree under the PPO reward")
    run.log(f"ppo prompts: {len(order)} train intents whose {len(groups[0])} samples disagree, of {len(rows)} "
            f"sampled (largest reward spread first; {sum(1 for g in groups if not rejection.group_spread(g))} "
            f"with equal rewards dropped)")
    return order


def save_policy(lm, tok, folder: Path, cfg) -> None:
    lm.save_pretrained(folder)
    data.save_tokenizer_and_generation(lm, tok, folder, cfg)  # plain transformers answers as the pipeline does
    config.save_config(cfg, folder / "rlhf_config.json")  # the config travels with every checkpoint


# ----------------------------------------------------------------------------- stage 2: reward model
@console.on_interrupt("the reward stage starts over on --resume")
def stage_reward(run: Run, env: dict, train, val) -> None:
    """Synthetic feedback (reference, corruptions, other intents' snippets, k SFT samples per intent) ->
    Bradley-Terry RM on the encoder or on the SFT policy itself; held-out accuracy per pairing, policy>policy first.
    A stop signal ends sampling, labelling or RM training within a batch; the stage then starts over on --resume
    (it writes checkpoint-reward/ only at its end, so nothing partial is ever trusted)."""
    import feedback
    import reward

    cfg, device, ctx = run.cfg, env["device"], env["ctx"]
    lm, tok = models.load_causal_lm(sft_path(run, env), seed=cfg.seed)
    lm.to(device)
    fmt = data.resolve_prompt_format(tok, cfg.prompt_format)
    policy_samples = {}
    if cfg.reward_policy_samples:
        k = cfg.reward_policy_intents or len(train)
        chosen = train[:k] + val[:max(1, k * len(val) // max(len(train), 1))]
        samples = decode_batches(lm, tok, fmt, [e.intent for e in chosen], cfg, ctx, sample=True,
                                 n=cfg.reward_policy_samples, desc="policy samples", stop=run.stopping)
        policy_samples = {e.question_id: s for e, s in zip(chosen, samples)}
        if dist.is_main():  # rejection sampling (sft-rs) reuses them
            rejection.write_policy_samples(chosen[:k], policy_samples, run.out / rejection.SAMPLES_FILE)

    def label():  # the annotator runs sandboxed code whose timeouts may differ: one rank labels, all train
        pairs = feedback.build_preference_pairs(train, val, policy_samples, cfg, log=run.log, with_candidates=True,
                                              stop=run.stopping)
        for rows, name in zip(pairs, ("preference_pairs_train", "preference_pairs_val", "feedback_candidates_val")):
            runfolder.write_jsonl(rows, run.out / f"{name}.jsonl")
        run.log(f"reward: {len(pairs[0])} train / {len(pairs[1])} held-out pairs; by pairing "
                f"{feedback.pair_counts_by_kind(pairs[0], by='pairing')}")
        return pairs

    train_pairs, val_pairs, val_cands = console.rank0_section(label)
    train_pairs = reward.subsample_pairs(train_pairs, cfg.reward_max_train_pairs, cfg.seed, cfg.reward_subsample,
                                         log=run.log)
    if cfg.reward_backbone == "policy":  # InstructGPT/LHP: the RM starts from the SFT policy it will judge
        rm, etok = reward.RewardModel(lm, kind="causal", fmt=fmt).to(device), tok
    else:
        del lm
        encoder, etok = models.load_encoder(cfg.reward_encoder, seed=cfg.seed)
        rm = reward.RewardModel(encoder).to(device)
    history = reward.train_reward_model(rm, etok, train_pairs, val_pairs, cfg, device, ctx,
                                        models.make_grad_scaler(device, env["dtype"]), log=run.log,
                                        stop=run.stopping)
    if dist.is_main():  # calibration and the held-out report: rank 0's copy is the one saved
        calibrate_and_report(run, rm, etok, train, policy_samples, val_pairs, val_cands, history, device, ctx)
    dist.save_on_main(run.out / "checkpoint-reward", lambda d: (rm.save(d), etok.save_pretrained(d)))


def calibrate_and_report(run: Run, rm, etok, train, policy_samples, val_pairs, val_cands, history, device, ctx):
    """Log the RM's epochs, fit the LHP gain/bias on reference-policy samples, and report held-out accuracy per
    pairing and Spearman with the annotator (state.json keeps it for report.md)."""
    import reward

    cfg = run.cfg
    for h in history:
        run.stat("reward", h["epoch"], **{k: v for k, v in h.items() if k != "epoch"})
    # LHP: normalise the RM on samples of the reference (= SFT) policy, so kl_coef keeps one meaning.
    calib = [(e.intent, s) for e in train if e.question_id in policy_samples for s in policy_samples[e.question_id]]
    if not calib:  # no policy samples configured: calibrate on the reference snippets instead
        calib = [(e.intent, e.snippet) for e in train]
    raw = reward.score_texts(rm, etok, [c[0] for c in calib], [c[1] for c in calib], device)
    rm.gain, rm.bias = reward.fit_calibration(raw)
    held = reward.evaluate_pairs(rm, etok, val_pairs, device, ctx, by_kind=True)
    held.update(reward.policy_sample_agreement(rm, etok, val_cands, device), backbone=cfg.reward_backbone)
    run.state["reward_eval"] = held
    run.save_state()
    pvp = held["accuracy_by_pairing"].get("policy>policy", float("nan"))
    run.stat("reward_eval", 0, accuracy=held["accuracy"], policy_policy_accuracy=pvp, spearman=held["spearman"])
    run.log(f"reward ({cfg.reward_backbone}): held-out policy>policy accuracy {pvp:.3f} on "
            f"{held['pairs_by_pairing'].get('policy>policy', 0)} pairs; Spearman with the annotator {held['spearman']:.3f}"
            f" on {held['n']} held-out policy samples; all pairs {held['accuracy']:.3f}; by pairing "
            + ", ".join(f"{k} {v:.3f}" for k, v in held["accuracy_by_pairing"].items())
            + f"; calibration gain {rm.gain:.3f} bias {rm.bias:.3f} on {len(calib)} reference-policy samples")


# ----------------------------------------------------------------------------- stage 3: PPO
def stage_ppo(run: Run, env: dict, train) -> None:
    """PPO from the SFT policy; the reference model is the frozen SFT policy (LHP). Several ranks: batch_size is
    the global batch, each rank samples and scores its share of the prompts with its own replicas of the
    reference and the reward model, and only the policy with its value head is DDP-wrapped (ppo.py detail 13)."""
    import torch

    import ppo
    import reward
    import sandbox
    from overoptimization import curve_point

    cfg, device, ctx = run.cfg, env["device"], env["ctx"]
    if cfg.w_exec and not sandbox.sandbox_status()[0]:
        raise ConfigError(f"--w_exec={cfg.w_exec} needs the sandbox: {sandbox.sandbox_status()[1]}")
    need(run.out / "checkpoint-reward", "the reward stage")
    start, resume_dir = latest_ppo_checkpoint(run)
    kl_at_start = logged_step(run, start)[0] if cfg.kl_budget and start else None
    done_by_budget = kl_at_start is not None and kl_at_start > cfg.kl_budget  # a resumed run that stopped there
    base_lm, tok = models.load_causal_lm(sft_path(run, env), seed=cfg.seed)
    policy = PolicyWithValueHead.load(resume_dir) if resume_dir else PolicyWithValueHead(base_lm)
    ref = make_reference(base_lm)  # a frozen copy of the SFT weights, taken before any update
    policy.to(device), ref.to(device)
    model = dist.wrap_ddp(policy, device, find_unused_parameters=cfg.advantage != "gae")  # no critic: no head grads
    rm = reward.RewardModel.load(run.out / "checkpoint-reward").to(device)
    rm_tok = models.load_tokenizer(str(run.out / "checkpoint-reward"))
    reward_fn = reward.make_score_fn(rm, rm_tok, cfg, device, log=run.log)
    if cfg.sft_rs and not (run.out / "checkpoint-sft-rs").exists():  # the cheap baseline, on the same reward
        with console.on_interrupt("on --resume sft-rs starts over, then PPO"):
            stage_rejection_sampling(run, env, reward_fn)
    fmt = data.resolve_prompt_format(tok, cfg.prompt_format)
    opt = ppo.make_optimizer(policy, cfg)
    kl_ctl = ppo.make_kl_controller(cfg)
    scaler = models.make_grad_scaler(device, env["dtype"])
    if resume_dir:
        saved = torch.load(resume_dir / "trainer_state.pt", weights_only=False)
        opt.load_state_dict(saved["optimizer"])
        kl_ctl.value = saved["kl_coef"]
        by_rank = saved.get("torch_rng_by_rank", [saved["torch_rng"]])  # one stream per rank, as saved
        torch.set_rng_state(by_rank[dist.rank()] if len(by_rank) == dist.world_size() else saved["torch_rng"])
        run.log(f"ppo: resumed from {resume_dir.name} (step {start})")
    order = prompt_order(run, train, reward_fn)
    n_prompts = cfg.batch_size // cfg.samples_per_prompt  # batch_size counts responses
    if n_prompts % dist.world_size():
        raise dist.EveryRankError(f"--batch_size={cfg.batch_size} gives {n_prompts} prompts per PPO step, which do not "
                                  f"split over {dist.world_size()} ranks; use a multiple of "
                                  f"{dist.world_size() * cfg.samples_per_prompt}")
    n_local, first = n_prompts // dist.world_size(), n_prompts // dist.world_size() * dist.rank()  # this rank's prompts
    resume_note = "PPO continues from its last checkpoint on --resume"
    if cfg.eval_every and start == 0:  # the curve starts at the SFT policy, KL 0
        with console.on_interrupt(resume_note):
            curve_point(run, env, policy.lm, tok, 0, 0.0)
    elif (kl := missing_curve_kl(run, start, final=done_by_budget)) is not None:  # a stop came before this point
        with console.on_interrupt(resume_note):
            curve_point(run, env, policy.lm, tok, start, kl)
    bar = console.progress(range(start, start if done_by_budget else cfg.ppo_steps), initial=start, total=cfg.ppo_steps, desc="ppo", unit="step")
    for step in bar:
        t0 = time.perf_counter()
        prompts = [train[order[(step * n_prompts + first + i) % len(order)]] for i in range(n_local)]
        exs = [e for e in prompts for _ in range(cfg.samples_per_prompt)]  # the k samples of a prompt are adjacent
        q = data.generation_batch([e.intent for e in exs], tok, fmt, cfg.max_prompt_len)

        def score_fn(responses: list[str]) -> torch.Tensor:
            return reward_fn([e.intent for e in exs], [e.snippet for e in exs],
                             [data.extract_code(r) for r in responses])

        try:
            stats, _, responses = ppo.train_ppo_iteration(model, ref, opt, kl_ctl, q["input_ids"].to(device),
                                                          q["attention_mask"].to(device), tok, score_fn, cfg, ctx,
                                                          scaler, step=step, init_value=resume_dir is None and step == 0)
        except ppo.NonFiniteLossError as e:
            save_ppo(run, policy, tok, opt, kl_ctl, step, "checkpoint-ppo-nonfinite")
            raise dist.EveryRankError(f"PPO step {step + 1}: {e}; state saved in checkpoint-ppo-nonfinite/") from None
        stats["time/step_seconds"] = time.perf_counter() - t0
        run.stat("ppo", step + 1, **stats)
        run.log(f"ppo {step + 1}/{cfg.ppo_steps}  score {stats['objective/score']:.3f}  kl {stats['objective/kl']:.3f}"
                f"  kl_coef {stats['objective/kl_coef']:.4f}  clipfrac {stats['policy/clipfrac']:.3f}  "
                f"approx_kl {stats['policy/approx_kl']:.4f}  ev {stats.get('value/explained_variance', float('nan')):.2f}  "
                f"len {stats['response/length_mean']:.1f}  "
                f"{stats['time/step_seconds']:.1f}s  e.g. {responses[0][:60]!r}")
        # A pre-registered KL budget ends the run early: past some KL the gold score falls while the proxy still
        # rises (Gao et al. 2022, fig. 1), so the budget is fixed before a run, never chosen from its results.
        over_budget = bool(cfg.kl_budget) and stats["objective/kl"] > cfg.kl_budget
        if over_budget:
            run.log(f"ppo: rollout KL {stats['objective/kl']:.3f} > --kl_budget={cfg.kl_budget}: stopping at step "
                    f"{step + 1} of {cfg.ppo_steps}")
        last, stop = step + 1 == cfg.ppo_steps or over_budget, run.agree_stop()
        saved = last or stop or (cfg.save_every and (step + 1) % cfg.save_every == 0)
        if saved:
            save_ppo(run, policy, tok, opt, kl_ctl, step + 1, f"checkpoint-ppo-{step + 1}")
        if stop:  # also at the last step: checkpoint-final and this step's curve point come on --resume
            bar.close()  # a bar left open is redrawn under the "interrupted:" line
            raise Interrupted(f"PPO stopped after step {step + 1}; checkpoint-ppo-{step + 1}/ saved; {resume_note}")
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or last):  # over-optimisation curve
            try:
                curve_point(run, env, policy.lm, tok, step + 1, stats["objective/kl"])
            except Interrupted as e:  # the stop came during the curve point: keep the step, redraw the point
                if not saved:
                    save_ppo(run, policy, tok, opt, kl_ctl, step + 1, f"checkpoint-ppo-{step + 1}")
                bar.close()
                raise Interrupted(f"PPO stopped after step {step + 1} ({e}); checkpoint-ppo-{step + 1}/ saved; "
                                  f"{resume_note}, drawing this step's curve point first") from None
        if last:
            break
    dist.save_on_main(run.out / "checkpoint-final", lambda d: (policy.save(d), save_policy(policy.lm, tok, d, cfg)))


def save_ppo(run, policy, tok, opt, kl_ctl, step: int, name: str) -> None:
    import torch

    rngs = dist.gather_objects(torch.get_rng_state())  # every rank's sampling stream, so a resume continues each

    def write(d):
        policy.save(d)
        save_policy(policy.lm, tok, d, run.cfg)
        torch.save({"optimizer": opt.state_dict(), "kl_coef": kl_ctl.value, "step": step, "torch_rng": rngs[0]}
                   | ({"torch_rng_by_rank": rngs} if len(rngs) > 1 else {}), d / "trainer_state.pt")

    dist.save_on_main(run.out / name, write)


def logged_step(run: Run, step: int) -> tuple[float | None, bool]:
    """PPO step `step` as metrics.jsonl logged it, on every rank: (its rollout KL, None when absent; whether its
    curve point is there). A resume reads it to tell whether that step passed --kl_budget or a stop skipped its
    curve point. Rank 0 reads the file."""
    logged = (None, False)
    if dist.is_main() and (run.out / "metrics.jsonl").exists():
        rows = runfolder.read_jsonl(run.out / "metrics.jsonl")
        kls = [r["objective/kl"] for r in rows if r.get("stage") == "ppo" and r.get("step") == step]
        logged = (kls[-1] if kls else None, any(r.get("stage") == "ppo_eval" and r.get("step") == step for r in rows))
    return dist.broadcast_object(logged)


def missing_curve_kl(run: Run, start: int, final: bool = False) -> float | None:
    """Resuming PPO at step `start`: that step's objective/kl when its curve point is due but not in metrics.jsonl
    (a stop came before or during it), else None. final: `start` ended PPO (its KL budget), so its point is due."""
    cfg = run.cfg
    if not (cfg.eval_every and start and (start % cfg.eval_every == 0 or start == cfg.ppo_steps or final)):
        return None
    kl, drawn = logged_step(run, start)
    return None if drawn else kl


def latest_ppo_checkpoint(run: Run) -> tuple[int, Path | None]:
    steps = runfolder.ppo_checkpoints(run.out)
    return (max(steps), steps[max(steps)]) if steps else (0, None)


# ----------------------------------------------------------------------------- stage 4: evaluation
def stage_eval(run: Run, env: dict) -> None:
    """base, SFT, best-of-n over SFT (--bon_n) and PPO on CoNaLa test: metrics, gold and proxy (evaluate.py)."""
    import evaluate

    systems = {"base": run.cfg.policy_model}
    if sft_path(run, env) != run.cfg.policy_model:
        systems["sft"] = sft_path(run, env)
    if (run.out / "checkpoint-sft-rs").exists():
        systems["sft-rs"] = str(run.out / "checkpoint-sft-rs")
    if (run.out / "checkpoint-final").exists():
        systems["ppo"] = str(run.out / "checkpoint-final")
    wanted = config_checks.split_names(run.cfg.eval_systems)
    if wanted:  # e.g. only a new PPO, while another process evaluates base and SFT (bench/ppo_variant.py)
        missing = [s for s in wanted if s not in systems]
        if missing:
            raise ConfigError(f"--eval_systems={run.cfg.eval_systems}: no {', '.join(missing)} model in {run.out}")
        systems = {k: v for k, v in systems.items() if k in wanted or k in run.state["evaluated"]}  # cached: kept
    evaluate.stage_eval(run, env, systems)


# ----------------------------------------------------------------------------- wiring
def sft_path(run: Run, env: dict) -> str:
    """The policy PPO starts from and the reference model: --policy, else checkpoint-sft/, else the base model."""
    if run.cfg.policy:
        return run.cfg.policy
    if (run.out / "checkpoint-sft").exists():
        return str(run.out / "checkpoint-sft")
    if "sft" in config.stage_list(run.cfg):
        raise ConfigError("checkpoint-sft/ is missing although the sft stage was requested")
    note = "no SFT checkpoint and no --policy: the base model stands in for the SFT policy"
    if note not in env["notes"]:  # sft_path is asked once per stage; say it once
        env["notes"].append(note)
    return run.cfg.policy_model


def need(path: Path, what: str) -> None:
    if not path.exists():
        raise ConfigError(f"{path} is missing: run {what} first (e.g. --resume this folder with it in --stages)")


def run_pipeline(run: Run, device) -> None:
    cfg = run.cfg
    models.seed_everything(cfg.seed + RANK_SEED_STRIDE * dist.rank())
    dtype = models.resolve_dtype(cfg.dtype, device)
    train, val, test = data.load_splits(cfg)
    uses_rules = any((cfg.w_syntax, cfg.w_exec, cfg.w_similarity, cfg.w_quality))
    env = dict(device=device, dtype=dtype, ctx=models.autocast_ctx(device, dtype), val=val, test=test,
               notes=[], uses_rules=uses_rules)
    run.log(f"run {run.out}: config {cfg.config_name}, device {device}, {str(dtype).replace('torch.', '')}, "
            f"{len(train)} train / {len(val)} val / {len(test)} test examples, stages {cfg.stages}")
    stages = {"sft": lambda: stage_sft(run, env, train, val), "reward": lambda: stage_reward(run, env, train, val),
              "ppo": lambda: stage_ppo(run, env, train), "eval": lambda: stage_eval(run, env)}
    if "ppo" in config.stage_list(cfg):
        resume.reopen_extended_ppo(run)  # --resume with more --ppo_steps than a finished PPO ran
    for name in config.stage_list(cfg):
        if name == "sft" and cfg.policy:
            run.log("sft: skipped, starting from --policy " + cfg.policy)
            continue
        if run.done(name) and name != "eval":
            if (run.out / runfolder.STAGE_OUTPUT[name]).exists():
                run.log(f"{name}: already completed in this folder, skipped")
                continue
            run.log(f"{name}: completed before, but {runfolder.STAGE_OUTPUT[name]}/ is gone: redoing it")
            run.state["completed"].remove(name)
        if name == "eval":  # a cached evaluation holds only for the data, settings and weights it was made from
            resume.drop_stale_evaluations(run, env["test"], sft_path(run, env))
        # Each stage reproducible on its own, also after a resume; each rank its own random stream (sampling).
        models.seed_everything(cfg.seed + len(name) + RANK_SEED_STRIDE * dist.rank())
        run.log(f"=== stage {name} ===")
        t0 = time.perf_counter()
        stages[name]()
        if device.type == "cuda":  # rank 0's peak, per stage, for bench/gpu_check.sh
            import torch

            run.state.setdefault("peak_gpu_gib", {})[name] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.reset_peak_memory_stats(device)
        run.mark_done(name, time.perf_counter() - t0)
        run.log(f"{name}: done in {time.perf_counter() - t0:.0f}s")
        if run.agree_stop() and name != config.stage_list(cfg)[-1]:  # after the last stage the run is complete
            raise Interrupted(f"stopped after the {name} stage")


def main(argv: list[str]) -> int:
    config_cli.console_fallback()
    cfg, extras = config_cli.parse_cli(argv, extra_flags=EXTRA_FLAGS)  # with --resume: the saved config + overrides
    if not extras.get("resume") and not config_cli.preset_in(argv) and dist.env_rank() == 0:
        what, took = config.PRESET_NOTES[cfg.config_name]  # a bare run must not start a long job unannounced
        print(f"no --config given: running the {cfg.config_name} preset ({what}; {took}); --config test runs in "
              "about a minute, --help lists the presets and options", flush=True)
    model_specs.check_model_specs(cfg)  # a missing folder or an unreachable hub id: one line now, not after a stage
    if extras.get("diagnose"):
        import diagnose

        if diagnose.run([a for a in argv if a != "--diagnose"]) != 0:
            die("diagnose found failures (❌ above); fix them or run without --diagnose", 1)
    data.load_splits(cfg)  # bad data fails here, before --overwrite moves an old run aside
    if "eval" in config.stage_list(cfg) and cfg.eval_bertscore:
        import metrics

        metrics.check_bertscore_layers(cfg.bertscore_model, cfg.bertscore_layers)
    device = dist.setup(models.resolve_device(cfg.device, verbose=dist.env_rank() == 0), cfg.dist_timeout_s)
    out = problem = None
    # A new folder, or an empty one: if the run fails before its first stage finishes, nothing in it is kept.
    new_dir = not extras.get("resume") and not (cfg.output_dir and os.path.lexists(cfg.output_dir))
    fresh = new_dir or not extras.get("resume") and not runfolder.has_files(Path(cfg.output_dir))
    if dist.is_main():  # only rank 0 creates, checks or moves the output folder
        try:
            out = runfolder.prepare_output_dir(cfg, extras.get("resume"), bool(extras.get("overwrite")))
            if extras.get("resume"):  # under the lock: what the run holds, and the command line's overrides
                resume.check_resume(out, cfg)
        except ConfigError as e:
            problem = str(e)
    out, problem = dist.broadcast_object((out, problem))
    if problem:
        raise (dist.EveryRankError if dist.world_size() > 1 else ConfigError)(problem)
    if dist.is_main():
        log = out / "training.log"
        sys.stdout, sys.stderr = console.Tee(sys.stdout, log), console.Tee(sys.stderr, log)
        config.save_config(cfg, out / "config.json")
        with open(out / "argv.txt", "a", encoding="utf-8") as f:
            f.write(" ".join(["rlhf.py", *argv]) + "\n")
    dist.barrier()  # the other ranks read state.json once rank 0 has the folder ready
    run = Run(out, cfg, writer=dist.is_main())
    console.install_sigint(run)
    try:
        run_pipeline(run, device)
    except Interrupted as e:
        again = f"torchrun --nproc_per_node={dist.world_size()}" if dist.world_size() > 1 else "python"
        run.log(f"interrupted: {e}; continue with: {again} rlhf.py --resume {out}")
        return 128 + run.stop_signal  # 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP
    except Exception:
        if fresh and dist.is_main():  # a retry of the same command must not meet "folder is not empty"
            runfolder.discard_if_unstarted(out, run.state, remove=new_dir)
        raise
    run.log(f"done: {out}" + (f", report {out / 'report.md'}" if (out / "report.md").exists() else ""))
    return 0


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except (ConfigError, data.DataError, FloatingPointError) as e:
        if "--debug" in sys.argv:
            raise
        code, line = 2 if isinstance(e, ConfigError) else 1, dist.error_line(e)
        if line is None:
            raise SystemExit(code) from None
        die(line, code)  # a failing rank exits at once; torchrun then stops the others (no teardown to hang in)
    except OSError as e:  # a full, read-only or over-quota disk mid-run: one line naming the file
        if "--debug" in sys.argv or e.errno not in runfolder.DISK_ERRNOS:
            raise
        die(f"{e.filename or 'the run folder'}: {e.strerror}; free space or fix the disk, then --resume", 1)
    dist.teardown()
    raise SystemExit(code)
