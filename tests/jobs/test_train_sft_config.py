"""The SFT job's config checks, before any work: the paper-scale configs suit a base model (no chat
template), and a chat-template prompt is refused for one, naming the key. The tokenized rows the workers read,
from the driver and from the Ray Data stage."""

from pathlib import Path

import pytest

from jobs.train_sft import TrainSFTConfig, check_config, rows_from_blocks, tokenized_blocks
from lib.config import ConfigError, load_config
from lib.schemas import TOKENIZED_SCHEMA
from lib.sft import cached_tokenizer, tokenize_example, uses_varlen
from lib.sft_data import load_pairs

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


@pytest.mark.parametrize("name", ["train_sft_7b_fsdp.yaml", "train_sft_7b_deepspeed.yaml"])
def test_7b_configs_validate_with_a_tokenizer_without_chat_template(name, tiny_base_model):
    """The 7B configs with their model swapped for a local base model (BOS, no chat template) pass the
    checks; they pack varlen (flash-attention 2) and export bf16. The same config with prompt=boxed is refused."""
    config = load_config(TrainSFTConfig, CONFIGS / name, [f"model={tiny_base_model}"])
    check_config(config)
    assert (config.prompt, config.attn_implementation, config.export_dtype) == ("xwin", "flash_attention_2", "bfloat16")
    assert uses_varlen(config.attn_implementation) and config.packing
    with pytest.raises(ConfigError, match=r"^prompt: 'boxed' applies the model's chat template, but .* has none"):
        check_config(config.model_copy(update={"prompt": "boxed"}))


def test_unknown_prompt_fails_at_load_naming_the_key():
    with pytest.raises(ValueError, match=r"key 'prompt': .*unknown prompt 'boxd'; known prompts: boxed, xwin"):
        load_config(TrainSFTConfig, None, ["prompt=boxd"])


@pytest.mark.parametrize("use_gpu, packing, attn, warned", [
    (True, True, "sdpa", True),  # the measured slow case: packed rows with an L x L mask on GPUs
    (True, True, "flash_attention_2", False),  # varlen: no mask
    (True, False, "sdpa", False),  # padding
    (False, True, "sdpa", False),  # CPU workers: the CPU configs' choice
])
def test_gpu_packing_with_a_mask_is_warned_about_before_work(use_gpu, packing, attn, warned, caplog):
    config = load_config(TrainSFTConfig, CONFIGS / "train_sft_tiny.yaml",
                         [f"resources.use_gpu={str(use_gpu).lower()}", f"packing={str(packing).lower()}",
                          f"attn_implementation={attn}"])
    with caplog.at_level("WARNING", logger="mathray.train_sft"):
        check_config(config)
    messages = [r.getMessage() for r in caplog.records if r.name == "mathray.train_sft"]
    assert len(messages) == int(warned)
    if warned:
        assert messages[0].startswith("packing with attn_implementation=sdpa on GPUs") and "packing: false" in messages[0]


def test_tokenized_rows_are_the_same_from_the_driver_and_from_ray_data_in_idx_order(ray_cluster):
    """5 GSM8K pairs: tokenized in the driver (one block) and by the Ray Data stage (``local_max`` below the
    count), the workers read the same examples, each what ``tokenize_example`` makes of its pair; blocks handed
    over out of order come back in ``idx`` order."""
    import pyarrow as pa
    import ray

    config = load_config(TrainSFTConfig, CONFIGS / "train_sft_tiny.yaml", ["data.limit=5"])
    local, n = tokenized_blocks(config)
    by_ray_data, m = tokenized_blocks(config, local_max=4)
    assert (n, m, len(local)) == (5, 5, 1)
    tokenizer = cached_tokenizer(config.model)
    expected = [tokenize_example(tokenizer, q, s, config.prompt, config.max_seq_len)
                for _, q, s in load_pairs("gsm8k", "train", None, 5)]
    assert list(rows_from_blocks(local)) == list(rows_from_blocks(by_ray_data)) == expected
    table = ray.get(local[0])
    assert table.column("idx").to_pylist() == [0, 1, 2, 3, 4] and table.schema == TOKENIZED_SCHEMA
    assert {ray.get(ref).schema for ref in by_ray_data} == {TOKENIZED_SCHEMA}
    shuffled = [ray.put(table.slice(3)), ray.put(pa.concat_tables([table.slice(1, 2), table.slice(0, 1)]))]
    assert list(rows_from_blocks(shuffled)) == expected
    assert list(rows_from_blocks([])) == []
