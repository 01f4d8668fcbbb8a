"""ppo.py: the maths against hand-computed numbers and brute-force loops, then the real rollout/update path on
tiny random Llamas (CPU, seconds)."""
import copy
import math

import pytest
import torch

import advantages
import ppo
from plumbing.models import position_ids
from policy import (make_reference, mask_after_eos, PolicyWithValueHead, response_forward,
                    Rollout, rollout, token_logprobs, VALUE_HEAD_FILE)
from config import make_config


@pytest.fixture(scope="module")
def tiny():
    """tiny:llama (random 2-layer Llama, real SmolLM2 tokenizer) and a left-padded batch of chat prompts."""
    from data import generation_batch
    from plumbing.models import load_causal_lm

    lm, tok = load_causal_lm("tiny:llama", seed=0)
    intents = ["sort a list", "reverse the string s in place", "add x and y", "open the file f.txt and read it"] * 2
    batch = generation_batch(intents, tok, "chat", max_prompt_len=96)
    return lm, tok, batch["input_ids"], batch["attention_mask"]


def small_vocab_lm(vocab=512, seed=0):
    """A 2-layer Llama with a 512-token vocabulary: the same code path as tiny:llama, ~10x faster per step.
    Ids < 512 are valid SmolLM2 tokens (EOS = pad = 2), so the real tokenizer still decodes them."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2))


def cfg_for(**kw):
    base = dict(batch_size=8, mini_batch_size=4, micro_batch_size=2, max_new_tokens=8, top_p=1.0)
    return make_config("test", {**base, **kw})


# ----------------------------------------------------------------------------- maths
def brute_force_gae(rewards, values, mask, gamma, lam):
    """Independent reference: per row, walk only the real positions backwards (LHP's loop on the compacted row)."""
    adv = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[b, t]]
        running = 0.0
        for k in reversed(range(len(idx))):
            t = idx[k]
            next_value = values[b, idx[k + 1]].item() if k + 1 < len(idx) else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            running = delta + gamma * lam * running
            adv[b, t] = running
    return adv, adv + values * mask


def lhp_gae(rewards, values, gamma, lam):
    """LHP train_policy.py loss(), verbatim in torch: no mask, so padding must already hold zeros."""
    lastgaelam, advantages_reversed, T = 0, [], rewards.shape[1]
    for t in reversed(range(T)):
        nextvalues = values[:, t + 1] if t < T - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    return advantages, advantages + values


def test_compute_gae_matches_reverse_loops():
    torch.manual_seed(0)
    rewards, values = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    lengths = torch.tensor([7, 5, 1, 3])
    mask = (torch.arange(7)[None] < lengths[:, None]).double()  # right-padded, like responses after EOS
    for gamma, lam in [(1.0, 0.95), (0.9, 0.5)]:
        adv, ret = advantages.compute_gae(rewards, values, mask, gamma=gamma, lam=lam)
        ref_adv, ref_ret = brute_force_gae(rewards, values, mask, gamma, lam)
        torch.testing.assert_close(adv, ref_adv)
        torch.testing.assert_close(ret, ref_ret)
        lhp_adv, lhp_ret = lhp_gae(rewards * mask, values * mask, gamma, lam)  # LHP needs zeroed padding
        torch.testing.assert_close(adv, lhp_adv * mask)
        torch.testing.assert_close(ret, lhp_ret * mask)
    # A hole in the middle is skipped, not treated as an episode end.
    holed = mask.clone()
    holed[0, 2] = 0
    adv, _ = advantages.compute_gae(rewards, values, holed, gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, brute_force_gae(rewards, values, holed, 0.9, 0.5)[0])
    assert adv[0, 2] == 0


