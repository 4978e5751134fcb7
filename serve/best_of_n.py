"""Best-of-N selection, pure: given N sampled answers grouped by equivalence (and optional verdicts),
pick the completion to return and describe why (the trace returned to the client).

The choice itself is :func:`lib.selection.select`, the same rules the evaluation job measures as select@k.
Serve's ``selection: verifier`` is the registry's ``judge_top_groups`` rule with the verdicts as scores.
"""

from __future__ import annotations

from typing import Any

from lib.selection import select

JUDGED_GROUPS = 4  # without a reference, the model judges the representatives of the largest groups only
SERVE_RULES = {"verifier": "judge_top_groups"}  # Serve's selection names that differ from the registry's


def choose(answers: list[str | None], groups: list[list[int]], selection: str,
           verdicts: dict[int, bool | None] | None = None, texts: list[str] | None = None) -> tuple[int, dict[str, Any]]:
    """``groups``: sample indices per answer group, largest first. ``verdicts``: sample index -> True/False/None
    (graded against a reference, or judged by the model); they are the per-sample scores of the rule (1/0;
    missing: not scored). ``texts``: the completions, for rules that read them (``arithmetic_checked``).
    Returns (chosen sample index, trace).

    majority: the first member of the largest group. verifier: the largest group holding a sample judged
    correct (its first such member); when none is, the majority choice, and the trace says so. Any other
    name of ``lib.selection.RULES`` applies that rule. Ties: the group with the earliest first member.
    """
    verdicts = verdicts or {}
    trace: dict[str, Any] = {
        "selection": selection, "n": len(answers), "answers": answers,
        "groups": [{"answer": answers[g[0]], "votes": len(g), "members": g,
                    "verdicts": {str(i): verdicts[i] for i in g if i in verdicts} or None} for g in groups],
    }
    rule = SERVE_RULES.get(selection, selection)
    scores = [None if verdicts.get(i) is None else float(verdicts[i]) for i in range(len(answers))]
    choice = select(rule, answers, groups=groups, scores=scores, texts=texts)
    if choice.index is None:
        trace.update(chosen_index=0, chosen_answer=None, reason="no sample states a final answer; returned sample 0")
        return 0, trace
    chosen, votes = choice.index, len(choice.group)
    if selection == "majority":
        reason = f"majority: {votes} of {len(answers)} samples agree"
    elif selection == "verifier" and verdicts.get(chosen) is True:
        reason = f"verifier: largest group with a sample judged correct ({votes} votes)"
    elif selection == "verifier":
        reason = "verifier: no sample judged correct; fell back to the majority"
    else:
        reason = f"{rule}: group of {votes} of {len(answers)} samples"
    trace.update(chosen_index=chosen, chosen_answer=answers[chosen], reason=reason)
    return chosen, trace
