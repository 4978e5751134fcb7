"""Best-of-N selection rules on fixed answers, groups and verdicts (no Ray, no model)."""

import pytest

from serve.best_of_n import choose

ANSWERS = ["5", "7", "5", None, "7", "5", "9"]
GROUPS = [[0, 2, 5], [1, 4], [6]]


def test_majority_returns_the_first_member_of_the_largest_group():
    chosen, trace = choose(ANSWERS, GROUPS, "majority")
    assert chosen == 0 and trace["chosen_answer"] == "5" and trace["reason"] == "majority: 3 of 7 samples agree"
    assert [g["votes"] for g in trace["groups"]] == [3, 2, 1] and trace["n"] == 7


def test_verifier_prefers_the_largest_group_with_a_correct_sample_over_a_larger_wrong_one():
    verdicts = {0: False, 2: False, 5: False, 1: False, 4: True, 6: True}
    chosen, trace = choose(ANSWERS, GROUPS, "verifier", verdicts)
    assert chosen == 4 and trace["chosen_answer"] == "7"
    assert trace["groups"][1]["verdicts"] == {"1": False, "4": True}


def test_verifier_without_a_correct_sample_falls_back_to_the_majority():
    chosen, trace = choose(ANSWERS, GROUPS, "verifier", {i: False for i in range(7)})
    assert chosen == 0 and trace["reason"] == "verifier: no sample judged correct; fell back to the majority"


def test_no_answers_returns_sample_zero():
    chosen, trace = choose([None, None], [], "majority")
    assert chosen == 0 and trace["chosen_answer"] is None and trace["groups"] == []


def test_the_served_choice_is_the_one_the_evaluation_measures():
    """Each registry rule, fed the same samples on both sides: Serve's choose picks a correct answer exactly
    when select@n (lib/metrics.py, k = n: the single subset of all samples) scores 1 for it."""
    from lib.metrics import select_at_k_all

    gold = "7"
    texts = ["2 + 2 = 5", "3 + 4 = 7", "2 + 2 = 5", "none", "3 + 4 = 7", "2 + 2 = 5", "no arithmetic"]
    verdicts = {0: False, 4: True}
    scores = [None if verdicts.get(i) is None else float(verdicts[i]) for i in range(len(ANSWERS))]
    served_correct = {}
    for rule in ("majority", "verifier", "verifier_weighted", "arithmetic_checked", "judge_top_groups", "random"):
        chosen, trace = choose(ANSWERS, GROUPS, rule, verdicts, texts=texts)
        measured = select_at_k_all({"verifier": "judge_top_groups"}.get(rule, rule), ANSWERS,
                                   [a == gold for a in ANSWERS], [len(ANSWERS)], scores=scores, texts=texts)
        served_correct[rule] = trace["chosen_answer"] == gold
        assert measured == {len(ANSWERS): float(served_correct[rule])}, rule
    assert served_correct == {"majority": False, "verifier": True, "verifier_weighted": True,
                              "arithmetic_checked": True, "judge_top_groups": True, "random": False}


def test_a_registry_rule_by_name_reports_its_group():
    chosen, trace = choose(ANSWERS, GROUPS, "arithmetic_checked",
                           texts=["2 + 2 = 5", "3 + 4 = 7", "2 + 2 = 5", "", "3 + 4 = 7", "2 + 2 = 5", ""])
    assert (chosen, trace["chosen_answer"], trace["reason"]) == (1, "7", "arithmetic_checked: group of 2 of 7 samples")


class _Remote:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def remote(self, *args):
        self.calls.append(args)

        async def result():
            return self.fn(*args)
        return result()


