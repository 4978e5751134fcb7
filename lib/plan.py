"""Dry-run plans: what a job would ask of a cluster and how much work it would do, without doing any of it.

A job's ``plan(config)`` resolves its config and counts its inputs (questions, seeds, SFT examples: reading
files, never loading a model or starting Ray) into :class:`StagePlan` rows. :func:`check_plan` packs each
stage's resource bundles (one per actor or training worker, as Ray places them) onto the node shapes of
``cluster/values.yaml``: a stage that can never be scheduled there is an error. ``--dry-run`` on every job
prints :func:`format_plan` and exits (status 1 when a stage does not fit)::

    python -m jobs.pipeline --config jobs/configs/pipeline_7b.yaml --dry-run

Token counts are upper bounds: generated text at its ``max_tokens``, a prompt that quotes generated text at
that text's ``max_tokens``; dataset text is estimated at 4 characters per token (``~``).
Costs are worst cases at the configured prices (every request answered at its full ``max_tokens``),
capped by the configured budget where there is one.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

VALUES = Path(__file__).resolve().parent.parent / "cluster" / "values.yaml"
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class NodeShape:
    """One kind of Ray node: the CPUs and GPUs Ray offers on it, and at most how many such nodes there are."""

    name: str
    cpus: float
    gpus: int
    count: int


@dataclass
class StagePlan:
    """A stage: the resource bundles it holds at once, and its work as named counts."""

    name: str
    bundles: list[dict[str, float]]
    work: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def total(self, resource: str) -> float:
        return sum(b.get(resource, 0) for b in self.bundles)


def node_shapes(values: dict[str, Any]) -> list[NodeShape]:
    """The head and the GPU worker group of ``cluster/values.yaml`` (CPUs less those kept for Ray itself)."""
    head, workers = values["head"], values["gpu_workers"]
    return [NodeShape(f"head ({head['instance_type']})", head["cpus"] - head["ray_reserved_cpus"], 0, 1),
            NodeShape(f"gpu_workers ({workers['instance_type']}, {workers['gpus']} x {workers['gpu_type']})",
                      workers["cpus"] - workers["ray_reserved_cpus"], workers["gpus"], workers["max"])]


def load_node_shapes(path: Path = VALUES) -> list[NodeShape]:
    return node_shapes(yaml.safe_load(Path(path).read_text()))


def unschedulable(bundles: list[dict[str, float]], shapes: list[NodeShape]) -> str | None:
    """Why ``bundles`` cannot all be placed at once on the nodes (first fit, largest first); None if they can."""
    free = [[s.cpus, s.gpus, s] for s in shapes for _ in range(s.count)]
    for bundle in sorted(bundles, key=lambda b: (b.get("GPU", 0), b.get("CPU", 0)), reverse=True):
        cpu, gpu = bundle.get("CPU", 0), bundle.get("GPU", 0)
        node = next((n for n in free if n[0] >= cpu and n[1] >= gpu), None)
        if node is None:
            largest = max(shapes, key=lambda s: (s.gpus, s.cpus))
            if cpu > max(s.cpus for s in shapes) or gpu > max(s.gpus for s in shapes):
                return f"one bundle {bundle} is larger than every node (largest: {largest.name}: {largest.cpus:g} CPUs, {largest.gpus} GPUs)"
            total_cpu = sum(b.get("CPU", 0) for b in bundles)
            total_gpu = sum(b.get("GPU", 0) for b in bundles)
            return (f"{len(bundles)} bundles ({total_cpu:g} CPUs, {total_gpu:g} GPUs in all) do not fit on "
                    + ", ".join(f"{s.count} x {s.name} ({s.cpus:g} CPUs, {s.gpus} GPUs)" for s in shapes))
        node[0] -= cpu
        node[1] -= gpu
    return None


def bundles(count: int, cpus: float, gpus: float = 0) -> list[dict[str, float]]:
    """``count`` identical bundles (actors or workers), each asking for ``cpus`` and ``gpus``."""
    one = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    return [dict(one) for _ in range(count)]


def prompt_tokens(texts: list[str], template_chars: int = 0) -> int:
    """Estimated prompt tokens of one request per text."""
    return sum(math.ceil((len(t) + template_chars) / CHARS_PER_TOKEN) for t in texts)


def evaluate_work(question_texts: list[str], samples_per_question: int, greedy: bool, max_tokens: int,
                  samples_per_request: int) -> dict[str, Any]:
    """Questions x samples (+ greedy), vLLM requests, and token bounds of an evaluation."""
    q = len(question_texts)
    per_question = math.ceil(samples_per_question / samples_per_request) + int(greedy)
    samples = q * (samples_per_question + int(greedy))
    return {"questions": q, "samples_per_question": samples_per_question, "samples": samples,
            "requests": q * per_question, "prompt_tokens~": prompt_tokens(question_texts) * per_question,
            "generated_tokens<=": samples * max_tokens}


def train_work(num_examples: int | None, global_batch_size: int, epochs: int, max_steps: int | None) -> dict[str, Any]:
    """SFT examples and optimizer steps (the job's own rule: ceil(examples / global batch) per epoch);
    ``num_examples`` None: not readable before the run (e.g. data a previous stage writes)."""
    if num_examples is None:
        return {"examples": "unknown", "epochs": epochs, "global_batch_size": global_batch_size,
                "steps": max_steps or "unknown"}
    steps = max_steps or epochs * math.ceil(num_examples / global_batch_size)
    return {"examples": num_examples, "epochs": epochs, "global_batch_size": global_batch_size, "steps": steps}


def teacher_work(requests: int, prompt_tokens: int, completion_tokens: int, prompt_usd_per_mtok: float,
                 completion_usd_per_mtok: float, budget_usd: float | None) -> dict[str, Any]:
    """Teacher (or judge) requests at most, their estimated prompt tokens, their completion tokens at most
    (every answer at its max_tokens), and that worst case's cost, capped by the budget when there is one."""
    cost = (prompt_tokens * prompt_usd_per_mtok + completion_tokens * completion_usd_per_mtok) / 1e6
    work = {"teacher_requests<=": requests, "teacher_prompt_tokens<=": prompt_tokens,
            "teacher_completion_tokens<=": completion_tokens, "worst_case_usd": round(cost, 2)}
    if budget_usd is not None:
        work["budget_usd"] = budget_usd
        work["spend_cap_usd"] = round(min(cost, budget_usd), 2)
    return work


def check_plan(stages: list[StagePlan], shapes: list[NodeShape]) -> list[str]:
    """One error per stage that can never be scheduled on ``shapes``."""
    return [f"stage {s.name}: can never be scheduled: {why}" for s in stages if (why := unschedulable(s.bundles, shapes))]


def format_plan(stages: list[StagePlan], shapes: list[NodeShape]) -> str:
    """The plan as text: the node shapes, then per stage its resources, its work and whether it fits."""
    lines = ["nodes (cluster/values.yaml): " + "; ".join(f"{s.count} x {s.name}: {s.cpus:g} CPUs, {s.gpus} GPUs"
                                                          for s in shapes), ""]
    for i, stage in enumerate(stages, 1):
        why = unschedulable(stage.bundles, shapes)
        lines.append(f"{i}. {stage.name}: {len(stage.bundles)} bundles, {stage.total('CPU'):g} CPUs, "
                     f"{stage.total('GPU'):g} GPUs  [{'fits' if why is None else 'UNSCHEDULABLE: ' + why}]")
        lines.append("   " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in stage.work.items()))
        lines += [f"   note: {n}" for n in stage.notes]
    totals = [s.work.get("spend_cap_usd", s.work.get("worst_case_usd", 0)) for s in stages]
    if any(totals):
        lines.append(f"\nteacher/judge spend, worst case within budgets: ${sum(totals):,.2f}")
    return "\n".join(lines)


def dry_run(stages: list[StagePlan], shapes: list[NodeShape] | None = None) -> NoReturn:
    """``--dry-run``: print the plan; exit 0, or 1 naming every stage that cannot be scheduled."""
    shapes = shapes if shapes is not None else load_node_shapes()
    sys.stdout.write(format_plan(stages, shapes) + "\n")
    errors = check_plan(stages, shapes)
    if errors:
        raise SystemExit("error: " + "\nerror: ".join(errors))
    raise SystemExit(0)
