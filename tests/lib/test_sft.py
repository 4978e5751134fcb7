"""SFT formatting, masking, packing: which tokens carry loss, exactly; packed loss equals unpacked loss."""

import pytest
import torch

from lib.prompts import get_prompt
from lib.schemas import TOKENIZED_SCHEMA
from lib.sft import (IGNORE, Example, TokenizedRows, cached_tokenizer, collate_packed, pack, per_example_losses,
                     tokenize_batch, tokenize_example)


@pytest.fixture(scope="module")
def tokenizer(default_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model)


def test_only_response_tokens_carry_loss_with_the_chat_template(tokenizer):
    """The prompt (the evaluation job's 'boxed' prompt through the chat template) is masked; the labels are
    exactly the tokens of the assistant turn: the solution and the template's end-of-turn marker."""
    question, solution = "What is 2+2?", "2 + 2 = 4, so the answer is \\boxed{4}."
    ex = tokenize_example(tokenizer, question, solution, "boxed")
    prompt = get_prompt("boxed").render(question, tokenizer)
    n_prompt = len(tokenizer.encode(prompt, add_special_tokens=False))
    assert ex.labels[:n_prompt] == [IGNORE] * n_prompt
    assert all(t != IGNORE for t in ex.labels[n_prompt:]) and ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    response = tokenizer.decode(ex.input_ids[n_prompt:])
    assert response == solution + "<|im_end|>\n"
    assert tokenizer.decode(ex.input_ids[:n_prompt]) == prompt


def test_xwin_prompt_trains_on_solution_and_eos(tokenizer):
    ex = tokenize_example(tokenizer, "What is 1+1?", "It is 2. The answer is: 2", "xwin")
    first = next(i for i, t in enumerate(ex.labels) if t != IGNORE)
    assert tokenizer.decode(ex.input_ids[first:]) == " It is 2. The answer is: 2" + tokenizer.eos_token
    assert ex.input_ids[-1] == tokenizer.eos_token_id


def test_tokenize_batch_rows_are_tokenize_example_with_the_models_tokenizer(tokenizer, default_model):
    """The Ray Data function SFT tokenizes with: one row per input row, in order, idx kept, ids and labels those
    of tokenize_example (truncated to max_len)."""
    batch = {"idx": [3, 7], "question": ["What is 2+2?", "What is 1+1?"], "solution": ["\\boxed{4}", "It is 2."]}
    out = tokenize_batch(batch, model=default_model, prompt="boxed", max_len=60)
    want = [tokenize_example(tokenizer, q, s, "boxed", 60) for q, s in zip(batch["question"], batch["solution"])]
    assert out.schema == TOKENIZED_SCHEMA
    out = out.to_pydict()
    assert out == {"idx": [3, 7], "input_ids": [w.input_ids for w in want], "labels": [w.labels for w in want]}
    assert [len(ids) for ids in out["input_ids"]] == [60, 60]  # 63 and 62 tokens, truncated
    assert all(any(t != IGNORE for t in labels) for labels in out["labels"])


def tokenized_table(rows: dict[int, tuple[list[int], list[int]]], chunks: list[list[int]]):
    """A TOKENIZED_SCHEMA table of the given idx -> (ids, labels), one chunk per list of idx (in that order)."""
    import pyarrow as pa

    return pa.concat_tables([pa.table({"idx": part, "input_ids": [rows[i][0] for i in part],
                                       "labels": [rows[i][1] for i in part]}, schema=TOKENIZED_SCHEMA)
                             for part in chunks])


def test_tokenized_rows_index_examples_by_idx_across_chunks_in_any_order():
    """rows[i] is the example whose idx is i, wherever its chunk and row; len counts rows; an index past the end is
    an IndexError (iteration stops there), a negative one counts from the end."""
    rows = {i: ([100 + i] * (i + 2), [IGNORE] + [200 + i] * (i + 1)) for i in range(6)}
    table = tokenized_table(rows, [[4, 1], [5], [0, 3, 2]])
    assert [c.num_rows for c in table.to_batches()] == [2, 1, 3]
    tokenized = TokenizedRows(table)
    assert len(tokenized) == 6
    assert list(tokenized) == [Example(*rows[i]) for i in range(6)]
    assert tokenized[5] == tokenized[-1] == Example([105] * 7, [IGNORE] + [205] * 6)
    assert tokenized[2].num_label_tokens == 3
    with pytest.raises(IndexError):
        tokenized[6]
    assert list(TokenizedRows(TOKENIZED_SCHEMA.empty_table())) == []


@pytest.mark.parametrize("idx", [[0, 2], [0, 0, 1], [1, 2]])
def test_tokenized_rows_refuse_an_idx_column_that_is_not_each_position_once(idx):
    rows = {i: ([1, 2], [IGNORE, 2]) for i in set(idx)}
    with pytest.raises(ValueError, match=r"idx is not 0\.\.\d+ \(each once\)"):
        TokenizedRows(tokenized_table(rows, [idx]))


