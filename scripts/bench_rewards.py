#!/usr/bin/env python3
"""Plain-Python baseline for the fc-rewards benchmark (json + jsonschema).

Scores the same completions as the Rust `score_bench` example with the same
four checks, the way a straightforward Python reward function would:

  parse     regex-split <tool_call> blocks (think block removed), json.loads
  schema    tool name offered + jsonschema Draft 2020-12 validation
            (validators compiled once per distinct schema, i.e. the *fast*
            Python variant)
  exec      mock runtime checks (known city, real ISO dates, non-empty lists,
            finite numbers) - lighter than the Rust mock executor, so the
            measured speed-up is conservative
  semantic  normalized argument comparison (numbers by value, strings
            trimmed/case-insensitive, schema defaults), multiset matching,
            F1 partial credit

`--naive` uses `jsonschema.validate(args, schema)` per call instead (the
common way reward functions are written; it re-checks and recompiles the
schema every time).

Usage:
  cargo run --release -p fc-rewards --example score_bench -- 500 /tmp/fc_reward_bench.jsonl
  python3 scripts/bench_rewards.py /tmp/fc_reward_bench.jsonl [REPS] [--naive]

Prints completions/second on one core and the mean reward (compare with the
Rust line).
"""

import datetime
import json
import math
import re
import sys
import time
from collections import Counter

import jsonschema

BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)
THINK = re.compile(r"^.*?</think>", re.S)
CITIES = {
    c.lower()
    for c in [
        "Paris", "London", "New York", "Tokyo", "Berlin", "Madrid", "Rome", "Sydney", "Toronto",
        "Chicago", "San Francisco", "Los Angeles", "Mumbai", "Beijing", "Shanghai", "Seoul",
        "Singapore", "Dubai", "Cairo", "Nairobi", "São Paulo", "Mexico City", "Buenos Aires",
        "Amsterdam", "Vienna", "Prague", "Istanbul", "Bangkok", "Lisbon", "Stockholm", "Zurich",
        "Boston", "Seattle", "Miami", "Vancouver", "Barcelona", "Munich", "Lyon", "Osaka", "Cape Town",
    ]
}
CITY_KEYS = {"city", "origin", "destination", "city_a", "city_b", "shipping_city"}

_validators = {}
NAIVE = False  # set by --naive: jsonschema.validate() per call, no caching


def schema_ok(schema, args):
    if NAIVE:
        try:
            jsonschema.validate(args, schema, cls=jsonschema.Draft202012Validator)
            return True
        except jsonschema.ValidationError:
            return False
    return validator(schema).is_valid(args)


def validator(schema):
    key = json.dumps(schema, sort_keys=True)
    v = _validators.get(key)
    if v is None:
        v = jsonschema.Draft202012Validator(schema)
        _validators[key] = v
    return v


def parse(text):
    if "</think>" in text:
        text = THINK.sub("", text, count=1)
    blocks = BLOCK.findall(text)
    calls = []
    for b in blocks:
        try:
            o = json.loads(b)
            name = o["name"]
            args = o.get("arguments", o.get("parameters", {}))
            if args is None:
                args = {}
            if isinstance(args, str):
                args = json.loads(args)
            if not isinstance(name, str) or not name.strip() or not isinstance(args, dict):
                raise ValueError("bad call")
            calls.append((name, args))
        except Exception:
            pass
    content = BLOCK.sub("", text).strip()
    return len(blocks), calls, content


def mock_exec(name, args):
    for k, v in args.items():
        if k in CITY_KEYS and str(v).strip().lower() not in CITIES:
            raise ValueError("unknown city")
        if "date" in k or k in ("check_in", "check_out"):
            datetime.date.fromisoformat(str(v).strip())
        if isinstance(v, list) and not v:
            raise ValueError("empty list")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("not finite")
    return {"status": "ok", "tool": name}


def norm(v):
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return round(float(v), 6)
    if isinstance(v, str):
        return v.strip().lower()
    if isinstance(v, list):
        return tuple(norm(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, norm(x)) for k, x in v.items() if x is not None))
    return v


def call_key(name, args, props):
    full = {}
    for k, p in props.items():
        if isinstance(p, dict) and "default" in p:
            full[k] = p["default"]
    full.update({k: v for k, v in args.items() if v is not None})
    return (name, norm(full))


def score(sample, completion):
    expected = sample["expected"]
    tools = {t["name"]: t for t in sample["tools"]}
    nblocks, calls, content = parse(completion)
    if "text" in expected:
        ok = nblocks == 0
        ok_text = ok and bool(content)
        c = [float(ok_text), float(ok), float(ok), float(ok_text)]
        return sum(c) / 4.0
    if nblocks == 0:
        return 0.0
    parse_c = len(calls) / nblocks
    n_schema = n_exec = 0
    for name, args in calls:
        t = tools.get(name)
        if t is None:
            continue
        if not schema_ok(t["parameters"], args):
            continue
        n_schema += 1
        try:
            mock_exec(name, args)
            n_exec += 1
        except Exception:
            pass
    denom = max(nblocks, len(calls))
    exp_calls = expected["calls"]
    pred = Counter(
        call_key(n, a, tools.get(n, {}).get("parameters", {}).get("properties", {})) for n, a in calls
    )
    exp = Counter(
        call_key(c["name"], c["arguments"], tools.get(c["name"], {}).get("parameters", {}).get("properties", {}))
        for c in exp_calls
    )
    matched = sum((pred & exp).values())
    semantic = 2.0 * matched / (denom + len(exp_calls))
    return (parse_c + n_schema / denom + n_exec / denom + semantic) / 4.0


def main():
    global NAIVE
    args = [a for a in sys.argv[1:] if a != "--naive"]
    NAIVE = len(args) != len(sys.argv) - 1
    path = args[0] if args else "/tmp/fc_reward_bench.jsonl"
    reps = int(args[1]) if len(args) > 1 else 3
    with open(path, encoding="utf-8") as f:
        work = [json.loads(line) for line in f if line.strip()]
    total = sum(score(w["sample"], w["completion"]) for w in work)  # warm-up
    t0 = time.perf_counter()
    c0 = time.thread_time()
    for _ in range(reps):
        for w in work:
            total += score(w["sample"], w["completion"])
    el = time.perf_counter() - t0
    cpu = time.thread_time() - c0
    n = len(work) * reps
    print(
        f"python{' (naive: jsonschema.validate per call)' if NAIVE else ' (cached validators)'}: {n} completions in {el:.3f}s wall, {cpu:.3f}s cpu = {n / (cpu or el):.0f} completions/s/core "
        f"(mean reward {total / (n + len(work)):.4f})"
    )


if __name__ == "__main__":
    main()
