"""Benchmark: SFT throughput with packing vs padding, and FSDP2 vs DeepSpeed ZeRO-3 on 2 CPU workers.

(1) One process, no Ray (``lib.train_loop.SFTTrainer``, strategy none): the default model trains on
    ``--examples`` GSM8K train solutions (their real length distribution, 'boxed' chat prompt) for
    ``--steps`` steps of ``--batch`` examples, micro-batches of at most ``--tokens`` tokens, once packed
    and once padded. Reports useful (non-padding) tokens/s, the padding share, and the ratio.
(2) ``jobs.train_sft`` on 2 Ray Train CPU workers (gloo), the same data and steps, with FSDP2 and with
    DeepSpeed ZeRO-3: tokens/s per step (mean over steps after the first) and the ratio.

Run: python -m jobs.bench_train [--examples 64 --batch 16 --steps 4 --tokens 2048]
     python -m jobs.bench_train --device cuda:0 [--model DIR --attn flash_attention_2 --activation-checkpointing
     --modes padding]: part (1) only, one process on one GPU (no Ray: torch alone), bf16 compute; adds peak GPU
     memory and tokens/s after the first step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from lib.progress import setup_logging


def bench_packing(args) -> dict[str, dict[str, float]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lib.models import resolve_model
    from lib.sft import tokenize_example, uses_varlen
    from lib.sft_data import load_pairs
    from lib.train_loop import SFTTrainer, StepSettings, iter_steps, micro_batches

    path = resolve_model(args.model)
    device = torch.device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = [tokenize_example(tokenizer, q, s, "boxed", 1024) for _, q, s in load_pairs("gsm8k", limit=args.examples)]
    lengths = sorted(len(e) for e in examples)
    print(f"GSM8K example lengths (tokens): min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}")
    out = {}
    for packing in [mode == "packing" for mode in args.modes.split(",")]:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=args.attn,
                                                     device_map={"": device})
        s = StepSettings(lr=1e-5, total_steps=args.steps, global_batch_size=args.batch, micro_batch_tokens=args.tokens,
                         packing=packing, varlen=packing and uses_varlen(args.attn))
        trainer = SFTTrainer(model, s, mixed_precision=device.type == "cuda", device=device,
                             activation_checkpointing=args.activation_checkpointing)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        useful = processed = 0
        steps = []  # (useful tokens, seconds) per step; the step returns host floats, so each is synchronized
        for _, _, batch in list(iter_steps(len(examples), s, epochs=100))[: args.steps]:
            start = time.perf_counter()
            batches = micro_batches(examples, batch, s, pad)
            _, _, done = trainer.train_step(batches, pad)
            steps.append((sum(len(examples[i]) for i in batch), time.perf_counter() - start))
            useful += steps[-1][0]
            processed += done
        wall = sum(t for _, t in steps)
        warm = steps[1:] or steps  # after the first step (CUDA context, kernel selection, allocator warm-up)
        out["packing" if packing else "padding"] = {
            "tokens_per_s": useful / wall, "padding_share": 1 - useful / processed, "seconds": wall,
            "warm_tokens_per_s": sum(n for n, _ in warm) / sum(t for _, t in warm), "first_step_seconds": steps[0][1],
            "micro_batches_tokens": processed,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
        del trainer, model
    return out


def bench_strategies(args) -> dict[str, float]:
    from jobs.train_sft import TrainSFTConfig, run
    from lib.config import load_config, updated

    base = load_config(TrainSFTConfig, "jobs/configs/train_sft_default_cpu.yaml")
    out = {}
    for strategy in ("fsdp", "deepspeed"):
        with tempfile.TemporaryDirectory() as tmp:
            run(updated(base, {"output_dir": tmp, "strategy": strategy, "data.limit": args.examples,
                               "global_batch_size": args.batch, "max_steps": args.steps,
                               "micro_batch_tokens": args.tokens, "checkpoint_every": args.steps}))
            rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
            out[strategy] = statistics.mean(r["tokens_per_s"] for r in rows[1:])
            out[f"{strategy}_losses"] = [round(r["loss"], 4) for r in rows]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda:N: part (1) alone on that GPU")
    parser.add_argument("--model", default="default", help="lib.models model (default: the embedded SmolLM2)")
    parser.add_argument("--attn", default="sdpa", help="attn_implementation (flash_attention_2: varlen packing)")
    parser.add_argument("--activation-checkpointing", action="store_true", help="as the 7B configs train (part 1)")
    parser.add_argument("--modes", default="packing,padding", help="part (1)'s modes, comma-separated")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if not modes or not set(modes) <= {"packing", "padding"}:
        parser.error(f"--modes {args.modes}: comma-separated packing, padding")
    if args.device == "cpu" and sorted(modes) != ["packing", "padding"]:
        parser.error("--modes applies to --device cuda:N; the CPU benchmark measures both")
    setup_logging()
    packing = bench_packing(args)
    if args.device != "cpu":
        for mode, r in packing.items():
            print(f"{mode:8s} on {args.device}: {r['warm_tokens_per_s']:.0f} useful tokens/s after the first step "
                  f"({r['first_step_seconds']:.1f} s; {r['tokens_per_s']:.0f} over all {args.steps}), peak memory "
                  f"{r['peak_memory_gib']:.2f} GiB, padding {100 * r['padding_share']:.1f}%")
        if len(packing) == 2:
            print(f"ratio packing/padding: {packing['packing']['warm_tokens_per_s'] / packing['padding']['warm_tokens_per_s']:.2f}x")
        return
    strategies = bench_strategies(args)
    print(f"\nSFT benchmark: default model (SmolLM2-135M, fp32, CPU), {args.steps} steps x {args.batch} GSM8K examples, "
          f"micro-batches <= {args.tokens} tokens")
    for mode, r in packing.items():
        print(f"(1) {mode:8s} one process: {r['tokens_per_s']:.0f} useful tokens/s, padding {100 * r['padding_share']:.1f}% "
              f"of processed tokens, {r['seconds']:.1f} s")
    print(f"    ratio packing/padding: {packing['packing']['tokens_per_s'] / packing['padding']['tokens_per_s']:.2f}x")
    print(f"(2) 2 Ray Train CPU workers: FSDP2 {strategies['fsdp']:.0f} tokens/s, DeepSpeed ZeRO-3 "
          f"{strategies['deepspeed']:.0f} tokens/s (ratio FSDP/DeepSpeed {strategies['fsdp'] / strategies['deepspeed']:.2f})")
    print(f"    losses FSDP {strategies['fsdp_losses']}  DeepSpeed {strategies['deepspeed_losses']}")


if __name__ == "__main__":
    main()
