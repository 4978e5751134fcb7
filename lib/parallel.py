"""How the model is spread over ranks: the training strategies behind one small interface.

``lib.train_loop.SFTTrainer`` owns the loop (data, loss, schedule, the trainer state file) and knows no
strategy by name; a :class:`Strategy` owns what differs between them (as torchtitan's ``parallelize.py``
sits apart from its model and loop):

- :meth:`~Strategy.wrap`: the model and optimizer on the device given (sharding, engine, mixed precision);
- :meth:`~Strategy.backward` of one micro-batch and :meth:`~Strategy.optimizer_step` after the last one
  (DeepSpeed's engine steps inside ``backward`` at the gradient accumulation boundary);
- :meth:`~Strategy.save` / :meth:`~Strategy.load` of model and optimizer into a checkpoint directory
  (``dcp/`` for torch's strategies, ``deepspeed/`` for DeepSpeed);
- :meth:`~Strategy.full_state_dict`: the unsharded weights for the HF export.

Strategies by name (:data:`STRATEGIES`, :func:`make_strategy`): ``none`` (the whole model and a torch
optimizer, no gradient all-reduce: for one process, as the benchmark and the GPU test use it), ``fsdp``
(FSDP2 ``fully_shard`` per decoder layer) and ``deepspeed`` (ZeRO 2/3 from a DeepSpeed config). DeepSpeed
is imported only when its strategy wraps a model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any


def dist_group():
    """``torch.distributed`` if a process group is up, else None (one process)."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    return dist_group().get_world_size() if dist_group() else 1


class Strategy(ABC):
    """One strategy for one trainer: :meth:`wrap` once, then the step and checkpoint methods."""

    name: str
    takes_config = False  # whether the strategy has settings of its own (``config``)

    def __init__(self, mixed_precision: bool = False, config: dict[str, Any] | None = None):
        if config is not None and not self.takes_config:
            raise ValueError(f"strategy {self.name!r} takes no strategy config (got keys {sorted(config)})")
        self.mixed_precision, self.config = mixed_precision, config

    @property
    def autocast(self) -> bool:
        """Whether the loop runs the forward under bf16 autocast (FSDP and DeepSpeed cast themselves)."""
        return False

    @abstractmethod
    def wrap(self, model: Any, device: Any, lr: float, weight_decay: float, max_grad_norm: float) -> tuple[Any, Any]:
        """Set up ``model`` (already on ``device``) and its AdamW optimizer; returns (the module the loop
        calls forward on, the optimizer whose param groups' ``lr`` the loop sets each step)."""

    @abstractmethod
    def backward(self, loss: Any, boundary: bool) -> None:
        """Backward of one micro-batch's (scaled) loss; ``boundary``: it is the global batch's last."""

    @abstractmethod
    def optimizer_step(self) -> None:
        """After the last micro-batch's backward: clip, step and zero the gradients (if not done already)."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Model and optimizer state into ``directory`` (every rank calls; each writes its own shards)."""

    @abstractmethod
    def load(self, directory: Path) -> None:
        """Restore what :meth:`save` wrote into ``directory``."""

    @abstractmethod
    def full_state_dict(self) -> dict[str, Any]:
        """The unsharded model weights (every rank calls: it may gather; rank 0's result is the one used)."""


class NoSharding(Strategy):
    """The whole model and a torch AdamW (bf16 autocast under mixed precision; gradients are not reduced
    over ranks); checkpoints through torch.distributed.checkpoint."""

    name = "none"

    @property
    def autocast(self) -> bool:
        return self.mixed_precision

    def wrap(self, model: Any, device: Any, lr: float, weight_decay: float, max_grad_norm: float) -> tuple[Any, Any]:
        import torch

        self.shard(model, device)
        self.model, self.max_grad_norm = model, max_grad_norm
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        return self.model, self.optimizer

    def shard(self, model: Any, device: Any) -> None:
        """Nothing to shard here; FSDP2 shards in place."""

    def backward(self, loss: Any, boundary: bool) -> None:
        loss.backward()

    def optimizer_step(self) -> None:
        import torch

        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optimizer": optim_sd}

    def save(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(), checkpoint_id=str(directory / "dcp"))

    def load(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self._state()
        dcp.load(state, checkpoint_id=str(directory / "dcp"))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])

    def full_state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=dist_group() is not None, cpu_offload=True)
        return get_model_state_dict(self.model, options=options)


class FSDP2(NoSharding):
    """FSDP2: ``fully_shard`` on each decoder layer (``model.model.layers``) and on the whole model, over a
    1-D mesh of all ranks on the device's type (cuda -> NCCL, cpu -> gloo); bf16 compute with fp32 gradient
    reduction under mixed precision. The step and the DCP checkpoints are :class:`NoSharding`'s (DCP reads
    and writes the sharded state dicts)."""

    name = "fsdp"

    @property
    def autocast(self) -> bool:
        return False

    def shard(self, model: Any, device: Any) -> None:
        import torch
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (world_size(),))
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if self.mixed_precision else MixedPrecisionPolicy()
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)


class DeepSpeed(Strategy):
    """DeepSpeed's engine from ``config`` (a DeepSpeed JSON config: ZeRO stage, ...), with the loop's settings
    forced (one micro-batch per engine call: the loop accumulates; clipping; bf16 under mixed precision) and
    a torch AdamW unless the config names an optimizer."""

    name = "deepspeed"
    takes_config = True

    def wrap(self, model: Any, device: Any, lr: float, weight_decay: float, max_grad_norm: float) -> tuple[Any, Any]:
        import deepspeed
        import torch

        config = dict(self.config or {})
        config.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1,
                      gradient_clipping=max_grad_norm, bf16={"enabled": self.mixed_precision})
        config.setdefault("optimizer", {"type": "AdamW", "params": {"lr": lr, "weight_decay": weight_decay, "torch_adam": True}})
        self.engine, optimizer, _, _ = deepspeed.initialize(model=model, config=config, dist_init_required=False)
        if torch.device(self.engine.device) != device:  # DeepSpeed picks its device from LOCAL_RANK
            raise ValueError(f"DeepSpeed placed the model on {self.engine.device}, but this worker's device is "
                             f"{device}: LOCAL_RANK and the visible devices disagree")
        return self.engine, optimizer

    def backward(self, loss: Any, boundary: bool) -> None:
        """The engine steps (clips, updates, zeroes) inside ``step`` at the boundary only."""
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()

    def optimizer_step(self) -> None:
        """Done by the engine at the boundary micro-batch's backward."""

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag="state")

    def load(self, directory: Path) -> None:
        self.engine.load_checkpoint(str(directory / "deepspeed"), tag="state")

    def full_state_dict(self) -> dict[str, Any]:
        if self.engine.zero_optimization_stage() == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return self.engine.module.state_dict()


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (NoSharding, FSDP2, DeepSpeed)}


def make_strategy(name: str, mixed_precision: bool = False, config: dict[str, Any] | None = None) -> Strategy:
    """A new strategy by name (``strategy`` in the job config); ``config`` is the strategy's own settings
    (DeepSpeed's JSON config; the others take none)."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy: unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](mixed_precision, config)
