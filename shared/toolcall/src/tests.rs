use super::*;
use serde_json::json;

fn call(name: &str, args: Value) -> ToolCall {
    ToolCall::new(name, args)
}

#[test]
fn single_call_with_surrounding_text() {
    let out = parse(
        "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\nDone.",
    );
    assert_eq!(out.content, "Let me check.\n\nDone.");
    assert_eq!(
        out.calls,
        vec![call("get_weather", json!({"city": "Paris"}))]
    );
    assert_eq!(out.blocks, 1);
    assert!(out.errors.is_empty());
    assert_eq!(out.reasoning, None);
}

#[test]
fn plain_text_has_no_calls() {
    let out = parse("  Hello there!  ");
    assert_eq!(out.content, "Hello there!");
    assert!(out.calls.is_empty());
    assert_eq!(out.blocks, 0);
}

#[test]
fn parallel_calls_keep_order() {
    let text = "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>";
    let out = parse(text);
    assert_eq!(
        out.calls,
        vec![call("a", json!({"x": 1})), call("b", json!({}))]
    );
    assert_eq!(out.content, "");
    assert_eq!(out.blocks, 2);
}

#[test]
fn missing_final_close_tag_is_accepted() {
    let out = parse("<tool_call>\n{\"name\": \"a\", \"arguments\": {\"q\": \"x\"}}\n");
    assert_eq!(out.calls, vec![call("a", json!({"q": "x"}))]);
    assert!(out.errors.is_empty());
}

#[test]
fn open_tag_inside_unclosed_block_starts_a_new_block() {
    let out = parse("<tool_call>{\"name\": \"a\"}\n<tool_call>{\"name\": \"b\"}</tool_call>");
    assert_eq!(out.calls, vec![call("a", json!({})), call("b", json!({}))]);
}

#[test]
fn think_block_is_reasoning_and_its_calls_are_ignored() {
    let text = "<think>\nI could call <tool_call>{\"name\": \"bad\"}</tool_call> here.\n</think>\n\nAnswer.\n<tool_call>\n{\"name\": \"good\", \"arguments\": {}}\n</tool_call>";
    let out = parse(text);
    assert_eq!(
        out.reasoning.as_deref(),
        Some("I could call <tool_call>{\"name\": \"bad\"}</tool_call> here.")
    );
    assert_eq!(out.content, "Answer.");
    assert_eq!(out.calls, vec![call("good", json!({}))]);
    assert_eq!(out.blocks, 1);
}

#[test]
fn stray_think_close_means_prompt_opened_reasoning() {
    let out = parse("reasoning here\n</think>\n\nfinal <tool_call>{\"name\": \"f\", \"arguments\": {\"a\": [1]}}</tool_call>");
    assert_eq!(out.reasoning.as_deref(), Some("reasoning here"));
    assert_eq!(out.content, "final");
    assert_eq!(out.calls, vec![call("f", json!({"a": [1]}))]);
}

#[test]
fn think_close_after_a_call_is_text() {
    let out = parse("<tool_call>{\"name\": \"f\"}</tool_call> then </think> x");
    assert_eq!(out.reasoning, None);
    assert_eq!(out.content, "then </think> x");
    assert_eq!(out.calls.len(), 1);
}

#[test]
fn unclosed_think_is_all_reasoning() {
    let out = parse("<think>\nstill thinking <tool_call>{\"name\": \"x\"}");
    assert_eq!(
        out.reasoning.as_deref(),
        Some("still thinking <tool_call>{\"name\": \"x\"}")
    );
    assert!(out.calls.is_empty());
    assert_eq!(out.blocks, 0);
    assert_eq!(out.content, "");
}

#[test]
fn empty_think_block_is_present_but_empty() {
    let out = parse("<think>\n\n</think>\n\nHi");
    assert_eq!(out.reasoning.as_deref(), Some(""));
    assert_eq!(out.content, "Hi");
}

#[test]
fn malformed_block_does_not_discard_valid_ones() {
    let text = "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {\"y\": 2}}\n</tool_call>\n<tool_call>\n{\"arguments\": {}}\n</tool_call>";
    let out = parse(text);
    assert_eq!(out.calls, vec![call("b", json!({"y": 2}))]);
    assert_eq!(out.blocks, 3);
    assert_eq!(out.errors.len(), 2);
    assert_eq!(out.errors[0].index, 0);
    assert!(
        out.errors[0].reason.starts_with("invalid JSON"),
        "{}",
        out.errors[0].reason
    );
    assert_eq!(
        out.errors[0].raw,
        "\n{\"name\": \"a\", \"arguments\": {\"x\": 1}\n"
    );
    assert_eq!(out.errors[1].index, 2);
    assert_eq!(out.errors[1].reason, CallError::MissingName.to_string());
}

