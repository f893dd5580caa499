#!/usr/bin/env python3
"""Expected BFCL verdicts for perturbed predictions, computed by BFCL's own checker.

Builds ~50 predictions from real BFCL v4 records (gold answers and targeted
perturbations: wrong name, missing required, unknown param, bool for int, int for
float, float for int, string case/punctuation variants, list order, dicts, parallel
order swap, wrong count, ...), renders each as Qwen3 tool-call text, decodes it the
way BFCL's Qwen function-calling handler does (regex + json.loads) and runs
`bfcl_eval.eval_checker.ast_eval.ast_checker.ast_checker` on it. The result is
written to shared/eval/tests/fixtures/bfcl_verdicts.json (self-contained: function
docs, ground truth, completion, verdict), which the Rust test
shared/eval/tests/bfcl_verdicts.rs replays through fc-eval's checker.

Usage: python3 scripts/eval/bfcl_verdicts.py [CACHE_DIR]
(fetches bfcl-eval from PyPI into CACHE_DIR via fetch_bfcl.py; default target/bfcl-cache)
"""

import copy
import json
import os
import re
import subprocess
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "shared", "eval", "tests", "fixtures", "bfcl_verdicts.json")
CATS = ["simple_python", "multiple", "parallel", "parallel_multiple"]


def load_checker(cache):
    data = subprocess.run([sys.executable, os.path.join(HERE, "fetch_bfcl.py"), cache],
                          check=True, capture_output=True, text=True).stdout.strip()
    pkgs = [d for d in os.listdir(cache) if d.startswith("bfcl_eval-") and os.path.isdir(os.path.join(cache, d))]
    sys.path.insert(0, os.path.join(cache, sorted(pkgs)[-1]))
    # model_config imports every model handler (openai, anthropic, ...); the checker
    # only uses it to decide whether "." in names is rewritten to "_" (not for Qwen FC).
    stub = types.ModuleType("bfcl_eval.constants.model_config")

    class Cfg:
        underscore_to_dot = False

    class Mapping(dict):
        def __missing__(self, key):
            return Cfg()

    stub.MODEL_CONFIG_MAPPING = Mapping()
    sys.modules["bfcl_eval.constants.model_config"] = stub
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    return data, ast_checker, Language


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def render(calls):
    return "\n".join(
        "<tool_call>\n" + json.dumps({"name": n, "arguments": a}, ensure_ascii=False) + "\n</tool_call>"
        for n, a in calls
    )


def decode(text):
    # BFCL's QwenFCHandler._extract_tool_calls + decode_ast.
    out = []
    for m in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text, re.DOTALL):
        try:
            out.append(json.loads(m))
        except Exception:
            pass
    return [{c["name"]: {k: v for k, v in c["arguments"].items()}} for c in out]


def doc_of(q, name):
    return next(f for f in q["function"] if f["name"] == name)


def reference(q, gt):
    calls = []
    for g in gt["ground_truth"]:
        (name, allowed), = g.items()
        req = doc_of(q, name)["parameters"].get("required", [])
        args = {}
        for k, vals in allowed.items():
            if "" in vals and k not in req:
                continue
            first = next((v for v in vals if v != ""), None)
            if first is not None:
                args[k] = first
        calls.append((name, args))
    return calls


def ptype(q, name, param):
    return doc_of(q, name)["parameters"]["properties"].get(param, {}).get("type")


