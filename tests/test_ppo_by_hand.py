"""The PPO maths an independent mutation pass (issue #24) showed unchecked, each against numbers worked out by hand
in this file, never against the code's own helpers: group-baseline reward assembly on rows of unequal length and
KL, GRPO's KL loss term, the value head's alignment, the logged objective/kl, entropy and explained variance,
target_kl early stopping, whiten_rewards, and the one-token shift of sft.sft_loss. Tiny models, CPU, seconds.

compute_rewards gets an explicit cfg (a SimpleNamespace with only the fields it reads), so a new Config field with
today's behaviour as its default leaves these tests valid; `advantage_norm="auto"` is each estimator's original normalisation."""
import dataclasses
import math
import statistics
from types import SimpleNamespace

import pytest
import torch

import config
import advantages
import ppo
from policy import make_reference, PolicyWithValueHead, response_forward, Rollout, rollout, token_logprobs
from test_ppo import small_vocab_lm

# Four responses, two prompts x k = 2 (rows 0-1 and 2-3), of unequal length and unequal per-token KL.
LENGTHS = [3, 1, 4, 2]
KL = [0.5, 0.2, 0.1, 0.3]  # k1 KL per real token of each row: logprob - ref_logprob
SCORES = [1.0, 0.5, 0.2, 0.8]
BETA = 0.1
GARBAGE = 99.0  # in every masked slot: it must never reach a number below
TOKENIZER = SimpleNamespace(eos_token_id=2, pad_token_id=2)  # all that rollout() reads of a tokenizer


def reward_cfg(advantage, **kw):
    """What compute_rewards reads, explicitly."""
    return SimpleNamespace(**{"advantage": advantage, "samples_per_prompt": 2, "kl_estimator": "k1",
                              "missing_eos_penalty": 0.0, "whiten_rewards": False, "gamma": 1.0, "lam": 0.95,
                              "advantage_norm": "auto", **kw})  # each estimator's original normalisation


def step_cfg(**kw):
    """A full Config for ppo_step (dataclasses.replace: a new field keeps its default)."""
    base = dict(batch_size=4, mini_batch_size=4, micro_batch_size=4, ppo_epochs=1, advantage="gae",
                samples_per_prompt=1, kl_estimator="k1", target_kl=0.0, temperature=1.0, max_new_tokens=6,
                do_sample=True, missing_eos_penalty=0.0)
    return dataclasses.replace(config.Config(), **{**base, **kw})


def hand_rollout(lengths=LENGTHS, kl=KL, R=4):
    """Real tokens carry logprob -1 and ref_logprob -1 - kl[row]; every masked slot holds GARBAGE."""
    B = len(lengths)
    mask = torch.tensor([[1 if t < n else 0 for t in range(R)] for n in lengths])  # [B, R]
    m = mask.bool()
    logprobs = torch.where(m, -1.0, GARBAGE)
    ref = torch.where(m, -1.0 - torch.tensor(kl)[:, None], -GARBAGE)
    junk = torch.where(m, 0.0, GARBAGE)
    return Rollout(query_ids=torch.full((B, 2), 5), query_mask=torch.ones(B, 2, dtype=torch.long),
                       response_ids=torch.where(m, 7, 2), response_mask=mask, eos=torch.ones(B, dtype=torch.bool),
                       logprobs=logprobs, ref_logprobs=ref, values=junk.clone(), entropy=junk.clone(),
                       scores=torch.zeros(B), rewards=junk.clone(), advantages=junk.clone(), returns=junk.clone())


def whiten_by_hand(per_token: list[list[float]], shift_mean=True) -> list[list[float]]:
    """(x - mean) / stdev over every real token (stdev with Bessel's correction); shift_mean=False adds the mean back."""
    flat = [x for row in per_token for x in row]
    mean, sd = statistics.mean(flat), statistics.stdev(flat)
    return [[(x - mean) / sd + (0 if shift_mean else mean) for x in row] for row in per_token]


def padded(per_token, R=4):
    return torch.tensor([row + [0.0] * (R - len(row)) for row in per_token])


