"""Prompt templates render exactly and are recorded for reproducibility."""

import pytest

from lib.prompts import get_prompt


class FakeTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return f"<user>{messages[0]['content']}</user><assistant>"


def test_boxed_uses_chat_template_and_asks_for_boxed():
    p = get_prompt("boxed")
    assert p.render("1+1?", FakeTokenizer()) == "<user>1+1?\nPlease reason step by step, and put your final answer within \\boxed{}.</user><assistant>"
    assert p.record(FakeTokenizer())["chat_template"] == "{{ messages }}"


def test_xwin_is_the_papers_raw_prompt():
    """Xwin-Math's Vicuna-style prompt, verbatim, without a chat template."""
    text = get_prompt("xwin").render("1+1?")
    assert text.startswith("A chat between a curious user and an artificial intelligence assistant.")
    assert "USER: 1+1? Give your solution in detail. In the end, write your final answer in the format of 'The answer is: <ANSWER>.'. ASSISTANT: " in text
    assert get_prompt("xwin").record()["stop"] == ["USER:"]


def test_unknown_prompt_lists_known():
    with pytest.raises(ValueError, match="known prompts: boxed, xwin"):
        get_prompt("boxd")
