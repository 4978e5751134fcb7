"""Best-of-N selection, pure: given N sampled answers grouped by equivalence (and optional verdicts),
pick the completion to return and describe why (the trace returned to the client)."""

from __future__ import annotations

from typing import Any

JUDGED_GROUPS = 4  # without a reference, the model judges the representatives of the largest groups only


def choose(answers: list[str | None], groups: list[list[int]], selection: str,
           verdicts: dict[int, bool | None] | None = None) -> tuple[int, dict[str, Any]]:
    """``groups``: sample indices per answer group, largest first. ``verdicts``: sample index -> True/False/None
    (graded against a reference, or judged by the model). Returns (chosen sample index, trace).

    majority: the first member of the largest group. verifier: the largest group holding a sample judged
    correct (its first such member); when none is, the majority choice, and the trace says so.
    """
    verdicts = verdicts or {}
    trace: dict[str, Any] = {
        "selection": selection, "n": len(answers), "answers": answers,
        "groups": [{"answer": answers[g[0]], "votes": len(g), "members": g,
                    "verdicts": {str(i): verdicts[i] for i in g if i in verdicts} or None} for g in groups],
    }
    if not groups:
        trace.update(chosen_index=0, chosen_answer=None, reason="no sample states a final answer; returned sample 0")
        return 0, trace
    chosen, reason = groups[0][0], f"majority: {len(groups[0])} of {len(answers)} samples agree"
    if selection == "verifier":
        for g in groups:
            correct = [i for i in g if verdicts.get(i) is True]
            if correct:
                chosen = correct[0]
                reason = f"verifier: largest group with a sample judged correct ({len(g)} votes)"
                break
        else:
            reason = "verifier: no sample judged correct; fell back to the majority"
    trace.update(chosen_index=chosen, chosen_answer=answers[chosen], reason=reason)
    return chosen, trace
