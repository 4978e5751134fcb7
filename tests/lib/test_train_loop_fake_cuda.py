"""The SFT training step on a fake CUDA device, on a CPU-only machine.

torch's ``FakeTensorMode`` creates ``cuda`` tensors without a GPU (shapes and devices, no data, no kernels)
and raises "Expected all tensors to be on the same device" on any op that mixes devices. So one step of
``lib.train_loop.SFTTrainer`` with each ``lib.parallel`` strategy (forward, loss, backward, clipping, AdamW
or the engine's step, and the loss all-reduces) with the model on ``cuda:0`` fails here exactly where a
GPU run would: a batch, a label or a reduced tensor left on the CPU.

Autograd cannot run on a fake CUDA tensor in a CPU-only torch (recording an op asks the CUDA device guard
for a stream, and the process aborts): the parameters are frozen during the fake step and ``backward``
is a stand-in that checks the loss is on cuda and gives every parameter a gradient on the parameter's
device (where autograd puts it); clipping and the optimizer then run on those gradients.

Collectives: a 1-process group on torch's ``fake`` test backend (gloo refuses fake tensors), whose
``all_reduce`` is wrapped to refuse, as NCCL does, a tensor that is not on CUDA. Fake tensors have no
values, so the step's host reads (``train_loop.host_values``) return ones after checking the tensor is
on the device.

What this cannot cover: numbers, CUDA kernels, NCCL itself, autograd (see above; the gloo tests in
``tests/jobs/test_train_sft.py`` run the real backward); FSDP2's ``fully_shard`` (it asks
``torch.cuda.current_device()`` and creates CUDA streams: the test records the mesh and the sharded
modules instead); DeepSpeed's engine (a stand-in with its interface and a CUDA ``device``, as DeepSpeed's
CUDA accelerator reports). ``tests/gpu/`` runs the real thing on a GPU.
"""

import sys
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from lib import train_loop
from lib.sft import IGNORE, Example
from lib.parallel import STRATEGIES, make_strategy
from lib.train_loop import SFTTrainer, StepSettings, micro_batches

CUDA = torch.device("cuda", 0)
PAD = 0


@pytest.fixture
def nccl_like_group(monkeypatch):
    """A 1-process group whose all_reduce accepts only CUDA tensors; returns the reduced tensors' devices."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    reduced = []
    real = dist.all_reduce

    def all_reduce(tensor, op=dist.ReduceOp.SUM, **kwargs):
        if tensor.device.type != "cuda":  # what ProcessGroupNCCL answers for a CPU tensor
            raise RuntimeError(f"NCCL all_reduce of a tensor on {tensor.device}: no backend for this device")
        reduced.append(tensor.device)
        return real(tensor, op=op, **kwargs)

    def host_values(tensor):
        assert tensor.device == CUDA, f"read back from {tensor.device}"
        return [1.0] * tensor.numel()

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(train_loop, "host_values", host_values, raising=False)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=1)
    try:
        yield reduced
    finally:
        dist.destroy_process_group()


class TinyCausalLM(torch.nn.Module):
    """A causal LM with the interface the step uses (``model.layers``, ``logits``) built from ops this torch
    build runs on fake cuda. transformers' Llama cannot run there: its Python indexing (``x[..., None]``)
    asks the CUDA device guard, which a CPU-only build lacks. Every input the step passes is used, so an
    input left on the CPU raises."""

    def __init__(self, vocab: int = 128, hidden: int = 64, positions: int = 64):
        super().__init__()
        self.embed, self.position = torch.nn.Embedding(vocab, hidden), torch.nn.Embedding(positions, hidden)
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList(torch.nn.Linear(hidden, hidden) for _ in range(2))
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        h = self.embed(input_ids)
        if position_ids is not None:
            h = h + self.position(position_ids)
        if attention_mask is not None:  # 2D padding mask or 4D block mask: a per-row weight, on h's device
            h = h * attention_mask.to(h.dtype).flatten(1).mean(1).reshape(-1, 1, 1)
        for layer in self.model.layers:
            h = torch.tanh(layer(h))
        return SimpleNamespace(logits=self.head(h))


def tiny_model():
    """Built on the meta device; the test places it on fake cuda (as loading with ``device_map`` does)."""
    with torch.device("meta"):
        return TinyCausalLM()


def examples() -> list[Example]:
    return [Example(list(range(1, 1 + n)), [IGNORE] * 3 + list(range(4, 1 + n))) for n in (9, 7, 12, 5)]


class StandInEngine:
    """DeepSpeed's engine as our loop uses it (forward, backward, step, boundary, device, optimizer)."""

    def __init__(self, model, config):
        self.module, self.device = model, CUDA
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config["optimizer"]["params"]["lr"])
        self.backward_devices, self.steps, self.boundaries = [], 0, []

    def __call__(self, **inputs):
        return self.module(**inputs)

    def train(self):
        self.module.train()

    def set_gradient_accumulation_boundary(self, last):
        self.boundaries.append(last)

    def backward(self, loss, scale_wrt_gas=True):
        self.backward_devices.append(loss.device)
        loss.backward()

    def step(self):
        if self.boundaries[-1]:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.steps += 1


