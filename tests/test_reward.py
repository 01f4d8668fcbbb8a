"""Rule signals, corruptions, synthetic feedback, Bradley-Terry on a tiny encoder, normalisation, calibration.

Layers (STYLE.md §7): maths against hand-computed values; parity against an independent computation
(sacrebleu directly, per-text scoring vs the deduplicated minibatch); a real run of `reward.py --config test`.
"""
import ast
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import config
import data
import feedback
import reward
import reward_model
import rules
from plumbing import runfolder
import sandbox

ROOT = Path(__file__).resolve().parents[1]
HAS_SANDBOX = sandbox.sandbox_status()[0]


@pytest.fixture(scope="module")
def conala_snippets():
    train, _ = data.load_conala(ROOT / "conala-corpus")
    return [e.snippet for e in train[:300]]


# ----------------------------------------------------------------------------- rule signals
def test_syntax_signal():
    assert rules.syntax_signal("x = sorted(a, key=len)") == 1.0
    assert rules.syntax_signal("x = sorted(a, key=len") == 0.0
    assert rules.syntax_signal("   \n") == 0.0


def test_exec_signal():
    assert [rules.exec_signal(o) for o in sandbox.OUTCOMES] == [1.0, 0.0, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        rules.exec_signal("crashed")


def test_similarity_is_chrf():
    import sacrebleu

    ref = "df.sort_values(by='a', ascending=False)"
    assert rules.similarity_signal(ref, ref) == pytest.approx(1.0)
    assert rules.similarity_signal("zzz", ref) == pytest.approx(0.0, abs=0.02)
    cand = "df.sort_values('a')"
    assert rules.similarity_signal(cand, ref) == pytest.approx(sacrebleu.sentence_chrf(cand, [ref]).score / 100)
    assert 0.3 < rules.similarity_signal(cand, ref) < 0.9
    assert rules.similarity_signal("", ref) == 0.0


def test_quality_signal():
    ref = "x.sort()"  # 8 characters
    assert rules.quality_signal(ref, ref) == 1.0
    assert rules.quality_signal("x.sort(reverse=True)", ref) == pytest.approx(8 / 20)
    assert rules.quality_signal("x.sort()\nx.sort()", "x.sort()\ny.sort()") == pytest.approx(0.5)  # repeats
    assert rules.quality_signal("```\nx.sort()\n```", ref) == pytest.approx(8 / 16 * 2 / 3 * 0.5)
    assert rules.quality_signal("x.sort()\nThis sorts the list.", ref) == pytest.approx(8 / 29 * 0.5)
    assert rules.quality_signal("for x in y:\n    f(x)", "for x in y:\n    f(x)") == 1.0  # not prose
    assert rules.quality_signal("", ref) == 0.0


def test_rule_signals_keys_and_range():
    sig = rules.rule_signals("x.sort()", "x.sort()", "name_error")
    assert sig == {"syntax": 1.0, "similarity": pytest.approx(1.0), "quality": 1.0, "exec": 0.5}
    no_exec = rules.rule_signals("x.sort(", "x.sort()")
    assert set(no_exec) == {"syntax", "similarity", "quality"} and no_exec["syntax"] == 0.0
    assert all(0.0 <= v <= 1.0 for v in no_exec.values())


# ----------------------------------------------------------------------------- corruptions
def _calls(code):
    return sorted(n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "?")
                  for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call))


