"""Stage 4 of rlhf.py: every metric, the annotator's gold score beside the reward model's proxy
score, the best-of-n baseline, sampled gold, the sharpening control and paired bootstrap CIs.

  gold    the synthetic annotator (feedback.judge: chrF, syntax, sandboxed execution capped at the
          reference's, quality) on the test intents, with the reference. It is the "human" of this
          RLHF setup, so gold is the number RLHF is meant to raise.
  proxy   the reward model's calibrated score, the one PPO optimises; it never sees the reference.
Gao et al. 2022 ("Scaling laws for reward model overoptimization"): optimising a proxy raises it
while gold rises, then falls, as KL from the start policy grows; overoptimization.py measures both
during PPO. Best-of-n (`sft-bon`) is the baseline Gao et al. set beside PPO: n SFT samples, the RM
keeps its favourite.

Several ranks (torchrun): the decoding batches are dealt out over the ranks and gathered
(decoding.py), and rank 0 alone scores, writes and reports, so greedy results are those of one
process.
Why a separate module: rlhf.py stays the story of the four stages; stage_eval there is a thin call
into this file.
"""
from __future__ import annotations

import bootstrap
from plumbing import console
import data
from plumbing import dist
from plumbing import models
import plots
import report
from plumbing import runfolder
from decoding import decode_batches, greedy

# Paired bootstrap comparisons (better, baseline) and the per-example metrics they resample.
COMPARISONS = [("sft", "base"), ("ppo", "sft"), ("sft-rs", "sft"), ("ppo", "sft-rs"),
               ("ppo", "sft-sharp"), ("sft-bon", "sft"), ("ppo", "sft-bon")]
BOOTSTRAP_METRICS = ("sampled_gold", "gold", "codebleu", "chrf")
# the annotator's signals (feedback.ANNOTATOR_WEIGHTS)
COMPONENTS = ("similarity", "syntax", "exec", "quality")
# sampled gold costs m decodes + m sandboxed runs per item: RL systems
SAMPLED_SYSTEMS = ("sft", "sft-rs", "ppo")


# --------------------------------------------------------------------------- gold, proxy, best-of-n
def proxy_scores(run, env, intents: list[str], codes: list[str],
                 desc: str = "proxy") -> list[float] | None:
    """The RM's proxy score of each (intent, code): raw -> LHP calibration -> sigmoid -> clip, the
    same map as PPO's reward. The one place evaluation asks the reward model; None when there is no
    checkpoint-reward/."""
    import reward
    import reward_model

    folder = run.out / "checkpoint-reward"
    if "proxy_rm" not in env:  # loaded once per process; stage_ppo holds its own copy
        env["proxy_rm"] = (reward_model.RewardModel.load(folder).to(env["device"]),
                           models.load_tokenizer(str(folder))) if folder.exists() else None
    if env["proxy_rm"] is None:
        return None
    rm, rm_tok = env["proxy_rm"]
    cfg = run.cfg
    raw = reward_model.score_texts(rm, rm_tok, intents, codes, env["device"], stop=run.rank0_stop(),
                                   desc=desc)
    return reward.normalize_reward(raw, cfg.reward_scale, cfg.reward_clip_min, cfg.reward_clip_max,
                                   rm.gain, rm.bias).tolist()


def best_of_n(scores):
    """scores [I, n] (the RM's score of n samples per intent) -> [I] index of each row's best
    sample; ties keep the first. Best-of-n (Nakano et al. 2021, WebGPT; Gao et al. 2022): rejection
    sampling against the RM."""
    import torch

    return torch.as_tensor(scores, dtype=torch.float32).argmax(dim=1)  # [I]