def test_cached_tokenizer_loads_once_per_directory_state(tiny_model, tmp_path):
    """A process loads a model's tokenizer once; a directory whose files change is loaded again."""
    import shutil

    assert cached_tokenizer(tiny_model) is cached_tokenizer(tiny_model)
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    first = cached_tokenizer(str(copy))
    assert first is not cached_tokenizer(tiny_model) and first is cached_tokenizer(str(copy))
    (copy / "added.txt").write_text("a changed directory\n")
    assert cached_tokenizer(str(copy)) is not first


def test_truncation_keeps_prompt_mask():
    ex = Example(list(range(10)), [IGNORE] * 6 + [6, 7, 8, 9])
    assert ex.num_label_tokens == 4 and len(ex) == 10


def test_pack_is_first_fit_in_order():
    lengths = [5, 3, 4, 2, 7, 1]
    examples = [Example([1] * n, [1] * n) for n in lengths]
    assert pack(examples, 8) == [[0, 1], [2, 3, 5], [4]]
    assert pack(examples, 4) == [[0], [1, 5], [2], [3], [4]]


def test_collate_packed_is_block_diagonal_with_restarting_positions():
    batch = collate_packed([Example([11, 12, 13], [IGNORE, 12, 13]), Example([21, 22], [21, 22])])
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22]]
    assert batch["labels"].tolist() == [[IGNORE, 12, 13, IGNORE, 22]]  # nothing predicts an example's first token
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    mask = batch["attention_mask"][0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]


def random_llama_and_examples(tokenizer):
    """A random 2-layer Llama (SDPA) and three tokenized examples of different lengths."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    config._attn_implementation = "sdpa"
    examples = [tokenize_example(tokenizer, f"What is {i} + {i}?", f"{i} + {i} = {2 * i}. \\boxed{{{2 * i}}}", "boxed")
                for i in (3, 17, 256)]
    return LlamaForCausalLM(config).eval(), examples


def test_packed_loss_equals_unpacked_loss_per_example(tokenizer):
    """A random 2-layer Llama: each example's loss from one packed row equals its loss in a padded batch."""
    model, examples = random_llama_and_examples(tokenizer)
    packed = per_example_losses(model, examples, packed=True)
    padded = per_example_losses(model, examples, packed=False, pad_id=tokenizer.pad_token_id or 0)
    assert packed == pytest.approx(padded, abs=1e-5)
    assert len(set(round(x, 3) for x in packed)) == 3  # three different examples, three different losses


def test_varlen_packed_row_has_no_mask_and_flash_attention_boundaries():
    """The GPU path (flash-attention 2): no attention_mask, positions restarting per example, cu_seq_lens at
    the example boundaries (int32) and the longest example as max_length; nothing of size L x L."""
    batch = collate_packed([Example([11, 12, 13], [IGNORE, 12, 13]), Example([21, 22], [21, 22])], varlen=True)
    assert set(batch) == {"input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                          "max_length_k"}
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 3, 5]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == 3


def test_varlen_micro_batches_of_a_long_pack_build_no_quadratic_tensor():
    """A 4,000-token pack: every tensor of the varlen micro-batch has O(L) elements (the mask path's has L^2)."""
    from lib.train_loop import StepSettings, micro_batches

    examples = [Example(list(range(1000)), [IGNORE] * 10 + list(range(10, 1000))) for _ in range(4)]
    varlen, = micro_batches(examples, [0, 1, 2, 3], StepSettings(micro_batch_tokens=4000, varlen=True), 0)
    masked, = micro_batches(examples, [0, 1, 2, 3], StepSettings(micro_batch_tokens=4000), 0)
    assert max(t.numel() for t in varlen.tensors.values() if isinstance(t, torch.Tensor)) == 4000
    assert masked.tensors["attention_mask"].numel() == 4000 * 4000
    assert varlen.num_label_tokens == masked.num_label_tokens == 4 * 990


def test_varlen_row_gives_each_example_its_unpacked_loss(tokenizer):
    """The varlen row's position_ids alone separate the examples: transformers derives the per-example
    causal mask from them (SDPA on CPU; flash-attention uses cu_seq_lens on GPUs), so each example's loss
    equals its loss in a padded batch."""
    model, examples = random_llama_and_examples(tokenizer)
    varlen = per_example_losses(model, examples, packed=True, varlen=True)
    padded = per_example_losses(model, examples, packed=False, pad_id=tokenizer.pad_token_id or 0)
    assert varlen == pytest.approx(padded, abs=1e-5)
    assert len(set(round(x, 3) for x in varlen)) == 3
