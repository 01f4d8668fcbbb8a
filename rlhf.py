"""RLHF for code on CoNaLa, end to end: SFT -> synthetic feedback + reward model -> PPO ->
evaluation.

    python rlhf.py --config quick            # laptop CPU, embedded models, < 15 min
    python rlhf.py --config research         # one GPU, the full data
    python rlhf.py --config test             # tiny random models, seconds
    python rlhf.py --resume outputs/quick-20261124-040000   # continue after a kill or Ctrl-C

    torchrun --standalone --nproc_per_node=2 rlhf.py --config test  # DDP on 2 ranks, rank 0 writes

Reads top to bottom: the four stages (SFT, reward model, PPO with its sft-rs baseline, evaluation)
-> the wiring (run_pipeline, main). Every stage writes its checkpoint atomically and marks itself
done in state.json, which is what --resume reads (runfolder.py owns the run folder). Under torchrun
every rank runs every stage on its share of the data; only rank 0 writes (dist.is_main()).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

import config
from plumbing import config_checks
from plumbing import config_cli
from plumbing import console
import data
import decoding
import diagnose
from plumbing import dist
import evaluate
import feedback
import metrics
from plumbing import model_specs
from plumbing import models
import ppo_stage
import rejection
from plumbing import resume
import reward
import reward_model
from plumbing import runfolder
import sandbox
import sft
from config import ConfigError, die
from plumbing.console import Interrupted
from report import Run

EXTRA_FLAGS = ("resume=", "overwrite", "diagnose", "debug")
# rank r seeds with seed + 1000 r: independent samples per rank, rank 0 as one process
RANK_SEED_STRIDE = 1000


# ----------------------------------------------------------------------------- stage 1: SFT
def stage_sft(run: Run, env: dict, train, val) -> None:
    """Supervised fine-tuning on (intent -> snippet), loss on the snippet tokens only; AdamW with
    linear decay. Several ranks: sft_batch_size is the global batch; each rank takes its share of
    every step's examples under DDP, and its summed NLL is divided by the global token count (x W,
    as DDP averages), so the update and the logged loss are those of one process."""
    lm, tok = models.load_causal_lm(run.cfg.policy_model, seed=run.cfg.seed)
    sft.train_sft(run, env, lm, tok, train, val, "sft")
    dist.save_on_main(run.out / "checkpoint-sft", lambda d: sft.save_policy(lm, tok, d, run.cfg))


# ---------------------------------------------------------------------------- stage 2: reward model
@console.on_interrupt("the reward stage starts over on --resume")
def stage_reward(run: Run, env: dict, train, val) -> None:
    """Synthetic feedback (reference, corruptions, other intents' snippets, k SFT samples per
    intent) -> Bradley-Terry RM on the encoder or on the SFT policy itself; held-out accuracy per
    pairing, policy>policy first. A stop signal ends sampling, labelling or RM training within a
    batch; the stage then starts over on --resume (it writes checkpoint-reward/ only at its end, so
    nothing partial is ever trusted)."""
    cfg, device, ctx = run.cfg, env["device"], env["ctx"]
    lm, tok = models.load_causal_lm(sft_path(run, env), seed=cfg.seed)
    lm.to(device)
    fmt = data.resolve_prompt_format(tok, cfg.prompt_format)
    policy_samples = sample_policy(run, env, lm, tok, fmt, train, val)

    def label():  # the annotator runs sandboxed code whose timeouts may differ: one rank labels
        pairs = feedback.build_preference_pairs(train, val, policy_samples, cfg, log=run.log,
                                                with_candidates=True, stop=run.stopping)
        names = ("preference_pairs_train", "preference_pairs_val", "feedback_candidates_val")
        for rows, name in zip(pairs, names):
            runfolder.write_jsonl(rows, run.out / f"{name}.jsonl")
        run.log(f"reward: {len(pairs[0])} train / {len(pairs[1])} held-out pairs; by pairing "
                f"{feedback.pair_counts_by_kind(pairs[0], by='pairing')}")
        return pairs

    train_pairs, val_pairs, val_cands = console.rank0_section(label)
    train_pairs = reward.subsample_pairs(train_pairs, cfg.reward_max_train_pairs, cfg.seed,
                                         cfg.reward_subsample, log=run.log)
    # InstructGPT/LHP: the RM starts from the SFT policy it will judge
    if cfg.reward_backbone == "policy":
        rm, etok = reward_model.RewardModel(lm, kind="causal", fmt=fmt).to(device), tok
    else:
        del lm
        encoder, etok = models.load_encoder(cfg.reward_encoder, seed=cfg.seed)
        rm = reward_model.RewardModel(encoder).to(device)
    history = reward.train_reward_model(rm, etok, train_pairs, val_pairs, cfg, device, ctx,
                                        models.make_grad_scaler(device, env["dtype"]), log=run.log,
                                        stop=run.stopping)
    if dist.is_main():  # calibration and the held-out report: rank 0's copy is the one saved
        calibrate_and_report(run, rm, etok, train, policy_samples, val_pairs, val_cands, history,
                             device, ctx)
    dist.save_on_main(run.out / "checkpoint-reward",
                      lambda d: (rm.save(d), etok.save_pretrained(d)))


def sample_policy(run: Run, env: dict, lm, tok, fmt, train, val) -> dict[int, list[str]]:
    """k SFT samples per intent ({question_id: samples}; {} when none are asked for) for the first
    --reward_policy_intents train intents and a matching share of val: candidates the annotator
    ranks beside the corruptions. policy_samples.jsonl keeps the train ones for sft-rs."""
    cfg = run.cfg
    if not cfg.reward_policy_samples:
        return {}
    k = cfg.reward_policy_intents or len(train)
    chosen = train[:k] + val[:max(1, k * len(val) // max(len(train), 1))]
    samples = decoding.decode_batches(lm, tok, fmt, [e.intent for e in chosen], cfg, env["ctx"],
                                      sample=True, n=cfg.reward_policy_samples,
                                      desc="policy samples", stop=run.stopping)
    policy_samples = {e.question_id: s for e, s in zip(chosen, samples)}
    if dist.is_main():  # rejection sampling (sft-rs) reuses them
        rejection.write_policy_samples(chosen[:k], policy_samples,
                                       run.out / rejection.SAMPLES_FILE)
    return policy_samples


def calibrate_and_report(run: Run, rm, etok, train, policy_samples, val_pairs, val_cands, history,
                         device, ctx):
    """Log the RM's epochs, fit the LHP gain/bias on reference-policy samples, and report held-out
    accuracy per pairing and Spearman with the annotator (state.json keeps it for report.md)."""
    cfg = run.cfg
    for h in history:
        run.stat("reward", h["epoch"], **{k: v for k, v in h.items() if k != "epoch"})
    # LHP: normalise the RM on samples of the reference (= SFT) policy, so kl_coef keeps one
    # meaning.
    calib = [(e.intent, s) for e in train if e.question_id in policy_samples
             for s in policy_samples[e.question_id]]
    if not calib:  # no policy samples configured: calibrate on the reference snippets instead
        calib = [(e.intent, e.snippet) for e in train]
    raw = reward_model.score_texts(rm, etok, [c[0] for c in calib], [c[1] for c in calib], device)
    rm.gain, rm.bias = reward.fit_calibration(raw)
    held = reward.evaluate_pairs(rm, etok, val_pairs, device, ctx, by_kind=True)
    held.update(reward.policy_sample_agreement(rm, etok, val_cands, device),
                backbone=cfg.reward_backbone)
    run.state["reward_eval"] = held
    run.save_state()
    pvp = held["accuracy_by_pairing"].get("policy>policy", float("nan"))
    run.stat("reward_eval", 0, accuracy=held["accuracy"], policy_policy_accuracy=pvp,
             spearman=held["spearman"])
    run.log(f"reward ({cfg.reward_backbone}): held-out policy>policy accuracy {pvp:.3f} on "
            f"{held['pairs_by_pairing'].get('policy>policy', 0)} pairs; Spearman with the "
            f"annotator {held['spearman']:.3f} on {held['n']} held-out policy samples; all pairs "
            f"{held['accuracy']:.3f}; by pairing "
            + ", ".join(f"{k} {v:.3f}" for k, v in held["accuracy_by_pairing"].items())
            + f"; calibration gain {rm.gain:.3f} bias {rm.bias:.3f} on {len(calib)} "
            "reference-policy samples")


# ----------------------------------------------------------------------------- stage 3: PPO
def stage_ppo(run: Run, env: dict, train) -> None:
    """PPO from the SFT policy; the reference model is the frozen SFT policy (LHP). Several ranks:
    batch_size is the global batch, each rank samples and scores its share of the prompts with its
    own replicas of the reference and the reward model, and only the policy with its value head is
    DDP-wrapped (ppo.py detail 13)."""
    cfg = run.cfg
    if cfg.w_exec and not sandbox.sandbox_status()[0]:
        raise ConfigError(f"--w_exec={cfg.w_exec} needs the sandbox: {sandbox.sandbox_status()[1]}")
    need(run.out / "checkpoint-reward", "the reward stage")
    start, resume_dir = resume.latest_ppo_checkpoint(run)
    done_by_budget = resume.ended_by_kl_budget(run, start)  # a resumed run that stopped there
    learner = ppo_stage.load_learner(run, env, sft_path(run, env), resume_dir)
    reward_fn = reward.load_score_fn(run.out / "checkpoint-reward", cfg, env["device"], log=run.log)
    # the cheap baseline, on the same reward
    if cfg.sft_rs and not (run.out / "checkpoint-sft-rs").exists():
        with console.on_interrupt("on --resume sft-rs starts over, then PPO"):
            stage_rejection_sampling(run, env, reward_fn)
    if resume_dir:
        resume.restore_ppo(resume_dir, learner.opt, learner.kl_ctl)
        run.log(f"ppo: resumed from {resume_dir.name} (step {start})")
    order = rejection.prompt_order(run, train, reward_fn)
    n_prompts = ppo_stage.prompts_per_step(cfg)
    ppo_stage.first_curve_point(run, env, learner, start, done_by_budget)
    steps = range(start, start if done_by_budget else cfg.ppo_steps)
    bar = console.progress(steps, initial=start, total=cfg.ppo_steps, desc="ppo", unit="step")
    for step in bar:
        t0 = time.perf_counter()
        exs = ppo_stage.step_examples(train, order, step, n_prompts, cfg.samples_per_prompt)
        stats, responses = ppo_stage.iteration(run, env, learner, exs, reward_fn, step,
                                               init_value=resume_dir is None and step == 0)
        stats["time/step_seconds"] = time.perf_counter() - t0
        run.stat("ppo", step + 1, **stats)
        run.log(ppo_stage.log_line(step + 1, cfg.ppo_steps, stats, responses))
        if ppo_stage.end_of_step(run, env, learner, step + 1, stats["objective/kl"], bar):
            break
    dist.save_on_main(run.out / "checkpoint-final", lambda d: (
        learner.policy.save(d), sft.save_policy(learner.policy.lm, learner.tok, d, cfg)))


def stage_rejection_sampling(run: Run, env: dict, reward_fn) -> None:
    """sft-rs (rejection.py): the best of the reward stage's k SFT samples per intent by the PPO
    reward, then one SFT pass on them from the SFT policy -> checkpoint-sft-rs/."""
    kept = rejection.best_examples(run, reward_fn)
    lm, tok = models.load_causal_lm(sft_path(run, env), seed=run.cfg.seed)
    sft.train_sft(run, env, lm, tok, kept, env["val"], "sft-rs")
    dist.save_on_main(run.out / "checkpoint-sft-rs", lambda d: sft.save_policy(lm, tok, d, run.cfg))


# ----------------------------------------------------------------------------- stage 4: evaluation
def stage_eval(run: Run, env: dict) -> None:
    """base, SFT, best-of-n over SFT (--bon_n) and PPO on CoNaLa test: metrics, gold and proxy
    (evaluate.py)."""
    systems = {"base": run.cfg.policy_model}
    if sft_path(run, env) != run.cfg.policy_model:
        systems["sft"] = sft_path(run, env)
    if (run.out / "checkpoint-sft-rs").exists():
        systems["sft-rs"] = str(run.out / "checkpoint-sft-rs")
    if (run.out / "checkpoint-final").exists():
        systems["ppo"] = str(run.out / "checkpoint-final")
    wanted = config_checks.split_names(run.cfg.eval_systems)
    # e.g. only a new PPO, while another process evaluates base and SFT (bench/ppo_variant.py)
    if wanted:
        missing = [s for s in wanted if s not in systems]
        if missing:
            raise ConfigError(f"--eval_systems={run.cfg.eval_systems}: no {', '.join(missing)} "
                              f"model in {run.out}")
        systems = {k: v for k, v in systems.items()
                   if k in wanted or k in run.state["evaluated"]}  # cached: kept
    evaluate.stage_eval(run, env, systems)


# ----------------------------------------------------------------------------- wiring
def sft_path(run: Run, env: dict) -> str:
    """The policy PPO starts from and the reference model: --policy, else checkpoint-sft/, else the
    base model."""
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
        raise ConfigError(f"{path} is missing: run {what} first (e.g. --resume this folder with it "
                          "in --stages)")


def run_pipeline(run: Run, device) -> None:
    cfg = run.cfg
    models.seed_everything(cfg.seed + RANK_SEED_STRIDE * dist.rank())
    dtype = models.resolve_dtype(cfg.dtype, device)
    train, val, test = data.load_splits(cfg)
    uses_rules = any((cfg.w_syntax, cfg.w_exec, cfg.w_similarity, cfg.w_quality))
    env = dict(device=device, dtype=dtype, ctx=models.autocast_ctx(device, dtype), val=val,
               test=test, notes=[], uses_rules=uses_rules)
    run.log(f"run {run.out}: config {cfg.config_name}, device {device}, "
            f"{str(dtype).replace('torch.', '')}, {len(train)} train / {len(val)} val / "
            f"{len(test)} test examples, stages {cfg.stages}")
    stages = {"sft": lambda: stage_sft(run, env, train, val),
              "reward": lambda: stage_reward(run, env, train, val),
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
            run.log(f"{name}: completed before, but {runfolder.STAGE_OUTPUT[name]}/ is gone: "
                    "redoing it")
            run.state["completed"].remove(name)
        # a cached evaluation holds only for the data, settings and weights it was made from
        if name == "eval":
            resume.drop_stale_evaluations(run, env["test"], sft_path(run, env))
        # Each stage reproducible on its own, also after a resume; each rank its own random stream
        # (sampling).
        models.seed_everything(cfg.seed + len(name) + RANK_SEED_STRIDE * dist.rank())
        run.log(f"=== stage {name} ===")
        t0 = time.perf_counter()
        stages[name]()
        if device.type == "cuda":  # rank 0's peak, per stage, for bench/gpu_check.sh
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            run.state.setdefault("peak_gpu_gib", {})[name] = peak
            torch.cuda.reset_peak_memory_stats(device)
        run.mark_done(name, time.perf_counter() - t0)
        run.log(f"{name}: done in {time.perf_counter() - t0:.0f}s")
        # after the last stage the run is complete
        if run.agree_stop() and name != config.stage_list(cfg)[-1]:
            raise Interrupted(f"stopped after the {name} stage")


def main(argv: list[str]) -> int:
    config_cli.console_fallback()
    # with --resume: the saved config + overrides
    cfg, extras = config_cli.parse_cli(argv, extra_flags=EXTRA_FLAGS)
    if not extras.get("resume") and not config_cli.preset_in(argv) and dist.env_rank() == 0:
        # a bare run must not start a long job unannounced
        what, took = config.PRESET_NOTES[cfg.config_name]
        print(f"no --config given: running the {cfg.config_name} preset ({what}; {took}); --config "
              "test runs in about a minute, --help lists the presets and options", flush=True)
    # a missing folder or an unreachable hub id: one line now, not after a stage
    model_specs.check_model_specs(cfg)
    if extras.get("diagnose"):
        if diagnose.run([a for a in argv if a != "--diagnose"]) != 0:
            die("diagnose found failures (❌ above); fix them or run without --diagnose", 1)
    data.load_splits(cfg)  # bad data fails here, before --overwrite moves an old run aside
    if "eval" in config.stage_list(cfg) and cfg.eval_bertscore:
        metrics.check_bertscore_layers(cfg.bertscore_model, cfg.bertscore_layers)
    device = dist.setup(models.resolve_device(cfg.device, verbose=dist.env_rank() == 0),
                        cfg.dist_timeout_s)
    # A new folder, or an empty one: if the run fails before its first stage finishes, nothing in it
    # is kept.
    new_dir = not extras.get("resume") and not (cfg.output_dir and os.path.lexists(cfg.output_dir))
    fresh = new_dir or not extras.get("resume") and not runfolder.has_files(Path(cfg.output_dir))
    out = open_run_folder(cfg, extras, argv)
    run = Run(out, cfg, writer=dist.is_main())
    console.install_sigint(run)
    try:
        run_pipeline(run, device)
    except Interrupted as e:
        again = (f"torchrun --nproc_per_node={dist.world_size()}" if dist.world_size() > 1
                 else "python")
        run.log(f"interrupted: {e}; continue with: {again} rlhf.py --resume {out}")
        return 128 + run.stop_signal  # 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP
    except Exception:
        # a retry of the same command must not meet "folder is not empty"
        if fresh and dist.is_main():
            runfolder.discard_if_unstarted(out, run.state, remove=new_dir)
        raise
    run.log(f"done: {out}"
            + (f", report {out / 'report.md'}" if (out / "report.md").exists() else ""))
    return 0


def open_run_folder(cfg, extras: dict, argv: list[str]) -> Path:
    """The run folder, on every rank: rank 0 creates it (or, with --resume, checks what it holds and
    the command line's overrides), tees the console into training.log and saves config.json and
    argv.txt; a problem there is one error on every rank."""
    out = problem = None
    if dist.is_main():  # only rank 0 creates, checks or moves the output folder
        try:
            out = runfolder.prepare_output_dir(cfg, extras.get("resume"),
                                               bool(extras.get("overwrite")))
            # under the lock: what the run holds, and the command line's overrides
            if extras.get("resume"):
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
    return out


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except (ConfigError, data.DataError, FloatingPointError) as e:
        if "--debug" in sys.argv:
            raise
        code, line = 2 if isinstance(e, ConfigError) else 1, dist.error_line(e)
        if line is None:
            raise SystemExit(code) from None
        # a failing rank exits at once; torchrun then stops the others (no teardown to hang in)
        die(line, code)
    except OSError as e:  # a full, read-only or over-quota disk mid-run: one line naming the file
        if "--debug" in sys.argv or e.errno not in runfolder.DISK_ERRNOS:
            raise
        die(f"{e.filename or 'the run folder'}: {e.strerror}; free space or fix the disk, then "
            "--resume", 1)
    dist.teardown()
    raise SystemExit(code)
