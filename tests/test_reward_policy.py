"""The reward model on the policy's own samples: per-pairing held-out accuracy, Spearman against the annotator,
and the causal-LM backbone (last-token pooling, Bradley-Terry on a tiny random Llama). CPU, seconds."""
import random

import pytest
import torch

import config
from plumbing import models
import reward
import reward_model


def test_spearman_hand_numbers():
    assert reward.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert reward.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks a = [1, 2, 3, 4, 5], b = [2, 1, 4, 3, 5]: d^2 = 1+1+1+1+0 = 4; rho = 1 - 6*4 / (5*24) = 0.8
    assert reward.spearman([1, 2, 3, 4, 5], [0.2, 0.1, 0.4, 0.3, 0.5]) == pytest.approx(0.8)
    # ties: b = [1, 1, 2] -> ranks [1.5, 1.5, 3]; Pearson of [1, 2, 3] with [1.5, 1.5, 3] = 0.866025...
    assert reward.ranks([1.0, 1.0, 2.0]) == [1.5, 1.5, 3.0]
    assert reward.spearman([1, 2, 3], [1, 1, 2]) == pytest.approx(3 ** 0.5 / 2)
    with pytest.raises(ValueError):
        reward.spearman([1.0], [2.0])


class FixedRM(torch.nn.Module):
    """A stand-in 'reward model' whose score is a lookup table on the code: tests the bookkeeping, not a model."""
    kind, max_len = "table", 8

    def __init__(self, table):
        super().__init__()
        self.table = table

    def tokenize(self, tokenizer, intents, codes):
        return {"ids": torch.tensor([self.table[c] for c in codes])}

    def forward(self, ids):
        return ids.float()


def test_accuracy_by_pairing_on_hand_made_pairs():
    table = {"a": 3, "b": 2, "c": 1, "ref": 5, "cut": 0}
    pairs = [  # policy>policy: a>b right, c>b wrong, a>c right -> 2/3; reference>policy: 1/1; policy>truncated: 1/2
        {"intent": "i", "chosen": "a", "rejected": "b", "chosen_kind": "policy", "rejected_kind": "policy"},
        {"intent": "i", "chosen": "c", "rejected": "b", "chosen_kind": "policy", "rejected_kind": "policy"},
        {"intent": "i", "chosen": "a", "rejected": "c", "chosen_kind": "policy", "rejected_kind": "policy"},
        {"intent": "i", "chosen": "ref", "rejected": "a", "chosen_kind": "reference", "rejected_kind": "policy"},
        {"intent": "i", "chosen": "b", "rejected": "cut", "chosen_kind": "policy", "rejected_kind": "truncated"},
        {"intent": "i", "chosen": "cut", "rejected": "c", "chosen_kind": "policy", "rejected_kind": "truncated"},
    ]
    out = reward.evaluate_pairs(FixedRM(table), None, pairs, torch.device("cpu"), by_kind=True)
    assert out["accuracy_by_pairing"] == pytest.approx({"policy>policy": 2 / 3, "policy>truncated": 0.5,
                                                        "reference>policy": 1.0})
    assert out["pairs_by_pairing"] == {"policy>policy": 3, "policy>truncated": 2, "reference>policy": 1}
    assert out["accuracy"] == pytest.approx(4 / 6)
    cands = [{"intent": "i", "code": c, "kind": "policy", "score": s} for c, s in (("a", .9), ("b", .5), ("c", .6))]
    agree = reward.policy_sample_agreement(FixedRM(table), None, cands + [{"intent": "i", "code": "ref",
                                                                           "kind": "reference", "score": 1}],
                                           torch.device("cpu"))
    assert agree == {"n": 3, "spearman": pytest.approx(0.5)}  # RM ranks a>b>c, annotator a>c>b: 1 - 6*2/24


def test_last_token_pooling_under_left_and_right_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)  # value = position index per row
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert reward_model.last_token(hidden, right).squeeze(-1).tolist() == [1.0, 7.0]
    assert reward_model.last_token(hidden, left).squeeze(-1).tolist() == [3.0, 7.0]