#[test]
fn error_kinds() {
    assert_eq!(parse_call_json("  "), Err(CallError::Empty));
    assert_eq!(parse_call_json("[1]"), Err(CallError::NotAnObject));
    assert_eq!(parse_call_json("{\"name\": 3}"), Err(CallError::BadName));
    assert_eq!(parse_call_json("{\"name\": \"\"}"), Err(CallError::BadName));
    assert_eq!(
        parse_call_json("{\"name\": \"f\", \"arguments\": [1]}"),
        Err(CallError::ArgumentsNotObject)
    );
    assert_eq!(
        parse_call_json("{\"name\": \"f\", \"arguments\": \"[1]\"}"),
        Err(CallError::ArgumentsNotObject)
    );
    assert!(matches!(
        parse_call_json("{\"name\": \"f\", \"arguments\": \"{nope\"}"),
        Err(CallError::ArgumentsInvalidJson(_))
    ));
    assert_eq!(
        parse_call_json("{\"name\": \"f\"} extra"),
        Err(CallError::TrailingText)
    );
}

#[test]
fn arguments_as_string_alias_and_missing() {
    assert_eq!(
        parse_call_json("{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}"),
        Ok(call("f", json!({"a": 1})))
    );
    assert_eq!(
        parse_call_json("{\"name\": \"f\", \"parameters\": {\"b\": true}}"),
        Ok(call("f", json!({"b": true})))
    );
    assert_eq!(
        parse_call_json("{\"name\": \"f\"}"),
        Ok(call("f", json!({})))
    );
    assert_eq!(
        parse_call_json("{\"name\": \"f\", \"arguments\": null}"),
        Ok(call("f", json!({})))
    );
    assert_eq!(
        parse_call_json("{\"name\": \"f\", \"arguments\": \"\"}"),
        Ok(call("f", json!({})))
    );
    assert_eq!(
        parse_call_json(
            "{\"type\": \"function\", \"function\": {\"name\": \"g\", \"arguments\": \"{}\"}}"
        ),
        Ok(call("g", json!({})))
    );
}

#[test]
fn arguments_json_is_compact_and_keeps_order() {
    let c = parse_call_json(
        "{\"name\": \"f\", \"arguments\": {\"z\": 1, \"a\": {\"y\": [1, 2.5], \"b\": \"é\"}}}",
    )
    .expect("valid");
    assert_eq!(
        c.arguments_json(),
        "{\"z\":1,\"a\":{\"y\":[1,2.5],\"b\":\"é\"}}"
    );
    assert_eq!(call("f", json!({})).arguments_json(), "{}");
}

#[test]
fn render_matches_qwen3_template_format() {
    let calls = vec![
        call(
            "get_weather",
            serde_json::from_str(
                r#"{"city": "Paris", "days": 3, "opts": {"unit": "C", "a": 1.0}}"#,
            )
            .expect("json"),
        ),
        call("noop", json!({})),
    ];
    assert_eq!(
        render_calls(&calls),
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3, \"opts\": {\"unit\": \"C\", \"a\": 1.0}}}\n</tool_call>\n<tool_call>\n{\"name\": \"noop\", \"arguments\": {}}\n</tool_call>"
    );
    assert_eq!(render_calls(&[]), "");
    // Round trip.
    assert_eq!(parse(&render_calls(&calls)).calls, calls);
}

fn stream_all(parts: &[&str], mut p: StreamParser) -> Vec<StreamEvent> {
    let mut ev = Vec::new();
    for part in parts {
        ev.extend(p.push(part));
    }
    ev.extend(p.finish());
    ev
}