def test_compute_gae_hand_numbers_1x3():
    rewards, values, mask = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 1.0, 0.3]]), torch.tensor([[1, 1, 0]])
    # gamma=1, lam=0.5. t=1 (last real): delta = 0 + 1*0 - 1.0 = -1.0 -> A1 = -1.0
    # t=0: delta = 1 + 1*1.0 - 0.5 = 1.5 -> A0 = 1.5 + 1*0.5*(-1.0) = 1.0. The masked reward 2.0 plays no part.
    adv, ret = advantages.compute_gae(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[1.0, -1.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.5, 0.0, 0.0]]))  # returns = A + V, 0 where masked
    # gamma=0.9: A1 = -1.0; delta0 = 1 + 0.9*1.0 - 0.5 = 1.4; A0 = 1.4 + 0.9*0.5*(-1.0) = 0.95
    adv, _ = advantages.compute_gae(rewards, values, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.95, -1.0, 0.0]]))


def test_masked_whiten_uses_masked_entries_only():
    torch.manual_seed(0)
    x = torch.randn(3, 6, dtype=torch.float64) * 3 + 5
    mask = torch.rand(3, 6) > 0.3
    x_poisoned = torch.where(mask, x, torch.tensor(1e6, dtype=torch.float64))  # must not leak in
    w = advantages.masked_whiten(x_poisoned, mask)
    assert abs(w[mask].mean().item()) < 1e-9
    assert abs(w[mask].var(unbiased=True).item() - 1) < 1e-6
    torch.testing.assert_close(advantages.masked_var(x_poisoned, mask), x[mask].var(unbiased=True))
    kept = advantages.masked_whiten(x_poisoned, mask, shift_mean=False)  # LHP rewards: scale only
    torch.testing.assert_close(kept[mask].mean(), x[mask].mean())


def test_kl_penalty_hand_numbers():
    logprobs, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    torch.testing.assert_close(advantages.kl_penalty(logprobs, ref, kind="k1"), torch.tensor([math.log(2)]))
    # k3 = (r - 1) - log r with r = ref/pi = 0.5: -0.5 + log 2
    torch.testing.assert_close(advantages.kl_penalty(logprobs, ref, kind="k3"), torch.tensor([-0.5 + math.log(2)]))


def test_adaptive_kl_controller_hand_numbers():
    ctl = ppo.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    for kl in (12.0, 3.0, 6.6, 0.0):
        ctl.update(kl, n_steps=64)
    # err = clip(kl/6 - 1, -0.2, 0.2): 12 -> +0.2, 3 -> -0.2, 6.6 -> +0.1, 0 -> -0.2; factor = 1 + err * 64/10000
    assert ctl.value == pytest.approx(0.1 * 1.00128 * 0.99872 * 1.00064 * 0.99872, rel=1e-12)
    fixed = ppo.FixedKLController(0.1)
    fixed.update(100.0, n_steps=64)
    assert fixed.value == 0.1
    assert isinstance(ppo.make_kl_controller(cfg_for(adaptive_kl=False)), ppo.FixedKLController)


