"""Mutation check (not a test): put one known bug at a time into a temporary copy of the repo and run the test
files that should catch it there. A mutant that leaves them green "survives": a hole in the tests (issue #24).

    nice -n 19 python bench/mutation_check.py            # every mutant
    nice -n 19 python bench/mutation_check.py --only rloo_mean_kl,grpo_kl_sign
    python bench/mutation_check.py --list

Each mutant is a plain string replacement on one source line. The original text must occur exactly once in its
file; when the code moves on and a pattern no longer matches, the mutant is reported STALE (fix the pattern, do
not drop it). The unmutated copy runs every selected test file first: a failing baseline would make every mutant
look caught, so the check stops there. Exit status: 0 if every mutant is caught, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BY_HAND = "tests/test_ppo_by_hand.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # file, relative to the repo root
    old: str  # text on one source line, which must occur exactly once in the file
    new: str
    tests: tuple  # test files (or node ids) that must fail with the bug in place
    why: str


MUTANTS = [
    # --- the five bugs of issue #24
    Mutant("calibration_sign", "reward.py", "return 1.0 / std, -raw.mean().item() / std",
           "return -1.0 / std, raw.mean().item() / std", ("tests/test_reward_policy.py",),
           "gain, bias -> -gain, -bias: mean 0 / std 1 still hold, the reward PPO climbs is inverted"),
    Mutant("rloo_mean_kl", "advantages.py", "raw = rewards.sum(1) if cfg.advantage",
           "raw = masked_mean(rewards, mask, dim=1) if cfg.advantage", (BY_HAND,),
           "RLOO's sequence reward averaged over tokens instead of summed"),
    Mutant("grpo_kl_sign", "ppo.py", "loss = loss + mb.kl_coef * kl_loss", "loss = loss - mb.kl_coef * kl_loss",
           (BY_HAND,), "GRPO's k3 KL term with the wrong sign: the policy is pushed away from the reference"),
    Mutant("value_one_late", "policy.py", "return logits[:, :-1], values[:, -R - 1:-1]",
           "return logits[:, :-1], values[:, -R:]", (BY_HAND,),
           "the value head read one position late (the state after token t)"),
    Mutant("objective_kl_token_mean", "ppo.py", "mean_kl = dist.global_mean(kl.sum(1)).item()",
           "mean_kl = (kl.sum() / mask.sum()).item()", (BY_HAND,),
           "objective/kl averaged over tokens instead of summed per response (what the KL controller sees)"),
    # --- the other gaps the issue lists
    Mutant("whiten_rewards_shift", "advantages.py", "masked_whiten(rewards, mask, shift_mean=False, reduce=reduce)",
           "masked_whiten(rewards, mask, shift_mean=True, reduce=reduce)", (BY_HAND,),
           "whiten_rewards drops the rewards' mean (LHP keeps it)"),
    Mutant("target_kl_inverted", "ppo.py", 'sums["policy/approx_kl"][-1] > cfg.target_kl',
           'sums["policy/approx_kl"][-1] < cfg.target_kl', (BY_HAND,), "target_kl early stopping inverted"),
    Mutant("entropy_token_mean", "ppo.py", "dist.global_mean(ro.entropy.sum(1))",
           "dist.global_mean(ro.entropy.mean(1))", (BY_HAND,), "objective/entropy per token instead of per response"),
    Mutant("explained_variance_denominator", "ppo.py", "/ masked_var(ro.returns, mask, reduce=reduce)",
           "/ masked_var(ro.values, mask, reduce=reduce)", (BY_HAND,), "explained variance over Var[values]"),
    Mutant("sft_no_shift", "rlhf.py", "F.cross_entropy(logits[:, :-1].float()", "F.cross_entropy(logits[:, 1:].float()",
           (BY_HAND,), "SFT loss scores token t at position t (no next-token shift)"),
    Mutant("ref_is_policy", "policy.py", "ref_logits, _ = response_forward(ref_model,",
           "ref_logits, _ = response_forward(policy,",
           ("tests/test_ppo.py::test_rollout_kl_between_two_models_matches_a_manual_forward",),
           "the reference log-probs come from the policy: KL 0 whatever the reference"),
    Mutant("kl_controller_steps", "ppo.py", "n_steps=len(responses) * dist.world_size())", "n_steps=1)",
           ("tests/test_ppo.py::test_train_ppo_iteration_scores_text_and_adapts_kl",), "the adaptive controller told one episode per batch"),
    Mutant("missing_eos_rewarded", "advantages.py", "else scores - cfg.missing_eos_penalty * (~ro.eos).float()",
           "else scores - cfg.missing_eos_penalty * ro.eos.float()",
           (BY_HAND, "tests/test_ppo_fixes.py::test_missing_eos_ranks_an_unfinished_response_below_every_finished_one"),
           "the missing-EOS penalty hits finished responses"),
    Mutant("k1_sign", "advantages.py", "return -logr  # unbiased", "return logr  # unbiased",
           ("tests/test_ppo.py::test_kl_penalty_hand_numbers",),
           "k1 KL with the wrong sign"),
    Mutant("grpo_biased_std", "advantages.py", "/ (n - 1).clamp(min=1)", "/ n.clamp(min=1)",
           ("tests/test_ppo_fixes.py::test_grpo_hand_numbers_k2_k4",), "GRPO's group std without Bessel's correction (TRL uses it)"),
    # --- the RL-objective changes (advantage_norm, missing_eos=filter)
    Mutant("filter_keeps_unfinished_in_baseline", "advantages.py",
           "f = torch.ones_like(r) if keep is None else group_view(keep.to(r.dtype), k)  # [P, k] 1 = kept",
           "f = torch.ones_like(r)  # [P, k] 1 = kept", ("tests/test_rl_objective.py",),
           "missing_eos=filter still lets an unfinished sample into its group's baseline"),
    Mutant("advantage_norm_ignored", "advantages.py", "seq = normalise_advantages(seq, raw, keep, k, norm, reduce=reduce)",
           "seq = seq", ("tests/test_rl_objective.py",), "advantage_norm batch/group silently does nothing"),
    Mutant("batch_norm_token_weighted", "advantages.py", 'if norm == "token":', 'if norm in ("token", "batch"):',
           ("tests/test_rl_objective.py",), "batch normalisation whitened over tokens as well (length-weighted)"),
]

IGNORE = shutil.ignore_patterns(".git", ".venv", "outputs", "__pycache__", ".pytest_cache", "docs", "*.pyc")


def run_tests(work: Path, tests: tuple, timeout: int) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header", "-rf", *tests]
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    except subprocess.TimeoutExpired:
        return -1, "timed out"
    return proc.returncode, proc.stdout + proc.stderr


def first_failure(output: str) -> str:
    """The first failing test (pytest's -rf summary line) and the first lines of its assertion message."""
    lines = output.splitlines()
    failed = next((ln.split(" - ")[0] for ln in lines if ln.startswith(("FAILED", "ERROR"))), None)
    message = [ln[1:].strip() for ln in lines if ln.startswith("E ") and ln[1:].strip()][:3]
    if failed is None:
        return (lines or ["(no output)"])[-1][:300]
    return failed + "".join(f"\n      {m[:200]}" for m in message)


def main(argv: list[str]) -> int:
    sys.path.append(str(ROOT))
    from plumbing.cli_help import ArgumentParser  # one-line errors

    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated mutant names")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per test run")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only.split(",")]
    if args.only and len(chosen) != len(set(args.only.split(","))):
        print(f"error: unknown mutant in --only; valid: {', '.join(m.name for m in MUTANTS)}", file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.name:32s} {m.path}: {m.why}")
        return 0
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        work = Path(tmp) / "repo"
        shutil.copytree(ROOT, work, ignore=IGNORE, symlinks=True)
        every_test = tuple(sorted({t for m in chosen for t in m.tests}))
        rc, out = run_tests(work, every_test, args.timeout)
        if rc != 0:
            print(f"baseline: the unmutated tests fail (rc {rc}), so no mutant can be judged:\n{first_failure(out)}")
            return 1
        print(f"baseline: {' '.join(every_test)} pass unmutated\n")
        results = []
        for m in chosen:
            src = work / m.path
            text = src.read_text()
            if text.count(m.old) != 1:
                results.append((m, "STALE", f"{m.old!r} occurs {text.count(m.old)} times in {m.path}"))
                continue
            src.write_text(text.replace(m.old, m.new))
            try:
                rc, out = run_tests(work, m.tests, args.timeout)
            finally:
                src.write_text(text)
            status = "caught" if rc == 1 else "SURVIVED" if rc == 0 else f"ERROR rc={rc}"
            results.append((m, status, first_failure(out) if rc else f"{' '.join(m.tests)} all pass"))
            print(f"{status:9s} {m.name}", flush=True)
    print()
    for m, status, detail in results:
        print(f"[{status}] {m.name}  ({m.path}: {m.why})\n    - {m.old}\n    + {m.new}\n    {detail}\n")
    caught = sum(status == "caught" for _, status, _ in results)
    print(f"{caught}/{len(results)} mutants caught")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
