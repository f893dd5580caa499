#!/usr/bin/env python3
"""Load an adapter saved by fc-model into PEFT and compare logits with ours.

Produce the input with:
  FC_MODEL_EXPORT=/tmp/fcm cargo test -p fc-model --test parity -- --ignored export_adapter_for_python_check
then run:
  python scripts/model/check_our_adapter.py /tmp/fcm [base_model_dir]
Exits non-zero if the max abs diff exceeds 1e-4.
"""
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    exp_dir = sys.argv[1]
    base_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        ROOT, "shared", "model", "tests", "fixtures", "qwen3_tied")
    ours = load_file(os.path.join(exp_dir, "ours.safetensors"))
    ids = ours["ids"].long().unsqueeze(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    pm = PeftModel.from_pretrained(base, os.path.join(exp_dir, "adapter")).eval()
    with torch.no_grad():
        lora = pm(ids).logits[0]
        merged = pm.merge_and_unload()(ids).logits[0]
    d1 = (lora - ours["lora"]).abs().max().item()
    d2 = (merged - ours["merged"]).abs().max().item()
    print(f"adapter-on max abs diff {d1:.3e}; merged max abs diff {d2:.3e}")
    diffs = [d1, d2]
    # Our saved HF dirs (merged model, tiny preset) must load in transformers.
    merged_dir = os.path.join(exp_dir, "merged")
    if os.path.isdir(merged_dir):
        m = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            d3 = (m(ids).logits[0] - ours["merged"]).abs().max().item()
        print(f"our saved merged dir in transformers: max abs diff {d3:.3e}")
        diffs.append(d3)
    tiny_dir = os.path.join(exp_dir, "tiny")
    if os.path.isdir(tiny_dir):
        from transformers import AutoTokenizer
        m = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            d4 = (m(ids[:, :4]).logits[0] - ours["tiny"]).abs().max().item()
        print(f"our tiny preset in transformers: max abs diff {d4:.3e}")
        diffs.append(d4)
        tok = AutoTokenizer.from_pretrained(tiny_dir)
        msgs = [{"role": "user", "content": "Call tool 7 please"}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        enc = tok(text)["input_ids"]
        assert tok.decode(enc) == text, "tokenizer round trip"
        assert tok.convert_tokens_to_ids("<tool_call>") is not None
        print(f"tiny tokenizer: vocab {len(tok)}, chat template ok ({len(enc)} tokens), eos {tok.eos_token}")
    sys.exit(0 if max(diffs) < 1e-4 else 1)


if __name__ == "__main__":
    main()