def test_clipped_policy_loss_binds_and_not():
    mask = torch.tensor([True])
    # Binds: A=+1 with ratio 1.5 -> min(1.5, 1.2) * A; the clipped term wins, so the gradient is 0.
    logp = torch.tensor([math.log(1.5)], requires_grad=True)
    loss, clipfrac, _ = ppo.ppo_policy_loss(logprobs=logp, old_logprobs=torch.zeros(1), advantages=torch.ones(1),
                                            mask=mask, cliprange=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(-1.2) and clipfrac.item() == 1.0 and logp.grad.item() == 0.0
    # Binds for A<0 too: ratio 0.5 -> pg_loss2 = -(-1)*0.8 = 0.8 > pg_loss1 = 0.5
    loss, clipfrac, _ = ppo.ppo_policy_loss(logprobs=torch.tensor([math.log(0.5)]), old_logprobs=torch.zeros(1),
                                            advantages=-torch.ones(1), mask=mask, cliprange=0.2)
    assert loss.item() == pytest.approx(0.8) and clipfrac.item() == 1.0
    # Does not bind: ratio 1.1 inside [0.8, 1.2]; and A=+1 with ratio 0.5 (the unclipped term is more pessimistic).
    for ratio, expected in [(1.1, -1.1), (0.5, -0.5)]:
        logp = torch.tensor([math.log(ratio)], requires_grad=True)
        loss, clipfrac, approx_kl = ppo.ppo_policy_loss(logprobs=logp, old_logprobs=torch.zeros(1),
                                                        advantages=torch.ones(1), mask=mask, cliprange=0.2)
        loss.backward()
        assert loss.item() == pytest.approx(expected) and clipfrac.item() == 0.0
        assert logp.grad.item() == pytest.approx(-ratio)  # d(-A*exp(logp))/dlogp
        assert approx_kl.item() == pytest.approx((ratio - 1) - math.log(ratio), rel=1e-4)  # fp32
    # A masked token with a wild ratio changes nothing.
    loss, _, _ = ppo.ppo_policy_loss(logprobs=torch.tensor([math.log(1.1), 50.0]), old_logprobs=torch.zeros(2),
                                     advantages=torch.ones(2), mask=torch.tensor([True, False]), cliprange=0.2)
    assert loss.item() == pytest.approx(-1.1)


def test_clipped_value_loss_hand_numbers():
    kw = dict(old_values=torch.tensor([1.0]), returns=torch.tensor([2.0]), mask=torch.tensor([True]),
              cliprange_value=0.2)
    # V moved 1.0 -> 1.5: clipped to 1.2; max((1.5-2)^2, (1.2-2)^2) = 0.64; loss = 0.5 * 0.64
    v_loss, clipfrac = ppo.ppo_value_loss(values=torch.tensor([1.5]), **kw)
    assert v_loss.item() == pytest.approx(0.32) and clipfrac.item() == 1.0
    v_loss, clipfrac = ppo.ppo_value_loss(values=torch.tensor([1.1]), **kw)  # inside the clip range
    assert v_loss.item() == pytest.approx(0.5 * 0.81) and clipfrac.item() == 0.0


def test_mask_after_eos_and_rewards_on_last_real_token():
    eos = 2
    response_ids = torch.tensor([[5, 6, eos, 2, 2], [5, 6, 7, 8, 9], [eos, 2, 2, 2, 2]])
    mask = mask_after_eos(response_ids, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    B, R = response_ids.shape
    lp = torch.full((B, R), -1.0)
    ro = Rollout(query_ids=torch.ones(B, 2, dtype=torch.long), query_mask=torch.ones(B, 2, dtype=torch.long),
                     response_ids=response_ids, response_mask=mask, eos=torch.tensor([True, False, True]),
                     logprobs=lp * mask, ref_logprobs=(lp - 0.5) * mask, values=torch.zeros(B, R),
                     entropy=torch.zeros(B, R), scores=torch.zeros(B), rewards=torch.zeros(B, R),
                     advantages=torch.zeros(B, R), returns=torch.zeros(B, R))
    out = advantages.compute_rewards(ro, torch.tensor([1.0, 2.0, 3.0]), kl_coef=0.1,
                              cfg=cfg_for(missing_eos_penalty=1.5, kl_estimator="k1"))
    # k1 KL = 0.5 per real token -> -0.05 each; score on the last real token; row 1 has no EOS: 2.0 - 1.5
    expected = torch.tensor([[-0.05, -0.05, 0.95, 0, 0], [-0.05, -0.05, -0.05, -0.05, 0.45], [2.95, 0, 0, 0, 0]])
    torch.testing.assert_close(out.rewards, expected)
    assert out.scores.tolist() == [1.0, 2.0, 3.0] and out.kl_coef == pytest.approx(0.1)
    assert (out.advantages[mask == 0] == 0).all() and (out.returns[mask == 0] == 0).all()
    assert abs(out.advantages[mask.bool()].mean().item()) < 1e-6  # whitened over real tokens


# ----------------------------------------------------------------------------- the model path
def test_value_head_save_load_roundtrip(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    lm, _, ids, am = tiny
    policy = PolicyWithValueHead(copy.deepcopy(lm))
    torch.nn.init.normal_(policy.value_head.weight)
    policy.save(tmp_path)
    assert (tmp_path / VALUE_HEAD_FILE).is_file()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)  # the HF folder stays an ordinary checkpoint
    assert not any("value_head" in k for k in plain.state_dict())
    loaded = PolicyWithValueHead.load(tmp_path)
    with torch.no_grad():
        (l1, v1), (l2, v2) = policy(ids, am), loaded(ids, am)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(v1, v2)
    ref = make_reference(policy)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())


def test_rollout_kl_between_two_models_matches_a_manual_forward():
    """Policy and reference are two different random Llamas. Each stored log-prob must be log_softmax(logits / T)
    of that model's own forward over the whole sequence, at the sampled token, and the KL per token is worked out
    here from those two numbers (k1 = lp - ref, k3 = e^(ref - lp) - 1 - (ref - lp)). An identical reference gives 0."""
    from types import SimpleNamespace

    tok = SimpleNamespace(eos_token_id=2, pad_token_id=2)
    policy, ref = PolicyWithValueHead(small_vocab_lm(seed=0)), make_reference(small_vocab_lm(seed=1))
    cfg = cfg_for(temperature=0.7, max_new_tokens=6)
    torch.manual_seed(0)
    ids = torch.randint(3, 512, (3, 5))
    am = torch.ones_like(ids)
    ids[2, :2], am[2, :2] = 2, 0  # one left-padded prompt
    ro = rollout(policy, ref, ids, am, tok, cfg)
    seq, P = torch.cat([ids, ro.response_ids], 1), ids.shape[1]
    full_mask = torch.cat([am, torch.ones_like(ro.response_ids)], 1)
    with torch.no_grad():
        by_hand = {}
        for name, lm in (("policy", policy.lm), ("ref", ref)):
            logits = lm(input_ids=seq, attention_mask=full_mask, position_ids=position_ids(full_mask)).logits
            logp = torch.log_softmax(logits[:, P - 1:-1].double() / 0.7, -1)  # position P-1+t predicts token t
            by_hand[name] = logp.gather(-1, ro.response_ids.unsqueeze(-1)).squeeze(-1)
    m = ro.response_mask.bool()
    torch.testing.assert_close(ro.logprobs[m].double(), by_hand["policy"][m], atol=1e-5, rtol=0)
    torch.testing.assert_close(ro.ref_logprobs[m].double(), by_hand["ref"][m], atol=1e-5, rtol=0)
    logr = by_hand["ref"] - by_hand["policy"]
    for kind, want in (("k1", -logr), ("k3", logr.exp() - 1 - logr)):
        got = advantages.kl_penalty(ro.logprobs, ro.ref_logprobs, kind=kind)
        torch.testing.assert_close(got[m].double(), want[m], atol=1e-5, rtol=0)
    assert logr[m].abs().max() > 0.05  # two different models: a real, non-zero KL
    same = rollout(policy, make_reference(policy.lm), ids, am, tok, cfg)
    assert torch.equal(same.logprobs, same.ref_logprobs)
    assert (ro.values == 0).all()  # LHP zero-initialised value head


def test_first_minibatch_ratio_is_one(tiny):
    """Old log-probs come from one forward over the whole batch, new ones from a shuffled, trimmed micro-batch:
    with dropout off and the same temperature they agree. On this CPU they are bit-identical (dev 0.0); the bound
    is 1e-5 because GEMM/attention blocking may change with the batch shape elsewhere, which moves fp32 results by
    ~1e-7. A real mismatch is far larger: a wrong temperature gives ~1e-1 (checked below)."""
    lm, tok, ids, am = tiny
    policy = PolicyWithValueHead(copy.deepcopy(lm))
    policy.lm.config.attention_dropout = 0.3  # dropout would break ratio=1 if ppo_step did not switch it off
    ref = make_reference(lm)
    cfg = cfg_for(temperature=0.7)
    torch.manual_seed(1)
    ro = advantages.compute_rewards(rollout(policy, ref, ids, am, tok, cfg), torch.randn(len(ids)), 0.1, cfg)
    policy.train()  # ppo_step must put it back into eval mode
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    stats = ppo.ppo_step(policy, opt, ro, cfg)
    assert stats["policy/first_ratio_dev"] < 1e-5
    wrong = ppo.ppo_step(PolicyWithValueHead(copy.deepcopy(lm)), opt, ro, cfg_for(temperature=1.0))
    assert wrong["policy/first_ratio_dev"] > 1e-2
    for key in ("objective/kl", "objective/kl_coef", "objective/score", "objective/entropy", "policy/approx_kl",
                "policy/clipfrac", "loss/policy", "value/clipfrac", "value/explained_variance", "loss/value",
                "response/length_mean", "response/eos_fraction"):
        assert math.isfinite(stats[key]), key


def test_gradient_accumulation_equals_whole_minibatch(tiny):
    """Token-weighted micro-batch losses: accumulating 2+2 rows gives the gradient of one 4-row pass."""
    lm, tok, ids, am = tiny
    cfg = cfg_for(ppo_epochs=1, batch_size=4, mini_batch_size=4, micro_batch_size=4)
    policy = PolicyWithValueHead(copy.deepcopy(lm))
    torch.manual_seed(2)
    ro = advantages.compute_rewards(rollout(policy, make_reference(lm), ids[:4], am[:4], tok, cfg),
                             torch.randn(4), 0.1, cfg)
    results = []
    for micro in (4, 2):
        p = PolicyWithValueHead(copy.deepcopy(lm))
        opt = torch.optim.SGD(p.parameters(), lr=1.0)  # the update is the gradient itself
        torch.manual_seed(3)
        ppo.ppo_step(p, opt, ro, cfg_for(ppo_epochs=1, batch_size=4, mini_batch_size=4, micro_batch_size=micro))
        results.append(torch.cat([x.detach().flatten() for x in p.parameters()]))
    torch.testing.assert_close(results[0], results[1], atol=1e-6, rtol=1e-5)


def test_nonfinite_loss_raises_before_the_optimizer_step(tiny):
    lm, tok, ids, am = tiny
    cfg = cfg_for()
    policy = PolicyWithValueHead(copy.deepcopy(lm))
    ro = advantages.compute_rewards(rollout(policy, make_reference(lm), ids, am, tok, cfg),
                             torch.randn(len(ids)), 0.1, cfg)
    with torch.no_grad():
        policy.value_head.weight.fill_(float("nan"))
    before = [p.detach().clone() for p in policy.lm.parameters()]
    with pytest.raises(ppo.NonFiniteLossError, match="non-finite"):
        ppo.ppo_step(policy, torch.optim.AdamW(policy.parameters(), lr=1e-3), ro, cfg)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.lm.parameters()))


