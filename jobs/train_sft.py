"""Supervised fine-tuning on Ray Train (FSDP2 or DeepSpeed ZeRO), token-exact, resumable, exported to HF.

Reads:  (question, solution) pairs: a synthesis output directory, ``gsm8k`` / ``math`` train (real data),
        or a JSONL/Parquet file with a column mapping; tokenized into the object store (by a Ray Data stage
        above ``LOCAL_TOKENIZE_MAX_PAIRS`` pairs), whose blocks every worker reads (``rows_from_blocks``).
Writes: ``output_dir/`` with the Ray Train run (``run/checkpoint_*``: model + optimizer + schedule +
        data position), ``hf/`` (safetensors in ``export_dtype``, tokenizer, ``training_args.json`` and
        ``mathray_prompt.json``, the prompt it was trained with: the export ``jobs.evaluate`` and Serve load
        as ``model=``), ``metrics.jsonl`` (loss, lr, tokens/s, examples seen
        per logged step), ``summary.json`` and ``config.yaml``.

The step and the model code are in ``lib/train_loop.py`` and ``lib/sft.py`` (no Ray: runnable under
``torchrun`` or in one process). Each worker trains on ``ray.train.torch.get_device()`` (its GPU with
``use_gpu``, else the CPU). A ``prompt`` that applies a chat template is refused before work starts when the
model's tokenizer has none (base models train with ``xwin``). Resume: rerun with the same ``output_dir``: training continues from the
latest checkpoint at the same position of the same epoch order.

From Python: ``run(TrainSFTConfig(...))`` returns the :class:`TrainSFTSummary`.
Run locally:   python -m jobs.train_sft --config jobs/configs/train_sft_tiny.yaml [key=value ...]
On a cluster:  ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
                   python -m jobs.train_sft --config jobs/configs/train_sft_7b_fsdp.yaml
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from lib import __version__, cli
from lib.config import ConfigError, JobSummary, StrictModel, dump_config, git_commit, package_versions
from lib.data import DataError
from lib.progress import setup_logging
from lib.ray_runtime import init_ray

if TYPE_CHECKING:
    from lib.sft import TokenizedRows

log = logging.getLogger("mathray.train_sft")
REPO = Path(__file__).resolve().parent.parent


class DataSource(StrictModel):
    source: str = Field("gsm8k", description="gsm8k | math | a synthesis output dir | a .jsonl/.parquet file")
    split: str = "train"
    columns: dict[str, str] | None = None
    limit: int | None = Field(None, ge=1)


class Resources(StrictModel):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)


class TrainSFTConfig(StrictModel):
    # What changes a run's meaning: everything but where it writes, the workers' resources and how often it
    # logs and checkpoints.
    run_only_keys = frozenset({"output_dir", "resources", "log_every", "keep_checkpoints", "checkpoint_every"})

    model: str = Field("default", description="'default' (embedded SmolLM2), a checkpoint directory, or a hub id")
    data: DataSource = Field(default_factory=DataSource)
    prompt: str = Field("boxed", description="lib.prompts template: the evaluation prompt, so both agree; 'xwin' for a "
                        "base model (no chat template)")
    max_seq_len: int = Field(1024, ge=16)
    packing: bool = True
    attn_implementation: str = Field("sdpa", description="transformers attention: 'sdpa' (CPU; packed rows carry an "
                                     "L x L mask) or 'flash_attention_2' (GPUs; packed rows go varlen, no mask)")
    micro_batch_tokens: int = Field(4096, ge=16)
    global_batch_size: int = Field(16, ge=1, description="examples per optimizer step across workers")
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    strategy: Literal["fsdp", "deepspeed"] = "fsdp"
    deepspeed_config: str = Field("jobs/configs/deepspeed_zero3.json", description="ZeRO config (stage 2 or 3)")
    mixed_precision: bool = Field(False, description="bf16 compute (GPUs); fp32 on CPU")
    activation_checkpointing: bool = False
    export_dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="dtype of the HF export's weights")
    log_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    output_dir: str = "outputs/train_sft"
    resources: Resources = Field(default_factory=Resources)

    @field_validator("prompt")
    @classmethod
    def _known_prompt(cls, name: str) -> str:
        from lib.prompts import get_prompt

        get_prompt(name)
        return name


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (the process group is already up: gloo on CPU, NCCL on GPU)."""
    import torch
    import ray.train
    import ray.train.torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lib.models import resolve_model
    from lib.prompts import get_prompt
    from lib.sft import uses_varlen
    from lib.train_loop import SFTTrainer, StepSettings, examples_for_rank, export_hf, iter_steps, micro_batches, steps_per_epoch

    setup_logging()
    config = TrainSFTConfig.model_validate(cfg["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()  # this worker's GPU (use_gpu), else the CPU
    examples = rows_from_blocks(cfg["blocks"])
    path = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=config.attn_implementation,
                                                 device_map={"": device})  # fp32 master weights, loaded on the device
    total = config.max_steps or config.epochs * steps_per_epoch(len(examples), config.global_batch_size)
    settings = StepSettings(lr=config.lr, weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
                            total_steps=total, max_grad_norm=config.max_grad_norm, global_batch_size=config.global_batch_size,
                            micro_batch_tokens=config.micro_batch_tokens, packing=config.packing,
                            varlen=uses_varlen(config.attn_implementation), seed=config.seed)
    ds_config = json.loads((REPO / config.deepspeed_config).read_text()) if config.strategy == "deepspeed" else None
    trainer = SFTTrainer(model, settings, config.strategy, ds_config, config.activation_checkpointing, config.mixed_precision,
                         device=device)
    position, seen = {"epoch": 0, "batch": 0}, 0
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as directory:
            position = trainer.load(directory)
            seen = json.loads((Path(directory) / "trainer_state.json").read_text())["position"].get("examples_seen", 0)
        if rank == 0:
            log.info("resumed at step %d (epoch %d, batch %d)", trainer.step, position["epoch"], position["batch"])
    start = time.monotonic()
    for epoch, b, batch in iter_steps(len(examples), settings, config.epochs, position):
        if trainer.step >= total:
            break
        step_start = time.monotonic()
        mine = examples_for_rank(batch, rank, world)
        loss, tokens, processed = trainer.train_step(micro_batches(examples, mine, settings, pad_id), pad_id)
        seen += len(batch)
        metrics = {"step": trainer.step, "epoch": epoch, "loss": loss, "lr": trainer.lr, "label_tokens": tokens,
                   "tokens_per_s": processed / max(time.monotonic() - step_start, 1e-9), "examples_seen": seen}
        if rank == 0 and trainer.step % config.log_every == 0:
            with open(Path(config.output_dir).resolve() / "metrics.jsonl", "a") as out:
                out.write(json.dumps({**metrics, "batch": batch}) + "\n")  # the example indices: the data order
            log.info("step %d/%d epoch %d loss %.4f lr %.2e %.0f tokens/s examples %d", trainer.step, total, epoch, loss,
                     trainer.lr, metrics["tokens_per_s"], seen)
        if trainer.step % config.checkpoint_every == 0 or trainer.step >= total:
            with tempfile.TemporaryDirectory() as tmp:
                trainer.save(tmp, {"epoch": epoch, "batch": b + 1, "examples_seen": seen})
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
    state = trainer.full_state_dict()
    if rank == 0:
        record = {"config": config.model_dump(), "steps": trainer.step, "examples_seen": seen,
                  "seconds": time.monotonic() - start, "base_model": path}
        export_hf(Path(config.output_dir).resolve() / "hf", state, path, tokenizer, record, get_prompt(config.prompt),
                  config.export_dtype)
        log.info("exported %s", Path(config.output_dir) / "hf")


# Up to this many pairs are tokenized in the driver (about 1.5 s per 1,024 GSM8K pairs here, with the tokenizer
# check_config already loaded); more go through a Ray Data stage, in parallel across the cluster's CPUs. A Ray
# Data task on a fresh worker first imports transformers and loads the tokenizer: 10-12 s per run on 2 cores
# (Ray stops idle task workers once a run's actors start, so each run pays it again).
LOCAL_TOKENIZE_MAX_PAIRS = 1024


def tokenized_blocks(config: TrainSFTConfig, local_max: int = LOCAL_TOKENIZE_MAX_PAIRS) -> tuple[list, int]:
    """The pairs -> (idx, input_ids, labels) as Arrow blocks in the object store (refs: the objects live while the
    caller holds them) and the number of pairs: tokenized here when there are at most ``local_max`` pairs, else by
    Ray Data."""
    import ray

    from lib.sft import tokenize_batch
    from lib.sft_data import load_pairs

    pairs = load_pairs(config.data.source, config.data.split, config.data.columns, config.data.limit)
    items = [{"idx": i, "id": pid, "question": q, "solution": s} for i, (pid, q, s) in enumerate(pairs)]
    kwargs = {"model": config.model, "prompt": config.prompt, "max_len": config.max_seq_len}
    if len(items) <= local_max:
        batch = {key: [item[key] for item in items] for key in ("idx", "question", "solution")}
        return [ray.put(tokenize_batch(batch, **kwargs))], len(items)
    # Ray tasks, not an actor: pooled workers (and their cached tokenizer) are reused between tasks.
    ds = ray.data.from_items(items).map_batches(tokenize_batch, fn_kwargs=kwargs, batch_size=256, num_cpus=0.5)
    return ds.materialize().to_arrow_refs(), len(items)  # tokenized before the workers take the CPUs


def rows_from_blocks(blocks: list) -> TokenizedRows:
    """Every tokenized example in ``idx`` order, from :func:`tokenized_blocks` (object refs, mapped from the
    object store: shared memory on the worker's node, one copy for its workers), read one example at a time
    (``lib.sft.TokenizedRows``). Every worker sees all rows and takes its slice of each batch
    (``examples_for_rank``). A Ray Train dataset would do the same through a dataset-manager actor and a
    streaming executor per worker, for no streaming here (the rows are sorted, and a resume needs them all);
    measured on 2 CPUs, ``fit`` took as long either way (36-39 s for 2 tiny steps), so this is the simpler path,
    not a faster one."""
    import pyarrow as pa
    import ray

    from lib.schemas import TOKENIZED_SCHEMA
    from lib.sft import TokenizedRows

    tables = ray.get(blocks) if blocks else []
    return TokenizedRows(pa.concat_tables(tables) if tables else TOKENIZED_SCHEMA.empty_table())


def latest_checkpoint(run_dir: Path):
    """The newest complete checkpoint of an earlier run into the same output_dir (None if there is none);
    Ray Train restores it itself, this is for the log and the summary."""
    import ray.train

    done = [p for p in run_dir.glob("checkpoint_*") if (p / "trainer_state.json").exists()]
    if not done:
        return None
    best = max(done, key=lambda p: json.loads((p / "trainer_state.json").read_text())["step"])
    return ray.train.Checkpoint.from_directory(str(best))


def check_config(config: TrainSFTConfig) -> None:
    """What the schema cannot see, checked before any work: the DeepSpeed file exists, and the prompt suits
    the model's tokenizer (a chat-template prompt needs a chat template). Warns when GPU workers would pack
    with an L x L mask (slower than padding there, measured)."""
    from lib.models import resolve_model
    from lib.prompts import check_prompt_for_tokenizer, get_prompt
    from lib.sft import cached_tokenizer, uses_varlen

    if config.strategy == "deepspeed" and not (REPO / config.deepspeed_config).is_file():
        raise ConfigError(f"deepspeed_config: {config.deepspeed_config} does not exist")
    if config.resources.use_gpu and config.packing and not uses_varlen(config.attn_implementation):
        log.warning("packing with attn_implementation=%s on GPUs: each packed row carries an L x L mask, and SDPA "
                    "computes the whole square. Measured on one H200 (jobs.bench_train, 16k-token micro-batches), this "
                    "trained at 0.40x (135M) to 0.73x (1.7B) the useful tokens/s of padding. Set attn_implementation: "
                    "flash_attention_2 (with flash-attn installed: varlen, no mask) or packing: false.",
                    config.attn_implementation)
    if get_prompt(config.prompt).use_chat_template:
        path = resolve_model(config.model)
        try:
            check_prompt_for_tokenizer(config.prompt, cached_tokenizer(path), path)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def plan(config: TrainSFTConfig, num_examples: int | None = None) -> list:
    """The dry-run plan: Ray Train workers asked for, SFT examples and optimizer steps (``num_examples``
    None: counted from the data when it is readable here)."""
    from lib.plan import StagePlan, bundles, train_work
    from lib.sft_data import load_pairs

    notes = [f"model {config.model}, prompt {config.prompt}, strategy {config.strategy}, output_dir {config.output_dir}"]
    if num_examples is None:
        try:
            num_examples = len(load_pairs(config.data.source, config.data.split, config.data.columns, config.data.limit))
        except DataError as exc:
            notes.append(f"examples unknown before the run: {exc}")
    res = config.resources
    return [StagePlan("train_sft", bundles(res.num_workers, res.cpus_per_worker, 1 if res.use_gpu else 0),
                      train_work(num_examples, config.global_batch_size, config.epochs, config.max_steps), notes)]


class TrainSFTSummary(JobSummary):
    """What ``run`` returns and writes as ``summary.json``."""

    examples: int
    final_metrics: dict[str, Any] | None = Field(description="the last step's metrics (step, loss, lr, tokens/s, examples_seen)")
    hf_dir: str
    resumed_from: str | None
    seconds: float


def run(config: TrainSFTConfig) -> TrainSFTSummary:
    """Train as ``config`` says (the module docstring). Data that cannot be found, a missing DeepSpeed file
    or a prompt the tokenizer cannot render: ``ConfigError`` before Ray starts."""
    try:  # data that cannot be found stops the job before any work, naming every place it looked
        from lib.sft_data import load_pairs

        load_pairs(config.data.source, config.data.split, config.data.columns, limit=1)
    except DataError as exc:
        raise ConfigError(f"data: {exc}") from None
    check_config(config)
    output_dir = Path(config.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    # The workers run in Ray Train's own working directory: give them absolute paths.
    model = str(Path(config.model).resolve()) if Path(config.model).is_dir() else config.model
    config = config.model_copy(update={"output_dir": str(output_dir), "model": model})

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        blocks, num_examples = tokenized_blocks(config)
    except DataError as exc:
        raise ConfigError(f"data: {exc}") from None
    dump_config(config, output_dir / "config.yaml", {"mathray": __version__, "git_commit": git_commit(),
                "versions": package_versions("torch", "transformers", "ray", "deepspeed"), "num_examples": num_examples})
    resume = latest_checkpoint(output_dir / "run")
    if resume is not None:
        log.info("resuming from %s", resume.path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.model_dump(), "blocks": blocks},
        scaling_config=ray.train.ScalingConfig(num_workers=config.resources.num_workers, use_gpu=config.resources.use_gpu,
                                               resources_per_worker={"CPU": config.resources.cpus_per_worker}),
        run_config=ray.train.RunConfig(name="run", storage_path=str(output_dir),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints)),
    )  # the same run name and storage path: Ray Train restores the latest checkpoint (get_checkpoint in the loop)
    start = time.monotonic()
    result = trainer.fit()
    summary = TrainSFTSummary(examples=num_examples, final_metrics=result.metrics, hf_dir=str(output_dir / "hf"),
                              resumed_from=resume.path if resume else None, seconds=round(time.monotonic() - start, 1))
    summary.write(output_dir)
    return summary


def main(argv: list[str] | None = None) -> TrainSFTSummary:
    return cli.main(argv, TrainSFTConfig, run, __doc__, "e.g. max_steps=4", plan=plan)


def show(summary: TrainSFTSummary) -> str:
    m = summary.final_metrics or {}
    return (f"trained {m.get('step')} steps, final loss {m.get('loss', float('nan')):.4f}, "
            f"{m.get('examples_seen')} examples; model: {summary.hf_dir}")


if __name__ == "__main__":
    cli.entry(main, show=show, resume_note="training resumes from the latest checkpoint")
