"""Best-of-N selection rules on fixed answers, groups and verdicts (no Ray, no model)."""

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