def test_corruptions_break_what_they_claim(conala_snippets):
    applied = {k: 0 for k in feedback.CORRUPTIONS}
    for i, code in enumerate(conala_snippets):
        rng = random.Random(i)
        if (out := feedback.corrupt_syntax(code, rng)) is not None:
            applied["syntax_break"] += 1
            assert rules.syntax_signal(out) == 0.0, (code, out)
        if (out := feedback.corrupt_rename_api(code, rng)) is not None:
            applied["renamed_api"] += 1
            old, new = _calls(code), _calls(out)
            gone, added = set(old) - set(new), set(new) - set(old)
            assert len(added) == 1 and len(gone) <= 1 and len(old) == len(new), (code, out)
            assert added.pop() not in feedback.known_names()
        if (out := feedback.corrupt_drop_arg(code, rng)) is not None:
            applied["dropped_arg"] += 1
            tree, new = ast.parse(code), ast.parse(out)
            assert feedback._n_call_args(new) == feedback._n_call_args(tree) - 1, (code, out)
        if (out := feedback.corrupt_truncate(code, rng)) is not None:
            applied["truncated"] += 1
            assert code.startswith(out) and 0 < len(out) < len(code.rstrip())
    assert applied["syntax_break"] == len(conala_snippets)  # every reference parses, so every one can break
    assert min(applied.values()) > 0.5 * len(conala_snippets), applied


def test_drop_arg_handles_keywords_and_unicode():
    rng = random.Random(0)
    outs = {feedback.corrupt_drop_arg("print('£', sep='é')", random.Random(s)) for s in range(20)}
    assert outs == {"print(sep='é')", "print('£')"}
    assert feedback.corrupt_drop_arg("x[::-1]", rng) is None  # no call, no corruption


@pytest.mark.skipif(not HAS_SANDBOX, reason="no sandbox")
def test_corruptions_change_execution():
    rng = random.Random(0)
    ok = "' '.join(sorted(['b', 'a']))"
    assert sandbox.execute_snippet(ok).outcome == "ok"
    assert sandbox.execute_snippet(feedback.corrupt_rename_api(ok, rng)).outcome in ("name_error", "runtime_error")
    assert sandbox.execute_snippet("int('7', base=8)").outcome == "ok"
    assert sandbox.execute_snippet(feedback.corrupt_syntax(ok, rng)).outcome == "syntax_error"


# ----------------------------------------------------------------------------- synthetic feedback
TOY = [data.Example(1, "sort list `a` in reverse order", "a.sort(reverse=True)"),
       data.Example(2, "join the strings in list `words` with a space", "' '.join(words)"),
       data.Example(3, "convert string `s` to an integer in base 16", "int(s, 16)"),
       data.Example(4, "get the absolute value of `x`", "abs(x)")]


def test_candidates_and_pairs(tmp_path):
    cands = feedback.build_candidates(TOY, {1: ["a.sort(reverse=True)", "sorted(a)[::-1]"]}, seed=0)
    kinds = [c["kind"] for c in cands if c["question_id"] == 1]
    assert kinds[0] == "reference" and "syntax_break" in kinds and "other_intent" in kinds
    assert kinds.count("policy") == 1  # the sample equal to the reference is kept once, as "reference"
    annotated = feedback.annotate(cands, timeout_s=2.0, log=lambda m: None)
    for qid in range(1, 5):
        mine = [c for c in annotated if c["question_id"] == qid]
        assert max(mine, key=lambda c: c["score"])["kind"] == "reference"
    pairs = feedback.preference_pairs(annotated)
    assert pairs and all(p["margin"] >= feedback.MIN_MARGIN and p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert all(p["chosen"] != p["rejected"] and "similarity=" in p["reasons"]["rejected"] for p in pairs)
    counts = feedback.pair_counts_by_kind(pairs)
    assert sum(counts.values()) == len(pairs) and "reference" not in counts  # the reference always wins
    path = runfolder.write_jsonl(pairs, tmp_path / "pairs.jsonl")
    assert runfolder.read_jsonl(path) == pairs


def test_annotator_weights_and_exec_cap():
    sig = {"similarity": 0.9, "syntax": 1.0, "exec": 0.5, "quality": 1.0}
    assert feedback.annotator_score(sig)[0] == pytest.approx(0.5 * 0.9 + 0.2 + 0.15 * 0.5 + 0.15)
    capped, reasons = feedback.annotator_score(sig, "name_error", reference_exec=0.25)  # the reference failed too
    assert capped == pytest.approx(0.5 * 0.9 + 0.2 + 0.15 * 0.25 + 0.15) and "capped" in reasons
    no_exec = {k: v for k, v in sig.items() if k != "exec"}
    assert feedback.annotator_score(no_exec)[0] == pytest.approx((0.45 + 0.2 + 0.15) / 0.85)
    # cap_exec: the signals PPO's rule reward uses, the same cap as the score (exec only ever lowered)
    assert feedback.cap_exec(sig, 0.25) == dict(sig, exec=0.25)
    assert feedback.cap_exec(sig, 1.0) == sig and feedback.cap_exec(sig, None) == sig
    assert feedback.cap_exec(no_exec, 0.25) == no_exec


def test_annotator_without_sandbox_drops_exec(monkeypatch):
    monkeypatch.setattr(feedback.sandbox, "sandbox_status", lambda: (False, "execution disabled: test"))
    logged = []
    annotated = feedback.annotate(feedback.build_candidates(TOY[:2], None, seed=0), log=logged.append)
    assert logged and "warning" in logged[0] and "execution disabled" in logged[0]
    assert all("exec" not in c["signals"] and "disabled" in c["reasons"] for c in annotated)
    assert all(0.0 <= c["score"] <= 1.0 for c in annotated)


def test_validation_pairs_are_held_out(monkeypatch):
    cfg = config.make_config("test")
    train_pairs, val_pairs = feedback.build_preference_pairs(TOY[:3], TOY[3:], None, cfg, log=lambda m: None)
    assert {p["question_id"] for p in train_pairs} == {1, 2, 3}
    assert {p["question_id"] for p in val_pairs} == {4}


# ----------------------------------------------------------------------------- Bradley-Terry
def test_bradley_terry_loss_hand_values():
    assert reward.bradley_terry_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))
    assert reward.bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(
        math.log(1 + math.exp(-2)))


