"""The RL objective and the update that climbs it, against hand-computed numbers: advantage normalisation
(token / batch / group / none) for k = 2 and k = 4 with a zero-spread group, the missing-EOS filter, the
rejection-sampling pick, sampled evaluation with common random numbers, and the sampled-gold bootstrap."""
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bootstrap
import decoding
import evaluate
import advantages
import ppo
from policy import make_reference, PolicyWithValueHead, Rollout
import rejection
from plumbing import runfolder
from test_ppo import cfg_for, tiny  # noqa: F401 -- the module fixture
from test_ppo_fixes import hand_rollout

ROOT = Path(__file__).resolve().parents[1]


def rollout_with(lengths, eos, kl_per_token=0.0):
    """Rows of the given real lengths (right-padded to the longest), policy - reference = kl_per_token[row]."""
    B, R = len(lengths), max(lengths)
    mask = torch.tensor([[1] * n + [0] * (R - n) for n in lengths])
    ro = hand_rollout(scores_len=R, n=B)
    kl = torch.as_tensor(kl_per_token, dtype=torch.float32).reshape(-1, 1).expand(B, R) if \
        not isinstance(kl_per_token, float) else torch.full((B, R), kl_per_token)
    return Rollout(**{**ro.__dict__, "response_mask": mask, "eos": torch.tensor(eos),
                          "ref_logprobs": ro.logprobs - kl})


def rloo_cfg(**kw):
    k = kw.pop("k", 2)
    return cfg_for(batch_size=4, mini_batch_size=4, micro_batch_size=4, samples_per_prompt=k, advantage="rloo",
                   kl_estimator="k1", **kw)


# ----------------------------------------------------------------------------- advantage normalisation by hand
def test_rloo_none_keeps_the_reward_scale_with_unequal_lengths_and_kl():
    """k = 2, rows of 1, 3, 2, 2 tokens with per-token KL 0.1, 0.2, 0, 0 and beta 0.5: the sequence reward is
    score - 0.5 * summed KL = [0.9 - 0.05, 0.3 - 0.3, 0.4, 0.4]; RLOO advantages are the pairwise differences."""
    ro = rollout_with([1, 3, 2, 2], [True] * 4, kl_per_token=[0.1, 0.2, 0.0, 0.0])
    out = advantages.compute_rewards(ro, torch.tensor([0.9, 0.3, 0.4, 0.4]), kl_coef=0.5,
                              cfg=rloo_cfg(advantage_norm="none"))
    r = [0.9 - 0.5 * 0.1, 0.3 - 0.5 * 0.6, 0.4, 0.4]
    want = [r[0] - r[1], r[1] - r[0], 0.0, 0.0]  # the second group has zero spread: no signal
    for row, (n, a) in enumerate(zip([1, 3, 2, 2], want)):
        torch.testing.assert_close(out.advantages[row, :n], torch.full((n,), a))
        assert out.advantages[row, n:].abs().sum() == 0  # padding stays 0


def test_batch_norm_whitens_over_sequences_not_tokens():
    """The same batch under advantage_norm=batch: each *sequence* counts once. Raw RLOO [a, -a, 0, 0] has mean 0
    and unbiased std sqrt(2 a^2 / 3), so the whitened values are +-sqrt(3/2) and 0 whatever the lengths."""
    ro = rollout_with([1, 3, 2, 2], [True] * 4, kl_per_token=[0.1, 0.2, 0.0, 0.0])
    out = advantages.compute_rewards(ro, torch.tensor([0.9, 0.3, 0.4, 0.4]), kl_coef=0.5,
                              cfg=rloo_cfg(advantage_norm="batch"))
    s = math.sqrt(1.5)
    torch.testing.assert_close(out.advantages[:, 0], torch.tensor([s, -s, 0.0, 0.0]), atol=1e-4, rtol=1e-4)
    # token whitening of the same batch weights the 3-token row 3x: its values differ from +-sqrt(3/2)
    tok = advantages.compute_rewards(ro, torch.tensor([0.9, 0.3, 0.4, 0.4]), kl_coef=0.5,
                              cfg=rloo_cfg(advantage_norm="token"))
    assert abs(tok.advantages[0, 0].item() - s) > 0.05