def test_bf16_autocast_step_matches_fp32(tiny):
    """bf16 is emulated on CPU (slow), hence the tiny model. Measured here: log-probs differ by <= 2e-3 and the
    losses/grad norm by < 0.1%; the bounds leave ~5x headroom (bf16 keeps ~3 significant digits)."""
    from plumbing.models import autocast_ctx, make_grad_scaler

    lm, tok, ids, am = tiny
    cfg = cfg_for(ppo_epochs=1)
    torch.manual_seed(4)
    ro = advantages.compute_rewards(rollout(PolicyWithValueHead(copy.deepcopy(lm)), make_reference(lm), ids, am,
                                         tok, cfg), torch.randn(len(ids)), 0.1, cfg)
    cpu = torch.device("cpu")
    stats = {}
    for dtype in (torch.float32, torch.bfloat16):
        policy = PolicyWithValueHead(copy.deepcopy(lm))
        ctx = autocast_ctx(cpu, dtype)
        with torch.no_grad(), ctx:
            logits, _ = response_forward(policy, ro.query_ids, ro.query_mask, ro.response_ids)
        logprobs, _ = token_logprobs(logits, ro.response_ids, cfg.temperature)
        assert logprobs.dtype == torch.float32  # log_softmax always in fp32
        torch.testing.assert_close(logprobs * ro.response_mask, ro.logprobs, atol=0.01, rtol=0)
        torch.manual_seed(5)
        stats[dtype] = ppo.ppo_step(policy, torch.optim.AdamW(policy.parameters(), lr=1e-4), ro, cfg, ctx=ctx,
                                    scaler=make_grad_scaler(cpu, dtype))
    f32, b16 = stats[torch.float32], stats[torch.bfloat16]
    assert b16["loss/value"] == pytest.approx(f32["loss/value"], rel=5e-3)
    assert b16["loss/policy"] == pytest.approx(f32["loss/policy"], abs=5e-3)
    assert b16["policy/grad_norm"] == pytest.approx(f32["policy/grad_norm"], rel=5e-3)
    assert b16["policy/first_ratio_dev"] < 0.01  # bf16 forward vs fp32 rollout log-probs