def served_best_of_n(selection: str, texts: list[str], reference: str | None = None):
    """Ingress.best_of_n with fake model/verifier handles (no Ray): returns (response, judge_answers calls, judge calls)."""
    import asyncio
    from types import SimpleNamespace

    from lib.selection import group_answers, largest_first, same_canonical
    from serve.app import Ingress
    from serve.openai_api import ChatRequest

    def generate(request):
        if request.get("n", 1) == len(texts) and "messages" not in request:
            return {"prompt_tokens": 3, "choices": [{"text": t, "num_tokens": 1, "finish_reason": "stop"} for t in texts]}
        return {"prompt_tokens": 3, "choices": [{"text": "The solution is correct.", "num_tokens": 5, "finish_reason": "stop"}]}

    model = SimpleNamespace(generate=_Remote(generate))
    verifier = SimpleNamespace(group=_Remote(lambda answers: largest_first(group_answers(answers, same_canonical))),
                               judge_answers=_Remote(lambda answers, ref: [None if a is None else a == ref for a in answers]))
    fake = SimpleNamespace(model=model, verifier=verifier, args=SimpleNamespace(served_name="mathray"),
                           engine_request=lambda body, n: {"n": n})
    body = ChatRequest.model_validate({"model": "mathray", "messages": [{"role": "user", "content": "q"}],
                                       "mathray": {"selection": selection, "n": len(texts), "reference": reference}})
    response = asyncio.run(Ingress.func_or_class.best_of_n(fake, body, "chat"))
    return response, verifier.judge_answers.calls, model.generate.calls[1:]


TEXTS = ["2 + 2 = 5 so \\boxed{5}", "3 + 4 = 7 so \\boxed{7}", "2 + 2 = 5 so \\boxed{5}", "3 + 4 = 7 so \\boxed{7}",
         "2 + 2 = 5 so \\boxed{5}"]


def test_the_endpoint_serves_registry_rules_by_name_with_the_completions_texts():
    """The served path passes the completions' texts to choose: arithmetic_checked drops the three "5" samples
    (2 + 2 = 5) and serves "7"; majority serves "5"; neither grades nor judges. (Before issue 15's wiring the
    request model accepted only majority/verifier, and Serve never passed texts.)"""
    response, graded, judged = served_best_of_n("arithmetic_checked", TEXTS)
    assert response["mathray"]["chosen_answer"] == "7" and response["choices"][0]["message"]["content"] == TEXTS[1]
    assert (graded, judged) == ([], [])
    assert served_best_of_n("majority", TEXTS)[0]["mathray"]["chosen_answer"] == "5"


def test_score_rules_are_scored_by_the_reference_or_the_judge():
    """verifier_weighted with a reference grades every sample (the "7" samples score 1 and win); without one the
    model judges the largest groups' representatives (2 judge calls here, one per group)."""
    response, graded, judged = served_best_of_n("verifier_weighted", TEXTS, reference="7")
    assert response["mathray"]["chosen_answer"] == "7" and len(graded) == 1 and judged == []
    response, graded, judged = served_best_of_n("judge_top_groups", TEXTS)
    assert graded == [] and len(judged) == 2 and response["mathray"]["chosen_answer"] == "5"  # both judged correct: larger


def test_the_request_accepts_every_registry_rule_and_the_verifier_alias_only():
    from pydantic import ValidationError

    from lib.selection import RULES
    from serve.openai_api import BestOfN

    for name in [*RULES, "verifier"]:
        assert BestOfN(selection=name).selection == name
    with pytest.raises(ValidationError, match="unknown selection 'best'"):
        BestOfN(selection="best")


def test_the_verifier_judges_the_answers_it_groups():
    """judge_answers compares the answers best-of-N groups (lib.extraction.final_answer of each sample) with the
    reference, so a sample's verdict and its group are about the same answer; None for a sample stating none."""
    import asyncio

    from lib.extraction import final_answer
    from serve.verifier import Verifier

    texts = ["so \\boxed{2 + 2 = 4}", "\\boxed{5}", "I am not sure", "The answer is 4.0"]
    answers = [final_answer(t) for t in texts]
    assert answers == ["4", "5", None, "4.0"]
    verifier = Verifier.func_or_class(pool_size=1)
    try:
        assert asyncio.run(verifier.judge_answers(answers, "4")) == [True, False, None, True]
    finally:
        verifier.pool.close()
