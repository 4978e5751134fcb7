"""Named prompt templates; the name and full text of the template are recorded in every output.

- ``boxed`` (default): the model's own chat template, with a user turn asking for step-by-step
  reasoning and the final answer in ``\\boxed{}``.
- ``xwin``: Xwin-Math's evaluation prompt (Vicuna v1.1 system prompt, "The answer is: <ANSWER>."),
  a raw completion prompt that does not use the model's chat template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    text: str  # with a {question} placeholder
    use_chat_template: bool
    stop: tuple[str, ...] = ()

    def user_message(self, question: str) -> str:
        return self.text.format(question=question)

    def render(self, question: str, tokenizer: Any | None = None) -> str:
        """The exact prompt string sent to the engine (chat template applied when the template uses it)."""
        content = self.user_message(question)
        if not self.use_chat_template:
            return content
        if tokenizer is None:
            raise ValueError(f"prompt {self.name!r} needs the model's tokenizer for its chat template")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )

    def record(self, tokenizer: Any | None = None) -> dict:
        """What goes into output files for reproducibility."""
        return {
            "name": self.name,
            "text": self.text,
            "use_chat_template": self.use_chat_template,
            "chat_template": getattr(tokenizer, "chat_template", None) if self.use_chat_template else None,
            "stop": list(self.stop),
        }


PROMPTS: dict[str, PromptTemplate] = {
    "boxed": PromptTemplate(
        name="boxed",
        text="{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
        use_chat_template=True,
    ),
    "xwin": PromptTemplate(
        name="xwin",
        text=(
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
            "helpful, detailed, and polite answers to the user's questions. USER: {question} Give your "
            "solution in detail. In the end, write your final answer in the format of "
            "'The answer is: <ANSWER>.'. ASSISTANT: "
        ),
        use_chat_template=False,
        stop=("USER:",),
    ),
}


def get_prompt(name: str) -> PromptTemplate:
    try:
        return PROMPTS[name]
    except KeyError:
        raise ValueError(f"unknown prompt {name!r}; known prompts: {', '.join(sorted(PROMPTS))}") from None
