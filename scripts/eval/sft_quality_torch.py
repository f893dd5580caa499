#!/usr/bin/env python3
"""PyTorch peer of `fcmesh sft` on the same data, same initial weights and same recipe.

Trains a model dir (e.g. a fresh `fcmesh init-model` tiny preset) on an ingested dataset
dir (`train.jsonl` from `fcmesh ingest`) with transformers' Qwen3 and AdamW, then saves an
HF model dir that `fcmesh eval --model` scores like our own output. It answers one
question: is a quality gap ours (trainer) or the data's (task difficulty)?

The conversation is rendered by the tokenizer's own chat template, as our trainer does
(tools in the system prompt, the expected calls as the assistant's tool_calls, the fixed
no-call reply for abstentions). Loss: all tokens, prompt tokens weighted by
--prompt-loss-weight (our `prompt_loss_weight`), mean over the step's weighted targets.

    python3 scripts/eval/sft_quality_torch.py --model MODEL --data DATA --out OUT --steps 600
"""
import argparse
import json
import math
import random
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

NO_CALL_REPLY = "None of the available tools can help with this request."


def conversation(rec):
    msgs = [dict(m) for m in rec["messages"]]
    exp = rec.get("expected") or {}
    calls = exp.get("calls")
    if calls:
        msgs.append({"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]})
    elif exp.get("text"):
        msgs.append({"role": "assistant", "content": exp["text"]})
    else:
        msgs.append({"role": "assistant", "content": NO_CALL_REPLY})
    tools = [{"type": "function", "function": t} for t in rec.get("tools", [])]
    return msgs, tools


def encode(tok, rec, cutoff):
    msgs, tools = conversation(rec)
    prompt = tok.apply_chat_template(msgs[:-1], tools=tools or None, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(msgs, tools=tools or None, tokenize=False)
    ids = tok(full, add_special_tokens=False)["input_ids"][:cutoff]
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    return ids, n_prompt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="dir with train.jsonl (fcmesh ingest output)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup-ratio", type=float, default=0.03)
    ap.add_argument("--prompt-loss-weight", type=float, default=1.0)
    ap.add_argument("--cutoff", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    model.train()
    recs = [json.loads(line) for line in open(f"{args.data}/train.jsonl")]
    examples = [encode(tok, r, args.cutoff) for r in recs]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    warm = math.ceil(args.warmup_ratio * args.steps)

    def lr_at(step):
        if step < warm:
            return args.lr * step / max(warm, 1)
        p = (step - warm) / max(args.steps - warm, 1)
        return args.lr * 0.5 * (1 + math.cos(math.pi * p))

    rng = random.Random(args.seed)
    order = []
    t0 = time.time()
    tokens = 0
    for step in range(args.steps):
        if len(order) < args.batch:
            order = list(range(len(examples)))
            rng.shuffle(order)
        idx, order = order[: args.batch], order[args.batch:]
        batch = [examples[i] for i in idx]
        t = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), t), pad, dtype=torch.long)
        att = torch.zeros((len(batch), t), dtype=torch.long)
        w = torch.zeros((len(batch), t - 1))
        for r, (x, n_prompt) in enumerate(batch):
            ids[r, : len(x)] = torch.tensor(x)
            att[r, : len(x)] = 1
            for p in range(len(x) - 1):
                w[r, p] = 1.0 if p + 1 >= n_prompt else args.prompt_loss_weight
            tokens += len(x)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        loss = (nll * w.reshape(-1)).sum() / w.sum().clamp(min=1.0)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(json.dumps({"step": step, "loss": round(loss.item(), 4), "tok_s": round(tokens / (time.time() - t0))}), flush=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    print(json.dumps({"steps": args.steps, "seconds": round(time.time() - t0, 1), "tokens": tokens}))


if __name__ == "__main__":
    main()
