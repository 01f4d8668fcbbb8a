"""The run's figures in RUN_DIR/plots/, from metrics.jsonl, report.json and predictions-*.jsonl
(split from report.py).

  systems.png                 each system's gold, proxy and headline metrics as bars with 95% CI
                              whiskers, and the report's paired bootstrap CIs of the differences
                              (the numbers the verdicts rest on)
  overoptimization.png        gold and proxy on the validation slice against PPO step, and against
                              the mean KL (Gao et al. 2022), with standard errors
  sft_loss.png                SFT (and rejection-sampling fine-tuning) loss per optimizer step
  reward_training_metrics.png the reward model's Bradley-Terry loss and pairwise accuracy per epoch
  rlhf_training_metrics.png   the PPO panels that mean something for the estimator in use

`python plots.py RUN_DIR` redraws them for a finished (or interrupted) run. Pure functions build
each figure's data (`system_bars`, `kl_curve`, `rl_panels`), so tests check the numbers without
reading pixels.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from plumbing.runfolder import read_jsonl

# the pipeline's order of systems; ppo-step<N> (old runs) sort between at 3
SYSTEM_ORDER = {"base": 0, "sft": 1, "sft-sharp": 1.2, "sft-bon": 2, "sft-rs": 2.5, "ppo": 4}
Z95 = 1.959964  # two-sided 95% normal quantile
BAR_PANELS = (("Gold and proxy (what PPO optimises)", ("gold", "proxy", "sampled_gold")),
              ("Headline metrics vs the reference", ("codebleu", "chrf", "syntax_valid_rate")))
# identically ~0 when each batch gets one epoch
ON_POLICY_ZERO = ("policy/approx_kl", "policy/clipfrac")
# metric -> per-item field of predictions-<system>.jsonl
PER_ITEM = {"gold": "gold", "proxy": "proxy"}
# PPO panels: (logged key, label, shown when). "gae" panels exist only with a critic; kl_coef only
# when it moves.
RL_PANELS = (("objective/score", "score (reward before KL)", "always"),
             ("objective/kl", "KL to SFT (nats/response)", "always"),
             ("objective/kl_coef", "kl_coef (adaptive)", "adaptive"),
             ("policy/approx_kl", "approx_kl (k3, old→new)", "always"),
             ("policy/clipfrac", "policy clipfrac", "always"),
             ("objective/entropy", "entropy (nats/response)", "always"),
             ("response/length_mean", "response length (tokens)", "always"),
             ("response/eos_fraction", "responses that end (EOS)", "always"),
             ("loss/value", "value loss", "gae"),
             ("value/explained_variance", "value explained variance", "gae"))


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: files only
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


# ----------------------------------------------------------------------------- systems
def pipeline_order(e: dict) -> tuple:
    """base, sft, sft-bon, ppo-step<N> by N (runs before the curve replaced them), then the final
    ppo."""
    name = e["system"]
    if name.startswith("ppo-step"):
        return (3, int(name[len("ppo-step"):]))
    return (SYSTEM_ORDER.get(name, 5), 0)


def half_width(values: list[float]) -> float:
    """Half the 95% normal CI of a mean over items."""
    n = len(values)
    mean = sum(values) / n
    return Z95 * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def system_bars(systems: dict[str, dict], preds: dict[str, list[dict]] | None = None) -> list[dict]:
    """One row per (system, metric) with the report's value and a 95% CI where one exists -> the bar
    table.

    The whisker comes from the per-item scores (gold, proxy: predictions-<system>.jsonl), the
    sampled-gold SE, or, for a rate, its binomial SE. CodeBLEU and chrF are corpus statistics with
    no per-system CI here: their CIs are the paired bootstrap of the differences, drawn beside."""
    rows = []
    for name, m in systems.items():
        for _, keys in BAR_PANELS:
            for key in keys:
                value = m.get(key)
                if value is None:
                    continue
                items = [p[PER_ITEM[key]] for p in (preds or {}).get(name, [])
                         if key in PER_ITEM and p.get(PER_ITEM[key]) is not None]
                half = None
                # this run's own items
                if len(items) > 1 and abs(sum(items) / len(items) - value) < 1e-6:
                    half = half_width(items)
                elif key == "sampled_gold" and m.get("sampled_gold_se") is not None:
                    half = Z95 * m["sampled_gold_se"]
                elif key == "syntax_valid_rate" and m.get("n"):
                    half = Z95 * math.sqrt(value * (1 - value) / m["n"])
                low, high = (None, None) if half is None else (value - half, value + half)
                rows.append({"system": name, "metric": key, "value": value, "low": low,
                             "high": high})
    return rows


def plot_systems(rows: list[dict], bootstrap: list[dict], path: Path) -> None:
    plt = _plt()
    names = list(dict.fromkeys(r["system"] for r in rows))
    fig = plt.figure(figsize=(11, 7.5))
    grid = fig.add_gridspec(2, 2, height_ratios=(1, 0.9 if bootstrap else 0.05))
    colors = plt.get_cmap("tab10").colors
    for col, (title, keys) in enumerate(BAR_PANELS):
        ax = fig.add_subplot(grid[0, col])
        keys = [k for k in keys if any(r["metric"] == k for r in rows)]
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            got = [next((r for r in rows if r["system"] == name and r["metric"] == k), None)
                   for k in keys]
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(keys))]
            vals = [r["value"] if r else math.nan for r in got]
            ax.bar(xs, vals, width, color=colors[i % 10], label=name)
            # no whisker where no CI
            ci = [(x, r) for x, r in zip(xs, got) if r and r["low"] is not None]
            if ci:
                ax.errorbar([x for x, _ in ci], [r["value"] for _, r in ci], fmt="none",
                            ecolor="black", elinewidth=1, capsize=3,
                            yerr=[[r["value"] - r["low"] for _, r in ci],
                                  [r["high"] - r["value"] for _, r in ci]])
            for x, v in zip(xs, vals):
                if v == v:
                    ax.text(x, v / 2, f"{v:.3f}", ha="center", va="center", rotation=90,
                            fontsize=7, color="white")
        ax.set_xticks(range(len(keys)), [k.replace("_", " ") for k in keys])
        ax.set_ylim(0, 1)
        ax.set_ylabel("score (0–1)")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if col == 0:
            ax.legend(fontsize=8, title="system", title_fontsize=8, loc="upper right")
    n = next((b["n_items"] for b in bootstrap), None)
    fig.suptitle(f"Systems on CoNaLa test{f' ({n} items)' if n else ''}. "
                 "Whiskers: 95% CI where the run kept per-item scores; "
                 "corpus-level CodeBLEU and chrF have none\n"
                 "(the paired differences below are the CIs the report's verdicts rest on)",
                 fontsize=10)
    if bootstrap:
        _plot_differences(fig.add_subplot(grid[1, :]), bootstrap)
    _save(fig, path)


def _plot_differences(ax, bootstrap: list[dict]) -> None:
    """The report's paired bootstrap rows as a forest plot: a CI that crosses 0 is no significant
    difference."""
    labels = [f"{b['comparison']}: {b['metric'].replace('_', ' ')}" for b in bootstrap][::-1]
    rows = bootstrap[::-1]
    for y, b in enumerate(rows):
        color = "grey" if b["ci95_low"] <= 0 <= b["ci95_high"] \
            else "tab:green" if b["mean_diff"] > 0 else "tab:red"
        ax.errorbar(b["mean_diff"], y, xerr=[[b["mean_diff"] - b["ci95_low"]],
                                             [b["ci95_high"] - b["mean_diff"]]],
                    fmt="o", color=color, capsize=4)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlabel("mean paired difference (95% bootstrap CI); green/red: significant, grey: not")
    ax.set_title(f"Paired differences ({bootstrap[0]['n_resamples']} bootstrap resamples "
                 "over the same items)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)


# -------------------------------------------------------------------------- over-optimisation curve
def curve_points(stats: list[dict]) -> list[dict]:
    """The ppo_eval points by step; a step logged twice (re-run after a resume) keeps its last
    value."""
    return sorted({p["step"]: p for p in stats if p["stage"] == "ppo_eval"}.values(),
                  key=lambda p: p["step"])


def kl_curve(curve: list[dict], ppo: list[dict]) -> list[dict]:
    """Each curve point with the mean rollout KL over the PPO steps since the previous point, and
    its SE.

    One step's `objective/kl` comes from one batch of rollouts and is noisy (it ran backwards
    between points in older plots); the mean over the steps that led to the point is the KL the
    policy was at. Sorted by that KL."""
    kl = {s["step"]: s["objective/kl"] for s in ppo if "objective/kl" in s}
    out, prev = [], 0
    for p in curve:
        window = [kl[s] for s in range(prev + 1, p["step"] + 1) if s in kl] \
            or [p.get("objective/kl", 0.0)]
        mean = sum(window) / len(window)
        se = math.sqrt(sum((k - mean) ** 2 for k in window) / (len(window) - 1) / len(window)) \
            if len(window) > 1 else 0.0
        out.append({**p, "kl_mean": 0.0 if p["step"] == 0 else mean,
                    "kl_se": 0.0 if p["step"] == 0 else se})
        prev = p["step"]
    return sorted(out, key=lambda p: p["kl_mean"])


def plot_overoptimization(curve: list[dict], ppo: list[dict], path: Path) -> None:
    """Gold (the annotator) and proxy (the RM) on the fixed validation slice: a proxy that keeps
    rising while gold flattens or falls is the reward model being over-optimised (Gao et al.
    2022)."""
    plt = _plt()
    fig, (ax_step, ax_kl) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    by_kl = kl_curve(curve, ppo)
    for key, marker, color in (("gold", "o", "tab:blue"), ("proxy", "s", "tab:orange")):
        label = f"{key} ({'annotator' if key == 'gold' else 'reward model'}) ± SE"
        ax_step.errorbar([p["step"] for p in curve], [p[key] for p in curve],
                         yerr=[p.get(f"{key}_se", 0.0) for p in curve], marker=marker, capsize=3,
                         color=color, label=label)
        ax_kl.errorbar([p["kl_mean"] for p in by_kl], [p[key] for p in by_kl],
                       xerr=[p["kl_se"] for p in by_kl],
                       yerr=[p.get(f"{key}_se", 0.0) for p in by_kl],
                       marker=marker, capsize=3, color=color, label=label)
    # alternate the offsets: neighbouring points may sit at almost the same KL
    for i, p in enumerate(by_kl):
        ax_kl.annotate(f"step {p['step']}", (p["kl_mean"], p["gold"]), textcoords="offset points",
                       xytext=(4, -12 - 10 * (i % 2)), fontsize=7, color="grey")
    ax_step.set_xlabel("PPO step")
    ax_step.set_xticks([p["step"] for p in curve])
    ax_step.set_ylabel("mean score on the validation slice (0–1)")
    ax_kl.set_xlabel("mean rollout KL to SFT over the steps before the point (nats/response) ± SE")
    ax_step.legend(fontsize=8, loc="best")
    for ax in (ax_step, ax_kl):
        ax.grid(alpha=0.3)
    what = f"{curve[0].get('samples')} samples each" if curve[0].get("samples") else "greedy"
    fig.suptitle(f"Over-optimisation: gold and proxy on {curve[0]['n']} validation intents "
                 f"({what})", fontsize=10)
    _save(fig, path)


# ----------------------------------------------------------------------------- training curves
def plot_sft(stats: list[dict], path: Path) -> None:
    """Cross-entropy per optimizer step (train, thin; held-out at the stage's start and end, dots)
    for SFT and, where it ran, rejection-sampling fine-tuning (sft-rs)."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    stages = [s for s in ("sft", "sft-rs") if any(r["stage"] == s and "loss" in r for r in stats)]
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(5.5 * max(1, len(stages)), 3.8),
                             squeeze=False)
    for ax, stage in zip(axes[0], stages):
        rows = [r for r in stats if r["stage"] == stage]
        train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        ax.plot(*zip(*train), linewidth=0.8, alpha=0.6, label="train (per step)")
        # a running mean over ~5% of the steps shows the trend through the batch noise
        if len(train) >= 10:
            w = max(2, len(train) // 20)
            ax.plot([s for s, _ in train[w - 1:]],
                    [sum(v for _, v in train[i - w + 1:i + 1]) / w
                     for i in range(w - 1, len(train))], label=f"train (mean of {w})")
        if val:
            ax.plot(*zip(*val), "o", color="black", label="held-out")
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_title({"sft": "SFT", "sft-rs": "rejection-sampling fine-tuning (sft-rs)"}[stage],
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_reward(epochs: list[dict], path: Path, final: dict | None = None) -> None:
    """Bradley-Terry loss and pairwise accuracy per epoch (bars when there is one epoch: a one-point
    line reads as nothing), and the stage's final held-out accuracy on policy>policy pairs, the
    comparisons PPO faces."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.8))
    xs = [e["step"] for e in epochs]  # the reward stage logs its epoch as the step
    for key, ax in (("loss", ax1), ("accuracy", ax2)):
        train, val = [e[f"train_{key}"] for e in epochs], [e[f"val_{key}"] for e in epochs]
        if len(xs) == 1:
            bars = ax.bar(["train", "held-out"], [train[0], val[0]],
                          color=["tab:blue", "tab:orange"], width=0.5)
            ax.bar_label(bars, fmt="%.3f", fontsize=8)
            ax.set_xlabel(f"epoch {xs[0]} (the only one)")
        else:
            ax.plot(xs, train, marker="o", label=f"train {key}")
            ax.plot(xs, val, marker="s", label=f"held-out {key}")
            ax.set_xlabel("epoch")
            ax.set_xticks(xs)
        ax.set_ylabel("Bradley-Terry loss" if key == "loss" else "pairwise accuracy")
        ax.grid(alpha=0.3, axis="y")
    ax2.axhline(0.5, color="red", linewidth=0.6, linestyle=":", label="chance")
    if final and final.get("policy_policy_accuracy") is not None:
        ax2.axhline(final["policy_policy_accuracy"], color="tab:green", linestyle="--", linewidth=1,
                    label=f"held-out policy>policy: {final['policy_policy_accuracy']:.3f}")
    ax2.set_ylim(0.4, 1.0)
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left" if ax is ax2 else "best")
    fig.suptitle("Reward model training")
    _save(fig, path)


def rl_panels(steps: list[dict], cfg: dict) -> list[tuple[str, str]]:
    """(key, label) of the PPO panels worth drawing: logged with a finite value, a value head's only
    under GAE, kl_coef only when adaptive (a fixed beta is a flat line)."""
    when = {"always": True, "gae": cfg.get("advantage", "gae") == "gae",
            "adaptive": bool(cfg.get("adaptive_kl"))}
    return [(k, label) for k, label, w in RL_PANELS if when[w] and
            any(isinstance(s.get(k), (int, float)) and s[k] == s[k] for s in steps)]


def plot_rlhf(steps: list[dict], cfg: dict, path: Path) -> None:
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    panels = rl_panels(steps, cfg)
    # one pass over each batch: old and new policy agree
    on_policy = all(s.get("ppo/epochs") == 1 for s in steps)
    cols = 4
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.9 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels):
        # a re-run step keeps its last value
        pts = sorted({s["step"]: s[key] for s in steps if key in s}.items())
        ax.set_title(label, fontsize=9, pad=10)  # room for a "1e-5" scale label
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        # entropy 129.392 stays 129.392, not +1.29e2 and 0.003
        ax.ticklabel_format(axis="y", useOffset=False)
        if key in ON_POLICY_ZERO and max(abs(v) for _, v in pts) < 1e-6 and on_policy:
            ax.text(0.5, 0.5, "0 at every step: one epoch per batch,\n"
                    "so the policy that sampled is the one\nupdated (on-policy)",
                    ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set_xlabel("PPO step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    beta = "" if cfg.get("adaptive_kl") else f", fixed kl_coef {cfg.get('init_kl_coef')}"
    fig.suptitle(f"RL training: {cfg.get('advantage', 'gae')} advantages{beta}", fontsize=10)
    _save(fig, path)


# ----------------------------------------------------------------------------- all of a run's plots
def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def write_plots(run_dir: Path) -> list[Path]:
    """Every plot the run's files support -> the paths written (a stage that did not run has no
    plot)."""
    run_dir = Path(run_dir)
    stats = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    cfg, rep = _json(run_dir / "config.json"), _json(run_dir / "report.json")
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    systems = rep.get("systems") or {
        e["system"]: e for e in sorted((s for s in stats if s["stage"] == "eval"),
                                       key=pipeline_order)}
    if systems:
        preds = {n: read_jsonl(run_dir / f"predictions-{n}.jsonl") for n in systems
                 if (run_dir / f"predictions-{n}.jsonl").exists()}
        plot_systems(system_bars(systems, preds), rep.get("bootstrap", []), out / "systems.png")
        written.append(out / "systems.png")
    ppo = [s for s in stats if s["stage"] == "ppo"]
    jobs = [("sft_loss.png", any(s["stage"] in ("sft", "sft-rs") and "loss" in s for s in stats),
             lambda p: plot_sft(stats, p)),
            ("reward_training_metrics.png", any(s["stage"] == "reward" for s in stats),
             lambda p: plot_reward([s for s in stats if s["stage"] == "reward"], p,
                                   next((s for s in stats[::-1] if s["stage"] == "reward_eval"),
                                        None))),
            ("rlhf_training_metrics.png", bool(ppo), lambda p: plot_rlhf(ppo, cfg, p)),
            ("overoptimization.png", bool(curve_points(stats)),
             lambda p: plot_overoptimization(curve_points(stats), ppo, p))]
    for name, present, draw in jobs:
        if present:
            draw(out / name)
            written.append(out / name)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print("usage: python plots.py RUN_DIR  "
              "(redraws RUN_DIR/plots/ from its metrics.jsonl and report.json)")
        sys.exit(0 if len(sys.argv) == 2 else 2)
    for p in write_plots(Path(sys.argv[1])):
        print(p)
