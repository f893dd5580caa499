use std::collections::BTreeMap;
use std::io::Write;

use fc_data::{
    ingest, ingest_file, load, validate, BfclAnswers, Expected, Format, IngestOptions, IngestSinks, RejectReason,
    Role,
};
use serde_json::{json, Value};

const XLAM_REAL: &str = r#"{"id": 0, "query": "Where can I find live giveaways for beta access and games?", "answers": "[{\"name\": \"live_giveaways_by_type\", \"arguments\": {\"type\": \"beta\"}}, {\"name\": \"live_giveaways_by_type\", \"arguments\": {\"type\": \"game\"}}]", "tools": "[{\"name\": \"live_giveaways_by_type\", \"description\": \"Retrieve live giveaways from the GamerPower API based on the specified type.\", \"parameters\": {\"type\": {\"description\": \"The type of giveaways to retrieve (e.g., game, loot, beta).\", \"type\": \"str\", \"default\": \"game\"}}}]"}"#;

fn one(format: Format, raw: &str) -> Result<fc_data::Sample, fc_data::Reject> {
    let mut it = load(raw.as_bytes(), format, None);
    match it.next() {
        Some(Ok(l)) => l.result.and_then(|s| validate(&s).map(|()| s)),
        other => panic!("no record: {other:?}"),
    }
}

fn reason(format: Format, raw: &str) -> RejectReason {
    match one(format, raw) {
        Ok(s) => panic!("expected reject, got {s:?}"),
        Err(r) => r.reason,
    }
}

#[test]
fn xlam_real_record() {
    let s = one(Format::Xlam, XLAM_REAL).expect("valid");
    assert_eq!(s.id, "0");
    assert_eq!(s.query(), Some("Where can I find live giveaways for beta access and games?"));
    assert_eq!(s.messages[0].role, Role::User);
    assert_eq!(s.tools.len(), 1);
    assert_eq!(
        s.tools[0].parameters,
        json!({"type": "object", "properties": {"type": {"type": "string",
            "description": "The type of giveaways to retrieve (e.g., game, loot, beta).", "default": "game"}},
            "required": ["type"]})
    );
    let calls = s.expected.calls().expect("calls");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].arguments, json!({"type": "game"}));
    // Round trip through the processed format.
    let line = serde_json::to_string(&s).expect("ser");
    let back = one(Format::Processed, &line).expect("processed");
    assert_eq!(back, s);
}

