"""Named prompt templates; the name and full text of the template are recorded in every output.

- ``boxed`` (default): the model's own chat template, with a user turn asking for step-by-step
  reasoning and the final answer in ``\\boxed{}``.
- ``xwin``: Xwin-Math's evaluation prompt (Vicuna v1.1 system prompt, "The answer is: <ANSWER>."),
  a raw completion prompt that does not use the model's chat template: the prompt for base models.

One BOS rule (:func:`encode_prompt`) turns a rendered prompt into token ids for SFT, evaluation and Serve
alike, so a model sees the same prompt ids in training and at inference. A fine-tuned export records its
prompt (:func:`save_model_prompt`, ``mathray_prompt.json``); Serve's chat route applies it
(:func:`chat_prompt_ids`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_PROMPT_FILE = "mathray_prompt.json"  # in an HF export: the prompt the model was fine-tuned with


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

    def token_ids(self, question: str, tokenizer: Any) -> list[int]:
        """The prompt's token ids under the BOS rule of :func:`encode_prompt` (what the engine receives)."""
        return encode_prompt(self.render(question, tokenizer), tokenizer)

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


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS token before text it encodes with special tokens (LLaMA, Mistral: yes;
    SmolLM2, Qwen: no): the model was pretrained with one, so its prompts start with one."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and tokenizer.encode("a", add_special_tokens=True)[:1] == [bos]


def encode_prompt(text: str, tokenizer: Any) -> list[int]:
    """Token ids of a rendered prompt: the text's own tokens (special-token text such as a chat template's
    ``<s>`` becomes that token), with exactly one BOS in front when the tokenizer adds BOS
    (:func:`adds_bos`) and the text does not already start with it. SFT, evaluation and Serve all encode
    prompts here and pass ids, never text, to the engine (vLLM would add a second BOS to text that has one)."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def check_prompt_for_tokenizer(name: str, tokenizer: Any, model: str, key: str = "prompt") -> None:
    """Refuse a prompt that applies the model's chat template when the tokenizer has none (a base model)."""
    if get_prompt(name).use_chat_template and not getattr(tokenizer, "chat_template", None):
        raw = ", ".join(n for n, p in sorted(PROMPTS.items()) if not p.use_chat_template)
        raise ValueError(f"{key}: {name!r} applies the model's chat template, but {model}'s tokenizer has none "
                         f"(a base model?); use a prompt without one: {raw}")


def save_model_prompt(model_dir: str | Path, template: PromptTemplate, tokenizer: Any | None = None) -> Path:
    """Record in an HF export the prompt it was fine-tuned with (read back by :func:`load_model_prompt`)."""
    path = Path(model_dir) / MODEL_PROMPT_FILE
    path.write_text(json.dumps(template.record(tokenizer), indent=2) + "\n")
    return path


def load_model_prompt(model_dir: str | Path) -> PromptTemplate | None:
    """The prompt a mathray export was fine-tuned with, or None (not an export, or a hub id)."""
    path = Path(model_dir) / MODEL_PROMPT_FILE
    if not path.is_file():
        return None
    r = json.loads(path.read_text())
    return PromptTemplate(name=r["name"], text=r["text"], use_chat_template=r["use_chat_template"], stop=tuple(r["stop"]))


def chat_prompt_ids(messages: list[dict[str, str]], tokenizer: Any, template: PromptTemplate | None = None) -> list[int]:
    """Token ids for a chat request. A model fine-tuned with a raw prompt (``xwin``: a base model) gets its
    single user message rendered through that prompt, as in training; otherwise the tokenizer's chat
    template is applied. Raises ValueError (the caller answers 400) when neither can take the messages."""
    if template is not None and not template.use_chat_template:
        if [m["role"] for m in messages] != ["user"]:
            raise ValueError(f"this model was fine-tuned with the single-turn prompt {template.name!r}: "
                             "send exactly one message, with role 'user'")
        return template.token_ids(messages[0]["content"], tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model's tokenizer has no chat template and no recorded prompt; use /v1/completions")
    return encode_prompt(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), tokenizer)


def get_prompt(name: str) -> PromptTemplate:
    try:
        return PROMPTS[name]
    except KeyError:
        raise ValueError(f"unknown prompt {name!r}; known prompts: {', '.join(sorted(PROMPTS))}") from None