def test_group_norm_k4_divides_by_the_groups_std_and_zero_spread_gives_zero():
    """k = 4, scores [1, 2, 3, 6] and [0.5] * 4, no KL: RLOO advantages (k/(k-1)) (r - mean) = [-8/3, -4/3, 0, 4]
    divided by the group's unbiased std sqrt(14/3); the equal group gives exactly 0, not 0/0."""
    cfg = cfg_for(batch_size=8, mini_batch_size=8, micro_batch_size=8, samples_per_prompt=4, advantage="rloo",
                  advantage_norm="group")
    ro = rollout_with([2] * 8, [True] * 8)
    out = advantages.compute_rewards(ro, torch.tensor([1.0, 2.0, 3.0, 6.0] + [0.5] * 4), kl_coef=0.0, cfg=cfg)
    sd = math.sqrt(14 / 3)
    want = torch.tensor([-8 / 3, -4 / 3, 0.0, 4.0, 0, 0, 0, 0]) / torch.tensor([sd + 1e-4] * 4 + [1e-4] * 4)
    torch.testing.assert_close(out.advantages[:, 0], want, atol=1e-4, rtol=1e-4)


def test_grpo_auto_is_group_and_none_is_dr_grpo():
    cfg = dict(batch_size=4, mini_batch_size=4, micro_batch_size=4, samples_per_prompt=2, advantage="grpo")
    ro = rollout_with([2] * 4, [True] * 4)
    scores = torch.tensor([0.2, 0.8, 0.5, 0.5001])
    auto = advantages.compute_rewards(ro, scores, kl_coef=0.0, cfg=cfg_for(**cfg))
    none = advantages.compute_rewards(ro, scores, kl_coef=0.0, cfg=cfg_for(advantage_norm="none", **cfg))
    torch.testing.assert_close(none.advantages[:, 0], torch.tensor([-0.3, 0.3, -0.00005, 0.00005]))
    # GRPO's std division turns a 1e-4 spread into ~+-0.4, as big as a real 0.6 spread gets (+-0.707)
    assert abs(auto.advantages[2, 0].item()) > 0.25 and abs(auto.advantages[0, 0].item()) == pytest.approx(
        0.3 / (math.sqrt(0.18) + 1e-4), rel=1e-4)


# ----------------------------------------------------------------------------- the missing-EOS rule
def test_missing_eos_filter_drops_the_unfinished_sample_from_its_group():
    """k = 4 with the third sample unfinished (score 0): penalty mode gives it -1 - 0.5 against the others and
    shifts their baselines; filter gives it 0 and compares the three finished ones among themselves."""
    ro = rollout_with([2, 2, 4, 2], [True, True, False, True])
    scores = torch.tensor([0.6, 0.3, 0.0, 0.3])
    filt = advantages.compute_rewards(ro, scores, kl_coef=0.0, cfg=rloo_cfg(k=4, advantage_norm="none",
                                                                      missing_eos="filter"))
    torch.testing.assert_close(filt.advantages[:, 0], torch.tensor([0.3, -0.15, 0.0, -0.15]))
    assert filt.advantages[2].abs().sum() == 0
    pen = advantages.compute_rewards(ro, scores, kl_coef=0.0, cfg=rloo_cfg(k=4, advantage_norm="none",
                                                                     missing_eos="penalty", missing_eos_penalty=1.0))
    # penalty: r = [0.6, 0.3, -1, 0.3]; leave-one-out means [-0.4/3, -0.1/3, 0.4, -0.1/3]: the unfinished
    # sample's -1.4 is four times any finished one's advantage and sets the step's direction
    torch.testing.assert_close(pen.advantages[:, 0], torch.tensor([0.6 + 0.4 / 3, 0.3 + 0.1 / 3, -1.4, 0.3 + 0.1 / 3]))


def test_missing_eos_filter_with_every_sample_unfinished_gives_no_update_signal():
    ro = rollout_with([3] * 4, [False] * 4)
    for norm in ("none", "batch", "token", "group"):
        out = advantages.compute_rewards(ro, torch.tensor([0.1, 0.9, 0.2, 0.3]), kl_coef=0.0,
                                  cfg=rloo_cfg(advantage_norm=norm, missing_eos="filter"))
        assert out.advantages.abs().sum() == 0, norm


def test_update_logs_how_often_the_grad_clip_binds(tiny):
    """policy/grad_clipped is the fraction of optimizer steps whose gradient norm exceeded max_grad_norm: a
    huge max_grad_norm (the domain's bound, 1e6) never binds (0), a tiny one always does (1)."""
    import copy

    lm, tok, ids, am = tiny
    for max_norm, want in ((1e6, 0.0), (1e-9, 1.0)):
        torch.manual_seed(0)
        cfg = cfg_for(max_new_tokens=4, max_grad_norm=max_norm, ppo_epochs=2)
        policy = PolicyWithValueHead(copy.deepcopy(lm))
        stats, _, _ = ppo.train_ppo_iteration(policy, make_reference(lm), torch.optim.AdamW(
            policy.parameters(), lr=1e-3), ppo.make_kl_controller(cfg), ids, am, tok,
            lambda texts: torch.tensor([float(len(t) % 3) for t in texts]), cfg)
        assert stats["policy/grad_clipped"] == want