#[test]
fn xlam_rejects() {
    let tools = r#"[{\"name\": \"f\", \"description\": \"d\", \"parameters\": {\"x\": {\"type\": \"int\", \"description\": \"x\"}, \"y\": {\"type\": \"str, optional\", \"description\": \"y\"}}}]"#;
    let rec = |q: &str, answers: &str, tools: &str| format!(r#"{{"id": 5, "query": "{q}", "answers": "{answers}", "tools": "{tools}"}}"#);
    assert_eq!(reason(Format::Xlam, "{not json"), RejectReason::InvalidJson);
    assert_eq!(reason(Format::Xlam, "[1,2]"), RejectReason::InvalidJson);
    assert_eq!(reason(Format::Xlam, r#"{"id": 1, "query": "q", "tools": "[]"}"#), RejectReason::MissingField);
    assert_eq!(reason(Format::Xlam, &rec("  ", "[]", tools)), RejectReason::EmptyQuery);
    assert_eq!(reason(Format::Xlam, &rec("q", "[]", "[{\\\"nam")), RejectReason::BadTools);
    assert_eq!(reason(Format::Xlam, &rec("q", "[]", "[{\\\"description\\\": \\\"x\\\"}]")), RejectReason::BadTools);
    assert_eq!(reason(Format::Xlam, &rec("q", "[{\\\"nam", tools)), RejectReason::BadAnswers);
    assert_eq!(
        reason(Format::Xlam, &rec("q", "[{\\\"name\\\": \\\"f\\\", \\\"arguments\\\": 3}]", tools)),
        RejectReason::BadAnswers
    );
    assert_eq!(
        reason(Format::Xlam, &rec("q", "[{\\\"name\\\": \\\"g\\\", \\\"arguments\\\": {}}]", tools)),
        RejectReason::UnknownTool
    );
    assert_eq!(
        reason(Format::Xlam, &rec("q", "[{\\\"name\\\": \\\"f\\\", \\\"arguments\\\": {\\\"x\\\": \\\"abc\\\"}}]", tools)),
        RejectReason::SchemaViolation
    );
    // Missing required x.
    assert_eq!(
        reason(Format::Xlam, &rec("q", "[{\\\"name\\\": \\\"f\\\", \\\"arguments\\\": {\\\"y\\\": \\\"s\\\"}}]", tools)),
        RejectReason::SchemaViolation
    );
    // Optional y omitted, 3.0 accepted as integer: valid.
    let ok = one(Format::Xlam, &rec("q", "[{\\\"name\\\": \\\"f\\\", \\\"arguments\\\": {\\\"x\\\": 3.0}}]", tools));
    assert!(ok.is_ok(), "{ok:?}");
    // No-tool record.
    let s = one(Format::Xlam, &rec("hello there", "[]", tools)).expect("text");
    assert_eq!(s.expected, Expected::Text(None));
    // Reject carries id and position.
    let r = one(Format::Xlam, &rec("q", "[{\\\"name\\\": \\\"g\\\", \\\"arguments\\\": {}}]", tools)).err();
    let r = r.expect("reject");
    assert_eq!(r.id.as_deref(), Some("5"));
    assert_eq!(r.position, 0);
    assert_eq!(r.reason.code(), "unknown_tool");
}

fn run_ingest(input: &str, format: Format, opts: &IngestOptions) -> (fc_data::IngestReport, String, String, String) {
    let (mut t, mut v, mut r) = (Vec::new(), Vec::new(), Vec::new());
    let mut ticks = 0u64;
    let mut progress = |_p: fc_data::IngestProgress| ticks += 1;
    let rep = {
        let mut sinks = IngestSinks {
            train: &mut t,
            val: &mut v,
            rejects: &mut r,
            progress: Some(&mut progress),
        };
        ingest(input.as_bytes(), format, None, opts, &mut sinks).expect("ingest")
    };
    assert!(ticks >= 1);
    let s = |b: Vec<u8>| String::from_utf8(b).unwrap_or_default();
    (rep, s(t), s(v), s(r))
}

#[test]
fn ingest_array_with_rejects_and_dead_letters() {
    let input = format!("[\n{XLAM_REAL},\n{{\"id\": 1, \"query\": \"x\"}},\n\"garbage\",\n{XLAM_REAL}\n]");
    let (rep, train, val, rejects) = run_ingest(&input, Format::Xlam, &IngestOptions::default());
    assert_eq!(rep.read, 4);
    assert_eq!(rep.accepted, 2);
    assert_eq!(rep.read, rep.accepted + rep.rejected_total());
    assert_eq!(rep.train + rep.val, rep.accepted);
    let mut exp = BTreeMap::new();
    exp.insert(RejectReason::MissingField, 1);
    exp.insert(RejectReason::InvalidJson, 1);
    assert_eq!(rep.rejected, exp);
    assert_eq!(train.lines().count() + val.lines().count(), 2);
    let dls: Vec<Value> = rejects.lines().map(|l| serde_json::from_str(l).unwrap_or(Value::Null)).collect();
    assert_eq!(dls.len(), 2);
    assert_eq!(dls[0]["position"], 1);
    assert_eq!(dls[0]["id"], "1");
    assert_eq!(dls[0]["reason"], "missing_field");
    assert_eq!(dls[0]["raw"], "{\"id\": 1, \"query\": \"x\"}");
    assert_eq!(dls[1]["reason"], "invalid_json");
    assert!(dls[1]["detail"].as_str().is_some_and(|d| !d.is_empty()));
    // Report serializes with snake_case reason keys.
    let j = serde_json::to_value(&rep).unwrap_or(Value::Null);
    assert_eq!(j["rejected"]["missing_field"], 1);
}

#[test]
fn split_is_deterministic_and_roughly_90_10() {
    let mut val = 0;
    for i in 0..10_000 {
        if fc_data::is_val(&i.to_string(), 42, 0.1) {
            val += 1;
        }
    }
    assert!((800..1200).contains(&val), "{val}");
    assert_eq!(fc_data::is_val("abc", 1, 0.1), fc_data::is_val("abc", 1, 0.1));
    assert!(!fc_data::is_val("abc", 1, 0.0));
    assert!(fc_data::is_val("abc", 1, 1.0));
    let opts = IngestOptions {
        val_fraction: 2.0,
        ..Default::default()
    };
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let mut sinks = IngestSinks {
        train: &mut a,
        val: &mut b,
        rejects: &mut c,
        progress: None,
    };
    assert!(ingest("[]".as_bytes(), Format::Xlam, None, &opts, &mut sinks).is_err());
}

#[test]
fn bfcl_with_possible_answer_beside() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = dir.path().join("BFCL_v3_simple.json");
    let pa_dir = dir.path().join("possible_answer");
    std::fs::create_dir_all(&pa_dir).expect("mkdir");
    let mut f = std::fs::File::create(&q).expect("create");
    writeln!(f, "{}", json!({"id": "simple_0", "question": [[{"role": "user", "content": "Find the area of a triangle with a base of 10 units and height of 5 units."}]],
        "function": [{"name": "calculate_triangle_area", "description": "Calculate the area of a triangle given its base and height.",
        "parameters": {"type": "dict", "properties": {"base": {"type": "integer", "description": "The base"}, "height": {"type": "integer", "description": "The height"},
        "unit": {"type": "string", "description": "The unit", "default": "units"}, "scale": {"type": "float"}, "pts": {"type": "tuple", "items": {"type": "integer"}}}, "required": ["base", "height"]}}]})).expect("w");
    writeln!(f, "{}", json!({"id": "simple_1", "question": [[{"role": "user", "content": "  "}]], "function": []})).expect("w");
    writeln!(f, "{}", json!({"id": "simple_2", "question": [[{"role": "user", "content": "hi"}]], "function": [{"name": "f", "parameters": {"type": "dict", "properties": {}}}]})).expect("w");
    writeln!(f, "{}", json!({"id": "multi_turn_base_0", "question": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]], "function": []})).expect("w");
    writeln!(f, "{}", json!({"id": "simple_3", "question": [[{"role": "user", "content": "hi"}]], "function": [{"name": "f", "parameters": {"type": "dict", "properties": {"a": {"type": "integer"}}}}]})).expect("w");
    drop(f);
    let mut pa = std::fs::File::create(pa_dir.join("BFCL_v3_simple.json")).expect("create");
    writeln!(pa, "{}", json!({"id": "simple_0", "ground_truth": [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]})).expect("w");
    writeln!(pa, "{}", json!({"id": "simple_3", "ground_truth": [{"f": {"zzz": [1]}}]})).expect("w");
    drop(pa);
    assert!(BfclAnswers::locate(&q).is_some());
    let out = dir.path().join("out");
    let (rep, paths) = ingest_file(&q, Format::Bfcl, None, &out, &IngestOptions::default(), None).expect("ingest");
    assert_eq!(rep.read, 5);
    assert_eq!(rep.accepted, 1, "{rep:?}");
    assert_eq!(rep.rejected.get(&RejectReason::EmptyQuery), Some(&1));
    assert_eq!(rep.rejected.get(&RejectReason::MissingAnswer), Some(&1));
    assert_eq!(rep.rejected.get(&RejectReason::Unsupported), Some(&1));
    assert_eq!(rep.rejected.get(&RejectReason::SchemaViolation), Some(&1));
    let mut samples = fc_data::read_samples(&paths.train).expect("train");
    samples.extend(fc_data::read_samples(&paths.val).expect("val"));
    let s = &samples[0];
    assert_eq!(s.tools[0].parameters["type"], "object");
    assert_eq!(s.tools[0].parameters["properties"]["scale"]["type"], "number");
    assert_eq!(s.tools[0].parameters["properties"]["pts"]["type"], "array");
    match &s.expected {
        Expected::Bfcl(gt) => {
            assert_eq!(gt[0].name, "calculate_triangle_area");
            assert_eq!(gt[0].allowed["unit"], json!(["units", ""]));
        }
        other => panic!("{other:?}"),
    }
    let rep_calls = s.expected.representative_calls();
    assert_eq!(rep_calls[0].arguments, json!({"base": 10, "height": 5, "unit": "units"}));
    // Irrelevance questions need no answer.
    let irr = json!({"id": "irrelevance_0", "question": [[{"role": "user", "content": "What's 2+2?"}]], "function": [{"name": "f", "parameters": {"type": "dict", "properties": {}}}]}).to_string();
    let mut it = load(irr.as_bytes(), Format::Bfcl, Some(BfclAnswers::default()));
    let s = it.next().and_then(|r| r.ok()).map(|l| l.result);
    assert!(matches!(s, Some(Ok(ref x)) if x.expected == Expected::Text(None)), "{s:?}");
    // A broken answers file is fatal.
    assert!(BfclAnswers::from_reader("{\"id\": \"x\"}".as_bytes()).is_err());
}

