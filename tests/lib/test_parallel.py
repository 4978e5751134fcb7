"""The training strategies (lib.parallel) by name, and the ``none`` strategy's checkpoints on CPU without Ray:
a run saved, loaded into a fresh trainer and continued equals an uninterrupted run, bit for bit."""

import json

import pytest
import torch

from lib.parallel import DeepSpeed, FSDP2, NoSharding, STRATEGIES, make_strategy
from lib.sft import IGNORE, Example
from lib.train_loop import SFTTrainer, StepSettings, iter_steps, micro_batches

PAD = 0


def test_each_strategy_is_picked_by_its_name():
    """The registry holds exactly none, fsdp, deepspeed; each name builds its own class, fresh each time."""
    assert STRATEGIES == {"none": NoSharding, "fsdp": FSDP2, "deepspeed": DeepSpeed}
    for name, cls in STRATEGIES.items():
        strategy = make_strategy(name, config={"zero_optimization": {"stage": 2}} if name == "deepspeed" else None)
        assert type(strategy) is cls and strategy.name == name
        assert make_strategy(name) is not make_strategy(name)  # one per trainer: it holds the wrapped model


def test_an_unknown_strategy_name_is_an_error_naming_the_key():
    """A misspelt name fails before any model work, naming the key and the known names (also via SFTTrainer)."""
    message = "strategy: unknown strategy 'ddp'; known: none, fsdp, deepspeed"
    with pytest.raises(ValueError) as error:
        make_strategy("ddp")
    assert str(error.value) == message
    model = torch.nn.Linear(2, 2)
    before = model.weight.detach().clone()
    with pytest.raises(ValueError, match="unknown strategy 'ddp'"):
        SFTTrainer(model, StepSettings(), "ddp")
    assert torch.equal(model.weight, before)


def test_only_deepspeed_takes_a_strategy_config():
    """A DeepSpeed config given to a torch strategy is refused (it would be silently ignored)."""
    for name in ("none", "fsdp"):
        with pytest.raises(ValueError, match=f"strategy '{name}' takes no strategy config \\(got keys \\['zero_optimization'\\]\\)"):
            make_strategy(name, config={"zero_optimization": {"stage": 3}})
    assert make_strategy("deepspeed", config={"zero_optimization": {"stage": 3}}).config == {"zero_optimization": {"stage": 3}}


def test_only_the_unsharded_strategy_autocasts_under_mixed_precision():
    """FSDP2 (its MixedPrecisionPolicy) and DeepSpeed (bf16) cast themselves; the loop autocasts only for none."""
    assert {name: make_strategy(name, mixed_precision=True).autocast for name in STRATEGIES} == \
        {"none": True, "fsdp": False, "deepspeed": False}
    assert not make_strategy("none").autocast


def tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def examples() -> list[Example]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for n in (9, 7, 12, 5, 11, 6, 8, 10):
        ids = torch.randint(1, 96, (n,), generator=generator).tolist()
        out.append(Example(ids, [IGNORE] * 2 + ids[2:]))
    return out


SETTINGS = StepSettings(lr=1e-2, warmup_steps=1, total_steps=4, global_batch_size=3, micro_batch_tokens=20)


def train(trainer: SFTTrainer, steps) -> list[tuple[float, int, list[int]]]:
    """(loss, label tokens, global batch) of each step."""
    out = []
    for _, _, batch in steps:
        loss, tokens, _ = trainer.train_step(micro_batches(examples(), batch, SETTINGS, PAD), PAD)
        out.append((loss, tokens, batch))
    return out


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP in one process, as intended
def test_none_strategy_saves_loads_and_continues_exactly_as_an_uninterrupted_run(tmp_path):
    """4 steps (3 examples a step, 8 examples: step 3 is the epoch's last, step 4 opens epoch 1) against
    2 steps, a checkpoint, a fresh trainer from other initial weights loading it, and 2 more steps from the
    saved data position: the same batches, identical losses, learning rates and final weights."""
    clean = SFTTrainer(tiny_llama(0), SETTINGS)
    expected = train(clean, list(iter_steps(8, SETTINGS, epochs=2))[:4])
    assert [batch for _, _, batch in expected][:3] == [b for _, _, b in iter_steps(8, SETTINGS, epochs=1)]
    assert all(loss > 0 for loss, _, _ in expected) and expected[0][0] != expected[1][0]

    first = SFTTrainer(tiny_llama(0), SETTINGS)
    head = list(iter_steps(8, SETTINGS, epochs=2))[:2]
    done = train(first, head)
    epoch, b, _ = head[-1]
    first.save(tmp_path, {"epoch": epoch, "batch": b + 1})
    assert {p.name for p in tmp_path.iterdir()} == {"dcp", "trainer_state.json"}  # the layout resumes rely on
    assert json.loads((tmp_path / "trainer_state.json").read_text()) == {"step": 2, "position": {"epoch": 0, "batch": 2}}

    resumed = SFTTrainer(tiny_llama(1), SETTINGS)  # other weights: the checkpoint must replace them
    assert not torch.equal(resumed.model.lm_head.weight, first.model.lm_head.weight)
    position = resumed.load(tmp_path)
    assert position == {"epoch": 0, "batch": 2} and resumed.step == 2
    done += train(resumed, list(iter_steps(8, SETTINGS, epochs=2, start=position))[:2])

    assert done == expected
    assert resumed.step == clean.step == 4 and resumed.lr == clean.lr
    final, reference = resumed.full_state_dict(), clean.full_state_dict()
    assert sorted(final) == sorted(reference) == sorted(clean.model.state_dict())
    assert all(torch.equal(final[k], reference[k]) for k in reference)