def test_ppo_raises_a_toy_score(tiny):
    """Reward = share of response tokens whose id is a multiple of 8 (1/8 by chance for a random policy).
    A few dozen PPO steps must raise it clearly while the KL stays finite."""
    _, tok, _, _ = tiny
    lm = small_vocab_lm()
    cfg = cfg_for(batch_size=16, mini_batch_size=8, micro_batch_size=8, max_new_tokens=8, temperature=1.0,
                  adaptive_kl=True, init_kl_coef=0.01, learning_rate=3e-3)
    policy, ref = PolicyWithValueHead(lm), make_reference(lm)
    opt = ppo.make_optimizer(policy, cfg)
    kl_ctl = ppo.make_kl_controller(cfg)
    torch.manual_seed(0)
    queries = torch.randint(3, 512, (16, 6))
    history = []
    for _ in range(25):
        ro = rollout(policy, ref, queries, torch.ones_like(queries), tok, cfg)
        hits = ((ro.response_ids % 8 == 0) & ro.response_mask.bool()).sum(1)
        ro = advantages.compute_rewards(ro, hits / ro.response_mask.sum(1), kl_ctl.value, cfg)
        stats = ppo.ppo_step(policy, opt, ro, cfg)
        kl_ctl.update(stats["objective/kl"], n_steps=16)
        history.append(stats)
    first = sum(s["objective/score"] for s in history[:5]) / 5
    last = sum(s["objective/score"] for s in history[-5:]) / 5
    assert last > first + 0.2, (first, last)
    assert all(math.isfinite(s["objective/kl"]) for s in history)
    assert kl_ctl.value != cfg.init_kl_coef


