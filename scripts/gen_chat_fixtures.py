#!/usr/bin/env python3
"""Generate golden chat-template fixtures for the fc-chat crate.

Each case is an OpenAI-style chat request. It is normalized the way vLLM prepares messages
for `apply_chat_template` (null content -> "", text parts joined with "\\n", tool-call
`arguments` given as JSON strings parsed to objects, empty arguments -> {}), rendered with
Hugging Face transformers' own `apply_chat_template`, and tokenized without adding special
tokens. The Rust tests (shared/chat/tests/golden.rs) must reproduce `text` and `token_ids`
byte for byte.

Usage (needs `pip install transformers`; torch is not required):

    python3 scripts/gen_chat_fixtures.py [--tokenizer ../shared/qwen3-tokenizer] [--out tests/fixtures/chat]

Output is deterministic: same transformers version and tokenizer -> identical files.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
            },
            "required": ["city"],
        },
    },
}

SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search_flights",
        "description": "Search flights between two airports.",
        "parameters": {
            "type": "object",
            "properties": {
                "origin": {"type": "string"},
                "destination": {"type": "string"},
                "max_price": {"type": "number", "minimum": 0.5, "maximum": 10000.0},
                "passengers": {"type": "integer", "minimum": 1},
                "filters": {
                    "type": "object",
                    "properties": {"nonstop": {"type": "boolean"}, "airlines": {"type": "array", "items": {"type": "string"}}},
                },
            },
            "required": ["origin", "destination"],
        },
    },
}

# Schema keys deliberately not in alphabetical order, plus a tool without description.
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def call(cid, name, arguments):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


CASES = {
    "plain_user": {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
    "system_prompt": {
        "messages": [
            {"role": "system", "content": "You are a concise assistant.\nAnswer in one sentence."},
            {"role": "user", "content": "  Why is the sky blue?  "},
        ]
    },
    "tools_single_call": {
        "model": "qwen3",
        "temperature": 0.2,
        "tools": [WEATHER_TOOL, TIME_TOOL],
        "messages": [
            {"role": "system", "content": "You help with travel."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call("call_1", "get_weather", "{\"city\": \"Paris\"}")]},
        ],
        "add_generation_prompt": False,
    },
    "parallel_calls": {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Compare the weather in Paris and Tokyo."},
            {
                "role": "assistant",
                "content": "I'll check both cities.",
                "tool_calls": [
                    call("call_a", "get_weather", "{\"city\":\"Paris\",\"unit\":\"celsius\"}"),
                    call("call_b", "get_weather", "{\"city\": \"Tokyo\"}"),
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp\": 18, \"sky\": \"cloudy\"}"},
            {"role": "tool", "tool_call_id": "call_b", "content": "{\"temp\": 25, \"sky\": \"clear\"}"},
        ],
    },
    "tool_multi_turn": {
        "tools": [WEATHER_TOOL, SEARCH_TOOL],
        "messages": [
            {"role": "system", "content": "Be helpful."},
            {"role": "user", "content": "Weather in Rome?"},
            {"role": "assistant", "content": "", "tool_calls": [call("c1", "get_weather", {"city": "Rome"})]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny, 24C"},
            {"role": "assistant", "content": "It is sunny and 24C in Rome."},
            {"role": "user", "content": "Find me a flight from JFK to FCO for 2 people under 900."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    call("c2", "search_flights", "{\"origin\": \"JFK\", \"destination\": \"FCO\", \"passengers\": 2, \"max_price\": 900}")
                ],
            },
            {"role": "tool", "tool_call_id": "c2", "content": "[{\"flight\": \"AZ611\", \"price\": 845.5}]"},
        ],
    },
    "multi_turn_no_tools": {
        "messages": [
            {"role": "system", "content": "You are a math tutor."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And times 3?"},
            {"role": "assistant", "content": "12"},
            {"role": "user", "content": "Thanks!"},
        ]
    },
    "thinking_in_content": {
        "messages": [
            {"role": "user", "content": "Is 91 prime?"},
            {"role": "assistant", "content": "<think>\n91 = 7 * 13.\n</think>\n\nNo, 91 = 7 x 13."},
            {"role": "user", "content": "And 97?"},
            {"role": "assistant", "content": "<think>\nCheck divisors up to 9.\n</think>\n\nYes, 97 is prime."},
        ],
        "add_generation_prompt": False,
    },
    "reasoning_content_field": {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Should I take an umbrella in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "\nNeed the forecast for Oslo.\n",
                "tool_calls": [call("c1", "get_weather", "{\"city\": \"Oslo\"}")],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "rain, 9C"},
        ],
        "enable_thinking": True,
    },
    "enable_thinking_false": {
        "messages": [{"role": "user", "content": "Say hi."}],
        "chat_template_kwargs": {"enable_thinking": False},
    },
    "non_ascii": {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "translate",
                    "description": "翻译文本 — traduit le texte 🌍",
                    "parameters": {"type": "object", "properties": {"text": {"type": "string", "description": "要翻译的文本"}, "to": {"type": "string"}}},
                },
            }
        ],
        "messages": [
            {"role": "system", "content": "Tu es un assistant très utile. 你好！"},
            {"role": "user", "content": "把“早上好 ☀️”翻译成法语 🇫🇷, s'il vous plaît — naïve café"},
            {"role": "assistant", "content": None, "tool_calls": [call("t1", "translate", "{\"text\": \"早上好 ☀️\", \"to\": \"français\"}")]},
            {"role": "tool", "tool_call_id": "t1", "content": "Bonjour ☀️ (señor, Zürich, Ελληνικά) 😀👍🏽"},
        ],
    },
    "arguments_string_vs_object": {
        "tools": [SEARCH_TOOL],
        "messages": [
            {"role": "user", "content": "Two searches please."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    call("s1", "search_flights", "{\"origin\": \"SFO\", \"destination\": \"LAX\", \"max_price\": 120.0}"),
                    call("s2", "search_flights", {"origin": "SFO", "destination": "LAX", "max_price": 120.0}),
                    call("s3", "get_time", ""),
                    call("s4", "get_time", None),
                ],
            },
        ],
        "add_generation_prompt": False,
    },
    "nested_args_key_order": {
        "tools": [SEARCH_TOOL],
        "messages": [
            {"role": "user", "content": "Complex search."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    call(
                        "n1",
                        "search_flights",
                        "{\"origin\": \"BOS\", \"destination\": \"SEA\", \"filters\": {\"nonstop\": true, \"airlines\": [\"AS\", \"DL\"], \"zeta\": null, \"alpha\": {\"z\": 1, \"a\": [1.5, -2, 0.000001, 1e21, 3.0]}}, \"passengers\": 1, \"note\": \"line1\\nline2 \\\"quoted\\\" \\\\ back\\tslash\\u0001 <tag> & é\"}",
                    )
                ],
            },
            {"role": "tool", "tool_call_id": "n1", "content": "no flights"},
        ],
    },
    "content_parts": {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "System part one."}, {"type": "text", "text": "Part two."}]},
            {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]},
        ]
    },
    "no_generation_prompt": {
        "messages": [
            {"role": "user", "content": "Tell me a joke."},
            {"role": "assistant", "content": "Why did the function call fail? It lost its arguments."},
        ],
        "add_generation_prompt": False,
    },
}


TRICKY_FLOATS = [0.1, 0.30000000000000004, 1e16, 1e-05, 0.0001, -0.0, 5e-324, 1.7976931348623157e308, 123456789.125, 2.5, 100.0]
TRICKY_STRINGS = ["", " ", "a\"b", "back\\slash", "tab\tnew\nline", "\u0000\u001f\u007f", "</think>", "<tool_call>", "{\"json\": 1}",
                  "日本語", "emoji 😀👍🏽🇫🇷", "Ελληνικά", "naïve café", "\u2028\u2029", "  padded  ", "<|im_end|> literal"]


def random_value(rng, depth):
    kind = rng.randrange(8 if depth > 0 else 6)
    if kind == 0:
        return rng.choice([True, False, None])
    if kind == 1:
        return rng.choice([0, -1, 7, 2**31, -(2**53), 2**63 - 1])
    if kind == 2:
        return rng.choice(TRICKY_FLOATS)
    if kind in (3, 4, 5):
        return rng.choice(TRICKY_STRINGS)
    if kind == 6:
        return [random_value(rng, depth - 1) for _ in range(rng.randrange(4))]
    return random_object(rng, depth - 1)


def random_object(rng, depth):
    keys = ["zeta", "alpha", "Mid", "_k", "ключ", "键", "b2", "a1", "x y"]
    rng.shuffle(keys)
    return {k: random_value(rng, depth) for k in keys[: rng.randrange(5)]}


def random_case(seed):
    """A random conversation: exercises message-order logic and tojson formatting."""
    rng = __import__("random").Random(seed)
    tools = [WEATHER_TOOL, SEARCH_TOOL, {"type": "function", "function": {"name": "t%d" % seed, "description": rng.choice(TRICKY_STRINGS), "parameters": random_object(rng, 2)}}]
    messages = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": rng.choice(TRICKY_STRINGS) + " system"})
    n_call = 0
    for turn in range(rng.randrange(1, 4)):
        messages.append({"role": "user", "content": rng.choice(TRICKY_STRINGS) + " question %d" % turn})
        for _ in range(rng.randrange(0, 3)):
            calls = []
            for _ in range(rng.randrange(1, 3)):
                n_call += 1
                args = random_object(rng, 2)
                calls.append(call("r%d" % n_call, rng.choice(["get_weather", "search_flights"]), json.dumps(args) if rng.random() < 0.5 else args))
            msg = {"role": "assistant", "content": rng.choice([None, "", "Let me check.", "<think>\nhmm " + rng.choice(TRICKY_STRINGS) + "\n</think>\n\nOk."]), "tool_calls": calls}
            if rng.random() < 0.3:
                msg["reasoning_content"] = rng.choice(TRICKY_STRINGS)
            messages.append(msg)
            for c in calls:
                messages.append({"role": "tool", "tool_call_id": c["id"], "content": json.dumps(random_value(rng, 1), ensure_ascii=rng.random() < 0.5)})
        if rng.random() < 0.7:
            messages.append({"role": "assistant", "content": rng.choice(["Done.", "<think>\nr\n</think>\n\nDone " + rng.choice(TRICKY_STRINGS), "\n\nLeading newlines"])})
    req = {"tools": tools if rng.random() < 0.8 else [], "messages": messages}
    flag = rng.randrange(3)
    if flag == 1:
        req["enable_thinking"] = False
    elif flag == 2:
        req["add_generation_prompt"] = False
    return req


for _seed in range(6):
    CASES["random_%02d" % _seed] = random_case(_seed)


def normalize_messages(messages):
    """vLLM's preprocessing of OpenAI messages for string-content chat templates."""
    out = []
    for m in messages:
        content = m.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            text = "\n".join(p["text"] for p in content)
        msg = {"role": m["role"], "content": text}
        if m.get("reasoning_content") is not None:
            msg["reasoning_content"] = m["reasoning_content"]
        if m.get("tool_calls") is not None:
            calls = []
            for tc in m["tool_calls"]:
                args = tc["function"].get("arguments")
                if not args:
                    args = {}
                elif isinstance(args, str):
                    args = json.loads(args)
                calls.append({"id": tc.get("id"), "type": tc.get("type", "function"), "function": {"name": tc["function"]["name"], "arguments": args}})
            msg["tool_calls"] = calls
        if m.get("tool_call_id") is not None:
            msg["tool_call_id"] = m["tool_call_id"]
        if m.get("name") is not None:
            msg["name"] = m["name"]
        out.append(msg)
    return out


def render(tok, req):
    kwargs = dict(req.get("chat_template_kwargs") or {})
    if "enable_thinking" in req:
        kwargs["enable_thinking"] = req["enable_thinking"]
    text = tok.apply_chat_template(
        normalize_messages(req["messages"]),
        tools=req.get("tools"),
        add_generation_prompt=req.get("add_generation_prompt", True),
        tokenize=False,
        **kwargs,
    )
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text, "decode(encode(text)) must round-trip"
    return text, ids


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "..", "shared", "qwen3-tokenizer"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "chat"))
    args = ap.parse_args()

    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    os.makedirs(args.out, exist_ok=True)
    for name, req in CASES.items():
        text, ids = render(tok, req)
        body = (
            "{\n"
            f' "generator": {json.dumps("transformers " + transformers.__version__)},\n'
            f' "request": {json.dumps(req, ensure_ascii=False, indent=1)},\n'
            f' "text": {json.dumps(text, ensure_ascii=False)},\n'
            f' "token_ids": {json.dumps(ids)}\n'
            "}\n"
        )
        with open(os.path.join(args.out, f"{name}.json"), "w", encoding="utf-8") as f:
            f.write(body)
        print(f"{name}: {len(ids)} tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
