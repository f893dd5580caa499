#!/usr/bin/env python3
"""Inference peers for `bench-engine`: PyTorch transformers and llama.cpp on the same weights.

    python3 scripts/bench/engine_peers.py --hf DIR [--gguf F32.gguf] [--q8 Q8_0.gguf]
        [--threads N] [--prompt 512] [--decode 32] [--ways 8]

Measures what `bench-engine` measures, the same way:
  * prefill: one forward over a `--prompt`-token prompt from an empty cache, logits of the
    last position only (best of 2);
  * decode: tokens/s of `--decode` single-token steps after a 32-token prompt (batch 1),
    best of 5;
  * 8-way: aggregate tokens/s of `--ways` sequences decoding together (transformers only:
    llama-cpp-python's API decodes one sequence); 5 rounds alternating with batch 1, each
    rate the best of its rounds and the ratio the median of the rounds' own ratios.
Prints one markdown row per implementation and weight type (the table header comes from
`bench-engine`). Token ids are random; the weights are random too, so the text is noise
and only the speed means anything.
"""

import argparse
import os
import random
import time


def transformers_rows(args):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.hf, torch_dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size
    rng = random.Random(7)

    def ids(b, t):
        return torch.tensor([[rng.randrange(0, min(vocab, 151643)) for _ in range(t)] for _ in range(b)])

    with torch.inference_mode():
        best = None
        for _ in range(2):
            x = ids(1, args.prompt)
            t0 = time.perf_counter()
            model(input_ids=x, use_cache=True, logits_to_keep=1)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        prefill = args.prompt / best

        def decode(b):
            out = model(input_ids=ids(b, 32), use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            t0 = time.perf_counter()
            for _ in range(args.decode):
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            return b * args.decode / (time.perf_counter() - t0)

        # Batch 1 and N-way alternate as bench-engine measures them: best rates, and the
        # median of each round's own ratio.
        d1 = dn = 0.0
        ratios = []
        for _ in range(5):
            one, many = decode(1), decode(args.ways)
            d1, dn = max(d1, one), max(dn, many)
            ratios.append(many / one)
        ratio = sorted(ratios)[len(ratios) // 2]
    return f"| PyTorch transformers {__import__('transformers').__version__} | f32 | {args.threads} | {prefill:.1f} | {d1:.2f} | {dn:.2f} | {ratio:.1f}x | | |"


def llama_row(path, label, args):
    from llama_cpp import Llama, __version__

    llm = Llama(
        model_path=path,
        n_ctx=args.prompt + 64,
        n_batch=args.prompt,
        n_ubatch=args.prompt,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    rng = random.Random(7)
    toks = lambda n: [rng.randrange(0, 151643) for _ in range(n)]
    best = None
    for _ in range(2):
        llm.reset()
        p = toks(args.prompt)
        t0 = time.perf_counter()
        llm.eval(p)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    prefill = args.prompt / best
    # Best of 5, as bench-engine measures its decode.
    d1 = 0.0
    for _ in range(5):
        llm.reset()
        llm.eval(toks(32))
        steps = toks(args.decode)
        t0 = time.perf_counter()
        for t in steps:
            llm.eval([t])
        d1 = max(d1, args.decode / (time.perf_counter() - t0))
    return f"| llama.cpp (llama-cpp-python {__version__}) | {label} | {args.threads} | {prefill:.1f} | {d1:.2f} | n/a | | | |"


def quantize_q8(src, dst):
    """llama.cpp's own quantizer: the Q8_0 file both engines load."""
    import ctypes
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize({src}) failed: {rc}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quantize", nargs=2, metavar=("F32_GGUF", "Q8_GGUF"), help="only write the Q8_0 file")
    ap.add_argument("--hf")
    ap.add_argument("--gguf")
    ap.add_argument("--q8")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--ways", type=int, default=8)
    args = ap.parse_args()
    if args.quantize:
        quantize_q8(*args.quantize)
        return
    if not args.hf:
        ap.error("--hf is required")
    print(transformers_rows(args), flush=True)
    if args.gguf:
        print(llama_row(args.gguf, "f32", args), flush=True)
    if args.q8:
        print(llama_row(args.q8, "Q8_0", args), flush=True)


if __name__ == "__main__":
    main()