# ----------------------------------------------------------------------------- rejection sampling
def test_rejection_sampling_keeps_the_argmax_of_the_reward_it_is_given():
    rows = [{"question_id": 1, "intent": "a", "reference": "x", "samples": ["s1", "s2", "s3"]},
            {"question_id": 2, "intent": "b", "reference": "y", "samples": ["t1", "  ", "t2"]},  # blank dropped
            {"question_id": 3, "intent": "c", "reference": "z", "samples": [""]}]  # nothing to keep
    table = {"s1": 0.2, "s2": 0.9, "s3": 0.5, "t1": 0.7, "t2": 0.7}  # a tie keeps the first

    def score_fn(intents, references, codes):
        assert len(intents) == len(references) == len(codes) == 5
        return torch.tensor([table[c] for c in codes])

    kept, rewards = rejection.select_examples(rows, score_fn)
    assert [(e.question_id, e.intent, e.snippet) for e in kept] == [(1, "a", "s2"), (2, "b", "t1")]
    assert rewards == pytest.approx([0.9, 0.7])
    assert rejection.best_per_group([0.1, 0.3, 0.3, 5.0], [3, 1]) == [1, 0]


def test_prompt_selection_ranks_by_reward_spread_and_drops_equal_groups():
    # spreads by hand: population std of [0, 1] is 0.5, of [0.2, 0.2, 0.2] is 0, of [0, 0, 0, 1] is sqrt(3)/4
    assert rejection.group_spread([0.0, 1.0]) == pytest.approx(0.5)
    assert rejection.group_spread([0.2, 0.2, 0.2]) == 0.0
    assert rejection.group_spread([0.0, 0.0, 0.0, 1.0]) == pytest.approx(math.sqrt(3) / 4)
    # question 11 has equal rewards (dropped), 13 was never sampled (dropped), 10 and 14 tie (train order)
    spreads = {10: 0.1, 11: 0.0, 12: 0.3, 14: 0.1}
    assert rejection.disagreement_order([10, 11, 12, 13, 14], spreads) == [2, 0, 4]
    assert rejection.disagreement_order([11, 13], spreads) == []


def test_scored_samples_cache_is_used_only_for_the_same_samples(tmp_path):
    rows = [{"question_id": 1, "intent": "a", "reference": "x", "samples": ["s1", "s2"]},
            {"question_id": 2, "intent": "b", "reference": "y", "samples": ["t1"]}]
    path = tmp_path / rejection.REWARDS_FILE
    rejection.write_scored(rows, [[0.1, 0.9], [0.5]], path)
    assert rejection.read_scored(path, rows) == [[0.1, 0.9], [0.5]]
    other = [dict(rows[0], samples=["s1", "s3"]), rows[1]]  # another sample: the cache must not be trusted
    assert rejection.read_scored(path, other) is None
    assert rejection.read_scored(path, rows[:1]) is None
    kept, rewards = rejection.pick_best(rows, [[0.1, 0.9], [0.5]])
    assert [e.snippet for e in kept] == ["s2", "t1"] and rewards == [0.9, 0.5]


# ----------------------------------------------------------------------------- sampled evaluation
def test_bootstrap_of_sampled_gold_by_hand():
    """Per-intent sampled gold is the mean of its m sample scores; the paired CI of a constant difference is
    that constant, and the SE is the sample SD over sqrt(n)."""
    sft = [[0.2, 0.4], [0.6, 0.8], [0.1, 0.3]]  # m = 2 samples x 3 intents
    ppo_ = [[0.3, 0.5], [0.7, 0.9], [0.2, 0.4]]
    a, b = [sum(x) / 2 for x in sft], [sum(x) / 2 for x in ppo_]
    assert a == pytest.approx([0.3, 0.7, 0.2])
    ci = bootstrap.paired_bootstrap_ci(a, b, 10000, seed=0)
    assert ci["mean_diff"] == pytest.approx(0.1) and ci["ci95_low"] == pytest.approx(0.1)
    assert ci["ci95_high"] == pytest.approx(0.1) and ci["n_resamples"] == 10000
    mu = 0.4
    assert evaluate.standard_error(a) == pytest.approx(math.sqrt(((0.1) ** 2 + 0.3 ** 2 + 0.2 ** 2) / 2 / 3))
    assert mu == pytest.approx(sum(a) / 3)


