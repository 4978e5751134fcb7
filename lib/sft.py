"""SFT data for causal LMs: prompt formatting with loss only on response tokens, sequence packing without
cross-example attention, and padded batches for comparison. Pure torch/transformers, no Ray.

- :func:`tokenize_example` renders the question with a ``lib.prompts`` template (the same prompt the
  evaluation job uses, so training and evaluation agree), appends the solution as the assistant turn and
  the end-of-turn tokens, and sets ``labels`` to -100 on every prompt token.
- :func:`tokenize_batch` is the Ray Data ``map_batches`` function over (idx, question, solution) rows; it
  loads the tokenizer once per process (:func:`cached_tokenizer`), so pooled Ray workers reuse it.
- :func:`pack` fills micro-batches up to a token budget (first fit, in order); :func:`collate_packed`
  turns a pack into one row with ``position_ids`` restarting per example, so no token attends across
  examples. Two attention paths: ``varlen`` (GPUs, flash-attention 2): no mask at all, the sequence
  boundaries as ``cu_seq_lens_q/k`` and ``max_length_q/k`` (as transformers' ``DataCollatorWithFlattening``
  with ``return_flash_attn_kwargs``), so nothing of size L x L is built; otherwise (the CPU fallback, SDPA)
  an explicit (1, 1, L, L) block-diagonal causal mask.
- :func:`collate_padded` pads examples to the longest (the baseline packing is measured against).
- :func:`token_loss_sum` returns the summed cross-entropy over label tokens and their count, so the
  loss of a global batch is one token-level mean however it is split into micro-batches and ranks.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IGNORE = -100


def uses_varlen(attn_implementation: str) -> bool:
    """Whether packed rows go to this attention as varlen (flash-attention kernels) or with an explicit mask."""
    return "flash" in attn_implementation


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_label_tokens(self) -> int:
        return sum(1 for t in self.labels[1:] if t != IGNORE)  # labels are shifted by one when scored


def tokenize_example(tokenizer: Any, question: str, solution: str, prompt: str = "boxed", max_len: int = 2048) -> Example:
    """Prompt tokens (masked) + response tokens (trained on), truncated to ``max_len``.

    With a chat template, the response is what the template adds after the generation prompt for an
    assistant message (the solution and the end-of-turn marker); otherwise the solution plus EOS.
    """
    from lib.prompts import get_prompt

    template = get_prompt(prompt)
    prompt_text = template.render(question, tokenizer)
    prompt_ids = template.token_ids(question, tokenizer)  # the BOS rule of lib.prompts.encode_prompt
    if template.use_chat_template:
        messages = [{"role": "user", "content": template.user_message(question)},
                    {"role": "assistant", "content": solution.strip()}]
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt_text):
            raise ValueError("the chat template renders the prompt differently with an assistant turn; "
                             "use a prompt without a chat template (e.g. 'xwin')")
        response_text = full[len(prompt_text):]
    else:
        response_text = " " + solution.strip() + (tokenizer.eos_token or "")
    response_ids = tokenizer.encode(response_text, add_special_tokens=False)
    ids = (prompt_ids + response_ids)[:max_len]
    labels = ([IGNORE] * len(prompt_ids) + response_ids)[:max_len]
    return Example(ids, labels)


def cached_tokenizer(model: str) -> Any:
    """The tokenizer of ``model`` (a ``model`` config value), loaded once per process and shared read-only:
    keyed by the resolved path and, for a directory, its files' sizes and modification times, so a directory
    rewritten in place is loaded again."""
    from lib.models import resolve_model

    path = resolve_model(model)
    directory = Path(path)
    stamp = tuple(sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in directory.iterdir()
                         if f.is_file())) if directory.is_dir() else ()
    return _load_tokenizer(path, stamp)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str, stamp: tuple) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def tokenize_batch(batch: dict[str, Any], model: str, prompt: str, max_len: int) -> Any:
    """Ray Data ``map_batches`` function: (idx, question, solution) rows -> a pyarrow table of
    ``lib.schemas.TOKENIZED_SCHEMA`` (idx, input_ids, labels), each row :func:`tokenize_example` with ``model``'s
    tokenizer (:func:`cached_tokenizer`)."""
    import pyarrow as pa

    from lib.schemas import TOKENIZED_SCHEMA

    tokenizer = cached_tokenizer(model)
    out: dict[str, list] = {"idx": [], "input_ids": [], "labels": []}
    for i, q, s in zip(batch["idx"], batch["question"], batch["solution"]):
        ex = tokenize_example(tokenizer, str(q), str(s), prompt, max_len)
        out["idx"].append(int(i))
        out["input_ids"].append(ex.input_ids)
        out["labels"].append(ex.labels)
    return pa.table(out, schema=TOKENIZED_SCHEMA)


class TokenizedRows(Sequence):
    """The tokenized examples of a job in ``idx`` order, read from their Arrow columns one example at a time.

    Built from the tables :func:`tokenize_batch` wrote (object-store blocks, concatenated without a copy): the
    only new memory is the ``idx`` order and the chunk offsets, not a Python list per example. A worker's
    ``ray.get`` of a block maps it from the node's shared memory (pyarrow buffers pickle out of band), so the
    workers of a node share one copy of the data. ``rows[i]`` is the :class:`Example` with ``idx == i``.
    Python lists of every example took about 100 bytes per token in every worker (``jobs.bench_sft_rows``)."""

    def __init__(self, table: Any):
        import numpy as np

        idx = table.column("idx").to_numpy()
        if not np.array_equal(np.sort(idx), np.arange(len(idx))):
            raise ValueError(f"tokenized rows: idx is not 0..{len(idx) - 1} (each once)")
        self._position = np.argsort(idx, kind="stable")  # rows[i] is at table row _position[i]
        self._columns = [table.column("input_ids"), table.column("labels")]
        self._starts = [np.cumsum([0] + [len(c) for c in col.chunks]) for col in self._columns]

    def __len__(self) -> int:
        return len(self._position)

    def _value(self, column: int, row: int) -> list[int]:
        import numpy as np

        starts = self._starts[column]
        chunk = int(np.searchsorted(starts, row, side="right")) - 1
        return self._columns[column].chunk(chunk)[row - int(starts[chunk])].as_py()

    def __getitem__(self, i: int) -> Example:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        row = int(self._position[i])
        return Example(self._value(0, row), self._value(1, row))


def pack(examples: list[Example], max_tokens: int) -> list[list[int]]:
    """Group example indices into packs of at most ``max_tokens`` tokens, first fit in order (examples
    longer than the budget get a pack of their own, truncated by the caller's max_len)."""
    packs: list[list[int]] = []
    sizes: list[int] = []
    for i, ex in enumerate(examples):
        for p, size in enumerate(sizes):
            if size + len(ex) <= max_tokens:
                packs[p].append(i)
                sizes[p] += len(ex)
                break
        else:
            packs.append([i])
            sizes.append(len(ex))
    return packs


@dataclass
class MicroBatch:
    """One forward/backward's tensors (model inputs and ``labels``) and its number of label tokens, counted
    on the host when collated (so the step never reads a device tensor to learn it)."""

    tensors: dict[str, Any]
    num_label_tokens: int

    @property
    def num_tokens(self) -> int:
        return int(self.tensors["input_ids"].numel())

    def to(self, device: Any) -> MicroBatch:
        """On ``device`` (tensors only; ``max_length_q/k`` stay Python ints, as flash-attention wants them)."""
        return MicroBatch({k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in self.tensors.items()},
                          self.num_label_tokens)


def collate_packed(examples: list[Example], varlen: bool = False) -> dict[str, Any]:
    """One packed row: input_ids, labels (first token of each example masked: nothing precedes it),
    position_ids restarting per example, and either (``varlen``) the flash-attention sequence boundaries
    ``cu_seq_lens_q/k`` (int32) and ``max_length_q/k``, or a (1, 1, L, L) boolean block-diagonal causal mask."""
    import torch

    ids, labels, positions = [], [], []
    for ex in examples:
        ids += ex.input_ids
        labels += [IGNORE] + ex.labels[1:]
        positions += list(range(len(ex)))
    row = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "position_ids": torch.tensor([positions])}
    if varlen:
        bounds = [0]
        for ex in examples:
            bounds.append(bounds[-1] + len(ex))
        cu_seq_lens = torch.tensor(bounds, dtype=torch.int32)
        longest = max(len(ex) for ex in examples)
        return {**row, "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": longest,
                "max_length_k": longest}
    length = len(ids)
    mask = torch.zeros(length, length, dtype=torch.bool)
    start = 0
    for ex in examples:
        end = start + len(ex)
        mask[start:end, start:end] = torch.tril(torch.ones(len(ex), len(ex), dtype=torch.bool))
        start = end
    return {**row, "attention_mask": mask[None, None]}