# ----------------------------------------------------------------------------- group baselines: reward assembly
def test_rloo_reward_assembly_by_hand_on_unequal_rows():
    """RLOO's sequence reward is score - beta * the response's *summed* KL (Ahmadian et al. 2024), so a longer
    response pays for every one of its tokens. A mean over tokens would cancel on rows of equal length."""
    # summed KL = length x KL: [1.5, 0.2, 0.4, 0.6]; sequence reward = score - 0.1 x that = [0.85, 0.48, 0.16, 0.74]
    # k = 2, so each baseline is the other sample: advantages [0.37, -0.37 | -0.58, 0.58], one per token
    adv = [[0.37] * 3, [-0.37], [-0.58] * 4, [0.58] * 2]
    out = advantages.compute_rewards(hand_rollout(), torch.tensor(SCORES), kl_coef=BETA, cfg=reward_cfg("rloo"))
    torch.testing.assert_close(out.advantages, padded(whiten_by_hand(adv)), atol=1e-5, rtol=0)
    # the per-token reward: -beta * KL on each real token, the score added on the last one, 0 after it
    rewards = [[-0.05, -0.05, 0.95], [0.48], [-0.01, -0.01, -0.01, 0.19], [-0.03, 0.77]]
    torch.testing.assert_close(out.rewards, padded(rewards), atol=1e-6, rtol=0)
    assert out.returns.abs().max() == 0  # no critic