#[test]
fn openai_format() {
    let rec = json!({"messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}
    ], "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]});
    let s = one(Format::Openai, &rec.to_string()).expect("ok");
    assert_eq!(s.messages.len(), 2);
    assert_eq!(s.expected.calls().map(|c| c[0].arguments.clone()), Some(json!({"city": "Paris"})));
    let text = json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}], "tools": []});
    let s = one(Format::Openai, &text.to_string()).expect("ok");
    assert_eq!(s.expected, Expected::Text(Some("Hello!".into())));
    let no_asst = json!({"messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(reason(Format::Openai, &no_asst.to_string()), RejectReason::MissingField);
    let bad_args = json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"function": {"name": "get_weather", "arguments": "{bad"}}]}], "tools": rec["tools"]});
    assert_eq!(reason(Format::Openai, &bad_args.to_string()), RejectReason::BadAnswers);
    let viol = json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": 3}}}]}], "tools": rec["tools"]});
    assert_eq!(reason(Format::Openai, &viol.to_string()), RejectReason::SchemaViolation);
}

#[test]
fn sharegpt_format() {
    let tools = json!([{"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]).to_string();
    let rec = json!({"conversations": [
        {"from": "human", "value": "Weather in Paris and Rome?"},
        {"from": "function_call", "value": "[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}]"}
    ], "tools": tools, "system": "Be brief."});
    let s = one(Format::Sharegpt, &rec.to_string()).expect("ok");
    assert_eq!(s.messages[0].role, Role::System);
    assert_eq!(s.expected.call_count(), 2);
    let multi = json!({"conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"},
        {"from": "observation", "value": "{\"temp\": 20}"},
        {"from": "gpt", "value": "It is 20 degrees."}
    ], "tools": tools});
    let s = one(Format::Sharegpt, &multi.to_string()).expect("ok");
    assert_eq!(s.messages.len(), 3);
    assert_eq!(s.messages[1].tool_calls.len(), 1);
    assert_eq!(s.messages[2].role, Role::Tool);
    assert_eq!(s.expected, Expected::Text(Some("It is 20 degrees.".into())));
    let bad = json!({"conversations": [{"from": "human", "value": "x"}, {"from": "observation", "value": "y"}]});
    assert_eq!(reason(Format::Sharegpt, &bad.to_string()), RejectReason::MissingField);
    let unknown = json!({"conversations": [{"from": "human", "value": "x"}, {"from": "function_call", "value": "{\"name\": \"nope\", \"arguments\": {}}"}], "tools": tools});
    assert_eq!(reason(Format::Sharegpt, &unknown.to_string()), RejectReason::UnknownTool);
}

#[test]
fn xlam_jsonl_input_and_progress() {
    let input = format!("{XLAM_REAL}\n\n{XLAM_REAL}\n{{\"id\": 2}}\n");
    let opts = IngestOptions {
        progress_every: 1,
        max_raw_bytes: 5,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let (mut t, mut v, mut r) = (Vec::new(), Vec::new(), Vec::new());
    let mut progress = |p: fc_data::IngestProgress| seen.push((p.read, p.accepted, p.rejected, p.bytes_read));
    let rep = {
        let mut sinks = IngestSinks {
            train: &mut t,
            val: &mut v,
            rejects: &mut r,
            progress: Some(&mut progress),
        };
        ingest(input.as_bytes(), Format::Xlam, None, &opts, &mut sinks).expect("ingest")
    };
    assert_eq!((rep.read, rep.accepted, rep.rejected_total()), (3, 2, 1));
    assert_eq!(seen.first().map(|s| (s.0, s.1)), Some((1, 1)));
    assert_eq!(seen.last().map(|s| (s.0, s.1, s.2, s.3)), Some((3, 2, 1, input.len() as u64)));
    let dl: Value = serde_json::from_slice(r.split(|b| *b == b'\n').next().unwrap_or(&[])).unwrap_or(Value::Null);
    assert_eq!(dl["raw"], "{\"id\"", "raw is truncated to max_raw_bytes");
    assert_eq!(dl["position"], 2);
}

mod never_panic {
    use super::*;
    use proptest::prelude::*;

    fn all_formats(raw: &str) {
        for f in [Format::Xlam, Format::Bfcl, Format::Openai, Format::Sharegpt, Format::Processed] {
            for l in load(raw.as_bytes(), f, Some(BfclAnswers::default())).flatten() {
                if let Ok(s) = l.result {
                    let _ = validate(&s);
                }
            }
        }
    }

    /// The ingest driver on any input: it never panics, and every record read is either
    /// accepted (and lands in exactly one split) or rejected with a dead-letter line.
    fn ingest_accounts_for_everything(raw: &str) -> Result<(), TestCaseError> {
        for f in [Format::Xlam, Format::Openai, Format::Sharegpt, Format::Processed] {
            let (mut train, mut val, mut rejects) = (Vec::new(), Vec::new(), Vec::new());
            let mut sinks = fc_data::IngestSinks { train: &mut train, val: &mut val, rejects: &mut rejects, progress: None };
            let opts = fc_data::IngestOptions { val_fraction: 0.5, ..Default::default() };
            match fc_data::ingest(raw.as_bytes(), f, None, &opts, &mut sinks) {
                Ok(rep) => {
                    prop_assert_eq!(rep.read, rep.accepted + rep.rejected_total());
                    prop_assert_eq!(rep.accepted, rep.train + rep.val);
                    let lines = |b: &[u8]| b.split(|c| *c == b'\n').filter(|l| !l.is_empty()).count() as u64;
                    prop_assert_eq!(lines(&rejects), rep.rejected_total());
                    prop_assert_eq!(lines(&train), rep.train);
                    prop_assert_eq!(lines(&val), rep.val);
                }
                // A fatal error (unreadable framing) is reported, never a panic.
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text(raw in ".{0,300}") {
            all_formats(&raw);
            ingest_accounts_for_everything(&raw)?;
        }

        #[test]
        fn ingest_of_mixed_good_and_bad_lines(good in 0usize..4, bad in proptest::collection::vec(".{0,60}", 0..4)) {
            let mut lines: Vec<String> = (0..good)
                .map(|i| json!({"id": i, "query": "weather in Paris", "tools": "[{\"name\": \"w\", \"parameters\": {\"city\": {\"type\": \"str\"}}}]",
                                "answers": "[{\"name\": \"w\", \"arguments\": {\"city\": \"Paris\"}}]"}).to_string())
                .collect();
            lines.extend(bad.into_iter().map(|b| b.replace('\n', " ")).filter(|b| !b.trim().is_empty()));
            ingest_accounts_for_everything(&lines.join("\n"))?;
        }

        #[test]
        fn json_shaped_records(
            q in prop_oneof![Just(json!("q")), Just(json!(3)), Just(json!(null)), Just(json!([]))],
            tools in prop_oneof![
                Just(json!("[]")), Just(json!("[{")), Just(json!([{"name": "f", "parameters": {"x": {"type": "List[Dict[str, "}}}])),
                Just(json!("[{\"name\": \"f\", \"parameters\": {\"x\": {\"type\": \"Union[int, List[Tuple[str, ...]]]\"}}}]")),
                Just(json!([{"function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "tuple", "items": [1]}}}}}])),
                Just(json!([1, 2])), Just(json!({"name": ""})), ".{0,40}".prop_map(Value::String)
            ],
            answers in prop_oneof![
                Just(json!("[]")), Just(json!("[{\"name\": \"f\", \"arguments\": {\"x\": [[1]]}}]")),
                Just(json!([{"name": "f", "arguments": "{\"x\": 1}"}])), Just(json!({"name": "f"})), ".{0,40}".prop_map(Value::String)
            ],
        ) {
            let xlam = json!({"id": 1, "query": q, "tools": tools, "answers": answers});
            all_formats(&xlam.to_string());
            let openai = json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "tool_calls": answers}], "tools": tools});
            all_formats(&openai.to_string());
            let sg = json!({"conversations": [{"from": "human", "value": q}, {"from": "function_call", "value": answers}], "tools": tools});
            all_formats(&sg.to_string());
            let bfcl = json!({"id": "simple_1", "question": [[{"role": "user", "content": q}]], "function": tools});
            all_formats(&bfcl.to_string());
            all_formats(&format!("[{xlam}, {openai}]"));
        }

        #[test]
        fn python_type_strings(t in "[A-Za-z\\[\\], |.'\"]{0,40}") {
            let (schema, _) = fc_data::schema::python_type_to_schema(&t);
            prop_assert!(jsonschema::validator_for(&schema).is_ok(), "{t:?} -> {schema}");
        }
    }
}