#[test]
fn stream_handles_split_tags_and_streams_args() {
    let parts = [
        "Hi",
        " <tool",
        "_call>\n{\"name\": \"ge",
        "t\", \"arguments\": {\"ci",
        "ty\": \"Pa",
        "ris\", \"n\": 1",
        "0}}\n</tool_",
        "call>",
    ];
    let ev = stream_all(&parts, StreamParser::new());
    assert_eq!(
        ev,
        vec![
            StreamEvent::Content("Hi".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                name: "get".into()
            },
            StreamEvent::ToolCallArgs {
                index: 0,
                delta: "{\"ci".into()
            },
            StreamEvent::ToolCallArgs {
                index: 0,
                delta: "ty\":\"Pa".into()
            },
            StreamEvent::ToolCallArgs {
                index: 0,
                delta: "ris\",\"n\":".into()
            },
            StreamEvent::ToolCallArgs {
                index: 0,
                delta: "10}".into()
            },
            StreamEvent::ToolCallEnd { index: 0 },
        ]
    );
}

#[test]
fn stream_reasoning_and_parameterless_call() {
    let text = "<think>\nhmm\n</think>\n\n<tool_call>\n{\"name\": \"now\"}\n</tool_call>";
    let ev = stream_all(&[text], StreamParser::new());
    assert_eq!(
        ev,
        vec![
            StreamEvent::Reasoning("hmm".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                name: "now".into()
            },
            StreamEvent::ToolCallArgs {
                index: 0,
                delta: "{}".into()
            },
            StreamEvent::ToolCallEnd { index: 0 },
        ]
    );
}

#[test]
fn stream_in_reasoning_mode() {
    let ev = stream_all(&["a b", "</th", "ink>\n\nc"], StreamParser::in_reasoning());
    assert_eq!(
        ev,
        vec![
            StreamEvent::Reasoning("a b".into()),
            StreamEvent::Content("c".into())
        ]
    );
    assert!(matches!(
        StreamParser::for_prompt("<|im_start|>assistant\n<think>\n").push("x</think>y")[0],
        StreamEvent::Reasoning(_)
    ));
    assert_eq!(
        StreamParser::for_prompt("<|im_start|>assistant\n<think>\n\n</think>\n\n").push("x"),
        vec![StreamEvent::Content("x".into())]
    );
}

#[test]
fn stream_reports_malformed_after_start() {
    let ev = stream_all(
        &[
            "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}</tool_call>",
            "<tool_call>{\"name\": \"g\"}",
        ],
        StreamParser::new(),
    );
    assert_eq!(
        ev,
        vec![
            StreamEvent::ToolCallStart {
                index: 0,
                name: "f".into()
            },
            StreamEvent::ToolCallArgs {
                index: 0,
                delta: "{\"a\":1}".into()
            },
            StreamEvent::Malformed {
                block: 0,
                index: Some(0),
                reason: ev_reason(&ev)
            },
            StreamEvent::ToolCallStart {
                index: 1,
                name: "g".into()
            },
            StreamEvent::ToolCallArgs {
                index: 1,
                delta: "{}".into()
            },
            StreamEvent::ToolCallEnd { index: 1 },
        ]
    );
}

