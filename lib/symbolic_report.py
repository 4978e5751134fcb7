"""GSM-Symbolic report: accuracy on the original GSM8K questions vs the distribution over instance sets.

As in the GSM-Symbolic paper, instance set ``j`` is the ``j``-th instance of every template, so each set
is a full perturbed copy of the benchmark; the spread of the sets' accuracies is what one would see by
chance, and the gap to the original questions is what memory (or the templates' difficulty) adds.

Input: an evaluation output directory (``jobs.evaluate``) whose datasets include
``gsm_symbolic_original`` and one or more of ``gsm_symbolic``, ``gsm_symbolic_p1``, ``gsm_symbolic_p2``
(question ids name the template and instance: ``lib.gsm_symbolic.parse_question_id``).
Per template ``t``: ``drop_t = original_t - mean_j instance_{t,j}``; the mean drop over templates comes
with a percentile bootstrap CI over templates (``lib.metrics.bootstrap_ci``). Metrics: greedy pass@1,
pass@1 (PassRatio of the samples) and pass@k for the largest k.

Writes ``symbolic_report.json``, ``symbolic_report.md`` and ``symbolic_hist.png`` into the directory::

    python -m lib.symbolic_report outputs/evaluate_symbolic
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from lib.gsm_symbolic import DATASETS, ORIGINAL_DATASET, parse_question_id
from lib.metrics import bootstrap_ci, k_values, pass_at_k
from lib.schemas import QUESTION_ID, SAMPLE_IDX, STATUS, check_columns

VARIANT_DATASETS = tuple(name for name, variant in DATASETS.items() if variant is not None)


def question_scores(samples: pa.Table, greedy: pa.Table | None, samples_per_question: int | None = None) -> dict[str, dict[str, float]]:
    """Per question: ``greedy`` (0/1), ``pass@1`` and ``pass@<k>`` for every k of :func:`k_values`, from
    the ``question_id``/``sample_idx``/``status`` columns (only sample indices below ``samples_per_question``)."""
    check_columns(samples.column_names, (QUESTION_ID, SAMPLE_IDX, STATUS), "GSM-Symbolic report: samples rows")
    if greedy is not None:
        check_columns(greedy.column_names, (QUESTION_ID, STATUS), "GSM-Symbolic report: greedy rows")
    correct: dict[str, list[bool]] = defaultdict(list)
    for qid, idx, status in zip(*(samples.column(c).to_pylist() for c in (QUESTION_ID, SAMPLE_IDX, STATUS))):
        if samples_per_question is None or idx < samples_per_question:
            correct[qid].append(status == "correct")
    out: dict[str, dict[str, float]] = {}
    for qid, flags in correct.items():
        n, c = len(flags), sum(flags)
        out[qid] = {f"pass@{k}": pass_at_k(n, c, k) for k in k_values(n)}
    if greedy is not None:
        for qid, status in zip(*(greedy.column(c).to_pylist() for c in (QUESTION_ID, STATUS))):
            out.setdefault(qid, {})["greedy"] = float(status == "correct")
    return out


def compare(scores: dict[str, dict[str, float]], metric: str, *, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Original vs instance sets for every variant present, on the templates that have an original score
    and all of the variant's instance sets; the others are listed in ``templates_left_out``."""
    original: dict[str, float] = {}
    instances: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for qid, values in scores.items():
        ref = parse_question_id(qid)
        if ref is None or metric not in values:
            continue
        if ref.dataset == ORIGINAL_DATASET:
            original[ref.template] = values[metric]
        elif ref.instance is not None:
            instances[ref.dataset][ref.template][ref.instance] = values[metric]
    result: dict[str, dict[str, Any]] = {}
    for dataset in VARIANT_DATASETS:
        if dataset not in instances:
            continue
        by_template = instances[dataset]
        num_sets = max(len(v) for v in by_template.values())
        full = sorted(t for t, v in by_template.items() if sorted(v) == list(range(num_sets)) and t in original)
        if not full:
            continue
        sets = [statistics.fmean(by_template[t][j] for t in full) for j in range(num_sets)]
        drops = [original[t] - statistics.fmean(by_template[t].values()) for t in full]
        result[dataset] = {
            "metric": metric,
            "num_templates": len(full),
            "num_sets": num_sets,
            "original": statistics.fmean(original[t] for t in full),
            "sets": sets,
            "sets_mean": statistics.fmean(sets),
            "sets_std": statistics.pstdev(sets),
            "sets_min": min(sets),
            "sets_max": max(sets),
            "drop": statistics.fmean(drops),
            "drop_ci95": list(bootstrap_ci(drops, seed=seed)),
            "templates_left_out": sorted(set(by_template) - set(full)),
        }
    return result


