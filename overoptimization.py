"""The over-optimisation curve: gold beside the reward model's proxy during PPO.

Gao et al. 2022 ("Scaling laws for reward model overoptimization"): optimising a proxy raises it
while gold rises, then falls, as KL from the start policy grows. `curve_point` measures both during
PPO, on a fixed slice of the validation intents (never the test set), and
plots/overoptimization.png draws them against objective/kl. Gold and proxy are evaluate.py's.
"""
from __future__ import annotations

from plumbing import dist
from decoding import greedy
from evaluate import mean, proxy_scores, sample_and_judge, standard_error


def curve_point(run, env, policy_lm, tok, step: int, kl: float) -> dict:
    """Gold and proxy of the current policy on the first eval_slice validation intents, logged as
    stage "ppo_eval" with the PPO step and that step's objective/kl. Called by stage_ppo every
    eval_every steps. With --eval_samples=m: the mean over m samples per intent (the RL objective),
    with the same seeds at every step, and each mean's standard error over intents, so a rise can be
    told from noise; else greedy."""
    from config import ConfigError

    cfg, exs = run.cfg, env["val"][:run.cfg.eval_slice]
    if not exs:
        raise ConfigError(f"--eval_every={cfg.eval_every} needs validation intents: --eval_slice="
                          f"{cfg.eval_slice} of {len(env['val'])}")
    was_training = policy_lm.training
    m = cfg.eval_samples
    if m:
        got = sample_and_judge(run, env, policy_lm, tok, exs, m, cfg.temperature,
                               f"ppo_eval step {step} (m={m})")
        codes = got["samples"] if got else []
        gold = got["per"]["sampled_gold"] if got else []
    else:
        greedy_codes = greedy(policy_lm, tok, [e.intent for e in exs], run, env,
                              f"ppo_eval step {step}")
        codes = [[p] for p in greedy_codes]
    policy_lm.train(was_training)
    if not dist.is_main():
        return {}
    if not m:
        import feedback

        judged = feedback.judge([c[0] for c in codes], [e.snippet for e in exs],
                                cfg.exec_timeout_s, log=run.log, stop=run.rank0_stop(),
                                desc=f"ppo_eval step {step}: gold")
        gold = [j["score"] for j in judged]
    k = len(codes[0])
    flat = proxy_scores(run, env, [e.intent for e in exs for _ in range(k)],
                        [c for cs in codes for c in cs], desc=f"ppo_eval step {step}: proxy")
    proxy = [mean(flat[i * k:(i + 1) * k]) for i in range(len(exs))] if flat else None
    point = {"gold": mean(gold), "gold_se": standard_error(gold),
             "proxy": mean(proxy) if proxy else float("nan"),
             "proxy_se": standard_error(proxy) if proxy else float("nan"), "objective/kl": kl,
             "n": len(exs), "samples": m or 0}
    run.stat("ppo_eval", step, **point)
    run.log(f"ppo_eval step {step}: gold {point['gold']:.4f} ± {point['gold_se']:.4f}  "
            f"proxy {point['proxy']:.4f}  kl {kl:.3f} on {len(exs)} validation intents"
            + (f" x {m} samples" if m else " (greedy)"))
    return point
