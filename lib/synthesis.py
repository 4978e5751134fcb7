"""The science of synthetic SFT data, without orchestration: teacher prompts, question parsing, format
filters, and MinHash signatures and n-gram indexes for dedup and decontamination.

Everything here is a plain function of text, so it is unit-tested without a teacher, Ray or a network.
``lib/synthesis_stage.py`` wires it (with answer voting from ``lib.selection``, the answer a solution states
from ``lib.extraction`` and the verify prompt from ``lib.verification``) into the stage ``jobs/synthesize.py`` runs.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from lib.data import Question
from lib.verification import VERIFY_PROMPT  # noqa: F401 - re-exported: jobs/synthesize.py imports it from here

# ----------------------------------------------------------------------------------------------- prompts

QUESTION_SYSTEM = "You are an experienced mathematics teacher who writes new practice problems."

QUESTION_PROMPTS: dict[str, str] = {
    # GSM8K-like seeds: grade-school word problems with one numerical answer.
    "gsm8k_style_v1": (
        "Here is a grade-school math word problem:\n\n{question}\n\n"
        "Write one new word problem in the same style and of the same difficulty. It must be self-contained, "
        "answerable, have a single numerical answer, and use a different story and different numbers. "
        "Write only the new problem after \"New problem:\", without a solution or an answer."
    ),
    # MATH-like seeds: competition problems with a subject and a level.
    "math_style_v1": (
        "Here is a competition mathematics problem{about}:\n\n{question}\n\n"
        "Write one new problem on the same subject and of the same difficulty. It must be self-contained and "
        "well-posed, with a single final answer that can be written in LaTeX, and it must not be a rewording "
        "of the original. Write only the new problem after \"New problem:\", without a solution or an answer."
    ),
}

SOLUTION_PROMPT_NAME = "solve_boxed_v1"
SOLUTION_PROMPT = (
    "Solve the following math problem step by step. Show your reasoning, then give the final answer "
    "in \\boxed{{}} on the last line.\n\n{question}"
)

def question_prompt_name(seed: Question) -> str:
    """GSM8K-like seeds (a numerical word problem) get the GSM8K prompt; MATH seeds the MATH prompt."""
    return "math_style_v1" if seed.dataset.startswith("math") or seed.level else "gsm8k_style_v1"


def question_messages(seed: Question, prompt_name: str) -> list[dict[str, str]]:
    about = ""
    if seed.type or seed.level:
        about = " (" + ", ".join(x for x in (seed.type, seed.level) if x) + ")"
    text = QUESTION_PROMPTS[prompt_name].format(question=seed.question.strip(), about=about)
    return [{"role": "system", "content": QUESTION_SYSTEM}, {"role": "user", "content": text}]


def solution_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": SOLUTION_PROMPT.format(question=question.strip())}]


# ----------------------------------------------------------------------------------------------- parsing

_MARKER = re.compile(r"(?:new\s+(?:math\s+)?(?:word\s+)?problem|new\s+question|problem|question)\s*\d*\s*[:：]\s*",
                     re.IGNORECASE)
_TRAILER = re.compile(r"\n\s*(?:\*\*)?\s*(?:solution|answer|step\s*1|explanation|note)\b\s*[:：]?"
                      # a paragraph that starts solving or commenting ends the problem (small teachers do this)
                      r"|\n\s*\n\s*(?:the answer|the story|the new problem|to (?:solve|find)|so,|this (?:is|means)|"
                      r"we (?:can|need)|let'?s|first,)", re.IGNORECASE)


_HAS_ANSWER = re.compile(r"\\boxed|####|\bthe (?:final )?answer (?:to (?:this|the) (?:problem|question) )?is\b",
                         re.IGNORECASE)


@dataclass(frozen=True)
class ParsedQuestion:
    question: str | None
    reason: str | None  # why no question was accepted: "empty", "too_short", "too_long", "has_answer"


def parse_question(text: str, min_chars: int = 20, max_chars: int = 2000) -> ParsedQuestion:
    """The new problem from a question-writing response: the text after the first "New problem:"-like
    marker (else the whole response), cut before a "Solution:"/"Answer:" section, markdown bold removed."""
    body = text or ""
    if match := _MARKER.search(body):
        body = body[match.end():]
    if trailer := _TRAILER.search(body):
        body = body[: trailer.start()]
    body = body.replace("**", "").strip().strip('"').strip()
    if not body:
        return ParsedQuestion(None, "empty")
    if _HAS_ANSWER.search(body):
        return ParsedQuestion(None, "has_answer")
    if len(body) < min_chars:
        return ParsedQuestion(None, "too_short")
    if len(body) > max_chars:
        return ParsedQuestion(None, "too_long")
    return ParsedQuestion(body, None)


def format_problem(solution: str, finish_reason: str | None, min_chars: int, max_chars: int,
                   require_boxed: bool = True) -> str | None:
    """Why a solution fails the format filter (None when it passes): truncated, not exactly one boxed
    answer (at most one when ``require_boxed`` is False), or outside the length bounds."""
    if finish_reason == "length":
        return "truncated"
    count = solution.count("\\boxed")
    if count > 1:
        return "multiple_boxed"
    if count == 0 and require_boxed:
        return "no_boxed"
    if len(solution) < min_chars:
        return "too_short"
    if len(solution) > max_chars:
        return "too_long"
    return None


# ---------------------------------------------------------------------------------- dedup and n-grams

_WORD = re.compile(r"\w+", re.UNICODE)
MINHASH_SCHEME = "affine32"  # datasketch 2.x: 32-bit hash values


def normalize_text(text: str) -> str:
    """Lowercase, NFKC, words only, single spaces: the key for exact dedup."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).lower()))