def test_train_ppo_iteration_scores_text_and_adapts_kl(tiny):
    lm, tok, ids, am = tiny
    cfg = cfg_for(max_new_tokens=4)
    policy = PolicyWithValueHead(copy.deepcopy(lm))
    kl_ctl = ppo.make_kl_controller(cfg)
    seen = []

    def score_fn(texts):
        seen.extend(texts)
        return torch.tensor([float(len(t) % 3) for t in texts])

    stats, ro, responses = ppo.train_ppo_iteration(policy, make_reference(lm), torch.optim.AdamW(
        policy.parameters(), lr=1e-3), kl_ctl, ids, am, tok, score_fn, cfg)
    assert responses == seen and len(responses) == len(ids)
    assert stats["objective/score"] == pytest.approx(ro.scores.mean().item())
    assert stats["objective/kl_coef"] == cfg.init_kl_coef
    # LHP by hand: the policy is the reference at rollout, so KL 0; err = clip(0 / 6 - 1, -0.2, 0.2) = -0.2 and
    # beta = 0.1 * (1 - 0.2 * 8 episodes / horizon 20) = 0.092
    assert (cfg.adaptive_kl, cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon) == (True, 0.1, 6.0, 20)
    assert stats["objective/kl"] == 0 and kl_ctl.value == pytest.approx(0.092, rel=1e-12)