def test_masked_mean():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # [1, 3, 2]; the last token is padding
    assert torch.equal(reward_model.masked_mean(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_intent_batches_keep_intents_whole():
    pairs = [{"question_id": q, "intent": f"i{q}"} for q in (1, 1, 1, 2, 2, 3, 4, 4, 4, 4)]
    batches = reward.intent_batches(pairs, 3, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(10))
    for b in batches:
        qids = [pairs[i]["question_id"] for i in b]
        assert all(qids.count(q) == sum(p["question_id"] == q for p in pairs) for q in set(qids))


def _kinds_pairs() -> list[dict]:
    """Intent q in 1..4 holds q - 1 policy>policy pairs and one reference>syntax_break pair; intent 1 also one
    policy>truncated pair: 0 + 1 + 2 + 3 = 6 policy>policy, 1 with one policy sample, 4 with none, 11 pairs."""
    out = []
    for q in (1, 2, 3, 4):
        out += [{"question_id": q, "intent": f"i{q}", "n": n, "chosen_kind": "policy", "rejected_kind": "policy"}
                for n in range(q - 1)]
        out.append({"question_id": q, "intent": f"i{q}", "chosen_kind": "reference", "rejected_kind": "syntax_break"})
    out.append({"question_id": 1, "intent": "i1", "chosen_kind": "policy", "rejected_kind": "truncated"})
    return out


def test_policy_first_subsample_takes_policy_pairs_before_the_rest():
    pairs = _kinds_pairs()
    assert len(pairs) == 11
    counts = [reward.policy_count(p) for p in pairs]
    assert counts.count(2) == 6 and counts.count(1) == 1 and counts.count(0) == 4
    for cap, want in ((6, [2] * 6), (7, [2] * 6 + [1]), (9, [2] * 6 + [1, 0, 0])):
        kept = reward.subsample_pairs(pairs, cap, seed=0, mode="policy_first", log=lambda *_: None)
        assert sorted((reward.policy_count(p) for p in kept), reverse=True) == want
        where = [next(i for i, p in enumerate(pairs) if p is k) for k in kept]
        assert where == sorted(where)  # the pairs themselves, in file order
    assert reward.subsample_pairs(pairs, 0, 0, "policy_first") is pairs  # 0 = all
    # the intents mode keeps whole intents: 7 pairs asked, whole intents give >= 7
    kept = reward.subsample_pairs(pairs, 7, seed=0, mode="intents", log=lambda *_: None)
    assert len(kept) >= 7 and all(sum(k["question_id"] == q for k in kept) in (0, sum(p["question_id"] == q
                                  for p in pairs)) for q in (1, 2, 3, 4))
    with pytest.raises(ValueError, match="unknown subsample mode"):
        reward.subsample_pairs(pairs, 5, 0, "nope")


def _toy_pairs(n: int, seed: int) -> list[dict]:
    """Separable: the chosen code calls `sorted`, the rejected one breaks it with `del`; intents vary."""
    rng = random.Random(seed)
    names = ["items", "values", "rows", "names", "scores", "words", "keys", "lines"]
    out = []
    for i in range(n):
        v = rng.choice(names)
        out.append({"question_id": i, "intent": f"sort the list `{v}`", "reference": "SECRET_REFERENCE",
                    "chosen": f"sorted({v})", "rejected": f"del {v}[0]", "chosen_kind": "toy", "rejected_kind": "toy"})
    return out


def test_bradley_terry_learns_a_separable_toy_set(monkeypatch):
    from plumbing import models

    cfg = config.make_config("test", {"reward_epochs": 3, "reward_learning_rate": 1e-3, "reward_batch_size": 8})
    encoder, tok = models.load_encoder("tiny:bert", seed=0)
    rm = reward_model.RewardModel(encoder)
    seen = []
    real = reward_model.tokenize_pairs
    monkeypatch.setattr(reward_model, "tokenize_pairs", lambda t, i, c, m: seen.extend(i + c) or real(t, i, c, m))
    history = reward.train_reward_model(rm, tok, _toy_pairs(96, 0), _toy_pairs(32, 1), cfg, torch.device("cpu"),
                                        models.autocast_ctx(torch.device("cpu"), torch.float32), log=lambda m: None)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert set(history[0]) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"}
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] >= 0.9
    final = reward.evaluate_pairs(rm, tok, _toy_pairs(32, 1), torch.device("cpu"), by_kind=True)
    assert final["accuracy"] == history[-1]["val_accuracy"] and final["accuracy_by_kind"] == {"toy": final["accuracy"]}
    assert not any("SECRET_REFERENCE" in s for s in seen)  # the RM never reads the reference


def test_minibatch_scores_match_per_text_scores(tmp_path):
    from plumbing import models

    encoder, tok = models.load_encoder("tiny:bert", seed=0)
    rm = reward_model.RewardModel(encoder).eval()
    pairs = _toy_pairs(6, 2)
    with torch.no_grad():
        r_chosen, r_rejected = reward.pair_scores(rm, tok, pairs, torch.device("cpu"), torch.no_grad())
    one_by_one = torch.stack([reward_model.score_texts(rm, tok, [p["intent"]], [p["chosen"]], torch.device("cpu"))[0]
                              for p in pairs])
    assert torch.allclose(r_chosen, one_by_one, atol=1e-5)
    rm.gain, rm.bias = 2.0, -1.0
    rm.save(tmp_path)
    tok.save_pretrained(tmp_path)
    again = reward_model.RewardModel.load(tmp_path)
    assert (again.gain, again.bias) == (2.0, -1.0)
    rej = reward_model.score_texts(again, tok, [p["intent"] for p in pairs], [p["rejected"] for p in pairs], "cpu")
    assert torch.allclose(rej, r_rejected, atol=1e-5)


# ----------------------------------------------------------------------------- normalisation
def test_sigmoid_then_clip_keeps_order_where_clip_then_sigmoid_saturates():
    raw = torch.tensor([-8.0, -4.0, -1.0, 0.0, 1.0, 4.0, 8.0])
    ours = reward.normalize_reward(raw, lo=0.0, hi=1.0)
    assert torch.all(ours[1:] > ours[:-1])  # monotone: extreme scores stay distinguishable
    clip_first = torch.sigmoid(raw.clamp(0.0, 1.0))  # the wrong order
    assert len(set(clip_first.tolist())) == 2  # -8, -4, -1 and 0 all collapse to 0.5; 1, 4 and 8 to 0.731
    assert clip_first.max().item() == pytest.approx(1 / (1 + math.exp(-1)))  # and the range [lo, hi] is never used


def test_normalize_bounds_scale_and_calibration():
    raw = torch.linspace(-20, 20, 41)
    out = reward.normalize_reward(raw, scale=2.0, lo=0.2, hi=0.9)
    assert out.min().item() == pytest.approx(0.2) and out.max().item() == pytest.approx(0.9)
    assert reward.normalize_reward(torch.tensor([1.0]), scale=2.0).item() == pytest.approx(1 / (1 + math.exp(-0.5)))
    assert reward.normalize_reward(torch.tensor([3.0]), gain=2.0, bias=-6.0).item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        reward.normalize_reward(raw, lo=0.9, hi=0.2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_are_errors(bad):
    with pytest.raises(FloatingPointError):
        reward.normalize_reward(torch.tensor([0.0, bad]))
    with pytest.raises(FloatingPointError):
        reward.fit_calibration([1.0, 2.0, bad])
    with pytest.raises(FloatingPointError):
        reward.combined_reward(torch.tensor([0.5, bad]), None, config.make_config("test"))
    cfg = config.make_config("test", {"w_syntax": 1.0})
    with pytest.raises(FloatingPointError):
        reward.combined_reward(torch.tensor([0.5, 0.5]), [{"syntax": 1.0}, {"syntax": bad}], cfg)


def test_calibration_gives_mean_zero_std_one():
    raw = torch.randn(500, generator=torch.Generator().manual_seed(0)) * 3.0 + 5.0
    gain, bias = reward.fit_calibration(raw)
    z = gain * raw + bias
    assert z.mean().item() == pytest.approx(0.0, abs=1e-5) and z.std(unbiased=False).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        reward.fit_calibration(torch.full((10,), 2.0))


def test_combined_reward():
    cfg = config.make_config("test", {"w_rm": 0.5, "w_syntax": 0.2, "w_exec": 0.1, "w_quality": 0.3})
    rules = [{"syntax": 1.0, "exec": 0.5, "quality": 0.4, "similarity": 0.9},
             {"syntax": 0.0, "exec": 0.0, "quality": 1.0, "similarity": 0.1}]
    out = reward.combined_reward(torch.tensor([0.8, 0.2]), rules, cfg)
    assert out.tolist() == pytest.approx([0.5 * 0.8 + 0.2 + 0.05 + 0.12, 0.5 * 0.2 + 0.3])
    with pytest.raises(ValueError, match="execute_many"):
        reward.combined_reward(torch.tensor([0.8]), [{"syntax": 1.0, "quality": 1.0}], cfg)
    only_rm = config.make_config("test")  # w_rm=1, rule weights 0: rules may be None
    assert reward.combined_reward(torch.tensor([0.8]), None, only_rm).tolist() == pytest.approx([0.8])


# ----------------------------------------------------------------------------- end to end
@pytest.mark.skipif(not HAS_SANDBOX, reason="no sandbox")
def test_cli_reward_stage_on_test_preset(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "reward.py", "--config", "test", f"--output_dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "held-out pairwise accuracy" in proc.stdout
    for name in ("preference_pairs_train.jsonl", "preference_pairs_val.jsonl", "reward_history.json",
                 "checkpoint-reward/reward_head.pt", "checkpoint-reward/tokenizer.json"):
        assert (tmp_path / name).exists(), name
    pair = runfolder.read_jsonl(tmp_path / "preference_pairs_train.jsonl")[0]
    assert {"intent", "chosen", "rejected", "margin", "chosen_kind", "rejected_kind", "reasons"} <= set(pair)
