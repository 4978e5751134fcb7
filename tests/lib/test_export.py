"""The HF export of a fine-tuned model (lib.train_loop.export_hf), without Ray: weights in export_dtype, the
config saying so, the prompt recorded for Serve; transformers loads it back with the same weights."""

import json

import pytest
import torch

from lib.prompts import get_prompt, load_model_prompt
from lib.train_loop import export_hf


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_export_writes_weights_in_export_dtype_and_records_the_prompt(tiny_base_model, tmp_path, dtype):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trained = AutoModelForCausalLM.from_pretrained(tiny_base_model, dtype=torch.float32)  # fp32 master weights
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    out = export_hf(tmp_path / "hf", trained.state_dict(), tiny_base_model, tokenizer, {"steps": 2}, get_prompt("xwin"), dtype)
    expected = {"bfloat16": "BF16", "float32": "F32"}[dtype]
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {expected}
    assert json.loads((out / "config.json").read_text())["dtype"] == dtype
    args = json.loads((out / "training_args.json").read_text())
    assert (args["steps"], args["export_dtype"], args["prompt"]["name"]) == (2, dtype, "xwin")
    assert load_model_prompt(out) == get_prompt("xwin")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.dtype == getattr(torch, dtype)
    ref = trained.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, ref[name].to(tensor.dtype)), name
    assert AutoTokenizer.from_pretrained(out).chat_template is None
