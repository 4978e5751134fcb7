"""The pipeline's report: ``report.md``, a self-contained ``report.html`` (figures embedded as data URIs),
``report.json`` (everything the report shows) and ``manifest.json``, read back from a run directory of
``jobs.pipeline`` (only its small JSON/YAML files: a stored run renders without samples or checkpoints).

Every number in a table comes from a run's ``metrics.json`` (percent, 95% bootstrap CI over questions),
``error_analysis/result.json``, ``sft/*/summary.json`` or ``synthesize/data_card.json``; the paper's
numbers are a separate, labelled table and are never mixed into ours.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import yaml

from lib.report import fmt_pct, select_table, summary_table
from lib.schemas import MetricsEntry, read_metrics_json

# Reported in the paper (arXiv 2403.04706, LLaMA-2 base models, GPT-4 Turbo teacher): for comparison only.
PAPER_REFERENCE = [
    {"model": "LLaMA-2 7B SFT on the real train sets (7.5K each)", "data": "real", "gsm8k_greedy": 49.5,
     "math_greedy": 7.9, "gsm8k_oracle": "97.7 (pass@256)", "math_oracle": "72.0 (pass@256)"},
    {"model": "Xwin-Math-7B, ~1M synthetic examples", "data": "synthetic", "gsm8k_greedy": "82.4-82.6",
     "math_greedy": "40.1-40.6", "gsm8k_oracle": "", "math_oracle": ""},
    {"model": "Xwin-Math-7B-V1.1, 1.92M GSM8K + 960K MATH synthetic", "data": "synthetic", "gsm8k_greedy": 84.4,
     "math_greedy": 44.7, "gsm8k_oracle": "", "math_oracle": ""},
    {"model": "Xwin-Math-70B-V1.1", "data": "synthetic", "gsm8k_greedy": 90.6, "math_greedy": 51.9,
     "gsm8k_oracle": "", "math_oracle": ""},
]
SOURCE_STYLE = {"synthetic": ("C0", "o-"), "real": ("C1", "s--")}


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _jsonable(value: Any) -> Any:
    """report.json: a metrics entry as its metrics.json dict, anything else as text."""
    return value.to_json_dict() if isinstance(value, MetricsEntry) else str(value)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def collect(run_dir: Path) -> dict[str, Any]:
    """The report's data: runs (base first, then each checkpoint), data card, subsets, manifest."""
    config = _yaml(run_dir / "config.yaml") or {}
    subsets = _json(run_dir / "subsets" / "subsets.json") or {"sources": {}}
    runs = [{"name": "base", "source": "base", "size": 0, "dir": "base"}]
    for source, info in subsets["sources"].items():
        runs += [{"name": f"{source}-{s}", "source": source, "size": s, "dir": f"eval/{source}-{s}"} for s in info["sizes"]]
    for run in runs:
        directory = run_dir / run["dir"]
        run["metrics"] = read_metrics_json(directory / "metrics.json") if (directory / "metrics.json").is_file() else None
        run["errors"] = _json(directory / "error_analysis" / "result.json")
        run["symbolic"] = _json(directory / "symbolic_report.json")  # GSM-Symbolic datasets in evaluate.datasets
        if run["source"] != "base":
            train = _json(run_dir / "sft" / run["name"] / "summary.json") or {}
            log = run_dir / "sft" / run["name"] / "metrics.jsonl"
            steps = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
            run["train"] = {"examples": train.get("examples"), "steps": (train.get("final_metrics") or {}).get("step"),
                            "first_loss": steps[0]["loss"] if steps else None,
                            "final_loss": (train.get("final_metrics") or {}).get("loss"), "seconds": train.get("seconds")}
    base_eval = _yaml(run_dir / "base" / "config.yaml") or {}
    return {"title": config.get("title", "mathray pipeline report"), "note": config.get("note", ""),
            "run_dir": str(run_dir), "config": config, "runs": runs, "subsets": subsets,
            "data_card": _json(run_dir / "synthesize" / "data_card.json"),
            "stages": _json(run_dir / "stages.json") or [], "manifest": manifest(run_dir, config, base_eval, runs)}


