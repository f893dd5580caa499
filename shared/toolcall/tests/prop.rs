//! Property tests: the parsers are total (never panic), and streaming any split of a
//! well-formed output yields exactly what `parse` returns for the whole text.

use fc_toolcall::{parse, render_calls, StreamEvent, StreamParser, ToolCall};
use proptest::prelude::*;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Split `text` at the given char positions (mod its length); splitting inside a multi-byte
/// character is impossible for `&str` deltas, so positions are char indices.
fn split_at_chars(text: &str, cuts: &[usize]) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (chars.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut parts = Vec::new();
    let mut last = 0;
    for p in points.into_iter().chain(std::iter::once(chars.len())) {
        parts.push(chars[last..p].iter().collect());
        last = p;
    }
    parts
}

#[derive(Debug, Default, PartialEq)]
struct Assembled {
    content: String,
    reasoning: String,
    calls: Vec<ToolCall>,
    malformed: usize,
}

fn assemble(events: &[StreamEvent]) -> Assembled {
    let mut out = Assembled::default();
    let mut calls: BTreeMap<usize, (String, String, bool)> = BTreeMap::new();
    for e in events {
        match e {
            StreamEvent::Content(s) => out.content.push_str(s),
            StreamEvent::Reasoning(s) => out.reasoning.push_str(s),
            StreamEvent::ToolCallStart { index, name } => {
                assert!(
                    !calls.contains_key(index),
                    "call index {index} started twice"
                );
                calls.insert(*index, (name.clone(), String::new(), false));
            }
            StreamEvent::ToolCallArgs { index, delta } => {
                let c = calls.get_mut(index).expect("args before start");
                assert!(!c.2, "args after end");
                c.1.push_str(delta);
            }
            StreamEvent::ToolCallEnd { index } => {
                let c = calls.get_mut(index).expect("end before start");
                c.2 = true;
            }
            StreamEvent::Malformed { index, .. } => {
                out.malformed += 1;
                if let Some(i) = index {
                    calls.remove(i);
                }
            }
        }
    }
    for (_, (name, args, ended)) in calls {
        assert!(ended, "call {name} never ended");
        let arguments: Value = serde_json::from_str(&args).expect("streamed args are JSON");
        out.calls.push(ToolCall { name, arguments });
    }
    out
}

fn run_stream(parts: &[String], parser: StreamParser) -> Vec<StreamEvent> {
    let mut p = parser;
    let mut ev = Vec::new();
    for part in parts {
        ev.extend(p.push(part));
    }
    ev.extend(p.finish());
    ev
}

fn arb_json(depth: u32) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z é中😀\"\\\\\n\t/<>{}]{0,12}".prop_map(Value::String),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        3 => leaf,
        1 => prop::collection::vec(arb_json(depth - 1), 0..4).prop_map(Value::Array),
        1 => arb_object(depth - 1).prop_map(Value::Object),
    ]
    .boxed()
}

fn arb_object(depth: u32) -> BoxedStrategy<Map<String, Value>> {
    prop::collection::vec(("[a-zA-Z_ü]{1,8}", arb_json(depth)), 0..5)
        .prop_map(|kv| kv.into_iter().collect())
        .boxed()
}

fn arb_call() -> impl Strategy<Value = ToolCall> {
    ("[a-z_][a-z0-9_.]{0,15}", arb_object(2)).prop_map(|(name, args)| ToolCall {
        name,
        arguments: Value::Object(args),
    })
}

/// A well-formed output in one of the shapes models produce.
fn arb_output() -> impl Strategy<Value = (String, bool)> {
    (
        prop::option::of("[a-z .\n中]{0,20}"),
        prop::bool::ANY,
        "[a-zA-Z ,.!\n]{0,30}",
        prop::collection::vec(arb_call(), 0..4),
        prop::bool::ANY,
        prop::bool::ANY,
        "[a-z .\n]{0,10}",
    )
        .prop_map(
            |(think, stray, before, calls, compact, drop_close, after)| {
                let mut text = String::new();
                if let Some(t) = &think {
                    if !stray {
                        text.push_str("<think>\n");
                    }
                    text.push_str(t);
                    text.push_str("\n</think>\n\n");
                }
                text.push_str(&before);
                if compact {
                    // Non-canonical spacing: exercises the buffered path.
                    for c in &calls {
                        text.push_str(&format!(
                            "<tool_call>{{ \"arguments\" : {}, \"name\":{} }}</tool_call>",
                            serde_json::to_string(&c.arguments).expect("json"),
                            serde_json::to_string(&c.name).expect("json")
                        ));
                    }
                } else {
                    text.push('\n');
                    text.push_str(&render_calls(&calls));
                }
                if drop_close && !calls.is_empty() && !compact {
                    text.truncate(text.len() - "</tool_call>".len());
                } else {
                    text.push_str(&after);
                }
                (text, think.is_some() && stray)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_text(text in ".{0,200}", cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let _ = parse(&text);
        let parts = split_at_chars(&text, &cuts);
        let _ = run_stream(&parts, StreamParser::new());
        let _ = run_stream(&parts, StreamParser::in_reasoning());
    }

    #[test]
    fn never_panics_on_tag_soup(
        pieces in prop::collection::vec(prop_oneof![
            Just("<tool_call>".to_string()), Just("</tool_call>".to_string()),
            Just("<think>".to_string()), Just("</think>".to_string()),
            Just("{\"name\": \"f\", \"arguments\": {".to_string()), Just("\\u".to_string()),
            Just("\\ud83d".to_string()), Just("\"".to_string()), Just("}".to_string()),
            "[a-z0-9 :,\\[\\]{}\"\\\\<>/_.-]{0,6}",
        ], 0..30),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let text: String = pieces.concat();
        let parsed = parse(&text);
        prop_assert_eq!(parsed.blocks, parsed.calls.len() + parsed.errors.len());
        let parts = split_at_chars(&text, &cuts);
        let _ = run_stream(&parts, StreamParser::new());
        let _ = run_stream(&parts, StreamParser::in_reasoning());
    }

    #[test]
    fn stream_equals_parse_for_any_split(
        (text, stray) in arb_output(),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let parsed = parse(&text);
        prop_assert!(parsed.errors.is_empty(), "errors: {:?}", parsed.errors);
        let parser = if stray { StreamParser::in_reasoning() } else { StreamParser::new() };
        let whole = assemble(&run_stream(std::slice::from_ref(&text), if stray { StreamParser::in_reasoning() } else { StreamParser::new() }));
        let parts = split_at_chars(&text, &cuts);
        let streamed = assemble(&run_stream(&parts, parser));
        prop_assert_eq!(&streamed, &whole);
        prop_assert_eq!(streamed.malformed, 0);
        prop_assert_eq!(&streamed.calls, &parsed.calls);
        prop_assert_eq!(&streamed.content, &parsed.content);
        prop_assert_eq!(streamed.reasoning, parsed.reasoning.unwrap_or_default());
    }

    #[test]
    fn render_then_parse_round_trips(calls in prop::collection::vec(arb_call(), 0..4)) {
        let parsed = parse(&render_calls(&calls));
        prop_assert_eq!(parsed.calls, calls);
        prop_assert!(parsed.errors.is_empty());
    }
}