def main():
    cache = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "bfcl-cache"))
    data, ast_checker, Language = load_checker(cache)
    sets = {}
    for c in CATS:
        qs = read_jsonl(os.path.join(data, f"BFCL_v4_{c}.json"))
        gts = {g["id"]: g for g in read_jsonl(os.path.join(data, "possible_answer", f"BFCL_v4_{c}.json"))}
        sets[c] = [(q, gts[q["id"]]) for q in qs if q["id"] in gts]

    cases = []

    def strip(node):
        # Descriptions do not influence the checker; dropping them keeps the fixture small.
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    def add(label, cat, q, gt, completion):
        q = dict(q, function=strip(q["function"]))
        decoded = decode(completion)
        r = ast_checker(q["function"], decoded, gt["ground_truth"], Language.PYTHON, cat, "Qwen_Qwen3-8B-FC")
        cases.append({
            "label": label,
            "category": cat,
            "question": q,
            "ground_truth": gt,
            "completion": completion,
            "valid": bool(r["valid"]),
            "error_type": None if r["valid"] else r.get("error_type"),
        })

    def first(cat, pred, n=1):
        """First n (q, gt, calls, name, param) where pred(q, name, param, allowed, args) holds."""
        found = []
        for q, gt in sets[cat]:
            calls = reference(q, gt)
            name, args = calls[0]
            (_, allowed), = gt["ground_truth"][0].items()
            for p in doc_of(q, name)["parameters"]["properties"]:
                if pred(q, name, p, allowed.get(p), args):
                    found.append((q, gt, calls, name, p))
                    break
            if len(found) == n:
                break
        return found

    def perturb(label, cat, pred, fn, n=1):
        for q, gt, calls, name, p in first(cat, pred, n):
            calls = copy.deepcopy(calls)
            fn(q, calls[0][1], p, gt["ground_truth"][0][name])
            add(label, cat, q, gt, render(calls))

    # Gold answers (must be valid).
    for cat in CATS:
        for q, gt in sets[cat][:3]:
            add("gold", cat, q, gt, render(reference(q, gt)))
        q, gt = sets[cat][5]
        add("gold_with_think", cat, q, gt, "<think>\nLet me call the tool.\n</think>\n\n" + render(reference(q, gt)))

    s = "simple_python"
    q, gt = sets[s][0]
    ref = reference(q, gt)
    add("wrong_name", s, q, gt, render([(ref[0][0] + "_v2", ref[0][1])]))
    add("no_call", s, q, gt, "I cannot help with that.")
    add("malformed_json", s, q, gt, "<tool_call>\n{\"name\": \"" + ref[0][0] + "\", \"arguments\": {\n</tool_call>")
    add("duplicated_call", s, q, gt, render(ref + ref))

    has = lambda t: (lambda q, n, p, a, args: ptype(q, n, p) == t and p in args)
    req = lambda q, n, p, a, args: p in doc_of(q, n)["parameters"].get("required", []) and p in args

    perturb("missing_required", s, req, lambda q, a, p, g: a.pop(p), 2)
    perturb("unknown_param", s, req, lambda q, a, p, g: a.__setitem__("unknown_param_x", "1"), 2)
    perturb("declared_not_in_ground_truth", s,
            lambda q, n, p, a, args: a is None,
            lambda q, a, p, g: a.__setitem__(p, "x"), 2)
    perturb("bool_for_int", s, has("integer"), lambda q, a, p, g: a.__setitem__(p, True), 2)
    perturb("int_for_bool", s, has("boolean"), lambda q, a, p, g: a.__setitem__(p, 1 if a[p] else 0), 2)
    perturb("float_for_int", s, has("integer"), lambda q, a, p, g: a.__setitem__(p, float(a[p])), 2)
    perturb("string_for_int", s, has("integer"), lambda q, a, p, g: a.__setitem__(p, str(a[p])))
    perturb("null_for_int", s, has("integer"), lambda q, a, p, g: a.__setitem__(p, None))
    perturb("int_for_float_whole", s,
            lambda q, n, p, a, args: ptype(q, n, p) == "float" and p in args and isinstance(args[p], (int, float)) and float(args[p]).is_integer(),
            lambda q, a, p, g: a.__setitem__(p, int(a[p])), 2)
    perturb("int_for_float_wrong", s,
            lambda q, n, p, a, args: ptype(q, n, p) == "float" and p in args and isinstance(args[p], (int, float)),
            lambda q, a, p, g: a.__setitem__(p, int(a[p]) + 7))
    perturb("float_value_off", s,
            lambda q, n, p, a, args: ptype(q, n, p) == "float" and p in args and isinstance(args[p], float),
            lambda q, a, p, g: a.__setitem__(p, a[p] + 0.5))
    isstr = lambda q, n, p, a, args: ptype(q, n, p) == "string" and isinstance(args.get(p), str) and " " in args[p]
    perturb("string_upper", s, isstr, lambda q, a, p, g: a.__setitem__(p, a[p].upper()), 2)
    perturb("string_punctuation", s, isstr,
            lambda q, a, p, g: a.__setitem__(p, a[p].replace(" ", "_") + "."), 2)
    perturb("string_extra_word", s, isstr, lambda q, a, p, g: a.__setitem__(p, a[p] + " please"), 2)
    perturb("string_single_quotes", s, isstr, lambda q, a, p, g: a.__setitem__(p, "'" + a[p] + "'"))
    perturb("string_other_punct_kept", s, isstr, lambda q, a, p, g: a.__setitem__(p, a[p] + "!"))
    perturb("second_allowed_value", s,
            lambda q, n, p, a, args: a is not None and len([v for v in a if v != ""]) >= 2,
            lambda q, a, p, g: a.__setitem__(p, [v for v in g[p] if v != ""][1]), 2)
    perturb("optional_omitted", s,
            lambda q, n, p, a, args: a is not None and "" in a and len(a) > 1,
            lambda q, a, p, g: a.__setitem__(p, [v for v in g[p] if v != ""][0]))
    perturb("missing_optional_not_allowed", s,
            lambda q, n, p, a, args: a is not None and "" not in a and p in args
            and p not in doc_of(q, n)["parameters"].get("required", []),
            lambda q, a, p, g: a.pop(p), 2)
    islist = lambda q, n, p, a, args: isinstance(args.get(p), list) and len(set(map(json.dumps, args[p]))) >= 2
    perturb("list_reversed", s, islist, lambda q, a, p, g: a[p].reverse(), 2)
    perturb("list_truncated", s, islist, lambda q, a, p, g: a[p].pop())
    perturb("list_strings_upper", s,
            lambda q, n, p, a, args: isinstance(args.get(p), list) and args[p] and all(isinstance(x, str) for x in args[p]),
            lambda q, a, p, g: a.__setitem__(p, [x.upper() + " " for x in a[p]]))
    perturb("list_items_as_strings", s,
            lambda q, n, p, a, args: isinstance(args.get(p), list) and args[p] and all(type(x) is int for x in args[p]),
            lambda q, a, p, g: a.__setitem__(p, [str(x) for x in a[p]]))
    isdict = lambda q, n, p, a, args: isinstance(args.get(p), dict) and args[p]
    perturb("dict_gold_value_case", s, isdict,
            lambda q, a, p, g: a.__setitem__(p, {k: (v.upper() if isinstance(v, str) else v) for k, v in a[p].items()}))
    perturb("dict_extra_key", s, isdict, lambda q, a, p, g: a[p].__setitem__("zz_extra", 1))
    perturb("dict_missing_key", s, isdict, lambda q, a, p, g: a[p].pop(next(iter(a[p]))))

    m = "multiple"
    q, gt = sets[m][0]
    ref = reference(q, gt)
    other = next(f["name"] for f in q["function"] if f["name"] != ref[0][0])
    add("other_offered_function", m, q, gt, render([(other, ref[0][1])]))
    add("two_calls_for_one", m, q, gt, render(ref + ref))
    perturb("bool_for_int", m, has("integer"), lambda q, a, p, g: a.__setitem__(p, True))

    for cat in ["parallel", "parallel_multiple"]:
        picked = [(q, gt) for q, gt in sets[cat] if len(gt["ground_truth"]) >= 2][:2]
        for q, gt in picked:
            ref = reference(q, gt)
            add("order_swapped", cat, q, gt, render(list(reversed(ref))))
            add("one_call_missing", cat, q, gt, render(ref[:-1]))
            add("one_call_extra", cat, q, gt, render(ref + ref[:1]))
        q, gt = picked[0]
        ref = copy.deepcopy(reference(q, gt))
        ref[-1][1]["unknown_param_x"] = 1
        add("last_call_unknown_param", cat, q, gt, render(ref))

    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
        f.write("\n")
    valid = sum(c["valid"] for c in cases)
    print(f"wrote {len(cases)} cases ({valid} valid) to {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
