"""plots.py: the figures' data are the report's numbers (pure functions, checked against committed real runs and
by hand), and `python plots.py RUN_DIR` draws every plot a run supports. The end-to-end check on a fresh
`--config test` run is tests/test_pipeline.py::test_plots_are_drawn_and_redrawn_from_the_run."""
import json
import math
import statistics
import subprocess
import sys

import pytest

import plots
from conftest import ROOT

RLOO = ROOT / "docs" / "cpu-2026-12-06-rloo64"  # 500 test items, predictions saved, RLOO, sampled gold
QUICK = ROOT / "docs" / "quick-2026-12-06"  # 100 test items, no predictions files, GAE


def read_jsonl(path):
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def test_bar_values_are_the_reports_and_whiskers_are_95_percent_cis():
    rep = json.loads((RLOO / "report.json").read_text())
    preds = {n: read_jsonl(RLOO / f"predictions-{n}.jsonl") for n in rep["systems"]}
    rows = plots.system_bars(rep["systems"], preds)
    assert {(r["system"], r["metric"]) for r in rows} == {(s, m) for s in ("sft", "ppo") for m in
                                                          ("gold", "proxy", "sampled_gold", "codebleu", "chrf",
                                                           "syntax_valid_rate")}
    for r in rows:  # bug caught: a bar drawn from anything but report.json's own number
        assert r["value"] == rep["systems"][r["system"]][r["metric"]], r
    by = {(r["system"], r["metric"]): r for r in rows}
    gold = [p["gold"] for p in preds["ppo"]]  # the CI by hand: 1.96 x sample SD / sqrt(n), around the report's mean
    half = 1.959964 * statistics.stdev(gold) / math.sqrt(len(gold))
    assert by["ppo", "gold"]["high"] - by["ppo", "gold"]["value"] == pytest.approx(half, rel=1e-9)
    assert by["ppo", "gold"]["value"] - by["ppo", "gold"]["low"] == pytest.approx(half, rel=1e-9)
    se = rep["systems"]["sft"]["sampled_gold_se"]
    assert by["sft", "sampled_gold"]["high"] == pytest.approx(rep["systems"]["sft"]["sampled_gold"] + 1.959964 * se)
    p = rep["systems"]["sft"]["syntax_valid_rate"]  # 0.922 of 500: binomial SE 0.01199
    assert by["sft", "syntax_valid_rate"]["high"] - p == pytest.approx(1.959964 * math.sqrt(p * (1 - p) / 500))
    assert by["sft", "codebleu"]["low"] is None  # a corpus statistic: no per-system CI is claimed


def test_without_per_item_scores_gold_has_no_whisker():
    rep = json.loads((QUICK / "report.json").read_text())
    rows = plots.system_bars(rep["systems"], {})
    assert [r["system"] for r in rows if r["metric"] == "gold"] == ["base", "sft", "ppo"]  # the report's order
    assert all(r["low"] is None for r in rows if r["metric"] in ("gold", "proxy"))
    # a predictions file from another run (a different mean) is not taken for this one's items
    other = {"sft": [{"gold": 0.0}, {"gold": 1.0}]}
    assert next(r for r in plots.system_bars(rep["systems"], other) if r["metric"] == "gold"
                and r["system"] == "sft")["low"] is None


def test_rl_panels_follow_the_estimator():
    steps = [{"step": 1, "objective/score": 0.5, "objective/kl": 0.1, "objective/kl_coef": 0.05,
              "policy/approx_kl": 0.0, "policy/clipfrac": 0.0, "objective/entropy": 9.0,
              "response/length_mean": 12.0, "loss/value": float("nan")}]
    keys = lambda cfg: [k for k, _ in plots.rl_panels(steps, cfg)]
    rloo = keys({"advantage": "rloo", "adaptive_kl": False})
    assert "loss/value" not in rloo and "objective/kl_coef" not in rloo  # no empty or flat panel
    assert {"policy/approx_kl", "policy/clipfrac", "objective/entropy", "response/length_mean"} <= set(rloo)
    steps[0]["loss/value"] = 0.3
    assert "loss/value" in keys({"advantage": "gae"}) and "objective/kl_coef" in keys({"adaptive_kl": True})
    assert "loss/value" not in keys({"advantage": "grpo"})


def test_kl_axis_is_the_mean_over_the_steps_since_the_previous_point():
    ppo = [{"step": s, "objective/kl": kl} for s, kl in zip(range(1, 9), [0.0, 0.2, 0.4, 0.2, -0.2, 0.0, 0.1, 0.1])]
    curve = [{"step": 0, "gold": 0.4}, {"step": 4, "gold": 0.5}, {"step": 8, "gold": 0.45}]
    got = plots.kl_curve(curve, ppo)
    by_step = {p["step"]: p for p in got}
    assert by_step[0]["kl_mean"] == 0.0
    assert by_step[4]["kl_mean"] == pytest.approx(0.2)  # (0 + .2 + .4 + .2) / 4
    assert by_step[8]["kl_mean"] == pytest.approx(0.0)  # (-.2 + 0 + .1 + .1) / 4
    assert by_step[4]["kl_se"] == pytest.approx(statistics.stdev([0.0, 0.2, 0.4, 0.2]) / 2)
    assert [p["kl_mean"] for p in got] == sorted(p["kl_mean"] for p in got)


def test_cli_redraws_a_committed_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.jsonl", "report.json", "config.json"):
        (run / name).write_bytes((QUICK / name).read_bytes())
    res = subprocess.run([sys.executable, str(ROOT / "plots.py"), str(run)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    names = ["systems.png", "sft_loss.png", "reward_training_metrics.png", "rlhf_training_metrics.png",
             "overoptimization.png"]
    assert res.stdout.split() == [str(run / "plots" / n) for n in names]
    assert all((run / "plots" / n).stat().st_size > 10_000 for n in names)
