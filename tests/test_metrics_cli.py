"""metrics.py's CLI against a committed run's report.json, its flags and help, and blank predictions (issue 25)."""
import json
import subprocess
import sys

import pytest

import codebleu_score
import codebleu_ts
import feedback
import metrics
import metrics_cli
import ruby_ted
import rules
from conftest import ROOT

RUN = ROOT / "docs" / "quick-2026-12-03"  # a quick run whose predictions-*.jsonl are committed beside report.json


def report_row(system: str) -> dict:
    return json.loads((RUN / "report.json").read_text())["systems"][system]


def cli(*args, timeout=1800):
    return subprocess.run([sys.executable, str(ROOT / "metrics.py"), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_reproduces_every_reportable_column_of_report_json(tmp_path):
    """Every number report.json gives the ppo system, recomputed from predictions-ppo.jsonl with the CLI's defaults
    (conala tokens, the embedded MiniLM) plus --gold, equal at the printed precision (4 decimals). proxy is the only
    column left out: it needs the run's reward model. ppo has no blank prediction, so the blank-prediction fix
    moves nothing here (base's blanks: the next test).
    --exec_timeout_s=60, not the report's 2 s: no ppo snippet timed out in the report (gold_reasons), so a longer
    limit changes no outcome, while 2 s of wall clock on a loaded machine turned dozens into timeouts (gold 0.43)."""
    rows = [json.loads(line) for line in (RUN / "predictions-ppo.jsonl").read_text().splitlines() if line.strip()]
    assert not any("exec_outcome=timeout" in r["gold_reasons"] for r in rows)
    out = tmp_path / "scores.json"
    res = cli(RUN / "predictions-ppo.jsonl", "--gold", "--exec_timeout_s=60", "--per_example", "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    got, want = json.loads(out.read_text()), report_row("ppo")
    if got["gold_exec"] != "sandbox":
        pytest.skip(f"no sandbox here, so gold has no exec signal: {got['gold_exec']}")
    assert got["per_example"]["gold"] == [r["gold"] for r in rows]  # item by item, as predictions-ppo.jsonl says
    assert got["per_example"]["chrf"] == [r["sentence_chrf"] for r in rows]
    assert got["per_example"]["codebleu"] == pytest.approx([r["sentence_codebleu"] for r in rows], abs=1e-12)
    assert set(want) - set(got) == {"proxy"}
    for key, value in want.items():
        if key == "proxy":
            continue
        if isinstance(value, float):
            assert f"{got[key]:.4f}" == f"{value:.4f}", key
            assert f"{key}  " in res.stdout and f"{value:.4f}" in res.stdout
        else:
            assert got[key] == value, key


def test_blank_predictions_are_the_only_difference_from_the_report_on_base():
    """predictions-base.jsonl holds 5 blank predictions. report.json scored each as syntax-valid, at the RUBY tree
    level, with RUBY = the empty module's similarity to the reference tree; now each is invalid and scores 0. So
    syntax_valid_rate and ruby_tree_fraction drop by exactly 5/100 and ruby by exactly those 5 old similarities / 100;
    corpus CodeBLEU sums counts, where a blank adds nothing to any numerator either way, so it is unchanged, as is
    every other column."""
    rows = [json.loads(line) for line in (RUN / "predictions-base.jsonl").read_text().splitlines() if line.strip()]
    refs, preds = [r["reference"] for r in rows], [r["prediction"] for r in rows]
    blank = [r for r, p in zip(refs, preds) if not p.strip()]
    assert len(blank) == 5
    got, want = metrics.evaluate(refs, preds, codebleu_tokenizer="conala", with_bertscore=False), report_row("base")
    n = len(rows)
    old_ruby = sum(ruby_ted.tree_similarity(codebleu_ts.parse(r), codebleu_ts.parse("")) for r in blank)
    assert old_ruby > 0  # the bug: ~0.15 each for no code at all
    assert got["ruby"] == pytest.approx(want["ruby"] - old_ruby / n, abs=1e-12)
    assert got["syntax_valid_rate"] == pytest.approx(want["syntax_valid_rate"] - len(blank) / n)
    assert got["ruby_tree_fraction"] == pytest.approx(want["ruby_tree_fraction"] - len(blank) / n)
    for key in ("codebleu", "ngram_match", "weighted_ngram_match", "syntax_match", "dataflow_match", "bleu",
                "conala_bleu", "rouge_l", "exact_match"):
        assert f"{got[key]:.4f}" == f"{want[key]:.4f}", key
    sentence = {(r["reference"], r["prediction"]): r["sentence_codebleu"] for r in rows}
    assert {sentence[(r, "")] for r in blank} == {0.25}  # report time: the dataflow quirk's 0.25
    assert {d["codebleu"] for d in codebleu_score.codebleu_per_example(blank, [""] * 5, tokenizer="conala")} == {0.0}


@pytest.mark.parametrize("blank", ["", " ", "\n\t "])
def test_a_blank_prediction_scores_zero_on_every_metric_and_is_not_valid(blank):
    ref = "sorted(l, key=lambda x: x[1])"
    for tok in codebleu_score.TOKENIZERS:
        cb = codebleu_score.sentence_codebleu(ref, blank, tokenizer=tok)
        assert {cb[k] for k in codebleu_score.CODEBLEU_KEYS} == {0.0}, tok  # codebleu 0.7.0: 0.25 (dataflow "or 1")
        assert codebleu_score.codebleu([ref, ref], [blank, blank], tokenizer=tok)["codebleu"] == 0.0
    assert metrics.ruby(ref, blank) == 0.0 and metrics.ruby_level(ref, blank) == "empty"
    assert not codebleu_ts.syntax_valid(blank)
    assert rules.syntax_signal(blank) == 0.0  # the annotator agrees: the gold components and the metrics match
    signals = rules.rule_signals(blank, ref, "ok")  # gold too: blank code parses and runs "ok" (was 0.075)
    assert signals == {"syntax": 0.0, "similarity": 0.0, "quality": 0.0, "exec": 0.0}
    assert feedback.annotator_score(signals, "ok", 1.0)[0] == 0.0
    assert rules.rule_signals(blank, ref) == {"syntax": 0.0, "similarity": 0.0, "quality": 0.0}  # no sandbox
    out = metrics.evaluate([ref, "x = 1"], [blank, "x = 1"], with_bertscore=False, per_example=True)
    assert out["per_example"]["codebleu"][0] == 0.0 and out["per_example"]["ruby"][0] == 0.0
    assert out["per_example"]["syntax_valid"] == [False, True] and out["syntax_valid_rate"] == 0.5
    assert out["rouge_l"] == 0.5 and out["exact_match"] == 0.5
    assert metrics.ruby("", "") == 1.0  # two blank programs are still identical


def test_cli_help_lists_snake_case_flags_and_the_reports_defaults():
    res = cli("-h", timeout=300)
    assert res.returncode == 0 and res.stderr == ""
    for flag in ("--codebleu_tokenizer", "--gold", "--exec_timeout_s", "--no_bertscore", "--bertscore_model"):
        assert flag in res.stdout
    assert "--codebleu-tokenizer" in res.stdout  # the old spelling, kept as an alias
    text = " ".join(res.stdout.split())  # argparse wraps lines at the terminal width
    assert "conala (report.md's; the default)" in text and "(default 2.0)" in text


def test_cli_default_tokenizer_is_conala_and_the_dashed_alias_still_works(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text('{"reference": "sorted(l,key=f)", "prediction": "sorted(l,key=g)"}\n'
                    '{"reference": "x = [1]", "prediction": ""}\n')
    assert metrics_cli.main([str(path), "--no_bertscore", "--out", str(tmp_path / "a.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["codebleu_tokenizer"] == "conala"
    assert a["codebleu"] == codebleu_score.codebleu(["sorted(l,key=f)", "x = [1]"], ["sorted(l,key=g)", ""],
                                                    tokenizer="conala")["codebleu"]
    assert a["chrf"] == pytest.approx(rules.similarity_signal("sorted(l,key=g)", "sorted(l,key=f)") / 2)
    assert "gold" not in a  # gold runs code: only when asked
    assert metrics_cli.main([str(path), "--no-bertscore", "--codebleu-tokenizer", "whitespace", "--out",
                         str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["codebleu_tokenizer"] == "whitespace"
    assert "codebleu_tokenizer    whitespace" in capsys.readouterr().out