def test_grpo_reward_assembly_by_hand_on_unequal_rows():
    """GRPO normalises the final scores within each group and leaves the KL out of the reward; its advantages are
    not whitened again. Row 1 has no EOS, so its group score is 0.5 - 0.3 = 0.2."""
    ro = hand_rollout()
    ro.eos[1] = False
    out = advantages.compute_rewards(ro, torch.tensor(SCORES), kl_coef=BETA, cfg=reward_cfg("grpo", missing_eos_penalty=0.3))
    # group 1: [1.0, 0.2], deviation 0.4, unbiased std 0.8 / sqrt 2; group 2: [0.2, 0.8], deviation 0.3
    a1, a2 = 0.4 / (0.8 / math.sqrt(2) + 1e-4), 0.3 / (0.6 / math.sqrt(2) + 1e-4)
    torch.testing.assert_close(out.advantages, padded([[a1] * 3, [-a1], [-a2] * 4, [a2] * 2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.rewards, padded([[0, 0, 1.0], [0.2], [0, 0, 0, 0.2], [0, 0.8]]), atol=1e-6, rtol=0)


def test_grpo_step_with_zero_advantages_lowers_the_kl_to_the_reference():
    """With equal scores every GRPO advantage is 0, so the only gradient is beta * k3 KL (DeepSeekMath eq. 3):
    one step must bring the policy closer to the reference on the sampled tokens, never push it away."""
    policy, ref = PolicyWithValueHead(small_vocab_lm(seed=0)), make_reference(small_vocab_lm(seed=1))
    cfg = step_cfg(advantage="grpo", samples_per_prompt=2)
    torch.manual_seed(0)
    queries = torch.randint(3, 512, (2, 5)).repeat_interleave(2, 0)
    ro = rollout(policy, ref, queries, torch.ones_like(queries), TOKENIZER, cfg)
    ro = advantages.compute_rewards(ro, torch.full((4,), 0.5), kl_coef=1.0, cfg=reward_cfg("grpo"))
    assert ro.advantages.abs().max() == 0

    def k3_to_ref():
        with torch.no_grad():
            logits, _ = response_forward(policy, ro.query_ids, ro.query_mask, ro.response_ids)
        logprobs, _ = token_logprobs(logits, ro.response_ids, cfg.temperature)
        return advantages.masked_mean(advantages.kl_penalty(logprobs, ro.ref_logprobs, kind="k3"), ro.response_mask).item()

    before = k3_to_ref()
    stats = ppo.ppo_step(policy, torch.optim.SGD(policy.parameters(), lr=0.05), ro, cfg)
    after = k3_to_ref()
    assert stats["loss/kl"] == pytest.approx(before, rel=1e-4)  # the first minibatch sees the rollout's policy
    assert before > 0.01 and after < 0.8 * before, (before, after)  # measured: 0.028 -> 0.009


# ----------------------------------------------------------------------------- the value head's alignment
def test_value_at_t_comes_from_the_state_before_token_t():
    """Manual forward: the value (and the logits) for response token t are the policy's outputs on the prefix that
    ends just before token t, here with a non-zero value head and a left-padded prompt."""
    policy = PolicyWithValueHead(small_vocab_lm(seed=0))
    torch.nn.init.normal_(policy.value_head.weight, std=1.0)
    query = torch.tensor([[5, 6, 7], [2, 8, 9]])  # row 1 left-padded
    qmask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    response = torch.tensor([[10, 11, 12, 13], [14, 15, 16, 17]])
    with torch.no_grad():
        logits, values = response_forward(policy, query, qmask, response)
        for t in range(response.shape[1]):
            prefix = torch.cat([query, response[:, :t]], 1)
            pmask = torch.cat([qmask, torch.ones_like(response[:, :t])], 1)
            want_logits, want_values = policy(prefix, pmask)
            torch.testing.assert_close(values[:, t], want_values[:, -1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(logits[:, t], want_logits[:, -1], atol=1e-5, rtol=1e-5)
    assert values.std() > 0.1  # the head is live: equal values everywhere could not show a misalignment


# ----------------------------------------------------------------------------- the logged statistics
def test_logged_kl_entropy_and_explained_variance_by_hand():
    """objective/kl is the mean over responses of each response's *summed* KL (nats per response, LHP): the number
    the adaptive controller compares with kl_target. objective/entropy likewise; explained variance is CleanRL's
    1 - Var[returns - values] / Var[returns] over real tokens."""
    ro = hand_rollout()
    returns = [[1, 2, 3], [4], [0, 1, 2, 3], [5, 6]]
    values = [[1, 2, 2], [4], [0, 1, 2, 2], [5, 5]]
    # Entropy is 0 after EOS, as rollout() stores it: objective/entropy sums ro.entropy without the mask.
    entropy = [[1.0] * 3, [2.0], [0.5] * 4, [3.0] * 2]
    m = ro.response_mask.bool()
    ro = dataclasses.replace(ro, returns=torch.where(m, padded(returns), GARBAGE),
                             values=torch.where(m, padded(values), GARBAGE),
                             entropy=padded(entropy), advantages=torch.where(m, 0.0, GARBAGE),
                             scores=torch.tensor(SCORES), eos=torch.tensor([True, True, False, True]), kl_coef=BETA)
    stats = ppo.ppo_step(PolicyWithValueHead(small_vocab_lm()), torch.optim.SGD([torch.zeros(1)], lr=0.0), ro,
                         step_cfg())
    assert stats["objective/kl"] == pytest.approx((1.5 + 0.2 + 0.4 + 0.6) / 4)  # not the token mean 2.7 / 10
    assert stats["objective/entropy"] == pytest.approx((3.0 + 2.0 + 2.0 + 6.0) / 4)
    assert stats["objective/score"] == pytest.approx(0.625) and stats["objective/kl_coef"] == pytest.approx(BETA)
    assert stats["response/length_mean"] == pytest.approx(2.5) and stats["response/eos_fraction"] == 0.75
    # residuals [0,0,1 | 0 | 0,0,0,1 | 0,1]: variance 0.21 (biased); returns: variance 10.5 - 2.7^2 = 3.21
    assert stats["value/explained_variance"] == pytest.approx(1 - 0.21 / 3.21, rel=1e-5)


# ----------------------------------------------------------------------------- target_kl early stopping
@pytest.mark.parametrize("target_kl,epochs", [(0.0, 4), (1e-6, 1), (1e3, 4)])
def test_target_kl_stops_the_epochs_once_approx_kl_passes_it(target_kl, epochs):
    """CleanRL: after each epoch, stop if the last minibatch's approx_kl exceeds target_kl (0 = off). A large
    step makes the second minibatch's approx_kl far above 1e-6 and far below 1e3."""
    policy, ref = PolicyWithValueHead(small_vocab_lm(seed=0)), make_reference(small_vocab_lm(seed=0))
    cfg = step_cfg(ppo_epochs=4, mini_batch_size=2, micro_batch_size=2, target_kl=target_kl)
    torch.manual_seed(0)
    queries = torch.randint(3, 512, (4, 5))
    ro = rollout(policy, ref, queries, torch.ones_like(queries), TOKENIZER, cfg)
    ro = advantages.compute_rewards(ro, torch.tensor(SCORES), kl_coef=BETA, cfg=reward_cfg("gae"))
    stats = ppo.ppo_step(policy, torch.optim.Adam(policy.parameters(), lr=1e-2), ro, cfg)
    assert stats["ppo/epochs"] == epochs


# ----------------------------------------------------------------------------- whiten_rewards
def test_whiten_rewards_scales_the_per_token_rewards_keeping_their_mean_before_gae():
    """LHP utils.whiten(rewards, shift_mean=False) over real tokens, then GAE; gamma = lam = 1 and V = 0 make each
    advantage the sum of the whitened rewards from t to the end, and those are whitened again."""
    ro = dataclasses.replace(hand_rollout(), values=torch.zeros(4, 4))
    out = advantages.compute_rewards(ro, torch.tensor(SCORES), kl_coef=BETA,
                              cfg=reward_cfg("gae", whiten_rewards=True, lam=1.0))
    raw = [[-0.05, -0.05, 0.95], [0.48], [-0.01, -0.01, -0.01, 0.19], [-0.03, 0.77]]
    white = whiten_by_hand(raw, shift_mean=False)
    torch.testing.assert_close(out.rewards, padded(white), atol=1e-5, rtol=0)
    to_go = [[sum(row[t:]) for t in range(len(row))] for row in white]
    torch.testing.assert_close(out.advantages, padded(whiten_by_hand(to_go)), atol=1e-5, rtol=0)
    plain = advantages.compute_rewards(ro, torch.tensor(SCORES), kl_coef=BETA, cfg=reward_cfg("gae", lam=1.0))
    torch.testing.assert_close(plain.rewards, padded(raw), atol=1e-6, rtol=0)  # off: the rewards as assembled


# ----------------------------------------------------------------------------- SFT's next-token shift
class OracleLM(torch.nn.Module):
    """Logits that put all their mass (up to e^-30) on input_ids[:, t + offset] at position t."""

    def __init__(self, offset, vocab=8):
        super().__init__()
        self.offset, self.vocab = offset, vocab

    def forward(self, input_ids, attention_mask):
        target = torch.roll(input_ids, -self.offset, dims=1)
        return SimpleNamespace(logits=30.0 * torch.nn.functional.one_hot(target, self.vocab).float())


def test_sft_loss_predicts_token_t_plus_1_at_position_t():
    import contextlib

    import sft

    batch = {"input_ids": torch.tensor([[3, 4, 5, 6, 2]]), "attention_mask": torch.ones(1, 5, dtype=torch.long),
             "labels": torch.tensor([[-100, -100, 5, 6, 2]])}  # prompt 3 4, snippet 5 6, EOS 2
    ctx = contextlib.nullcontext()
    nll, n = sft.sft_loss(OracleLM(offset=1), batch, ctx)  # knows the next token: loss ~ 0
    assert n.item() == 3 and nll.item() < 1e-6
    nll, _ = sft.sft_loss(OracleLM(offset=0), batch, ctx)  # echoes the current token: 30 nats per label
    assert nll.item() == pytest.approx(3 * 30.0, rel=1e-4)
    uniform = type("U", (torch.nn.Module,), {"forward": lambda self, input_ids, attention_mask:
                                             SimpleNamespace(logits=torch.zeros(1, 5, 8))})()
    assert sft.sft_loss(uniform, batch, ctx)[0].item() == pytest.approx(3 * math.log(8), rel=1e-6)
