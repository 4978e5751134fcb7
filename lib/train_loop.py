"""The SFT training step and its parallelism, runnable without Ray: one process, or any
``torch.distributed`` process group (Ray Train's workers, ``torchrun``, a lent GPU machine).

Model math lives in transformers; this module owns the data order, the step (micro-batches, token-mean
loss over the global batch) and checkpoints of the full training state (model, optimizer, schedule, data
position); the parallelism (FSDP2, DeepSpeed ZeRO 2/3, or none) is a ``lib.parallel.Strategy``.

Data order: each epoch is a seeded permutation of example indices cut into global batches of
``global_batch_size`` examples; rank r takes every world-th example of a batch. The position is
(epoch, batch in epoch), so a resumed run continues exactly where the checkpoint was taken: no example is
seen twice or skipped in the epoch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib.parallel import Strategy, dist_group, make_strategy, world_size
from lib.prompts import PromptTemplate, save_model_prompt
from lib.sft import IGNORE, Example, MicroBatch, collate_packed, collate_padded, pack, token_loss_sum


@dataclass
class StepSettings:
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    total_steps: int = 100
    max_grad_norm: float = 1.0
    global_batch_size: int = 32  # examples per optimizer step, across ranks
    micro_batch_tokens: int = 4096  # token budget of one micro-batch (packed row, or padded batch)
    packing: bool = True
    varlen: bool = False  # packed rows without a mask, for flash-attention (lib.sft.uses_varlen)
    seed: int = 0


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress))


def epoch_batches(num_examples: int, global_batch_size: int, epoch: int, seed: int) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_examples, generator=generator).tolist()
    return [order[i:i + global_batch_size] for i in range(0, num_examples, global_batch_size)]


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    return math.ceil(num_examples / global_batch_size)


def micro_batches(examples: list[Example], indices: list[int], s: StepSettings, pad_id: int) -> list[MicroBatch]:
    """The micro-batches of one rank's share of a global batch (CPU tensors; the step moves them)."""
    chosen = [examples[i] for i in indices]
    if not chosen:
        return []
    if s.packing:
        return [_micro([chosen[i] for i in group], collate_packed([chosen[i] for i in group], s.varlen))
                for group in pack(chosen, s.micro_batch_tokens)]
    out, group, longest = [], [], 0
    for ex in chosen:  # padded: as many examples as fit the same token budget once padded
        if group and max(longest, len(ex)) * (len(group) + 1) > s.micro_batch_tokens:
            out.append(_micro(group, collate_padded(group, pad_id)))
            group, longest = [], 0
        group.append(ex)
        longest = max(longest, len(ex))
    out.append(_micro(group, collate_padded(group, pad_id)))
    return out


def _micro(examples: list[Example], tensors: dict[str, Any]) -> MicroBatch:
    return MicroBatch(tensors, sum(ex.num_label_tokens for ex in examples))


def dummy_micro_batch(pad_id: int) -> MicroBatch:
    """A micro-batch with no label tokens: keeps ranks in lockstep (FSDP/ZeRO-3 collectives) at zero loss."""
    ex = Example([pad_id, pad_id], [IGNORE, IGNORE])
    return _micro([ex], collate_padded([ex], pad_id))


def host_values(t: Any) -> list[float]:
    """The one device -> host read of a reduced tensor (a sync on GPUs)."""
    return t.tolist()


def all_reduce(values: Any, device: Any, op: str = "sum") -> list[float]:
    """Sum (or max) ``values`` (numbers, or a tensor on ``device``) over ranks; returns them on the host.
    The reduced tensor lives on ``device``: NCCL reduces only CUDA tensors, gloo CPU ones, and the training
    device is the one the process group's backend serves."""
    import torch

    t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=torch.float64, device=device)
    dist = dist_group()
    if dist is not None:
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return host_values(t)