def test_bootstrap_ci_brackets_a_known_mean_difference():
    """Differences +-1 with mean 0.2 on 500 items: the bootstrap CI of the mean is ~0.2 +- 1.96 * SD / sqrt(n)."""
    diffs = [1.0] * 300 + [-1.0] * 200  # mean 0.2, SD 0.98
    ci = bootstrap.paired_bootstrap_ci([0.0] * 500, diffs, 10000, seed=1)
    half = 1.96 * math.sqrt(0.96 * 500 / 499) / math.sqrt(500)
    assert ci["ci95_low"] == pytest.approx(0.2 - half, abs=0.01)
    assert ci["ci95_high"] == pytest.approx(0.2 + half, abs=0.01)


def test_greedy_flips_counts_changed_better_and_worse():
    base = [{"prediction": "a", "gold": 0.5}, {"prediction": "b", "gold": 0.5}, {"prediction": "c", "gold": 0.5},
            {"prediction": "d", "gold": 0.5}]
    new = [{"prediction": "a", "gold": 0.5}, {"prediction": "B", "gold": 0.9}, {"prediction": "C", "gold": 0.1},
           {"prediction": "D", "gold": 0.5}]
    assert evaluate.greedy_flips(base, new) == {"items": 4, "changed": 3, "better": 1, "worse": 1}


def test_same_seed_same_samples_for_the_same_model(tiny):
    """decode_batches with a seed: two calls give identical samples, and a different seed different ones."""
    from contextlib import nullcontext

    lm, tok, _, _ = tiny
    cfg = cfg_for(max_new_tokens=6, eval_batch_size=2, temperature=1.0)
    intents = ["sort a list", "reverse a string", "open a file"]

    def draw(seed):
        return decoding.decode_batches(lm, tok, "plain", intents, cfg, nullcontext(), sample=True, n=3,
                                       top_p=1.0, seed=seed)

    torch.manual_seed(123)
    first = draw(5)
    torch.manual_seed(999)  # the global stream must not matter
    assert draw(5) == first
    assert draw(6) != first
    assert all(len(s) == 3 for s in first)


KL_BUDGET = 1e-6  # the tiny policy moves from step 2 on (with --missing_eos=filter it never finishes, so never moves)


def test_test_config_with_sampled_eval_and_sft_rs_end_to_end(tmp_path):
    """--config test with --eval_samples=2 and --sft_rs: m samples per item land in the predictions files,
    sft-rs is trained and evaluated, and report.md has the sampled-gold section. ~35 s idle on 2 cores (the
    time is printed, never asserted: speed belongs in bench/)."""
    out = tmp_path / "run"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "rlhf.py"), "--config", "test", f"--output_dir={out}",
                           "--eval_samples=2", "--sft_rs", "--advantage=rloo", "--samples_per_prompt=2",
                           "--advantage_norm=batch", "--eval_bertscore=false",
                           "--eval_every=0", "--prompt_selection=disagreement", f"--kl_budget={KL_BUDGET}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(f"--config test with sampled eval and sft-rs: {time.perf_counter() - t0:.0f} s")
    for name in ("sft", "sft-rs", "ppo"):
        rows = runfolder.read_jsonl(out / f"predictions-{name}.jsonl")
        assert rows and all(len(r["samples"]) == 2 and len(r["sample_gold"]) == 2 for r in rows), name
        assert all(0 <= g <= 1 for r in rows for g in r["sample_gold"])
    assert "samples" not in runfolder.read_jsonl(out / "predictions-base.jsonl")[0]  # only the RL systems sample
    kept = runfolder.read_jsonl(out / "sft_rs_examples.jsonl")
    assert kept and (out / "checkpoint-sft-rs").is_dir()
    rep = json.loads((out / "report.json").read_text())
    assert {"sampled_gold", "sampled_gold_se"} <= set(rep["systems"]["ppo"])
    assert any(b["metric"] == "sampled_gold" and b["comparison"] == "ppo − sft" for b in rep["bootstrap"])
    assert "## The RL objective: sampled gold" in (out / "report.md").read_text()
    # sft-rs and the prompt selection share one scoring of the reward stage's samples
    scored = runfolder.read_jsonl(out / rejection.REWARDS_FILE)
    assert {r["question_id"] for r in kept} <= {r["question_id"] for r in scored}
    assert proc.stdout.count("ppo prompts:") == 1 and "disagree" in proc.stdout
    # the KL budget: PPO stops after the first step whose rollout KL exceeds it, and keeps that policy
    kls = [r["objective/kl"] for r in runfolder.read_jsonl(out / "metrics.jsonl") if r.get("stage") == "ppo"]
    over = [i for i, kl in enumerate(kls) if kl > KL_BUDGET]
    assert len(kls) == (over[0] + 1 if over else 3), kls
    assert over, f"no step exceeded the budget {KL_BUDGET}: the test no longer exercises it ({kls})"
    assert (out / "checkpoint-final").is_dir()
