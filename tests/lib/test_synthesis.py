"""Parsing, voting, format filters, verdicts, dedup, decontamination and the data card, on handmade rows."""

import json

import pytest

from lib.data import load_dataset
from lib.grading import is_equivalent
from lib.extraction import final_answer
from lib.selection import vote
from lib.synthesis import (
    NearDuplicateIndex,
    format_problem,
    minhash_signature,
    normalize_text,
    parse_question,
    question_messages,
    question_prompt_name,
    words,
)
from lib.verification import parse_verdict
from lib.synthesis_output import build_test_index, data_card, select

LONG = ("A farmer has 12 cows and buys 7 more at the market on Monday morning. Each cow gives 9 liters of milk "
        "every day and the farmer sells all of it at 2 dollars per liter. How much money does he make in a week?")


@pytest.mark.parametrize("text,question,reason", [
    ("New problem: " + LONG, LONG, None),
    ("Sure! Here it is.\n\n**New problem:** " + LONG + "\n\nSolution: 19 cows...", LONG, None),
    (LONG + "\nAnswer: 2394", LONG, None),
    ("New problem:   ", None, "empty"),
    ("New problem: What is 2+2?", None, "too_short"),
    ("New problem: " + LONG + " The answer is 2394.", None, "has_answer"),
    ("New problem: " + LONG + " \\boxed{2394}", None, "has_answer"),
    ("The answer to this problem is 2 + 2 + 2 + 2 * 3 = 18, clearly.", None, "has_answer"),
])
def test_parse_question(text, question, reason):
    parsed = parse_question(text)
    assert (parsed.question, parsed.reason) == (question, reason)