def manifest(run_dir: Path, config: dict, base_eval: dict, runs: list[dict]) -> dict[str, Any]:
    prov, eval_prov = config.get("_provenance", {}), base_eval.get("_provenance", {})
    ev = config.get("evaluate", {})
    return {
        "git_commit": prov.get("git_commit"), "mathray": prov.get("mathray"), "versions": prov.get("versions", {}),
        "configs": sorted(str(p.relative_to(run_dir)) for p in (run_dir / "configs").glob("*.yaml")),
        "models": {"base": config.get("model"), "base_resolved": eval_prov.get("resolved_model"),
                   **{r["name"]: f"sft/{r['name']}/hf" for r in runs if r["source"] != "base"}},
        "prompt": eval_prov.get("prompt", {}),
        "sampling": {k: ev.get(k) for k in ("samples_per_question", "greedy", "temperature", "top_p", "max_tokens", "seed", "limit", "datasets")},
        "grader": eval_prov.get("grader", {}), "estimators": eval_prov.get("estimators", {}),
    }


def datasets(runs: list[dict]) -> list[str]:
    base = next((r["metrics"] for r in runs if r["metrics"]), None) or {}
    return [name for name, m in base.items() if "/" not in name and m.has_accuracy]  # ungraded sets have no curves


def scaling_table(runs: list[dict], dataset: str) -> str:
    """One row per run: the data-scaling numbers of ``dataset`` with CIs and grader status counts."""
    rows = [r for r in runs if r["metrics"] and dataset in r["metrics"]]
    if not rows:
        return "(no results)\n"
    n = rows[0]["metrics"][dataset].samples_per_question
    head = ["run", "SFT data", "examples", "questions", "greedy pass@1", f"PassRatio@{n}", f"pass@{n}", f"maj@{n}",
            "correct", "incorrect", "no_answer", "timeout", "error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m, k = r["metrics"][dataset], str(n)
        ci = m.ci95
        cells = [r["name"], r["source"], str(r["size"]), str(m.num_questions),
                 fmt_pct(m.greedy_pass_at_1, ci.get("greedy_pass@1")), fmt_pct(m.pass_ratio, ci["pass_ratio"]),
                 fmt_pct(m.pass_at_k[k], ci[f"pass@{k}"]), fmt_pct(m.maj_at_k[k], ci[f"maj@{k}"])]
        cells += [str(m.status_counts[s]) for s in ("correct", "incorrect", "no_answer", "timeout", "error")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def error_table(runs: list[dict]) -> str:
    lines = ["| run | examples | method | samples | incorrect | labelled | calculation | reasoning / no slip found | calculation rate | other rate |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for method, m in ((r["errors"] or {}).get("methods") or {}).items():
            counts, rates = m["counts"], m["rates"]
            other = "reasoning" if method == "judge" else "no_slip_found"
            lines.append(f"| {r['name']} | {r['size']} | {method} | {m['num_samples']} | {r['errors']['num_incorrect']} | "
                         f"{m['num_labelled']} | {counts.get('calculation', 0)} | {counts.get(other, 0)} | "
                         f"{100 * rates['calculation_rate']:.1f}% | {100 * rates[f'{other}_rate']:.1f}% |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else "(no error analysis)\n"


def train_table(runs: list[dict]) -> str:
    lines = ["| run | examples | steps | first loss | final loss | seconds |", "|---|---|---|---|---|---|"]
    for r in runs:
        t = r.get("train")
        if t:
            def f(v, spec=".4f"):
                return "-" if v is None else format(v, spec)
            lines.append(f"| {r['name']} | {t['examples']} | {t['steps']} | {f(t['first_loss'])} | {f(t['final_loss'])} | {f(t['seconds'], '.0f')} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else "(no SFT runs)\n"


def paper_table() -> str:
    lines = ["| model (paper, LLaMA-2 base) | SFT data | GSM8K greedy | MATH greedy | GSM8K oracle | MATH oracle |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {p['model']} | {p['data']} | {p['gsm8k_greedy']} | {p['math_greedy']} | {p['gsm8k_oracle'] or '-'} | {p['math_oracle'] or '-'} |"
              for p in PAPER_REFERENCE]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _size_axis(ax, sizes: list[int], label: str) -> None:
    """A log x axis with a plain tick at every SFT size."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(sorted(set(sizes)), [f"{s:,}" for s in sorted(set(sizes))])
    ax.set_xlabel(label)


def _style(ax, ylabel: str, title: str | None = None, legend_size: int = 8) -> None:
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=legend_size)


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(path: Path, runs: list[dict], dataset: str) -> None:
    """greedy pass@1, PassRatio@n and pass@n vs SFT examples, synthetic vs real; the base model dotted."""
    plt = _plt()
    base = next((r for r in runs if r["source"] == "base" and r["metrics"]), None)
    n = str(base["metrics"][dataset].samples_per_question) if base else None
    panels = [("greedy_pass@1", "greedy pass@1"), ("pass_ratio", f"PassRatio@{n}"), (f"pass@{n}", f"pass@{n}")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))

    def value(m: MetricsEntry, key: str) -> tuple[float, list[float]]:
        v = m.pass_at_k[n] if key.startswith("pass@") else getattr(m, key.replace("@", "_at_"))  # greedy_pass@1, pass_ratio
        return 100 * (v or 0), [100 * c for c in (m.ci95.get(key) or [v or 0, v or 0])]

    for ax, (key, label) in zip(axes, panels):
        for source, (color, style) in SOURCE_STYLE.items():
            pts = sorted((r["size"], *value(r["metrics"][dataset], key)) for r in runs
                         if r["source"] == source and r["metrics"] and dataset in r["metrics"])
            if pts:
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                err = [[y - p[2][0] for y, p in zip(ys, pts)], [p[2][1] - y for y, p in zip(ys, pts)]]
                ax.errorbar(xs, ys, yerr=err, fmt=style, color=color, capsize=3, label=source)
        if base and dataset in base["metrics"]:
            ax.axhline(value(base["metrics"][dataset], key)[0], color="gray", linestyle=":", label="base model")
        _size_axis(ax, [r["size"] for r in runs if r["source"] != "base"] or [1], "SFT examples")
        ax.set_ylim(bottom=0)
        _style(ax, f"{label} (%)", f"{dataset}: {label}")
    _save(plt, fig, path)


def plot_passk_curves(path: Path, runs: list[dict], dataset: str) -> None:
    """pass@k (solid), maj@k (dashed) and, when the runs measured selection rules, select@k (dotted, one
    marker per rule) vs k on a log2 axis, one panel each, one colour per run."""
    plt = _plt()
    measured = [r for r in runs if r["metrics"] and dataset in r["metrics"]]
    has_select = any(r["metrics"][dataset].select_at_k for r in measured)
    fig, axes = plt.subplots(1, 3 if has_select else 2, figsize=(18 if has_select else 12, 4.2), sharey=True)
    for i, r in enumerate(measured):
        m = r["metrics"][dataset]
        ks = [int(k) for k in m.pass_at_k]
        if m.pass_at_every_k:  # the curve at every k; markers at the reported k
            axes[0].plot(range(1, len(m.pass_at_every_k) + 1), [100 * v for v in m.pass_at_every_k], "-", color=f"C{i % 10}")
            axes[0].plot(ks, [100 * v for v in m.pass_at_k.values()], "o", color=f"C{i % 10}", label=r["name"])
        else:
            axes[0].plot(ks, [100 * v for v in m.pass_at_k.values()], "o-", color=f"C{i % 10}", label=r["name"])
        axes[1].plot(ks, [100 * v for v in m.maj_at_k.values()], "s--", color=f"C{i % 10}", label=r["name"])
        for j, (rule_name, values) in enumerate((m.select_at_k or {}).items()):
            axes[2].plot([int(k) for k in values], [100 * v for v in values.values()], ":", marker="v^<>dP*"[j % 7],
                         color=f"C{i % 10}", label=f"{r['name']} {rule_name}")
    ks = sorted({int(k) for r in measured for k in r["metrics"][dataset].pass_at_k})
    for ax, label in zip(axes, ("pass@k", "maj@k", "select@k")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k (samples)")
        _style(ax, f"{label} (%)", f"{dataset}: {label}", legend_size=7)
    _save(plt, fig, path)


def plot_errors(path: Path, runs: list[dict]) -> bool:
    """Calculation and other/reasoning error rates vs SFT examples, per source and method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for source, (color, _) in SOURCE_STYLE.items():
        for method, other, marker in (("arithmetic", "no_slip_found", "o"), ("judge", "reasoning", "^")):
            pts = sorted((r["size"], r["errors"]["methods"][method]["rates"]) for r in runs
                         if r["source"] in (source, "base") and r["errors"] and method in r["errors"]["methods"])
            if len(pts) < 2:
                continue
            xs = [max(p[0], 1) for p in pts]  # the base model at x=1 on the log axis
            ax.plot(xs, [100 * p[1]["calculation_rate"] for p in pts], f"{marker}-", color=color,
                    label=f"{source} calculation ({method})")
            ax.plot(xs, [100 * p[1][f"{other}_rate"] for p in pts], f"{marker}:", color=color,
                    label=f"{source} {other.replace('_', ' ')} ({method})")
            drawn = True
    if drawn:
        _size_axis(ax, [max(r["size"], 1) for r in runs if r["errors"]], "SFT examples (the base model at 1)")
        ax.set_ylim(bottom=0)
        _style(ax, "share of all samples (%)", legend_size=7)
        _save(plt, fig, path)
    else:
        plt.close(fig)
    return drawn


# ------------------------------------------------------------------------------------------ render


def _card_section(card: dict | None, subsets: dict) -> str:
    avail = "; ".join(f"{s}: {i['available']} rows available, sizes trained {i['sizes']}"
                      + (f", left out {i['left_out']} (not enough rows)" if i["left_out"] else "")
                      for s, i in subsets["sources"].items())
    if not card:
        return f"No synthesis in this run. Subsets: {avail or 'none'}.\n"
    from lib.synthesis_output import data_card_markdown

    body = re.sub(r"^(#+) ", r"\1## ", data_card_markdown(card), flags=re.MULTILINE)  # under this report's headings
    return f"Subsets (nested, seed {subsets.get('seed')}): {avail}.\n\n{body}"


def _manifest_section(m: dict) -> str:
    prompt = m.get("prompt") or {}
    lines = [f"- git commit: `{m.get('git_commit')}`, mathray {m.get('mathray')}",
             "- packages: " + ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items() if v),
             f"- models: " + ", ".join(f"{k}: `{v}`" for k, v in m["models"].items()),
             "- stage configs (as run): " + ", ".join(f"`{c}`" for c in m["configs"]),
             "- sampling: " + ", ".join(f"{k}={v}" for k, v in m["sampling"].items()),
             "- grader: " + ", ".join(f"{k}={v}" for k, v in (m.get("grader") or {}).items()),
             f"- prompt `{prompt.get('name')}` (chat template: {prompt.get('use_chat_template')}, stop: {prompt.get('stop')}):",
             "", "```text", str(prompt.get("text", "")), "```"]
    if prompt.get("chat_template"):
        lines += ["", "Chat template:", "", "```jinja", str(prompt["chat_template"]), "```"]
    return "\n".join(lines) + "\n"


def render_markdown(data: dict, figures: dict[str, str]) -> str:
    runs = data["runs"]
    names = datasets(runs)
    out = [f"# {data['title']}", ""]
    if data["note"]:
        out += [f"> {data['note']}", ""]
    out += [f"Run directory `{data['run_dir']}`, rendered {time.strftime('%Y-%m-%d %H:%M')}. Values in percent with "
            "95% bootstrap CIs over questions; `examples` is the SFT data size (0: the base model). Grader statuses "
            "are counts of samples; only `correct` counts as solved.", ""]
    out += ["## Data scaling", ""]
    for ds in names:
        out += [f"### {ds}", "", scaling_table(runs, ds)]
        if f"scaling_{ds}" in figures:
            out += [f"![data scaling on {ds}]({figures[f'scaling_{ds}']})", ""]
    out += ["## pass@k, maj@k and select@k curves", ""]
    for ds in names:
        rows = {r["name"]: r["metrics"][ds] for r in runs if r["metrics"] and ds in r["metrics"]}
        out += [f"### {ds}", "", summary_table(rows, label="run")]
        if selected := select_table(rows, label="run"):
            out += ["select@k: the accuracy of each selection rule (`lib.selection`) applied to k samples.", "", selected]
        if f"passk_{ds}" in figures:
            out += [f"![pass@k, maj@k and select@k on {ds}]({figures[f'passk_{ds}']})", ""]
    out += ["## Error analysis: calculation vs reasoning errors", "",
            "Rates are shares of all samples of a run. `arithmetic` is judge-free (explicit `expression = number` "
            "statements re-evaluated; the rest is *no arithmetic slip found*, not a judgement); `judge` is an LLM's "
            "label, scaled from the judged share of incorrect samples.", "", error_table(runs)]
    if "errors" in figures:
        out += [f"![error rates]({figures['errors']})", ""]
    if any(r.get("symbolic") for r in runs):
        from lib.symbolic_report import gap_table

        out += ["## GSM-Symbolic: original vs perturbed questions", "",
                "Does SFT on synthetic data change the gap between the original GSM8K questions and fresh instances "
                "of their templates? Drop = original minus instance mean per template, averaged over templates.", "",
                gap_table(runs)]
    out += ["## SFT runs", "", train_table(runs), "## Synthetic data", "", _card_section(data["data_card"], data["subsets"]), "",
            "## The paper's numbers (reported, not measured here)", "",
            "From Li et al., *Common 7B Language Models Already Possess Strong Math Capabilities* (arXiv 2403.04706), "
            "LLaMA-2 base models, GPT-4 Turbo as teacher, full GSM8K / MATH test sets. They are for comparison with a "
            "full-scale run (`jobs/configs/pipeline_7b.yaml`), not with a CPU demo.", "", paper_table(),
            "## Reproducibility manifest", "", _manifest_section(data["manifest"])]
    if data["stages"]:
        out += ["## Stages of the last invocation", "", "| stage | state | seconds |", "|---|---|---|"]
        out += [f"| {s['stage']} | {s['state']} | {s['seconds']} |" for s in data["stages"]]
    return "\n".join(out) + "\n"


CSS = ("body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;font-size:13px;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}"
       "th:first-child,td:first-child{text-align:left}img{max-width:100%}pre{background:#f5f5f5;padding:.7em;overflow-x:auto;"
       "font-size:12px}blockquote{color:#555;border-left:4px solid #ddd;margin:0;padding-left:1em}")


def render_html(markdown: str, run_dir: Path, title: str) -> str:
    """The markdown as HTML with every figure inlined as a base64 data URI: one file, nothing to fetch."""
    from markdown_it import MarkdownIt

    def inline(match: re.Match) -> str:
        data = base64.b64encode((run_dir / match.group(2)).read_bytes()).decode()
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(
        re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", inline, markdown))
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head>"
            f"<body>\n{body}</body></html>\n")


def write_report(run_dir: Path) -> dict[str, Any]:
    """Render ``report.md`` / ``report.html`` / ``report.json`` / ``manifest.json`` and the figures of a run."""
    data = collect(run_dir)
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    figures: dict[str, str] = {}
    for ds in datasets(data["runs"]):
        plot_scaling(fig_dir / f"scaling_{ds}.png", data["runs"], ds)
        plot_passk_curves(fig_dir / f"passk_{ds}.png", data["runs"], ds)
        figures[f"scaling_{ds}"], figures[f"passk_{ds}"] = f"figures/scaling_{ds}.png", f"figures/passk_{ds}.png"
    if plot_errors(fig_dir / "errors.png", data["runs"]):
        figures["errors"] = "figures/errors.png"
    markdown = render_markdown(data, figures)
    (run_dir / "report.md").write_text(markdown)
    (run_dir / "report.html").write_text(render_html(markdown, run_dir, data["title"]))
    (run_dir / "report.json").write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    (run_dir / "manifest.json").write_text(json.dumps(data["manifest"], indent=2) + "\n")
    names = datasets(data["runs"])
    excerpt = f"{data['title']}\n\n{scaling_table(data['runs'], names[0])}" if names else data["title"]
    return {"md": str(run_dir / "report.md"), "html": str(run_dir / "report.html"), "excerpt": excerpt}