def test_causal_reward_model_scores_the_last_real_token_whatever_the_padding():
    lm, tok = models.load_causal_lm("tiny:llama", seed=0)
    rm = reward_model.RewardModel(lm, kind="causal", fmt="chat", max_len=64).eval()
    batch = rm.tokenize(tok, ["sort a list", "add x and y to z"], ["sorted(a)", "z = x + y  # and a longer tail"])
    assert (batch["attention_mask"][:, 0] == 1).all()  # right-padded
    with torch.no_grad():
        both = rm(**batch)
        alone = torch.stack([rm(**rm.tokenize(tok, [i], [c]))[0]
                             for i, c in (("sort a list", "sorted(a)"), ("add x and y to z", "z = x + y  # and a longer tail"))])
        # the same rows left-padded
        ids, am = batch["input_ids"], batch["attention_mask"]
        flipped = [torch.cat([r[m == 0], r[m == 1]]) for r, m in zip(ids, am)]
        left_am = torch.stack([torch.cat([m[m == 0], m[m == 1]]) for m in am])
        left = rm(input_ids=torch.stack(flipped), attention_mask=left_am)
    torch.testing.assert_close(both, alone, atol=1e-4, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-4, rtol=0)
    last_ids = ids[torch.arange(2), am.sum(1) - 1]
    assert (last_ids == tok.eos_token_id).all()  # the reward is read at the EOS after the code


def test_causal_reward_model_bradley_terry_loss_falls_and_reloads(tmp_path):
    lm, tok = models.load_causal_lm("tiny:llama", seed=0)
    rm = reward_model.RewardModel(lm, kind="causal", fmt="chat")
    cfg = config.make_config("test", {"reward_epochs": 3, "reward_learning_rate": 1e-3, "reward_batch_size": 8,
                                      "reward_max_len": 48})
    rng = random.Random(0)
    names = ["items", "values", "rows", "names", "scores", "words"]

    def pairs(n):
        return [{"question_id": i, "intent": f"sort the list `{v}`", "chosen": f"sorted({v})", "rejected": f"del {v}[0]",
                 "chosen_kind": "policy", "rejected_kind": "policy"} for i, v in enumerate(rng.choice(names)
                                                                                          for _ in range(n))]
    history = reward.train_reward_model(rm, tok, pairs(48), pairs(16), cfg, torch.device("cpu"),
                                        models.autocast_ctx(torch.device("cpu"), torch.float32), log=lambda m: None)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] >= 0.9
    rm.gain, rm.bias = 2.0, -1.0
    rm.save(tmp_path)
    tok.save_pretrained(tmp_path)
    again = reward_model.RewardModel.load(tmp_path)
    assert again.kind == "causal" and (again.gain, again.bias) == (2.0, -1.0)
    a = reward_model.score_texts(rm, tok, ["sort the list `rows`"], ["sorted(rows)"], torch.device("cpu"))
    b = reward_model.score_texts(again, models.load_tokenizer(str(tmp_path)), ["sort the list `rows`"], ["sorted(rows)"],
                           torch.device("cpu"))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_a_higher_raw_score_gives_a_higher_reward_after_calibration_on_policy_samples():
    """The reward's direction end to end: score policy samples, fit LHP's gain/bias on them (as rlhf.py's reward
    stage does), then normalise. Mean 0 / std 1 holds for (gain, bias) and (-gain, -bias) alike; only gain > 0
    keeps a better raw score a better reward, so PPO climbs the RM instead of descending it."""
    table = {"good": 9, "fine": 6, "meh": 4, "bad": 1, "awful": -3}
    rm = FixedRM(table)
    samples = ["good", "meh", "bad", "fine", "awful", "meh"]  # the reference policy's samples
    raw = reward_model.score_texts(rm, None, ["i"] * len(samples), samples, torch.device("cpu"))
    rm.gain, rm.bias = reward.fit_calibration(raw)
    # by hand: raw [9, 4, 1, 6, -3, 4], mean 3.5, squared deviations sum to 85.5: population std sqrt(14.25)
    assert rm.gain == pytest.approx(1 / 14.25 ** 0.5) and rm.bias == pytest.approx(-3.5 / 14.25 ** 0.5)
    cfg = config.make_config("test")  # reward_scale 1, clip [0, 1]
    ranked = ["awful", "bad", "meh", "fine", "good"]
    out = reward.rm_reward(rm, None, ["i"] * 5, ranked, torch.device("cpu"), cfg)
    assert torch.all(out[1:] > out[:-1]), out.tolist()
    assert out[0] < 0.5 < out[-1]  # below the samples' mean: sigmoid < 1/2; above it: > 1/2