def place(model: Any, device: Any) -> Any:
    """``model`` on ``device`` (moved only if some parameter or buffer is elsewhere)."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device != device for t in tensors):
        model.to(device)
    return model


class SFTTrainer:
    """Owns model, optimizer and schedule for one strategy on one device (the worker's:
    ``ray.train.torch.get_device()`` under Ray, ``cuda:N`` under torchrun or alone on a GPU, ``cpu`` for
    gloo). ``train_step(micro_batches)`` runs one optimizer step and returns (global mean token loss,
    label tokens, tokens processed): model, inputs, labels and every reduced tensor are on ``device``;
    the step reads the device three times (label tokens, micro-batch count, the step's totals).

    ``strategy`` is a :class:`lib.parallel.Strategy` or its name (``none``, ``fsdp``, ``deepspeed``), built
    with ``mixed_precision`` and ``strategy_config`` (DeepSpeed's JSON config); it does the wrapping, the
    backward and optimizer step, and the model/optimizer part of checkpoints and the export."""

    def __init__(self, model: Any, settings: StepSettings, strategy: str | Strategy = "none",
                 strategy_config: dict | None = None, activation_checkpointing: bool = False,
                 mixed_precision: bool = False, device: Any = "cpu"):
        import torch

        self.settings = settings
        self.strategy = make_strategy(strategy, mixed_precision, strategy_config) if isinstance(strategy, str) else strategy
        self.device = torch.device(device)
        self.rank = dist_group().get_rank() if dist_group() else 0
        self.world = world_size()
        if activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        place(model, self.device)
        self.model, self.optimizer = self.strategy.wrap(model, self.device, settings.lr, settings.weight_decay,
                                                        settings.max_grad_norm)
        self.step = 0
        self._set_lr()

    def _set_lr(self) -> None:
        """The schedule is a function of the step (no scheduler object: DeepSpeed wraps the optimizer)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.settings.lr * lr_factor(self.step, self.settings.warmup_steps, self.settings.total_steps)

    def train_step(self, batches: list[MicroBatch], pad_id: int) -> tuple[float, int, int]:
        # The plan: every rank runs as many micro-batches as the busiest (FSDP/ZeRO-3 gather in lockstep).
        tokens = all_reduce([sum(b.num_label_tokens for b in batches)], self.device)[0]
        total_micro = int(max(all_reduce([len(batches)], self.device, "max")[0], 1))
        batches = batches + [dummy_micro_batch(pad_id) for _ in range(total_micro - len(batches))]
        totals = self.step_on_device(batches, int(tokens))
        total_loss, total_processed = all_reduce(totals, self.device)
        return total_loss / max(tokens, 1), int(tokens), int(total_processed)

    def step_on_device(self, batches: list[MicroBatch], tokens: int) -> Any:
        """Forward, backward and the optimizer step over ``batches``, ``tokens`` label tokens in the global
        batch; returns this rank's [loss sum, tokens processed] as a tensor on the device (no host sync)."""
        import torch

        scale = self.world / max(tokens, 1)  # gradients are averaged over ranks: this makes a token mean
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        processed = 0
        self.model.train()
        for i, batch in enumerate(batches):
            batch = batch.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.strategy.autocast):
                loss = token_loss_sum(self.model, batch.tensors)
            processed += batch.num_tokens
            loss_sum += loss.detach().to(torch.float64)
            self.strategy.backward(loss * scale, boundary=i == len(batches) - 1)
        self.strategy.optimizer_step()
        self.step += 1
        self._set_lr()
        return torch.stack([loss_sum, torch.full((), float(processed), dtype=torch.float64, device=self.device)])

    @property
    def lr(self) -> float:
        """The learning rate the last step used."""
        return self.settings.lr * lr_factor(self.step - 1, self.settings.warmup_steps, self.settings.total_steps)

    # ------------------------------------------------------------------------------------- checkpoints

    def save(self, directory: str | Path, position: dict[str, int]) -> None:
        """The full training state into ``directory``: the strategy's model and optimizer files (each rank
        writes its own shards) and ``trainer_state.json`` (step, data position) from rank 0."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.strategy.save(directory)
        if self.rank == 0:
            state = {"step": self.step, "position": position}
            (directory / "trainer_state.json").write_text(json.dumps(state))

    def load(self, directory: str | Path) -> dict[str, int]:
        """Restore the state saved by :meth:`save`; returns the data position to continue from."""
        directory = Path(directory)
        self.strategy.load(directory)
        state = json.loads((directory / "trainer_state.json").read_text())
        self.step = state["step"]
        self._set_lr()
        return state["position"]

    def full_state_dict(self) -> dict[str, Any] | None:
        """The unsharded model weights on rank 0 (None elsewhere), for the HF export."""
        sd = self.strategy.full_state_dict()
        return sd if self.rank == 0 else None


def export_hf(model_dir: str | Path, state_dict: dict[str, Any], base_model: str, tokenizer: Any, record: dict[str, Any],
              prompt: PromptTemplate, dtype: str = "bfloat16") -> Path:
    """Write an HF directory that ``jobs.evaluate`` (vLLM) and Serve load as ``model=``: safetensors in
    ``dtype`` (floating weights; the config's dtype says the same), config, tokenizer (with its chat
    template, if any), ``training_args.json`` (``record``) and ``mathray_prompt.json`` (the prompt the model
    was fine-tuned with, which Serve's chat route applies)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype)
    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(base_model)
    config.dtype = dtype
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict({k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in state_dict.items()},
                          assign=True, strict=False)
    model.tie_weights()
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    (model_dir / "training_args.json").write_text(json.dumps({**record, "export_dtype": dtype,
                                                              "prompt": prompt.record(tokenizer)}, indent=2, default=str))
    save_model_prompt(model_dir, prompt, tokenizer)
    return model_dir


def examples_for_rank(batch: list[int], rank: int, world: int) -> list[int]:
    return batch[rank::world]


def iter_steps(num_examples: int, s: StepSettings, epochs: int, start: dict[str, int] | None = None) -> Iterator[tuple[int, int, list[int]]]:
    """(epoch, batch index in epoch, global batch of example indices) from ``start`` on."""
    epoch0, batch0 = (start or {}).get("epoch", 0), (start or {}).get("batch", 0)
    for epoch in range(epoch0, epochs):
        batches = epoch_batches(num_examples, s.global_batch_size, epoch, s.seed)
        for b in range(batch0 if epoch == epoch0 else 0, len(batches)):
            yield epoch, b, batches[b]
