#!/usr/bin/env python3
"""Generate transformers/PEFT parity fixtures for the Rust `fc-model` crate.

Builds tiny random decoder models with transformers (fixed seed), saves them as
HF dirs (f32 safetensors) under shared/model/tests/fixtures/<name>/ and writes
`expected.safetensors` next to them with:
  p{i}.ids            [T]      int64  prompt ids
  p{i}.prefill        [T, V]   f32    logits of the prompt (one forward)
  p{i}.greedy_ids     [20]     int64  greedy continuation (no eos stopping)
  p{i}.greedy_logits  [20, V]  f32    logits that produced each greedy token
and, for models with adapters, `<adapter>/` (PEFT save_pretrained) plus
  <adapter>.p{i}.lora    [T, V]  logits with the adapter active
  <adapter>.p{i}.merged  [T, V]  logits after merge_and_unload()

Usage: python scripts/model/gen_parity_fixtures.py  (needs torch transformers peft safetensors)
"""
import json
import math
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from transformers import (AutoModelForCausalLM, LlamaConfig, Qwen2Config,
                          Qwen3Config)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "shared", "model", "tests", "fixtures")
VOCAB = 300
STEPS = 20
PROMPTS = [
    [1, 17, 42, 255, 3, 99, 7, 150],
    [200, 5, 5, 5, 61],
    [12, 250, 33, 8, 140, 77, 2, 19, 23, 280, 4, 64],
]


def randomize(model, seed):
    """Replace the (tiny, nearly uniform) default init with O(1)-scale weights so
    greedy decoding has clear margins and norm weights/biases are exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                std = 1.0 if "embed" in name else 1.0 / math.sqrt(p.shape[1])
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:  # biases
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@torch.no_grad()
def greedy(model, ids):
    """Plain (uncached) greedy loop: the reference our KV-cached decode must match."""
    seq = list(ids)
    toks, logits = [], []
    for _ in range(STEPS):
        out = model(torch.tensor([seq])).logits[0, -1]
        t = int(out.argmax())
        top2 = torch.topk(out, 2).values
        margin = float(top2[0] - top2[1])
        if margin < 1e-3:
            print(f"  warning: small greedy margin {margin}", file=sys.stderr)
        toks.append(t)
        logits.append(out.clone())
        seq.append(t)
    return torch.tensor(toks, dtype=torch.int64), torch.stack(logits)


@torch.no_grad()
def prefill(model, ids):
    return model(torch.tensor([ids])).logits[0].float().contiguous()


def build(name, cfg, seed, adapters=()):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    randomize(model, seed)
    model.eval()
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    exp = {}
    for i, p in enumerate(PROMPTS):
        exp[f"p{i}.ids"] = torch.tensor(p, dtype=torch.int64)
        exp[f"p{i}.prefill"] = prefill(model, p)
        gi, gl = greedy(model, p)
        exp[f"p{i}.greedy_ids"] = gi
        exp[f"p{i}.greedy_logits"] = gl.contiguous()
    for ad_name, lcfg, ad_seed in adapters:
        from peft import get_peft_model
        base = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
        base.eval()
        pm = get_peft_model(base, lcfg)
        g = torch.Generator().manual_seed(ad_seed)
        with torch.no_grad():
            for n, prm in pm.named_parameters():
                if "lora_B" in n:  # PEFT inits B=0; make the adapter matter
                    prm.copy_(0.3 * torch.randn(prm.shape, generator=g))
        pm.eval()
        ad_dir = os.path.join(d, ad_name)
        pm.save_pretrained(ad_dir)
        # Keep fixtures machine-independent and small.
        cfg_path = os.path.join(ad_dir, "adapter_config.json")
        with open(cfg_path) as f:
            acfg = json.load(f)
        acfg["base_model_name_or_path"] = name
        with open(cfg_path, "w") as f:
            json.dump(acfg, f, indent=2)
        readme = os.path.join(ad_dir, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        for i, p in enumerate(PROMPTS):
            exp[f"{ad_name}.p{i}.lora"] = prefill(pm, p)
        merged = pm.merge_and_unload()
        for i, p in enumerate(PROMPTS):
            exp[f"{ad_name}.p{i}.merged"] = prefill(merged, p)
    save_file(exp, os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})
    print(f"wrote {d}")


def main():
    from peft import LoraConfig
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                  num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, rms_norm_eps=1e-6,
                  bos_token_id=0, eos_token_id=1)
    all7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    build("qwen3_tied",
          Qwen3Config(num_hidden_layers=2, head_dim=16, tie_word_embeddings=True,
                      rope_theta=1_000_000.0, **common),
          seed=1,
          adapters=[
              ("lora_all", LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                      target_modules=all7, task_type="CAUSAL_LM"), 11),
              ("lora_rs_qv", LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, use_rslora=True,
                                        target_modules=["q_proj", "v_proj"],
                                        task_type="CAUSAL_LM"), 12),
          ])
    # Untied lm_head, explicit head_dim != hidden/heads, different rope_theta.
    build("qwen3_untied",
          Qwen3Config(num_hidden_layers=1, head_dim=32, tie_word_embeddings=False,
                      rope_theta=10_000.0, **common),
          seed=2)
    build("qwen2_bias",
          Qwen2Config(num_hidden_layers=1, tie_word_embeddings=True, rope_theta=10_000.0,
                      **common),
          seed=3)
    build("llama",
          LlamaConfig(num_hidden_layers=1, tie_word_embeddings=False, rope_theta=500_000.0,
                      **common),
          seed=4)


if __name__ == "__main__":
    main()
