"""Evaluation maths by hand: gold = the annotator's weighted signals, best-of-n = the RM's argmax, the paired
bootstrap's sign and its "no significant difference", and --tensorboard's event file."""
import math

import pytest
import sacrebleu

import bootstrap
import config
import evaluate
import feedback
import report
import sandbox


def chrf(code, ref):
    return sacrebleu.sentence_chrf(code, [ref]).score / 100


@pytest.mark.skipif(not sandbox.sandbox_status()[0], reason="needs bubblewrap")
def test_gold_scores_match_the_annotator_weights_by_hand():
    cases = [
        # (prediction, reference, expected): 0.5 chrF + 0.2 syntax + 0.15 exec (capped at the reference's) + 0.15 quality
        ("x = 1", "x = 1", 1.0),  # identical and runs: every signal is 1
        # NameError on both sides: exec 0.5; quality = length ratio 13/14
        ("mylist.sort()", "sorted(mylist)", 0.5 * chrf("mylist.sort()", "sorted(mylist)") + 0.2 + 0.15 * 0.5
         + 0.15 * 13 / 14),
        # does not parse: syntax 0 and exec 0 (syntax_error); same length, one line: quality 1
        ("x = (", "x = 1", 0.5 * chrf("x = (", "x = 1") + 0.15),
        # runs fine, but the reference only reaches FileNotFoundError (runtime_error 0.25): exec is capped at 0.25
        ("1 + 1", "open('missing.txt')", 0.5 * chrf("1 + 1", "open('missing.txt')") + 0.2 + 0.15 * 0.25
         + 0.15 * 5 / 19),
    ]
    got = feedback.gold_scores([c[0] for c in cases], [c[1] for c in cases], timeout_s=5.0, log=lambda m: None)
    assert got == pytest.approx([c[2] for c in cases], abs=1e-9)


def test_gold_scores_without_a_sandbox_drop_exec_and_warn(monkeypatch):
    monkeypatch.setattr(sandbox, "sandbox_status", lambda: (False, "bubblewrap is not installed"))
    logged = []
    got = feedback.gold_scores(["mylist.sort()"], ["sorted(mylist)"], log=logged.append)
    # weights renormalised over similarity, syntax, quality: 0.5 + 0.2 + 0.15 = 0.85
    expected = (0.5 * chrf("mylist.sort()", "sorted(mylist)") + 0.2 + 0.15 * 13 / 14) / 0.85
    assert got == pytest.approx([expected], abs=1e-9)
    assert any("without the exec signal" in m and "bubblewrap" in m for m in logged)


def test_best_of_n_picks_the_reward_models_argmax():
    scores = [[0.1, 0.9, 0.3], [2.0, -1.0, 5.0], [0.5, 0.5, 0.1]]  # [I=3, n=3]
    assert evaluate.best_of_n(scores).tolist() == [1, 2, 0]  # a tie keeps the first sample


def test_sentence_chrf_is_sacrebleu_per_pair_over_100():
    assert evaluate.sentence_chrf(["x = 1", "sorted(a)"], ["x = 1", "a.sort()"]) == \
        pytest.approx([1.0, chrf("a.sort()", "sorted(a)")])


def test_bootstrap_ci_has_the_known_sign_and_zero_means_no_difference():
    a = [0.2] * 30
    better = [0.2 + 0.05 + 0.01 * (i % 3) for i in range(30)]  # every item gains 0.05 to 0.07
    ci = bootstrap.paired_bootstrap_ci(a, better, n_resamples=500, seed=0)
    assert ci["mean_diff"] == pytest.approx(0.06)
    assert 0.05 <= ci["ci95_low"] <= ci["mean_diff"] <= ci["ci95_high"] <= 0.07
    assert bootstrap.ci_verdict(ci, "ppo", "sft") == "ppo better"
    worse = bootstrap.paired_bootstrap_ci(better, a, n_resamples=500, seed=0)
    assert worse["ci95_high"] < 0 and bootstrap.ci_verdict(worse, "ppo", "sft") == "ppo worse"
    mixed = [0.2 + (0.1 if i % 2 else -0.1) for i in range(30)]  # half gain, half lose: mean 0
    ci0 = bootstrap.paired_bootstrap_ci(a, mixed, n_resamples=500, seed=0)
    assert ci0["ci95_low"] < 0 < ci0["ci95_high"]
    assert bootstrap.ci_verdict(ci0, "ppo", "sft") == "no significant difference"


def test_report_prints_the_cis_and_names_the_tokeniser(tmp_path):
    per = lambda xs: {"gold": xs, "codebleu": xs, "chrf": xs}  # noqa: E731
    results = {"sft": {"n": 4, "gold": 0.3, "per_example": per([0.3, 0.3, 0.3, 0.3])},
               "ppo": {"n": 4, "gold": 0.6, "per_example": per([0.6, 0.6, 0.6, 0.6])},
               "base": {"n": 4, "gold": 0.3, "per_example": per([0.2, 0.4, 0.2, 0.4])}}
    rows = evaluate.bootstrap_rows(results, n_resamples=200, seed=0)
    assert {(r["comparison"], r["metric"]) for r in rows} == \
        {(c, m) for c in ("sft − base", "ppo − sft") for m in ("gold", "codebleu", "chrf")}
    table = {n: {k: v for k, v in r.items() if k != "per_example"} for n, r in results.items()}
    cfg = config.to_dict(config.make_config("test"))
    rep = report.write_report(tmp_path, table, rows, [], {}, "cpu", "float32", cfg, [])
    md = (tmp_path / "report.md").read_text()
    assert "| ppo − sft | gold | +0.3000 | [+0.3000, +0.3000] | ppo better |" in md
    assert "| sft − base | gold | +0.0000 |" in md and "no significant difference" in md
    assert "codebleu (conala)" in md and rep["codebleu_tokenizer"] == "conala"
    assert rep["bootstrap_codebleu_ppo_minus_sft"]["mean_diff"] == pytest.approx(0.3)


def test_tensorboard_event_file_holds_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = report.Run(tmp_path, config.make_config("test", {"tensorboard": True}))
    run.stat("ppo", 3, **{"objective/kl": 0.5, "response/length_mean": 7})
    run.stat("eval", 1, system="sft", gold=0.25, codebleu_tokenizer="conala", proxy=math.nan)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"ppo/objective/kl", "ppo/response/length_mean", "eval/sft/gold"}
    (ev,) = acc.Scalars("ppo/objective/kl")
    assert (ev.step, ev.value) == (3, 0.5)
    assert acc.Scalars("eval/sft/gold")[0].value == 0.25
    assert "objective/kl" in (tmp_path / "metrics.jsonl").read_text()  # the JSONL record is still written
