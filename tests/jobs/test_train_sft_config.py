"""The SFT job's config checks, before any work: the paper-scale configs suit a base model (no chat
template), and a chat-template prompt is refused for one, naming the key."""

from pathlib import Path

import pytest

from jobs.train_sft import TrainSFTConfig, check_config
from lib.config import ConfigError, load_config
from lib.sft import uses_varlen

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
