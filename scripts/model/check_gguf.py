#!/usr/bin/env python3
"""Check a GGUF written by fc-model's `export_gguf` with llama.cpp's own reader (gguf-py).

Prints the metadata (arrays summarised) and the tensor table, then checks that the
keys and tensor names llama.cpp's `qwen3` loader needs are present with the right
shapes. With `--hf-dir` it also dequantizes every tensor with gguf-py and compares it
to the HF safetensors it came from (an independent check of our block layout).

Usage:
  pip install gguf numpy safetensors
  FC_GGUF_EXPORT=/tmp/g cargo test -p fc-model --test gguf metadata   # writes /tmp/g
  python scripts/model/check_gguf.py /tmp/g/tiny-q8_0.gguf --hf-dir /tmp/g/hf
Exit status 1 if a check fails.
"""
import argparse
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

REQUIRED_KEYS = [
    "general.architecture", "qwen3.context_length", "qwen3.embedding_length",
    "qwen3.block_count", "qwen3.feed_forward_length", "qwen3.attention.head_count",
    "qwen3.attention.head_count_kv", "qwen3.attention.key_length",
    "qwen3.attention.value_length", "qwen3.rope.freq_base",
    "qwen3.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model",
    "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.chat_template",
]
LAYER_TENSORS = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def field_value(f):
    t = f.types[0] if f.types else None
    if t == GGUFValueType.ARRAY:
        sub = f.types[1] if len(f.types) > 1 else None
        vals = [f.parts[i] for i in f.data]
        if sub == GGUFValueType.STRING:
            return [bytes(v).decode("utf-8", "replace") for v in vals]
        return [v.tolist()[0] for v in vals]
    if t == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8", "replace")
    return f.parts[f.data[0]].tolist()[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--hf-dir", help="HF dir the file was exported from (f32 safetensors)")
    args = ap.parse_args()
    r = GGUFReader(args.gguf)
    ok = True
    md = {}
    print(f"== metadata ({len(r.fields)} keys)")
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        v = field_value(f)
        md[name] = v
        if isinstance(v, list):
            shown = f"[{len(v)} items] {v[:4]}{' ...' if len(v) > 4 else ''}"
        elif isinstance(v, str) and len(v) > 60:
            shown = repr(v[:60]) + f"... ({len(v)} chars)"
        else:
            shown = repr(v)
        print(f"  {name} = {shown}")
    for k in REQUIRED_KEYS:
        if k not in md:
            print(f"MISSING key {k}")
            ok = False
    if md.get("general.architecture") != "qwen3":
        print("general.architecture is not qwen3")
        ok = False
    tensors = {t.name: t for t in r.tensors}
    print(f"== tensors ({len(tensors)})")
    for t in r.tensors:
        print(f"  {t.name:32s} {t.tensor_type.name:6s} ne={list(map(int, t.shape))}")
    n_layers = int(md.get("qwen3.block_count", 0))
    hidden = int(md.get("qwen3.embedding_length", 0))
    n_vocab = len(md.get("tokenizer.ggml.tokens", []))
    need = ["token_embd.weight", "output_norm.weight"] + [
        f"blk.{i}.{n}.weight" for i in range(n_layers) for n in LAYER_TENSORS
    ]
    for n in need:
        if n not in tensors:
            print(f"MISSING tensor {n}")
            ok = False
    emb = tensors.get("token_embd.weight")
    if emb is not None and [int(x) for x in emb.shape] != [hidden, n_vocab]:
        print(f"token_embd ne {list(emb.shape)} != [{hidden}, {n_vocab}] (n_vocab = len(tokens))")
        ok = False
    if len(md.get("tokenizer.ggml.token_type", [])) != n_vocab:
        print("token_type length != tokens length")
        ok = False

    if args.hf_dir:
        from safetensors.numpy import load_file
        st = load_file(f"{args.hf_dir}/model.safetensors")
        hf_name = {"token_embd.weight": "model.embed_tokens.weight",
                   "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
        for i in range(n_layers):
            for g, h in LAYER_TENSORS.items():
                hf_name[f"blk.{i}.{g}.weight"] = f"model.layers.{i}.{h}.weight"
        print("== dequantized vs safetensors (max |diff| / max |w|)")
        worst = 0.0
        for name, t in tensors.items():
            ref = st[hf_name[name]].astype(np.float32)
            deq = dequantize(t.data, t.tensor_type).reshape(ref.shape).astype(np.float32)
            rel = float(np.abs(deq - ref).max() / max(np.abs(ref).max(), 1e-12))
            worst = max(worst, rel)
            flag = ""
            limit = {"F32": 1e-7, "F16": 1e-3, "Q8_0": 1e-2}.get(t.tensor_type.name, 0.15)
            if rel > limit:
                flag = "  <-- too large"
                ok = False
            print(f"  {name:32s} {t.tensor_type.name:6s} {rel:.2e}{flag}")
        print(f"worst relative error {worst:.2e}")
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
