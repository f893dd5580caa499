//! Metrics, breakdowns and reports on hand-made samples whose verdicts are known.

use fc_data::{Call, Expected, Format, Message, Role, Sample, Source, ToolDef};
use fc_eval::{markdown_table, render_chart, summarize, unmatched_predictions, Category, Evaluator, Predictions, RunReport};
use fc_toolcall::{render_calls, ToolCall};
use serde_json::{json, Value};

fn weather_tool() -> ToolDef {
    ToolDef {
        name: "get_weather".into(),
        description: "Weather for a city".into(),
        parameters: json!({"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"], "default": "c"}
        }, "required": ["city"]}),
    }
}

fn sample(id: &str, expected: Expected) -> Sample {
    Sample {
        id: id.into(),
        messages: vec![Message::new(Role::User, "weather?")],
        tools: vec![weather_tool()],
        expected,
        source: Source {
            format: Format::Processed,
            position: 0,
        },
    }
}

fn calls(cs: &[(&str, Value)]) -> Expected {
    Expected::Calls(
        cs.iter()
            .map(|(n, a)| Call {
                name: n.to_string(),
                arguments: a.clone(),
            })
            .collect(),
    )
}

fn text(cs: &[(&str, Value)]) -> String {
    render_calls(&cs.iter().map(|(n, a)| ToolCall::new(*n, a.clone())).collect::<Vec<_>>())
}

#[test]
fn verdicts_and_metrics() {
    let paris = || ("get_weather", json!({"city": "Paris"}));
    let rome = || ("get_weather", json!({"city": "Rome"}));
    let samples = vec![
        sample("exact", calls(&[paris()])),
        sample("case", calls(&[paris()])),
        sample("halluc", calls(&[paris()])),
        sample("parallel", calls(&[paris(), rome()])),
        sample("broken", calls(&[paris()])),
        sample("notool", Expected::Text(None)),
        sample("notool_called", Expected::Text(None)),
        sample("missing", calls(&[paris()])),
    ];
    let mut p = Predictions::new();
    p.insert("exact", text(&[paris()]));
    p.insert("case", text(&[("get_weather", json!({"city": " paris "}))]));
    p.insert("halluc", text(&[("get_weather", json!({"city": "Paris", "country": "FR"}))]));
    p.insert("parallel", text(&[rome(), paris()]));
    p.insert("broken", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": }\n</tool_call>");
    p.insert("notool", "I have no tool for that.");
    p.insert("notool_called", text(&[paris()]));
    p.insert("typo-id", "x");
    let vs = Evaluator::new().evaluate(&samples, &p, Some("val"));
    let by = |id: &str| vs.iter().find(|v| v.id == id).expect("verdict");

    let exact = by("exact");
    assert!(exact.parse_ok && exact.schema_ok && exact.exec_ok && exact.func_ok && exact.args_ok && exact.args_exact);
    let case = by("case");
    assert!(case.func_ok && case.args_ok && !case.args_exact, "lenient args match, strict args: {case:?}");
    let h = by("halluc");
    assert!(h.func_ok, "the right function was called: {h:?}");
    assert!(!h.args_ok && !h.args_exact, "hallucinated argument fails both argument checks: {h:?}");
    assert_eq!(h.hallucinated_args, vec!["get_weather.country".to_string()]);
    let par = by("parallel");
    assert_eq!(par.category, Category::Parallel);
    assert!(par.func_ok && par.args_ok && par.args_exact, "order-insensitive: {par:?}");
    let b = by("broken");
    assert!(!b.parse_ok && !b.func_ok && !b.args_ok);
    assert!(by("notool").func_ok && by("notool").parse_ok);
    assert!(!by("notool_called").func_ok && by("notool_called").parse_ok);
    let m = by("missing");
    assert!(m.missing && !m.parse_ok && !m.func_ok);

    let s = summarize(&vs);
    assert_eq!(s.overall.count, 8);
    assert_eq!(s.overall.missing, 1);
    assert_eq!(s.overall.no_call_accuracy, Some(0.5));
    assert!((s.overall.func_accuracy - 5.0 / 8.0).abs() < 1e-9, "{:?}", s.overall);
    assert!((s.overall.args_match - 4.0 / 8.0).abs() < 1e-9, "{:?}", s.overall);
    assert!((s.overall.args_exact - 3.0 / 8.0).abs() < 1e-9, "{:?}", s.overall);
    assert!((s.overall.parse_rate - 6.0 / 8.0).abs() < 1e-9, "{:?}", s.overall);
    assert_eq!(s.by_category["no_tool"].count, 2);
    assert_eq!(s.by_category["parallel"].count, 1);
    assert_eq!(s.by_split["val"].count, 8);
    assert_eq!(s.extra()["val.func_accuracy"], s.overall.func_accuracy);
    assert_eq!(unmatched_predictions(&samples, &p), vec!["typo-id".to_string()]);
}

#[test]
fn reports_render() {
    let s = sample("a", calls(&[("get_weather", json!({"city": "Paris"}))]));
    let mut runs = Vec::new();
    for (name, completion) in [("base", "no idea"), ("sft", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"paris\"}}\n</tool_call>")] {
        let mut p = Predictions::new();
        p.insert("a", completion);
        let vs = Evaluator::new().evaluate(std::slice::from_ref(&s), &p, Some("heldout"));
        runs.push(RunReport::new(name, summarize(&vs), vs));
    }
    let md = markdown_table(&runs);
    assert!(md.contains("| metric | base | sft |"), "{md}");
    assert!(md.contains("| func_accuracy | 0.000 | 1.000 |"), "{md}");
    assert!(md.contains("### heldout"), "{md}");
    let json = runs[1].to_json().expect("json");
    assert_eq!(RunReport::from_json(&json).expect("round trip"), runs[1]);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chart.png");
    render_chart(&runs, &path).expect("chart renders");
    let bytes = std::fs::read(&path).expect("png written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let w = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let h = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    assert_eq!((w, h), fc_eval::report::CHART_SIZE);
    assert!(bytes.ends_with(&[0xAE, 0x42, 0x60, 0x82]), "IEND chunk CRC present");
    if let Ok(out) = std::env::var("FC_EVAL_CHART_OUT") {
        let _ = std::fs::copy(&path, out);
    }
    // No runs at all still renders an (empty) chart.
    render_chart(&[], &dir.path().join("empty.png")).expect("empty chart");
}