@pytest.mark.parametrize("solution,answer", [
    ("so it is \\boxed{42}.", "42"),
    ("First \\boxed{1}, then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("Therefore the answer is 17.", "17"),
    ("So x = 2 + 3 = 5.\n#### 5", "5"),
    ("The final answer is x = 7.", "7"),
    ("We get 3 apples and 4 pears, 7 in all", None),  # last-number fallback does not vote
    ("", None),
])
def test_final_answer(solution, answer):
    assert final_answer(solution) == answer


@pytest.mark.parametrize("solution,finish,require_boxed,problem", [
    ("Add them: 2 + 3 = 5, so \\boxed{5}.", "stop", True, None),
    ("Add them: 2 + 3 = 5, so \\boxed{5}.", "length", True, "truncated"),
    ("Add them: 2 + 3 = 5, so the answer is 5.", "stop", True, "no_boxed"),
    ("Add them: 2 + 3 = 5, so the answer is 5.", "stop", False, None),
    ("\\boxed{2} or maybe \\boxed{5}, long enough", "stop", False, "multiple_boxed"),
    ("\\boxed{5}", "stop", True, "too_short"),
    ("x" * 100 + "\\boxed{5}", "stop", True, "too_long"),
])
def test_format_problem(solution, finish, require_boxed, problem):
    assert format_problem(solution, finish, min_chars=20, max_chars=80, require_boxed=require_boxed) == problem


def test_parse_verdict_takes_the_last_verdict_line():
    assert parse_verdict("Verdict: incorrect ... on reflection\nVerdict: **Correct**") is True
    assert parse_verdict("verdict: incorrect") is False
    assert parse_verdict("Looks fine to me.") is None


def test_vote_groups_equivalent_answers_and_counts_failures_as_disagreement():
    """'5' and '5.0' are one group; a missing answer and a failed request count against agreement."""
    result = vote(["5", "6", "5.0", None], is_equivalent, num_requested=5)
    assert (result.label, result.votes, result.agreement, result.groups) == ("5", 2, 0.4, [[0, 2], [1]])


def test_vote_tie_goes_to_the_first_group_and_no_answers_give_no_label():
    assert vote(["7", "8"], is_equivalent).label == "7"
    none = vote([None, None], is_equivalent)
    assert (none.label, none.votes, none.agreement) == (None, 0, 0.0)


def test_question_prompts_follow_the_seed_style():
    gsm = load_dataset("gsm8k", split="train", limit=1)[0]
    math = load_dataset("math", split="train", limit=1)[0]
    assert question_prompt_name(gsm) == "gsm8k_style_v1" and question_prompt_name(math) == "math_style_v1"
    messages = question_messages(math, "math_style_v1")
    assert math.question.strip() in messages[-1]["content"] and f"({math.type}, {math.level})" in messages[-1]["content"]


def test_near_duplicate_index():
    """One word changed in a 40-word question is a near duplicate; a different question is not."""
    other = "A train leaves the station at 3 pm travelling at 60 miles per hour toward a city 240 miles away."
    near = LONG.replace("Monday", "Tuesday")
    index = NearDuplicateIndex(threshold=0.7, num_perm=128)
    assert index.add("a", minhash_signature(LONG)) is None
    assert index.add("b", minhash_signature(near)) == "a"
    assert index.add("c", minhash_signature(other)) is None
    assert normalize_text("  Hello,   WORLD! ") == "hello world"


def question_row(qid, question, status="kept", label="5", sols=None, usage=None, detail=None):
    sols = sols if sols is not None else [
        {"index": j, "text": f"Solution {j} works it out carefully: \\boxed{{5}}", "answer": "5", "finish_reason": "stop",
         "prompt_tokens": 10, "completion_tokens": 20, "cost": 0.5, "majority": True, "format": None, "verified": None,
         "keep": True} for j in range(2)]
    return {"question_id": qid, "seed_id": qid.rsplit("/", 1)[0], "seed_dataset": "gsm8k", "question_prompt": "gsm8k_style_v1",
            "question": question, "status": status, "detail": detail, "label": label, "votes": len(sols),
            "agreement": 1.0 if sols else 0.0, "solutions_json": json.dumps(sols),
            "usage_json": json.dumps(usage or {"question": {"requests": 1, "cached": 0, "failed": 0, "budget_refused": 0,
                                                            "prompt_tokens": 5, "completion_tokens": 5, "cost": 0.25}}),
            "errors_json": "[]", "signature": minhash_signature(question) if status == "kept" and question else []}


def test_select_dedups_in_id_order_and_removes_a_planted_test_question():
    """Exact duplicate (case and punctuation differ), near duplicate, a GSM8K test question planted with a
    prefix: each removed with its reason and the nearest test item; the rest become rows. Rows arrive in
    reverse order: the earlier id survives anyway."""
    test_q = load_dataset("gsm8k", split="test", limit=3)[2]
    rows = [
        question_row("s/0/q0", LONG),
        question_row("s/0/q1", LONG.upper().replace(".", " !")),
        question_row("s/1/q0", LONG.replace("Monday", "Tuesday")),
        question_row("s/2/q0", "Here is a fresh one. " + test_q.question),
        question_row("s/3/q0", "A train leaves the station at 3 pm travelling at 60 miles per hour toward a city."),
        question_row("s/4/q0", None, status="low_agreement", label=None, sols=[]),
    ]
    out = select(rows[::-1], exact=True, near=True, near_threshold=0.7, num_perm=128,
                 test_index=build_test_index(13, ["gsm8k"]), teacher_model="t", verify=False)
    assert out.duplicates == [{"question_id": "s/0/q1", "duplicate_of": "s/0/q0", "kind": "exact"},
                              {"question_id": "s/1/q0", "duplicate_of": "s/0/q0", "kind": "near"}]
    assert [(c["question_id"], c["test_id"], c["field"]) for c in out.contaminated] == [("s/2/q0", test_q.id, "question")]
    assert out.contaminated[0]["shared_ngrams"] == len(words(test_q.question)) - 12  # every 13-gram of the test item
    assert [r["id"] for r in out.rows] == ["s/0/q0/s0", "s/0/q0/s1", "s/3/q0/s0", "s/3/q0/s1"]
    assert out.rows[0]["answer"] == "5" and out.rows[0]["cost_usd"] == 0.5


def test_data_card_counts_every_stage():
    sol = lambda j, **kw: {"index": j, "text": "t" * 30 + " \\boxed{5}", "answer": "5", "finish_reason": "stop",  # noqa: E731
                           "prompt_tokens": 1, "completion_tokens": 1, "cost": 0.0, "majority": True, "format": None,
                           "verified": None, "keep": True, **kw}
    rows = [
        question_row("s/0/q0", LONG, sols=[sol(0), sol(1), sol(2, format="no_boxed", keep=False),
                                           sol(3, majority=False, keep=False, answer="6")]),
        question_row("s/1/q0", None, status="question_rejected", detail="has_answer", label=None, sols=[]),
        question_row("s/2/q0", None, status="request_failed", label=None, sols=[]),
        question_row("s/3/q0", "A train leaves at 3 pm toward a city 240 miles away; when does it arrive there?",
                     status="low_agreement", sols=[sol(0, majority=False, keep=False), sol(1, majority=False, keep=False,
                                                                                         answer="7")]),
    ]
    out = select(rows, exact=True, near=True, near_threshold=0.8, num_perm=128, test_index=None, teacher_model="t", verify=False)
    card = data_card(rows, out, num_seeds=4, questions_per_seed=1, verify=False, extra={})
    counts = {s["stage"]: (s.get("questions"), s.get("solutions")) for s in card["stages"]}
    assert counts == {
        "seeds": (4, None), "questions requested": (4, None), "questions returned": (3, None),
        "questions parsed": (2, None), "solutions returned": (2, 6), "answer agreement >= threshold": (1, 3),
        "format filters": (1, 2), "exact + near dedup": (1, None), "decontamination": (1, 2), "final dataset": (1, 2),
    }
    assert card["removals"]["questions"] == {"low_agreement": 1, "question_rejected:has_answer": 1, "request_failed": 1}
    assert card["removals"]["solutions_format"] == {"no_boxed": 1}
    assert card["totals"]["requests"] == 4 and card["totals"]["cost"] == 1.0


def test_default_decontamination_index_holds_every_test_set_on_disk_and_no_generated_set():
    """The default index is the 17,703 test questions in ../shared/data; GSM-Symbolic instances are not
    generated for it (their templates are GSM8K test questions, already indexed)."""
    index = build_test_index()
    assert len(index) == 17703
    assert not [ref for ref in index.ids if ref.startswith("gsm_symbolic")]
