"""Stage 4 of rlhf.py: decoding, every metric, the annotator's gold score beside the reward model's proxy score,
the best-of-n baseline, the over-optimisation curve and paired bootstrap CIs.

  gold    the synthetic annotator (feedback.judge: chrF, syntax, sandboxed execution capped at the reference's,
          quality) on the test intents, with the reference. It is the "human" of this RLHF setup, so gold is the
          number RLHF is meant to raise.
  proxy   the reward model's calibrated score, the one PPO optimises; it never sees the reference.
Gao et al. 2022 ("Scaling laws for reward model overoptimization"): optimising a proxy raises it while gold
rises, then falls, as KL from the start policy grows. `curve_point` measures both during PPO, on a fixed slice of
the validation intents (never the test set), and plots/overoptimization.png draws them against objective/kl.
Best-of-n (`sft-bon`) is the baseline Gao et al. set beside PPO: n SFT samples, the RM keeps its favourite.

Several ranks (torchrun): the decoding batches are dealt out over the ranks and gathered (decode_batches), and
rank 0 alone scores, writes and reports, so greedy results are those of one process.
Why a separate module: rlhf.py stays the story of the four stages; stage_eval there is a thin call into this file.
"""
from __future__ import annotations

import data
import dist
import models
import report

# Paired bootstrap comparisons (better, baseline) and the per-example metrics they resample.
COMPARISONS = [("sft", "base"), ("ppo", "sft"), ("sft-bon", "sft"), ("ppo", "sft-bon")]
BOOTSTRAP_METRICS = ("gold", "codebleu", "chrf")