fn ev_reason(ev: &[StreamEvent]) -> String {
    ev.iter()
        .find_map(|e| match e {
            StreamEvent::Malformed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[test]
fn stream_reserializes_escapes_and_numbers() {
    let text = "<tool_call>{\"name\": \"f\", \"arguments\": {\"s\": \"a\\u00e9\\/\\ud83d\\ude00\\n\", \"x\": 1.50, \"y\": 1e2, \"t\": [true, null]}}</tool_call>";
    let chars: Vec<String> = text.chars().map(|c| c.to_string()).collect();
    let parts: Vec<&str> = chars.iter().map(|s| s.as_str()).collect();
    let ev = stream_all(&parts, StreamParser::new());
    let args: String = ev
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallArgs { delta, .. } => Some(delta.as_str()),
            _ => None,
        })
        .collect();
    let expected = parse(text).calls[0].arguments_json();
    assert_eq!(args, expected);
    assert!(
        ev.iter()
            .filter(|e| matches!(e, StreamEvent::ToolCallArgs { .. }))
            .count()
            > 5,
        "args should stream"
    );
    assert!(matches!(
        ev.last(),
        Some(StreamEvent::ToolCallEnd { index: 0 })
    ));
}

#[test]
fn stream_string_arguments_are_buffered() {
    let text = "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>";
    let ev = stream_all(&[&text[..20], &text[20..]], StreamParser::new());
    assert_eq!(
        ev,
        vec![
            StreamEvent::ToolCallStart {
                index: 0,
                name: "f".into()
            },
            StreamEvent::ToolCallArgs {
                index: 0,
                delta: "{\"a\":1}".into()
            },
            StreamEvent::ToolCallEnd { index: 0 },
        ]
    );
}

#[test]
fn stream_duplicate_keys_reported_as_divergence() {
    let text =
        "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1, \"b\": 2, \"a\": 3}}</tool_call>";
    let ev = stream_all(&[text], StreamParser::new());
    assert!(
        matches!(
            ev.last(),
            Some(StreamEvent::Malformed {
                block: 0,
                index: Some(0),
                ..
            })
        ),
        "{ev:?}"
    );
}

/// The original `Value`-based `parse_call_json`, the reference for the field-wise one.
fn reference_parse_call_json(body: &str) -> Result<ToolCall, CallError> {
    let trimmed = body.trim();
    if trimmed.is_empty() {
        return Err(CallError::Empty);
    }
    let mut de = serde_json::Deserializer::from_str(trimmed);
    let value = Value::deserialize(&mut de).map_err(|e| CallError::InvalidJson(e.to_string()))?;
    de.end().map_err(|_| CallError::TrailingText)?;
    let Value::Object(mut obj) = value else {
        return Err(CallError::NotAnObject);
    };
    if !obj.contains_key("name") {
        if let Some(Value::Object(inner)) = obj.remove("function") {
            obj = inner;
        }
    }
    let name = match obj.remove("name") {
        None => return Err(CallError::MissingName),
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(_) => return Err(CallError::BadName),
    };
    let raw_args = match obj.remove("arguments") {
        Some(v) => Some(v),
        None => obj.remove("parameters"),
    };
    let arguments = match raw_args {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(Value::String(s)) => {
            if s.trim().is_empty() {
                Value::Object(Map::new())
            } else {
                match serde_json::from_str::<Value>(&s) {
                    Ok(v @ Value::Object(_)) => v,
                    Ok(_) => return Err(CallError::ArgumentsNotObject),
                    Err(e) => return Err(CallError::ArgumentsInvalidJson(e.to_string())),
                }
            }
        }
        Some(_) => return Err(CallError::ArgumentsNotObject),
    };
    Ok(ToolCall { name, arguments })
}

#[test]
fn field_wise_call_parsing_matches_reference_on_edge_cases() {
    let cases = [
        "", "  ", "[1]", "[1, 2", "3", "\"x\"", "null", "true", "{", "{}", "{} x", "{\"name\": 3}",
        "{\"name\": \"f\", \"name\": \"g\"}", "{\"name\": \"f\", \"arguments\": null, \"parameters\": {\"a\": 1}}",
        "{\"name\": \"f\", \"parameters\": {\"a\": 1}}", "{\"function\": {\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}}",
        "{\"function\": 3}", "{\"function\": {\"name\": \"f\"}, \"name\": \"g\"}", "{\"name\": \"f\", \"x\": 1e400}",
        "{\"name\": \"f\", \"x\": [1, {\"y\": }]}", "{\"na\\u006de\": \"f\"}", "{\"name\": \"f\", \"arguments\": \"[1]\"}",
        "{\"name\": \"f\", \"arguments\": \"{bad\"}", "{\"name\": \" \"}", "{\"name\": \"f\", \"arguments\": 5}",
        "{\"name\": \"f\", \"arguments\": {\"a\": 1, \"a\": 2}}", "{\"name\": \"f\",}", "{\"name\": \"f\"} {}",
    ];
    for c in cases {
        assert_eq!(parse_call_json(c), reference_parse_call_json(c), "body {c:?}");
    }
}

proptest::proptest! {
    #[test]
    fn field_wise_call_parsing_matches_reference(
        pieces in proptest::collection::vec(proptest::prop_oneof![
            proptest::strategy::Just("{"), proptest::strategy::Just("}"), proptest::strategy::Just("["),
            proptest::strategy::Just("]"), proptest::strategy::Just(","), proptest::strategy::Just(":"),
            proptest::strategy::Just("\"name\""), proptest::strategy::Just("\"arguments\""),
            proptest::strategy::Just("\"parameters\""), proptest::strategy::Just("\"function\""),
            proptest::strategy::Just("\"f\""), proptest::strategy::Just("\"{}\""), proptest::strategy::Just("1"),
            proptest::strategy::Just("null"), proptest::strategy::Just(" "), proptest::strategy::Just("\"x\""),
        ], 0..24),
    ) {
        let body: String = pieces.concat();
        proptest::prop_assert_eq!(parse_call_json(&body), reference_parse_call_json(&body));
    }
}
