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
