"""Benchmark: the fraction of samples ``stop_at_first_correct`` draws for pass@n, on realistic difficulty mixes.

A question with per-sample success probability p, sampled in chunks of c until the chunk holding its first
correct sample (all n when none), draws ``c * sum_{j<n/c} (1-p)^(j c)`` samples in expectation. Per-question p
follows a Beta(a, b) fitted to a model's reported pass@1 (the mean of p) and pass@256 (``1 - E[(1-p)^256]``),
so the expectation over questions is exact (``E[(1-p)^m] = B(a, b+m) / B(a, b)``); a seeded simulation of
``--questions`` questions through ``lib.metrics.adaptive_num_drawn`` (the job's own rule) checks it.

Mixes, from Li et al. 2024, "Common 7B Language Models Already Possess Strong Math Capabilities" (Xwin-Math,
arXiv 2403.04706, abstract): LLaMA-2 7B pass@1 49.5% / 7.9% and pass@256 97.7% / 72.0% on GSM8K / MATH;
Xwin-Math-7B (960K synthetic SFT) pass@1 82.6% / 40.6%. The paper's pass@256 of Xwin-Math-7B is not in the
abstract: its mixes ASSUME the base model's pass@256 (the paper's thesis: SFT raises pass@1, not pass@N).

Run: python -m jobs.bench_adaptive [--n 1024 --chunks 1,8,16,32,64,128 --questions 20000]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from lib.metrics import adaptive_num_drawn

MIXES = {  # name: (pass@1, pass@256)
    "GSM8K, Xwin-Math-7B (pass@256 assumed)": (0.826, 0.977),
    "MATH, Xwin-Math-7B (pass@256 assumed)": (0.406, 0.720),
    "GSM8K, LLaMA-2 7B": (0.495, 0.977),
    "MATH, LLaMA-2 7B": (0.079, 0.720),
}


def miss_probability(a: float, b: float, m: float) -> float:
    """E[(1-p)^m] for p ~ Beta(a, b): the chance that m samples of a random question all fail."""
    return math.exp(math.lgamma(b + m) + math.lgamma(a + b) - math.lgamma(b) - math.lgamma(a + b + m))


def fit_beta(pass1: float, pass256: float) -> tuple[float, float]:
    """Beta(a, b) with mean ``pass1`` and pass@256 ``pass256`` (pass@256 grows with a + b at a fixed mean)."""
    lo, hi = -12.0, 12.0  # log(a + b)
    for _ in range(200):
        mid = (lo + hi) / 2
        s = math.exp(mid)
        if 1 - miss_probability(pass1 * s, (1 - pass1) * s, 256) < pass256:
            lo = mid
        else:
            hi = mid
    s = math.exp((lo + hi) / 2)
    return pass1 * s, (1 - pass1) * s


def expected_fraction(a: float, b: float, n: int, chunk: int) -> float:
    """Expected samples drawn / n: chunk j (from 0) is drawn when the first j*chunk samples all failed."""
    starts = range(0, n, chunk)
    return sum(min(chunk, n - s) * miss_probability(a, b, s) for s in starts) / n


def simulated_fraction(a: float, b: float, n: int, chunk: int, questions: int, seed: int = 0) -> float:
    """The same through the job's rule on seeded simulated questions: first success ~ Geometric(p)."""
    rng = np.random.default_rng(seed)
    p = rng.beta(a, b, size=questions)
    first = rng.geometric(np.clip(p, 1e-300, 1.0)) - 1  # index of the first correct sample
    drawn = [adaptive_num_drawn(int(f) if f < n else None, n, chunk) for f in first]
    return float(np.sum(drawn)) / (n * questions)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1024, help="samples per question (pass@n)")
    parser.add_argument("--chunks", default="1,8,16,32,64,128", help="chunk sizes (resources.samples_per_request)")
    parser.add_argument("--questions", type=int, default=20000, help="simulated questions per mix (the check)")
    args = parser.parse_args(argv)
    chunks = [int(c) for c in args.chunks.split(",")]
    rows = []
    print(f"fraction of the full cost (n={args.n} samples per question) drawn by stop_at_first_correct, "
          f"exact [simulated {args.questions} questions]")
    print(f"| mix | pass@1 | pass@256 | pass@{args.n} | " + " | ".join(f"chunk {c}" for c in chunks) + " |")
    print("|---|---|---|---|" + "---|" * len(chunks))
    for name, (pass1, pass256) in MIXES.items():
        a, b = fit_beta(pass1, pass256)
        exact = [expected_fraction(a, b, args.n, c) for c in chunks]
        simulated = [simulated_fraction(a, b, args.n, c, args.questions) for c in chunks]
        pass_n = 1 - miss_probability(a, b, args.n)
        rows.append({"mix": name, "a": a, "b": b, f"pass@{args.n}": pass_n, "chunks": chunks, "exact": exact,
                     "simulated": simulated})
        cells = " | ".join(f"{100 * e:.1f}% [{100 * s:.1f}%]" for e, s in zip(exact, simulated))
        print(f"| {name} | {100 * pass1:.1f}% | {100 * pass256:.1f}% | {100 * pass_n:.1f}% | {cells} |")
    return rows


if __name__ == "__main__":
    main()
