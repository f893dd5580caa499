#!/usr/bin/env python3
"""`fcmesh merge` output loads in transformers and equals the adapter-on model.

Builds a PEFT LoRA adapter with random (non-zero) A and B on an HF model dir, saves it,
runs `fcmesh merge`, loads the merged dir with transformers and compares its logits with
PEFT's adapter-on model (which `check_our_adapter.py` shows equals fc-model's adapter-on
forward). Exits non-zero if the max abs diff exceeds 1e-4.

Usage: pip install torch transformers peft
       python scripts/model/check_merge.py MODEL_DIR [FCMESH_BIN]
(MODEL_DIR: e.g. `fcmesh init-model --preset tiny --data train.json --out MODEL_DIR`)
"""
import subprocess
import sys
import tempfile

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def main():
    model_dir = sys.argv[1]
    fcmesh = sys.argv[2] if len(sys.argv) > 2 else "target/debug/fcmesh"
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, init_lora_weights=False,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(base, cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = f"{tmp}/adapter"
        merged = f"{tmp}/merged"
        peft_model.save_pretrained(adapter)
        out = subprocess.run([fcmesh, "merge", "--model", model_dir, "--adapter", adapter, "--out", merged],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"fcmesh merge failed: {out.stderr}")
        ours = AutoModelForCausalLM.from_pretrained(merged, torch_dtype=torch.float32).eval()
        vocab = ours.config.vocab_size
        ids = torch.tensor([[(i * 37 + 11) % vocab for i in range(48)]])
        with torch.no_grad():
            want = peft_model(input_ids=ids).logits
            got = ours(input_ids=ids).logits
        diff = (want - got).abs().max().item()
        print(f"merged (fcmesh merge) vs PEFT adapter-on logits: max abs diff {diff:.2e}")
        if diff > 1e-4:
            sys.exit(1)


if __name__ == "__main__":
    main()
