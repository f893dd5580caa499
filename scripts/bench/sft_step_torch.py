#!/usr/bin/env python3
"""PyTorch + PEFT counterpart of `cargo run --release -p fc-model --bin bench-sft-step`.

One LoRA SFT step (forward, backward, AdamW) on a random Qwen3-0.6B-shaped model
(hidden 1024, 28 layers, 16/8 heads, head_dim 128, intermediate 3072, vocab 151936,
tied), f32 on CPU, LoRA r=32 / alpha=64 on all seven projections, no dropout.
Same token ids, same loss (mean token NLL), same timing rules: tokens/s over the steps
after the first; peak RSS = ru_maxrss (process high-water mark, weights included).

Usage: pip install torch transformers peft
       python scripts/bench/sft_step_torch.py [--seq 512] [--batch 2] [--steps 3] [--layers 28]
"""
import argparse
import os
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen3Config, Qwen3ForCausalLM


def rss_mib(field="VmRSS:"):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="the tiny preset's shape (hidden 128, 4 layers, vocab 3000)")
    ap.add_argument("--full", action="store_true", help="train every weight instead of LoRA")
    a = ap.parse_args()
    if a.tiny:
        a.layers = 4
    torch.manual_seed(0)
    t0 = time.time()
    shape = dict(vocab_size=3000, hidden_size=128, intermediate_size=384, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32) if a.tiny else dict(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128)
    vocab = shape["vocab_size"]
    cfg = Qwen3Config(
        num_hidden_layers=a.layers, max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=True, attention_bias=False, use_cache=False, **shape,
    )
    model = Qwen3ForCausalLM(cfg).to(torch.float32)
    model.config.use_cache = False
    if not a.full:
        lcfg = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                          "gate_proj", "up_proj", "down_proj"])
        model = get_peft_model(model, lcfg)
    if a.grad_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_lora = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    init_s = time.time() - t0
    rss_init = rss_mib()
    print(f"init {init_s:.1f}s, lora params {n_lora}, RSS after init {rss_init:.0f} MiB, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    n = a.batch * a.seq
    ids = torch.tensor([(i * 7919 + 13) % (vocab - 10) for i in range(n)]).view(a.batch, a.seq)
    tgt = torch.tensor([(i * 7919 + 13 + 7919) % (vocab - 10) for i in range(n)]).view(a.batch, a.seq)
    mask = torch.ones_like(ids)
    times = []
    for step in range(a.steps):
        t = time.time()
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1))
        tf = time.time() - t
        loss.backward()
        tb = time.time() - t - tf
        opt.step()
        opt.zero_grad(set_to_none=True)
        del logits
        dt = time.time() - t
        times.append(dt)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"step {step}: loss {loss.item():.4f} fwd {tf:.2f}s bwd {tb:.2f}s total {dt:.2f}s, "
              f"maxrss {peak:.0f} MiB", flush=True)
    measured = times[1:] if len(times) > 1 else times
    mean = sum(measured) / len(measured)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    label = ("torch" if a.full else "torch+peft") + (" (grad ckpt)" if a.grad_checkpointing else "")
    train = "full" if a.full else f"lora r{a.rank}"
    print("| impl | alloc | shape | train | layers | seq | batch | r | steps | s/step | tokens/s | first step s | peak RSS MiB | RSS after init MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {label} {torch.__version__} | pymalloc/glibc | {'tiny' if a.tiny else 'qwen3-0.6b'} | {train} | {a.layers} | {a.seq} | {a.batch} | {a.rank} | "
          f"{a.steps} | {mean:.2f} | {n / mean:.1f} | {times[0]:.2f} | {peak:.0f} | {rss_init:.0f} |")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
