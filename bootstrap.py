"""The paired bootstrap (Koehn 2004): a 95% CI of the difference between two systems scored on the
same items, and its verdict. evaluate.py compares every system with SFT through it; report.py
prints the rows.
"""
from __future__ import annotations

import math


def paired_bootstrap_ci(a: list[float], b: list[float], n_resamples: int, seed: int) -> dict:
    """95% CI of mean(b) - mean(a) by resampling items with replacement (Koehn 2004, paired
    bootstrap). Pairing matters: both systems answer the same prompts, so resampling items keeps
    their difficulty shared."""
    assert len(a) == len(b) and a, "paired bootstrap needs two equal, non-empty lists"
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(a)
    diffs = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)  # [n]
    # [n_resamples], in chunks: bounded memory
    means = np.concatenate([diffs[rng.integers(0, n, size=(min(1000, n_resamples - i), n))].mean(1)
                            for i in range(0, n_resamples, 1000)])
    means.sort()
    lo, hi = (float(means[int(0.025 * (n_resamples - 1))]),
              float(means[int(math.ceil(0.975 * (n_resamples - 1)))]))
    return {"mean_diff": float(diffs.mean()), "ci95_low": lo, "ci95_high": hi, "n_items": n,
            "n_resamples": n_resamples}


def ci_verdict(ci: dict, better: str = "b", base: str = "a") -> str:
    """A 95% CI that contains 0 is "no significant difference"; otherwise which side is better."""
    if ci["ci95_low"] > 0:
        return f"{better} better"
    if ci["ci95_high"] < 0:
        return f"{better} worse"
    return "no significant difference"