@pytest.fixture
def backward_stand_in(monkeypatch):
    """Tensor.backward -> record the loss's device, give each parameter of the model a gradient beside it."""
    losses, models = [], []

    def backward(loss, *args, **kwargs):
        losses.append(loss.device)
        for p in models[0].parameters():
            p.grad = torch.zeros_like(p)

    monkeypatch.setattr(torch.Tensor, "backward", backward)
    return losses, models


@pytest.mark.parametrize("strategy", ["none", "fsdp", "deepspeed"])
@pytest.mark.parametrize("packing", [True, False])
def test_training_step_runs_on_fake_cuda(strategy, packing, nccl_like_group, backward_stand_in, monkeypatch):
    """One optimizer step with the model on (fake) cuda:0: batches from the CPU collate are moved, the loss
    and its reductions stay on cuda (NCCL-acceptable), every parameter, gradient-updated optimizer state and
    the step's totals end on cuda:0; per strategy."""
    sharded, engines = [], []
    if strategy == "fsdp":
        import torch.distributed.device_mesh as device_mesh
        import torch.distributed.fsdp as fsdp

        monkeypatch.setattr(device_mesh, "init_device_mesh", lambda device_type, shape: SimpleNamespace(device_type=device_type))
        monkeypatch.setattr(fsdp, "fully_shard", lambda module, mesh, mp_policy: sharded.append(
            (type(module).__name__, mesh.device_type, {p.device for p in module.parameters()})))
    if strategy == "deepspeed":
        def initialize(model, config, dist_init_required):
            engines.append(StandInEngine(model, config))
            return engines[-1], engines[-1].optimizer, None, None

        monkeypatch.setitem(sys.modules, "deepspeed", SimpleNamespace(initialize=initialize))
    settings = StepSettings(lr=1e-3, total_steps=2, global_batch_size=4, micro_batch_tokens=20, packing=packing)
    model = tiny_model().requires_grad_(False)
    backward_losses, models = backward_stand_in
    models.append(model)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to_empty(device=CUDA)
        chosen = make_strategy(strategy, config={} if strategy == "deepspeed" else None)
        trainer = SFTTrainer(model, settings, chosen, device=CUDA)
        batches = micro_batches(examples(), [0, 1, 2, 3], settings, PAD)  # CPU tensors, as the data loader makes
        assert len(batches) == (2 if packing else 3)  # packs [9+7, 12+5] tokens; padded [9,7], [12], [5]
        assert {b.tensors["input_ids"].device.type for b in batches} == {"cpu"}
        loss, tokens, processed = trainer.train_step(batches, PAD)
        totals = trainer.step_on_device(micro_batches(examples(), [0, 1], settings, PAD), 10)

    assert trainer.strategy is chosen and type(chosen) is STRATEGIES[strategy]
    assert isinstance(totals, FakeTensor) and totals.device == CUDA and totals.shape == (2,)
    assert (loss, tokens, processed) == (1.0, 1, 1)  # host_values' stand-in ones: the step ran to its end
    assert len(nccl_like_group) == 3  # label tokens, micro-batch max, step totals; none inside step_on_device
    assert all(p.device == CUDA and p.grad is None for p in model.parameters())  # stepped, then zeroed
    assert backward_losses and set(backward_losses) == {CUDA}
    optimizer = trainer.optimizer
    states = [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    assert states and all(t.device == CUDA for t in states if t.dim() > 0)  # exp_avg / exp_avg_sq
    assert trainer.step == 2
    if strategy == "fsdp":
        assert [name for name, _, _ in sharded] == ["Linear", "Linear", "TinyCausalLM"]
        assert all(mesh == "cuda" and devices == {CUDA} for _, mesh, devices in sharded)
    if strategy == "deepspeed":
        (engine,) = engines
        assert engine.steps == 2 and set(engine.backward_devices) == {CUDA}
        first = len(batches)  # the second step is one micro-batch (examples 9 + 7 tokens)
        assert engine.boundaries == [False] * (first - 1) + [True, True]  # one optimizer step per global batch