def words(text: str) -> list[str]:
    return normalize_text(text).split()


def shingles(text: str, n: int = 3) -> set[str]:
    toks = words(text)
    if len(toks) < n:
        return {" ".join(toks)} if toks else set()
    return {" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def minhash_signature(text: str, num_perm: int = 128, shingle_words: int = 3, seed: int = 1) -> list[int]:
    """MinHash (datasketch) hash values of a text's word shingles; rebuild with ``LeanMinHash``."""
    from datasketch import MinHash

    mh = MinHash(num_perm=num_perm, seed=seed, scheme=MINHASH_SCHEME)
    mh.update_batch([s.encode() for s in sorted(shingles(text, shingle_words))])
    return [int(v) for v in mh.hashvalues]


class NearDuplicateIndex:
    """MinHash LSH over signatures: ``add(id, signature)`` returns the id of an earlier near-duplicate
    (estimated Jaccard >= threshold on word shingles) or None, in which case ``id`` joins the index."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, seed: int = 1):
        from datasketch import MinHashLSH

        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        self._sigs: dict[str, object] = {}

    def add(self, key: str, signature: list[int]) -> str | None:
        import numpy as np
        from datasketch import LeanMinHash

        mh = LeanMinHash(seed=self.seed, hashvalues=np.asarray(signature, dtype=np.uint64), scheme=MINHASH_SCHEME)
        # LSH returns candidates; confirm with the signature's Jaccard estimate, keep the most similar.
        best, best_j = None, -1.0
        for other in self.lsh.query(mh):
            j = mh.jaccard(self._sigs[other])
            if j >= self.threshold and j > best_j:
                best, best_j = other, j
        if best is None:
            self.lsh.insert(key, mh)
            self._sigs[key] = mh
        return best


class NgramIndex:
    """Word n-grams of reference texts (the test sets), for decontamination.

    ``match(text)`` returns (reference id, shared n-gram count, one shared n-gram) for the reference
    sharing the most n-grams with ``text``, or None when no n-gram is shared."""

    def __init__(self, n: int = 13):
        self.n = n
        self.owner: dict[int, int] = {}  # hash of an n-gram -> index of its first reference
        self.ids: list[str] = []
        self.texts: list[str] = []

    def ngrams(self, text: str) -> list[str]:
        toks = words(text)
        return [" ".join(toks[i:i + self.n]) for i in range(len(toks) - self.n + 1)]

    def add(self, ref_id: str, text: str) -> None:
        idx = len(self.ids)
        self.ids.append(ref_id)
        self.texts.append(text)
        for gram in self.ngrams(text):
            self.owner.setdefault(hash(gram), idx)

    def __len__(self) -> int:
        return len(self.ids)

    def text_of(self, ref_id: str) -> str:
        if not hasattr(self, "_position"):
            self._position = {r: i for i, r in enumerate(self.ids)}
        return self.texts[self._position[ref_id]]

    def match(self, text: str) -> tuple[str, int, str] | None:
        counts: dict[int, int] = {}
        example: dict[int, str] = {}
        for gram in self.ngrams(text):
            idx = self.owner.get(hash(gram))
            if idx is not None:
                counts[idx] = counts.get(idx, 0) + 1
                example.setdefault(idx, gram)
        if not counts:
            return None
        idx = max(counts, key=lambda i: (counts[i], -i))
        return self.ids[idx], counts[idx], example[idx]