def metrics_of(scores: dict[str, dict[str, float]]) -> list[str]:
    """The metrics every scored question has: greedy (when present), pass@1 and the largest pass@k."""
    common = set.intersection(*(set(v) for v in scores.values())) if scores else set()
    ks = sorted(int(m.split("@")[1]) for m in common if m.startswith("pass@"))
    return [m for m in ("greedy", "pass@1", f"pass@{ks[-1]}" if ks else None) if m in common]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def render_markdown(report: dict[str, dict[str, dict[str, Any]]], title: str = "GSM-Symbolic") -> str:
    """One table: per metric and variant, original accuracy, instance-set accuracy (mean, sd, range), drop."""
    lines = [f"## {title}: original GSM8K questions vs perturbed instance sets", "",
             "| metric | variant | templates | sets | original % | sets mean % | sets sd | sets min..max % | drop (pp) [95% CI] |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for metric, variants in report.items():
        for dataset, r in variants.items():
            lo, hi = r["drop_ci95"]
            lines.append(
                f"| {metric} | {dataset} | {r['num_templates']} | {r['num_sets']} | {_pct(r['original'])} | {_pct(r['sets_mean'])} "
                f"| {_pct(r['sets_std'])} | {_pct(r['sets_min'])}..{_pct(r['sets_max'])} | {_pct(r['drop'])} [{_pct(lo)}, {_pct(hi)}] |")
    lines += ["", "Instance set j = the j-th instance of every template; drop = original minus the template's mean over "
              "its instances, averaged over templates (bootstrap CI over templates).", ""]
    return "\n".join(lines)


def gap_table(runs: list[dict[str, Any]]) -> str:
    """The pipeline report's section: per run (base, each SFT checkpoint; ``run["symbolic"]`` is its
    symbolic_report.json) and variant, original vs instance-set accuracy and the drop, per metric."""
    lines = ["| run | metric | variant | templates x sets | original % | sets mean % | drop (pp) [95% CI] |",
             "|---|---|---|---|---:|---:|---|"]
    for run in runs:
        for metric, variants in (run.get("symbolic") or {}).items():
            for dataset, r in variants.items():
                lo, hi = r["drop_ci95"]
                lines.append(f"| {run['name']} | {metric} | {dataset} | {r['num_templates']} x {r['num_sets']} | {_pct(r['original'])} "
                             f"| {_pct(r['sets_mean'])} | {_pct(r['drop'])} [{_pct(lo)}, {_pct(hi)}] |")
    return "\n".join(lines) + "\n"


def plot_histograms(path: Path, report: dict[str, dict[str, dict[str, Any]]]) -> None:
    """One panel per (metric, variant): histogram of instance-set accuracies, dashed line at the original."""
    from lib.pipeline_report import _plt, _save

    plt = _plt()
    metrics = list(report)
    variants = sorted({d for v in report.values() for d in v}, key=VARIANT_DATASETS.index)
    fig, axes = plt.subplots(len(metrics), len(variants), figsize=(4.2 * len(variants), 3.2 * len(metrics)), squeeze=False)
    for row, metric in enumerate(metrics):
        for col, dataset in enumerate(variants):
            ax = axes[row][col]
            r = report[metric].get(dataset)
            if r is None:
                ax.axis("off")
                continue
            ax.hist([100 * s for s in r["sets"]], bins=min(20, max(5, r["num_sets"])), color=f"C{col}", alpha=0.75, label="instance sets")
            ax.axvline(100 * r["original"], color="black", linestyle="--", label="original GSM8K")
            ax.set_title(f"{dataset} {metric}: drop {_pct(r['drop'])} pp", fontsize=9)
            ax.set_xlabel("accuracy (%)")
            ax.set_ylabel("instance sets")
            ax.legend(fontsize=7)
    _save(plt, fig, path)


def write_report(output_dir: str | Path, samples_per_question: int | None = None, *, seed: int = 0) -> dict | None:
    """Write the report files for an evaluation directory; None (and nothing written) when it holds no
    GSM-Symbolic instances with their originals."""
    from lib.sample_store import SampleStore

    output_dir = Path(output_dir)
    store = SampleStore(output_dir)
    scores = question_scores(store.read("samples", [QUESTION_ID, SAMPLE_IDX, STATUS]),
                             store.read("greedy", [QUESTION_ID, STATUS]), samples_per_question)
    scores = {q: v for q, v in scores.items() if parse_question_id(q) is not None}
    report = {m: r for m in metrics_of(scores) if (r := compare(scores, m, seed=seed))}
    if not report:
        return None
    (output_dir / "symbolic_report.json").write_text(json.dumps(report, indent=2))
    markdown = render_markdown(report)
    (output_dir / "symbolic_report.md").write_text(markdown)
    plot_histograms(output_dir / "symbolic_hist.png", report)
    return {"report": report, "markdown": markdown}


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="GSM-Symbolic report of an evaluation directory (original vs instance sets)")
    parser.add_argument("output_dir", type=Path, help="a jobs.evaluate output directory")
    parser.add_argument("--samples-per-question", type=int, default=None, help="count only sample indices below this")
    args = parser.parse_args(argv)
    written = write_report(args.output_dir, args.samples_per_question)
    if written is None:
        parser.exit(2, f"error: {args.output_dir} holds no gsm_symbolic* instances together with gsm_symbolic_original\n")
    print(written["markdown"])
    print(f"wrote {args.output_dir / 'symbolic_report.md'}, symbolic_report.json, symbolic_hist.png")


if __name__ == "__main__":
    main()