def collate_padded(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Examples right-padded to the longest: input_ids, labels (IGNORE on padding), 2D attention_mask."""
    import torch

    longest = max(len(ex) for ex in examples)
    ids = [ex.input_ids + [pad_id] * (longest - len(ex)) for ex in examples]
    labels = [ex.labels + [IGNORE] * (longest - len(ex)) for ex in examples]
    mask = [[1] * len(ex) + [0] * (longest - len(ex)) for ex in examples]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def token_loss_sum(model: Any, batch: dict[str, Any]):
    """The sum of next-token cross-entropy over the label tokens of one micro-batch (a tensor on the
    model's device: no host sync). No KV cache: training needs none, and with one transformers would not
    derive a varlen row's per-example mask from its position_ids."""
    import torch.nn.functional as F

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits
    length = logits.size(1)
    logits = logits.narrow(1, 0, length - 1).float()  # narrow, not [:, :-1]: see tests/lib/test_train_loop_fake_cuda.py
    targets = batch["labels"].narrow(1, 1, length - 1)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction="sum")


def per_example_losses(model: Any, examples: list[Example], packed: bool, pad_id: int = 0, varlen: bool = False) -> list[float]:
    """Mean token loss of each example, computed from one packed row (with its mask, or ``varlen``: position_ids
    and sequence boundaries only) or from a padded batch (for the packing-equivalence test and benchmark)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        if packed:
            batch = collate_packed(examples, varlen)
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0].float()
            out, start = [], 0
            for ex in examples:
                end = start + len(ex)
                tgt = torch.tensor(ex.labels[1:])
                out.append(float(F.cross_entropy(logits[start:end - 1], tgt, ignore_index=IGNORE)))
                start = end
            return out
        batch = collate_padded(examples, pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        return [float(F.cross_entropy(logits[i, :len(ex) - 1], torch.tensor(ex.labels[1:]), ignore_index=IGNORE))
                for i, ex in enumerate(examples)]