# ----------------------------------------------------------------------------- decoding
def decode_batches(lm, tok, fmt: str, intents: list[str], cfg, ctx, *, sample: bool, n: int = 1,
                   desc: str = "decode") -> list[list[str]]:
    """Generate n answers per intent, batched by prompt length (less left padding), returned in input order.
    Greedy for evaluation; sampling with the config's temperature/top_p for synthetic-feedback candidates and
    best-of-n. Several ranks: the batches (the very batches one process would form) are dealt out over the ranks
    and the answers gathered on every rank, so greedy answers are those of a single process; samples are not
    (each rank has its own random stream)."""
    import torch
    from tqdm import tqdm

    order = sorted(range(len(intents)), key=lambda i: len(intents[i]))
    answers: list[list[str]] = [[] for _ in intents]
    lm.eval()
    starts = dist.shard(list(range(0, len(order), cfg.eval_batch_size)), strided=True)  # prompts sorted by length
    for start in tqdm(starts, desc=desc, unit="batch", dynamic_ncols=True, disable=not dist.is_main()):
        idx = order[start:start + cfg.eval_batch_size]
        batch = data.generation_batch([intents[i] for i in idx], tok, fmt, cfg.max_prompt_len)
        batch = {k: v.to(lm.device) for k, v in batch.items()}
        kwargs = dict(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0) if sample else \
            dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.no_grad(), ctx:
            out = lm.generate(**batch, max_new_tokens=cfg.max_new_tokens, num_return_sequences=n,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **kwargs)
        texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        for j, text in enumerate(texts):
            answers[idx[j // n]].append(data.extract_code(text))
    if dist.world_size() > 1:
        mine = {i: a for i, a in enumerate(answers) if a}  # this rank's intents, by index
        for part in dist.gather_objects(mine):
            for i, a in part.items():
                answers[i] = a
    return answers


def greedy(lm, tok, intents: list[str], run, env, desc: str) -> list[str]:
    lm.to(env["device"])
    fmt = data.resolve_prompt_format(tok, run.cfg.prompt_format)
    return [a[0] for a in decode_batches(lm, tok, fmt, intents, run.cfg, env["ctx"], sample=False, desc=desc)]


# ----------------------------------------------------------------------------- gold, proxy, best-of-n
def proxy_scores(run, env, intents: list[str], codes: list[str]) -> list[float] | None:
    """The RM's proxy score of each (intent, code): raw -> LHP calibration -> sigmoid -> clip, the same map as
    PPO's reward. The one place evaluation asks the reward model; None when there is no checkpoint-reward/."""
    import reward

    folder = run.out / "checkpoint-reward"
    if "proxy_rm" not in env:  # loaded once per process; stage_ppo holds its own copy
        env["proxy_rm"] = (reward.RewardModel.load(folder).to(env["device"]), models.load_tokenizer(str(folder))) \
            if folder.exists() else None
    if env["proxy_rm"] is None:
        return None
    rm, rm_tok = env["proxy_rm"]
    cfg = run.cfg
    raw = reward.score_texts(rm, rm_tok, intents, codes, env["device"])
    return reward.normalize_reward(raw, cfg.reward_scale, cfg.reward_clip_min, cfg.reward_clip_max,
                                   rm.gain, rm.bias).tolist()


def best_of_n(scores):
    """scores [I, n] (the RM's score of n samples per intent) -> [I] index of each row's best sample; ties keep
    the first. Best-of-n (Nakano et al. 2021, WebGPT; Gao et al. 2022): rejection sampling against the RM."""
    import torch

    return torch.as_tensor(scores, dtype=torch.float32).argmax(dim=1)  # [I]


def sentence_chrf(references: list[str], predictions: list[str]) -> list[float]:
    """sacrebleu sentence chrF / 100 per pair: character n-grams, fair to unspaced CoNaLa code."""
    import sacrebleu

    return [sacrebleu.sentence_chrf(p, [r]).score / 100.0 for r, p in zip(references, predictions)]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


# ----------------------------------------------------------------------------- one system
def score_system(run, env, name: str, preds: list[str], step: int, extra_rows: list[dict] | None = None,
                 extra: dict | None = None) -> dict:
    """Every metric, gold and proxy of `preds` (one per test item); writes predictions-<name>.jsonl, logs the
    stats, and caches the result (with per-example lists for the bootstrap) in state.json for --resume."""
    import feedback
    import metrics

    cfg, test = run.cfg, env["test"]
    refs = [e.snippet for e in test]
    scores = metrics.evaluate(refs, preds, bertscore_model=cfg.bertscore_model, bertscore_layers=cfg.bertscore_layers,
                              with_bertscore=cfg.eval_bertscore, codebleu_tokenizer=cfg.codebleu_tokenizer,
                              per_example=True)
    per = {"codebleu": scores.pop("per_example")["codebleu"], "chrf": sentence_chrf(refs, preds)}
    judged = feedback.judge(preds, refs, cfg.exec_timeout_s, log=run.log)
    per["gold"] = [j["score"] for j in judged]
    proxy = proxy_scores(run, env, [e.intent for e in test], preds)
    result = {"gold": mean(per["gold"])} | ({"proxy": mean(proxy)} if proxy else {})
    result |= {k: v for k, v in scores.items() if isinstance(v, (int, float, str))} | {"chrf": mean(per["chrf"])}
    result |= extra or {}
    rows = [{"question_id": e.question_id, "intent": e.intent, "reference": e.snippet, "prediction": p,
             "gold": g, "gold_reasons": j["reasons"], "proxy": proxy[i] if proxy else None,
             "sentence_codebleu": c, "sentence_chrf": f}
            for i, (e, p, g, j, c, f) in enumerate(zip(test, preds, per["gold"], judged, per["codebleu"], per["chrf"]))]
    for row, more in zip(rows, extra_rows or []):
        row.update(more)
    report.write_jsonl(rows, run.out / f"predictions-{name}.jsonl")
    run.stat("eval", step, system=name, **{k: v for k, v in result.items() if k != "n"})
    run.state["evaluated"][name] = dict(result, per_example=per)
    run.save_state()
    run.log(f"eval {name}: " + "  ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float)))
    return run.state["evaluated"][name]


def evaluate_system(run, env, name: str, lm, tok, step: int) -> dict:
    """Greedy decoding on CoNaLa test, then `score_system`."""
    cached = run.state["evaluated"].get(name)
    if cached and "per_example" in cached:
        return cached
    preds = greedy(lm, tok, [e.intent for e in env["test"]], run, env, f"eval {name}")
    return score_system(run, env, name, preds, step) if dist.is_main() else {}


def evaluate_best_of_n(run, env, name: str, lm, tok, n: int, step: int) -> dict:
    """n samples per test intent (the config's temperature/top_p), the RM's argmax is the answer."""
    cached = run.state["evaluated"].get(name)
    if cached and "per_example" in cached:
        return cached
    cfg, test = run.cfg, env["test"]
    lm.to(env["device"])
    fmt = data.resolve_prompt_format(tok, cfg.prompt_format)
    # The same samples whether or not the greedy systems came from a resume; each rank its own stream.
    models.seed_everything(cfg.seed + 1000 * dist.rank())
    samples = decode_batches(lm, tok, fmt, [e.intent for e in test], cfg, env["ctx"], sample=True, n=n,
                             desc=f"eval {name} (n={n})")
    if not dist.is_main():
        return {}
    flat = proxy_scores(run, env, [e.intent for e in test for _ in range(n)], [s for ss in samples for s in ss])
    scores = [flat[i * n:(i + 1) * n] for i in range(len(test))]  # [I, n]
    pick = best_of_n(scores).tolist()
    preds = [ss[j] for ss, j in zip(samples, pick)]
    rows = [{"candidates": ss, "candidate_proxy": sc, "picked": j} for ss, sc, j in zip(samples, scores, pick)]
    return score_system(run, env, name, preds, step, extra_rows=rows, extra={"bon_n": n})


# ----------------------------------------------------------------------------- the over-optimisation curve
def curve_point(run, env, policy_lm, tok, step: int, kl: float) -> dict:
    """Gold and proxy means of the current policy (greedy) on the first eval_slice validation intents, logged as
    stage "ppo_eval" with the PPO step and that step's objective/kl. Called by stage_ppo every eval_every steps."""
    import feedback

    from config import ConfigError

    exs = env["val"][:run.cfg.eval_slice]
    if not exs:
        raise ConfigError(f"--eval_every={run.cfg.eval_every} needs validation intents: --eval_slice="
                          f"{run.cfg.eval_slice} of {len(env['val'])}")
    was_training = policy_lm.training
    preds = greedy(policy_lm, tok, [e.intent for e in exs], run, env, f"ppo_eval step {step}")
    policy_lm.train(was_training)
    if not dist.is_main():
        return {}
    gold = feedback.gold_scores(preds, [e.snippet for e in exs], run.cfg.exec_timeout_s, log=run.log)
    proxy = proxy_scores(run, env, [e.intent for e in exs], preds)
    point = {"gold": mean(gold), "proxy": mean(proxy) if proxy else float("nan"), "objective/kl": kl, "n": len(exs)}
    run.stat("ppo_eval", step, **point)
    run.log(f"ppo_eval step {step}: gold {point['gold']:.4f}  proxy {point['proxy']:.4f}  kl {kl:.3f} "
            f"on {len(exs)} validation intents")
    return point


# ----------------------------------------------------------------------------- the stage
def bootstrap_rows(results: dict[str, dict], n_resamples: int, seed: int) -> list[dict]:
    """Paired bootstrap 95% CIs of (better - baseline) for every comparison whose two systems were evaluated."""
    rows = []
    for better, base in COMPARISONS:
        if better in results and base in results:
            for key in BOOTSTRAP_METRICS:
                ci = report.paired_bootstrap_ci(results[base]["per_example"][key], results[better]["per_example"][key],
                                                n_resamples, seed)
                rows.append({"comparison": f"{better} − {base}", "metric": key, **ci,
                             "verdict": report.ci_verdict(ci, better, base)})
    return rows


def stage_eval(run, env, systems: dict[str, str]) -> None:
    """Evaluate `systems` ({name: model spec}) in order, best-of-n right after "sft", then write the report."""
    import time

    import config
    import sandbox

    cfg, t0 = run.cfg, time.perf_counter()
    if not sandbox.sandbox_status()[0]:
        env["notes"].append(f"gold scores have no exec signal (its weight renormalised away, as the annotator does "
                            f"in training): {sandbox.sandbox_status()[1]}")
    results = {}
    for name, spec in systems.items():
        lm, tok = models.load_causal_lm(spec, seed=cfg.seed)
        results[name] = evaluate_system(run, env, name, lm, tok, step=len(results))
        if name == "sft" and cfg.bon_n:
            if (run.out / "checkpoint-reward").exists():
                results["sft-bon"] = evaluate_best_of_n(run, env, "sft-bon", lm, tok, cfg.bon_n, step=len(results))
            else:
                env["notes"].append("sft-bon skipped: no checkpoint-reward/ to pick with")
        del lm
    if not dist.is_main():  # the other ranks only helped decode
        return
    boot = bootstrap_rows(results, cfg.bootstrap_samples, cfg.seed)
    preds = {n: report.read_jsonl(run.out / f"predictions-{n}.jsonl") for n in results}
    examples = [dict(intent=e.intent, reference=e.snippet, **{n: preds[n][i]["prediction"] for n in results})
                for i, e in enumerate(env["test"][:5])]
    table = {n: {k: v for k, v in r.items() if k != "per_example"} for n, r in results.items()}
    report.write_plots(run.out)
    seconds = {**run.state["stage_seconds"], "eval": time.perf_counter() - t0}
    report.write_report(run.out, table, boot, examples, seconds, str(env["device"]),
                        str(env["dtype"]).replace("torch.", ""), config.to_dict(cfg), env["notes"],
                        reward_eval=run.state.get("reward_eval"))