def sentence_chrf(references: list[str], predictions: list[str]) -> list[float]:
    """sacrebleu sentence chrF / 100 per pair: character n-grams, fair to unspaced CoNaLa code."""
    import sacrebleu

    return [sacrebleu.sentence_chrf(p, [r]).score / 100.0 for r, p in zip(references, predictions)]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def sample_and_judge(run, env, lm, tok, exs: list, m: int, temperature: float,
                     desc: str) -> dict | None:
    """Sampled gold, the RL objective measured (Codex's pass@1 from n samples; DAPO's avg@k): m
    samples per intent from the rollout sampler (temperature, top_p 1, top_k 0, as PPO samples),
    each scored by the annotator with sandboxed exec. Same seeds for every system (common random
    numbers). -> {samples [I][m], sample_gold [I][m], per: {sampled_gold: [I], sampled_<component>:
    [I]}} on rank 0, None elsewhere."""
    import feedback

    lm.to(env["device"])
    fmt = data.resolve_prompt_format(tok, run.cfg.prompt_format)
    samples = decode_batches(lm, tok, fmt, [e.intent for e in exs], run.cfg, env["ctx"],
                             sample=True, n=m, desc=desc, temperature=temperature, top_p=1.0,
                             seed=run.cfg.seed + 7919, stop=run.stopping)
    if not dist.is_main():
        return None
    judged = feedback.judge([s for ss in samples for s in ss],
                            [e.snippet for e in exs for _ in range(m)], run.cfg.exec_timeout_s,
                            log=run.log, stop=run.rank0_stop(), desc=f"{desc}: gold")
    groups = [judged[i * m:(i + 1) * m] for i in range(len(exs))]  # [I][m]
    per = {"sampled_gold": [mean([j["score"] for j in g]) for g in groups]}
    for c in COMPONENTS:
        if all(c in j["capped"] for j in judged):
            per[f"sampled_{c}"] = [mean([j["capped"][c] for j in g]) for g in groups]
    return {"samples": samples, "sample_gold": [[j["score"] for j in g] for g in groups],
            "per": per}


def standard_error(xs: list[float]) -> float:
    """SE of the mean over items (sample SD / sqrt(n)); 0 for fewer than 2 items."""
    n = len(xs)
    if n < 2:
        return 0.0
    mu = mean(xs)
    return (sum((x - mu) ** 2 for x in xs) / (n - 1) / n) ** 0.5


# ----------------------------------------------------------------------------- one system
def score_system(run, env, name: str, preds: list[str], step: int,
                 extra_rows: list[dict] | None = None, extra: dict | None = None,
                 sampled: dict | None = None) -> dict:
    """Every metric, gold and proxy of `preds` (one per test item); writes
    predictions-<name>.jsonl, logs the stats, and caches the result (with per-example lists for the
    bootstrap) in state.json for --resume."""
    import feedback
    import metrics

    cfg, test = run.cfg, env["test"]
    refs = [e.snippet for e in test]
    scores = metrics.evaluate(refs, preds, bertscore_model=cfg.bertscore_model,
                              bertscore_layers=cfg.bertscore_layers,
                              with_bertscore=cfg.eval_bertscore,
                              codebleu_tokenizer=cfg.codebleu_tokenizer, per_example=True)
    per = {"codebleu": scores.pop("per_example")["codebleu"], "chrf": sentence_chrf(refs, preds)}
    judged = feedback.judge(preds, refs, cfg.exec_timeout_s, log=run.log, stop=run.rank0_stop(),
                            desc=f"gold {name}")
    per["gold"] = [j["score"] for j in judged]
    for c in COMPONENTS:  # the greedy answer's gold, signal by signal (report.md's breakdown)
        if all(c in j["capped"] for j in judged):
            per[f"gold_{c}"] = [j["capped"][c] for j in judged]
    if sampled:
        per |= sampled["per"]
    proxy = proxy_scores(run, env, [e.intent for e in test], preds, desc=f"proxy {name}")
    result = {"gold": mean(per["gold"])} | ({"proxy": mean(proxy)} if proxy else {})
    result |= {k: v for k, v in scores.items() if isinstance(v, (int, float, str))}
    result |= {"chrf": mean(per["chrf"])}
    if sampled:
        result |= {"sampled_gold": mean(per["sampled_gold"]),
                   "sampled_gold_se": standard_error(per["sampled_gold"]),
                   "eval_samples": len(sampled["samples"][0])}
    result |= extra or {}
    rows = [{"question_id": e.question_id, "intent": e.intent, "reference": e.snippet,
             "prediction": p, "gold": g, "gold_reasons": j["reasons"],
             "proxy": proxy[i] if proxy else None, "sentence_codebleu": c, "sentence_chrf": f}
            for i, (e, p, g, j, c, f) in enumerate(zip(test, preds, per["gold"], judged,
                                                       per["codebleu"], per["chrf"]))]
    for row, more in zip(rows, extra_rows or []):
        row.update(more)
    if sampled:  # anyone can re-score the samples
        for row, ss, sg in zip(rows, sampled["samples"], sampled["sample_gold"]):
            row.update(samples=ss, sample_gold=sg)
    runfolder.write_jsonl(rows, run.out / f"predictions-{name}.jsonl")
    run.stat("eval", step, system=name, **{k: v for k, v in result.items() if k != "n"})
    run.state["evaluated"][name] = dict(result, per_example=per)
    run.save_state()
    run.log(f"eval {name}: "
            + "  ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float)))
    return run.state["evaluated"][name]


def evaluate_system(run, env, name: str, lm, tok, step: int) -> dict:
    """Greedy decoding on CoNaLa test, then `score_system`."""
    cached = run.state["evaluated"].get(name)
    if cached and "per_example" in cached:
        return cached
    preds = greedy(lm, tok, [e.intent for e in env["test"]], run, env, f"eval {name}")
    sampled = None
    if run.cfg.eval_samples and name in SAMPLED_SYSTEMS:
        sampled = sample_and_judge(run, env, lm, tok, env["test"], run.cfg.eval_samples,
                                   run.cfg.temperature, f"eval {name} (m={run.cfg.eval_samples})")
    return score_system(run, env, name, preds, step, sampled=sampled) if dist.is_main() else {}


def evaluate_best_of_n(run, env, name: str, lm, tok, n: int, step: int) -> dict:
    """n samples per test intent (the config's temperature/top_p), the RM's argmax is the answer."""
    cached = run.state["evaluated"].get(name)
    if cached and "per_example" in cached:
        return cached
    cfg, test = run.cfg, env["test"]
    lm.to(env["device"])
    fmt = data.resolve_prompt_format(tok, cfg.prompt_format)
    # The same samples whether or not the greedy systems came from a resume; each rank its own
    # stream.
    models.seed_everything(cfg.seed + 1000 * dist.rank())
    samples = decode_batches(lm, tok, fmt, [e.intent for e in test], cfg, env["ctx"], sample=True,
                             n=n, desc=f"eval {name} (n={n})", stop=run.stopping)
    if not dist.is_main():
        return {}
    flat = proxy_scores(run, env, [e.intent for e in test for _ in range(n)],
                        [s for ss in samples for s in ss], desc=f"proxy {name} candidates")
    scores = [flat[i * n:(i + 1) * n] for i in range(len(test))]  # [I, n]
    pick = best_of_n(scores).tolist()
    preds = [ss[j] for ss, j in zip(samples, pick)]
    rows = [{"candidates": ss, "candidate_proxy": sc, "picked": j}
            for ss, sc, j in zip(samples, scores, pick)]
    return score_system(run, env, name, preds, step, extra_rows=rows, extra={"bon_n": n})


# ----------------------------------------------------------------------------- the stage
def bootstrap_rows(results: dict[str, dict], n_resamples: int, seed: int) -> list[dict]:
    """Paired bootstrap 95% CIs of (better - baseline) for every comparison whose two systems were
    evaluated."""
    rows = []
    for better, base in COMPARISONS:
        if better in results and base in results:
            a, b = results[base]["per_example"], results[better]["per_example"]
            for key in (k for k in BOOTSTRAP_METRICS if k in a and k in b):
                ci = bootstrap.paired_bootstrap_ci(a[key], b[key], n_resamples, seed)
                rows.append({"comparison": f"{better} − {base}", "metric": key, **ci,
                             "verdict": bootstrap.ci_verdict(ci, better, base)})
    return rows


def breakdown_rows(results: dict[str, dict], n_resamples: int, seed: int) -> list[dict]:
    """Which of the annotator's signals moved: paired CIs of every gold component, sampled and
    greedy."""
    rows = []
    for better, base in COMPARISONS:
        if better in results and base in results:
            a, b = results[base]["per_example"], results[better]["per_example"]
            for key in (f"{kind}_{c}" for kind in ("sampled", "gold") for c in COMPONENTS):
                if key in a and key in b:
                    ci = bootstrap.paired_bootstrap_ci(a[key], b[key], n_resamples, seed)
                    rows.append({"comparison": f"{better} − {base}", "metric": key, **ci,
                                 "verdict": bootstrap.ci_verdict(ci, better, base)})
    return rows


def greedy_flips(base_rows: list[dict], new_rows: list[dict], tol: float = 1e-9) -> dict:
    """How the greedy answers changed: items whose answer differs, and of those how many gold
    scores rose or fell. Many flips with as many worse as better is a policy that moved sideways
    (re-draws, not gains)."""
    changed = [(a, b) for a, b in zip(base_rows, new_rows) if a["prediction"] != b["prediction"]]
    return {"items": len(new_rows), "changed": len(changed),
            "better": sum(b["gold"] > a["gold"] + tol for a, b in changed),
            "worse": sum(b["gold"] < a["gold"] - tol for a, b in changed)}


def sharpened_sft(run, env, lm, tok, step: int) -> dict:
    """The sharpening control (Yue et al. 2025: RL at temperature T can gain by sharpening alone):
    SFT's sampled gold on the first eval_slice validation intents at each --sharpen_temperatures
    value, then SFT sampled on test at the best of them, as system sft-sharp. RL must beat this,
    not only SFT at the rollout temperature."""
    import config

    cached = run.state["evaluated"].get("sft-sharp")
    if cached and "per_example" in cached:
        return cached
    cfg, m, val = run.cfg, run.cfg.eval_samples, env["val"][:run.cfg.eval_slice]
    grid = {}
    for t in config.sharpen_grid(cfg):
        got = sample_and_judge(run, env, lm, tok, val, m, t, f"sharpening T={t} (validation)")
        grid[t] = mean(got["per"]["sampled_gold"]) if got else 0.0
    best = dist.broadcast_object(max(grid, key=lambda t: (grid[t], -t)) if dist.is_main() else None)
    rows = runfolder.read_jsonl(run.out / "predictions-sft.jsonl") if dist.is_main() else []
    reuse = dist.broadcast_object(best == cfg.temperature and bool(rows) and "samples" in rows[0])
    if reuse and not dist.is_main():
        return {}
    if reuse:  # the same seeds would draw SFT's own samples again
        got = {"samples": [r["samples"] for r in rows],
               "sample_gold": [r["sample_gold"] for r in rows],
               "per": {k: v for k, v in run.state["evaluated"]["sft"]["per_example"].items()
                       if k.startswith("sampled_")}}
    else:
        got = sample_and_judge(run, env, lm, tok, env["test"], m, best,
                               f"eval sft-sharp (T={best}, m={m})")
    if not dist.is_main():
        return {}
    result = {"sampled_gold": mean(got["per"]["sampled_gold"]), "eval_samples": m,
              "n": len(env["test"]),
              "sampled_gold_se": standard_error(got["per"]["sampled_gold"]), "temperature": best,
              "validation_sampled_gold": {str(t): v for t, v in grid.items()}}
    rows = [{"question_id": e.question_id, "intent": e.intent, "reference": e.snippet,
             "samples": ss, "sample_gold": sg, "temperature": best}
            for e, ss, sg in zip(env["test"], got["samples"], got["sample_gold"])]
    runfolder.write_jsonl(rows, run.out / "predictions-sft-sharp.jsonl")
    run.stat("eval", step, system="sft-sharp", sampled_gold=result["sampled_gold"],
             temperature=best)
    run.log(f"eval sft-sharp: validation sampled gold by temperature {grid}; on test at T={best}: "
            f"{result['sampled_gold']:.4f}")
    run.state["evaluated"]["sft-sharp"] = dict(result, per_example=got["per"])
    run.save_state()
    return run.state["evaluated"]["sft-sharp"]


def objective_lines(results: dict, breakdown: list[dict], flips: dict[str, dict],
                    cfg) -> list[str]:
    """report.md: sampled gold with its SE per system, what each signal did, and the greedy
    flips."""
    sampled = {n: r for n, r in results.items() if "sampled_gold" in r}
    if not sampled and not flips:
        return []
    md = ["", "## The RL objective: sampled gold", "",
          f"Mean gold of {cfg.eval_samples} samples per test intent from the rollout sampler "
          f"(temperature {cfg.temperature}, top_p 1), the quantity RL maximises; every system "
          "draws with the same seeds (common random numbers). sft-sharp: SFT sampled at the "
          "temperature that maximised its sampled gold on "
          f"{cfg.eval_slice} validation intents (the sharpening control).", "",
          "| system | sampled gold | SE | temperature |", "|---|---|---|---|"]
    md += [f"| {n} | {r['sampled_gold']:.4f} | {r['sampled_gold_se']:.4f} "
           f"| {r.get('temperature', cfg.temperature)} |" for n, r in sampled.items()]
    if breakdown:
        md += ["", "Per signal (paired bootstrap 95% CI; `sampled_x`: mean over the samples, "
               "`gold_x`: the greedy answer):", "",
               "| comparison | signal | mean difference | 95% CI | verdict |",
               "|---|---|---|---|---|"]
        md += [f"| {b['comparison']} | {b['metric']} | {b['mean_diff']:+.4f} "
               f"| [{b['ci95_low']:+.4f}, {b['ci95_high']:+.4f}] | {b['verdict']} |"
               for b in breakdown]
    if flips:
        md += ["", "Greedy flips (answers that changed, and whether gold rose or fell):", "",
               "| comparison | items | changed | better | worse |", "|---|---|---|---|---|"]
        md += [f"| {k} | {f['items']} | {f['changed']} | {f['better']} | {f['worse']} |"
               for k, f in flips.items()]
    return md


def stage_eval(run, env, systems: dict[str, str]) -> None:
    """Evaluate `systems` ({name: model spec}) in order, best-of-n right after "sft", then write the
    report."""
    import time

    import config
    import sandbox

    cfg, t0 = run.cfg, time.perf_counter()
    if not sandbox.sandbox_status()[0]:
        env["notes"].append("gold scores have no exec signal (its weight renormalised away, as the "
                            f"annotator does in training): {sandbox.sandbox_status()[1]}")
    results = {}
    for name, spec in systems.items():
        # A system is cached in state.json only once it is fully scored, so resume redoes the one
        # interrupted.
        with console.on_interrupt("on --resume eval keeps the systems it has scored and redoes "
                                  "this one"):
            lm, tok = models.load_causal_lm(spec, seed=cfg.seed)
            results[name] = evaluate_system(run, env, name, lm, tok, step=len(results))
            if name == "sft" and cfg.sharpen_temperatures:
                results["sft-sharp"] = sharpened_sft(run, env, lm, tok, step=len(results))
            if name == "sft" and cfg.bon_n:
                if (run.out / "checkpoint-reward").exists():
                    results["sft-bon"] = evaluate_best_of_n(run, env, "sft-bon", lm, tok,
                                                            cfg.bon_n, step=len(results))
                else:
                    env["notes"].append("sft-bon skipped: no checkpoint-reward/ to pick with")
            del lm
    if not dist.is_main():  # the other ranks only helped decode
        return
    boot = bootstrap_rows(results, cfg.bootstrap_samples, cfg.seed)
    breakdown = breakdown_rows(results, cfg.bootstrap_samples, cfg.seed)
    preds = {n: runfolder.read_jsonl(run.out / f"predictions-{n}.jsonl") for n in results}
    flips = {f"{b} − {a}": greedy_flips(preds[a], preds[b]) for b, a in COMPARISONS
             if a in preds and b in preds
             and "prediction" in preds[a][0] and "prediction" in preds[b][0]}
    examples = [dict(intent=e.intent, reference=e.snippet,
                     **{n: preds[n][i]["prediction"] for n in results
                        if "prediction" in preds[n][i]})
                for i, e in enumerate(env["test"][:5])]
    table = {n: {k: v for k, v in r.items() if k != "per_example"} for n, r in results.items()}
    seconds = {**run.state["stage_seconds"], "eval": time.perf_counter() - t0}
    written = report.write_report(run.out, table, boot, examples, seconds, str(env["device"]),
                                  str(env["dtype"]).replace("torch.", ""), config.to_dict(cfg),
                                  env["notes"], reward_eval=run.state.get("reward_eval"),
                                  sections=objective_lines(table, breakdown, flips, cfg),
                                  breakdown=breakdown, flips=flips)
    run.echo(report.console_summary(written))
    plots.write_plots(run.out)  # after report.json: the systems plot draws its numbers and CIs
