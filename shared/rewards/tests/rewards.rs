use std::time::Instant;

use fc_data::gen::catalogue::CATALOGUE;
use fc_data::{generate, generate_heldout, load, BfclCall, Expected, Format, Sample};
use fc_rewards::{MockExecutor, RewardConfig, Scorer, SemanticMode};
use fc_toolcall::{render_calls, ToolCall};
use proptest::prelude::*;
use serde_json::{json, Value};

const TOOLS: &str = r#"[{"name": "get_current_weather", "description": "Get the current weather conditions for a city.", "parameters": {"city": {"description": "City", "type": "str"}, "units": {"description": "metric or imperial", "type": "str, optional", "default": "metric"}}}, {"name": "convert_currency", "description": "Convert money.", "parameters": {"amount": {"description": "Amount", "type": "float"}, "from_currency": {"description": "From", "type": "str"}, "to_currency": {"description": "To", "type": "str"}}}]"#;

fn xlam_sample(query: &str, answers: &str) -> Sample {
    let rec = json!({"id": 1, "query": query, "answers": answers, "tools": TOOLS}).to_string();
    let l = load(rec.as_bytes(), Format::Xlam, None).next();
    let s = l.and_then(|r| r.ok()).and_then(|l| l.result.ok());
    let s = s.expect("sample");
    fc_data::validate(&s).expect("valid");
    s
}

fn weather_sample() -> Sample {
    xlam_sample(
        "Weather in Paris and Tokyo?",
        r#"[{"name": "get_current_weather", "arguments": {"city": "Paris"}}, {"name": "get_current_weather", "arguments": {"city": "Tokyo"}}]"#,
    )
}

fn call(name: &str, args: Value) -> String {
    render_calls(&[ToolCall::new(name, args)])
}

fn scorer(mode: SemanticMode) -> Scorer {
    Scorer::new(RewardConfig {
        semantic_mode: mode,
        ..RewardConfig::default()
    })
    .expect("config")
}

fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn reward_table() {
    let s = weather_sample();
    let partial = scorer(SemanticMode::Partial);
    let binary = scorer(SemanticMode::Binary);
    let paris = call("get_current_weather", json!({"city": "Paris"}));
    let tokyo = call("get_current_weather", json!({"city": "Tokyo"}));
    let both = format!("{paris}\n{tokyo}");
    let swapped = format!("{tokyo}\n{paris}");
    let extra = format!("{paris}\n{tokyo}\n{}", call("get_current_weather", json!({"city": "Rome"})));

    // (name, completion, parse, schema, exec, semantic-partial, semantic-binary)
    let table: Vec<(&str, String, f64, f64, f64, f64, f64)> = vec![
        ("valid", both.clone(), 1.0, 1.0, 1.0, 1.0, 1.0),
        ("reordered parallel", swapped, 1.0, 1.0, 1.0, 1.0, 1.0),
        ("think block ignored", format!("<think>\nuse the tool\n</think>\n\n{both}"), 1.0, 1.0, 1.0, 1.0, 1.0),
        (
            "normalized values",
            format!("{}\n{}", call("get_current_weather", json!({"city": " paris ", "units": "metric"})), tokyo),
            1.0,
            1.0,
            1.0,
            1.0,
            1.0,
        ),
        ("one of two", paris.clone(), 1.0, 1.0, 1.0, 2.0 / 3.0, 0.0),
        ("extra call", extra, 1.0, 1.0, 1.0, 0.8, 0.0),
        ("broken json", "<tool_call>\n{\"name\": \"get_current_weather\", \"arguments\": {\"city\": \"Paris\"\n</tool_call>".into(), 0.0, 0.0, 0.0, 0.0, 0.0),
        (
            "one broken block",
            format!("{paris}\n<tool_call>\n{{nope\n</tool_call>"),
            0.5,
            0.5,
            0.5,
            0.5,
            0.0,
        ),
        (
            "missing closing tag",
            format!("{paris}\n<tool_call>\n{{\"name\": \"get_current_weather\", \"arguments\": {{\"city\": \"Tokyo\"}}}}"),
            1.0,
            1.0,
            1.0,
            1.0,
            1.0,
        ),
        ("unknown name", call("get_weather", json!({"city": "Paris"})), 1.0, 0.0, 0.0, 0.0, 0.0),
        ("schema violation", call("get_current_weather", json!({"city": 3})), 1.0, 0.0, 0.0, 0.0, 0.0),
        ("missing required", call("get_current_weather", json!({"units": "metric"})), 1.0, 0.0, 0.0, 0.0, 0.0),
        ("exec error (unknown city)", call("get_current_weather", json!({"city": "Atlantis"})), 1.0, 1.0, 0.0, 0.0, 0.0),
        (
            "exec error (bad enum)",
            call("get_current_weather", json!({"city": "Paris", "units": "kelvin"})),
            1.0,
            1.0,
            0.0,
            0.0,
            0.0,
        ),
        ("plain text", "It is sunny in Paris.".into(), 0.0, 0.0, 0.0, 0.0, 0.0),
        ("empty", String::new(), 0.0, 0.0, 0.0, 0.0, 0.0),
    ];
    for (name, text, p, sc, ex, sem_p, sem_b) in table {
        let a = partial.score(&s, &text);
        let c = a.components;
        assert!(
            approx(c.parse, p) && approx(c.schema, sc) && approx(c.exec, ex) && approx(c.semantic, sem_p),
            "{name}: got {c:?} details {:?}",
            a.details
        );
        assert!(approx(a.total, (p + sc + ex + sem_p) / 4.0), "{name}: total {}", a.total);
        let b = binary.score(&s, &text);
        assert!(approx(b.components.semantic, sem_b), "{name}: binary {:?}", b.components);
        assert_eq!(a.version, partial.version());
        assert!((0.0..=1.0).contains(&a.total));
    }
    // Strict closing-tag mode halves parse.
    let strict = Scorer::new(RewardConfig {
        require_close_tag: true,
        ..RewardConfig::default()
    })
    .expect("cfg");
    let unclosed = "<tool_call>\n{\"name\": \"get_current_weather\", \"arguments\": {\"city\": \"Paris\"}}";
    let sc = strict.score(&s, unclosed);
    assert!(approx(sc.components.parse, 0.5) && sc.details.unclosed_block, "{sc:?}");
    // Case-sensitive strings config.
    let cs = Scorer::new(RewardConfig {
        case_insensitive_strings: false,
        ..RewardConfig::default()
    })
    .expect("cfg");
    let lower = format!("{}\n{tokyo}", call("get_current_weather", json!({"city": "paris"})));
    assert!(approx(cs.score(&s, &lower).components.semantic, 0.5));
}

#[test]
fn no_tool_records() {
    let s = xlam_sample("Write a poem about the sea.", "[]");
    assert_eq!(s.expected, Expected::Text(None));
    let sc = Scorer::default();
    let plain = sc.score(&s, "The sea is wide and deep,\nits secrets it will keep.");
    assert!(approx(plain.total, 1.0), "{plain:?}");
    let with_think = sc.score(&s, "<think>\nNo tool fits.\n</think>\n\nHere is a poem.");
    assert!(approx(with_think.total, 1.0));
    let halluc = sc.score(&s, &call("get_current_weather", json!({"city": "Paris"})));
    assert!(approx(halluc.total, 0.0), "{halluc:?}");
    let mixed = sc.score(&s, &format!("Sure! {}", call("get_current_weather", json!({"city": "Paris"}))));
    assert!(approx(mixed.total, 0.0));
    let empty = sc.score(&s, "   ");
    assert!(approx(empty.components.parse, 0.0) && approx(empty.components.schema, 1.0));
}

#[test]
fn numbers_and_defaults() {
    let s = xlam_sample(
        "Convert 100 USD to EUR",
        r#"[{"name": "convert_currency", "arguments": {"amount": 100, "from_currency": "USD", "to_currency": "EUR"}}]"#,
    );
    let sc = Scorer::default();
    let r = sc.score(&s, &call("convert_currency", json!({"amount": 100.0, "from_currency": "usd", "to_currency": "EUR"})));
    assert!(approx(r.total, 1.0), "{r:?}");
    let wrong = sc.score(&s, &call("convert_currency", json!({"amount": 101, "from_currency": "USD", "to_currency": "EUR"})));
    assert!(approx(wrong.components.semantic, 0.0) && approx(wrong.components.exec, 1.0));
    // Optional param given with its default value still matches.
    let w = weather_sample();
    let both = format!(
        "{}\n{}",
        call("get_current_weather", json!({"city": "Paris", "units": "metric"})),
        call("get_current_weather", json!({"city": "Tokyo"}))
    );
    assert!(approx(sc.score(&w, &both).total, 1.0));
    let non_default = call("get_current_weather", json!({"city": "Paris", "units": "imperial"}));
    assert!(approx(sc.score(&w, &non_default).components.semantic, 0.0));
}

#[test]
fn config_toml_and_version() {
    let c = RewardConfig::from_toml_str(
        "semantic_mode = \"binary\"\n[weights]\nparse = 0.1\nschema = 0.2\nexec = 0.2\nsemantic = 0.5\n",
    )
    .expect("toml");
    assert_eq!(c.semantic_mode, SemanticMode::Binary);
    assert!(approx(c.weights.semantic, 0.5));
    let d = RewardConfig::from_toml_str("").expect("empty = defaults");
    assert_eq!(d, RewardConfig::default());
    assert_eq!(d.version(), RewardConfig::default().version());
    assert_ne!(c.version(), d.version());
    assert_eq!(d.version().len(), 12);
    assert!(d.version().bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(RewardConfig::from_toml_str("[weights]\nparse = -1.0").is_err());
    assert!(RewardConfig::from_toml_str("[weights]\nparse = 0.0\nschema = 0.0\nexec = 0.0\nsemantic = 0.0").is_err());
    assert!(RewardConfig::from_toml_str("bogus = 1").is_err());
    // Weighted total.
    let s = weather_sample();
    let sc = Scorer::new(c).expect("cfg");
    let r = sc.score(&s, &call("get_current_weather", json!({"city": "Atlantis"})));
    assert!(approx(r.total, 0.1 * 1.0 + 0.2 * 1.0), "{r:?}");
}

#[test]
fn gold_answers_of_generated_data_score_full_marks() {
    let sc = Scorer::new(RewardConfig {
        semantic_mode: SemanticMode::Binary,
        ..RewardConfig::default()
    })
    .expect("cfg");
    let mut recs = generate(1500, 5);
    recs.extend(generate_heldout(300, 5));
    let mut buf = Vec::new();
    fc_data::write_xlam_json(&recs, &mut buf).expect("write");
    let mut n = 0;
    for l in load(&buf[..], Format::Xlam, None) {
        let s = l.expect("io").result.expect("sample");
        let gold = match &s.expected {
            Expected::Calls(c) => render_calls(&c.iter().map(|c| ToolCall::new(c.name.clone(), c.arguments.clone())).collect::<Vec<_>>()),
            _ => "I'm sorry, none of my tools can help with that, but here is an answer.".to_string(),
        };
        let r = sc.score(&s, &gold);
        assert!(approx(r.total, 1.0), "gold answer of {} scored {r:?}\n{gold}", s.id);
        n += 1;
    }
    assert_eq!(n, 1800);
}

#[test]
fn every_catalogue_tool_has_an_implementation() {
    for t in CATALOGUE {
        assert!(MockExecutor::has_impl(t.name), "{} has no mock implementation", t.name);
    }
}

#[test]
fn executor_runtime_checks() {
    let ex = MockExecutor::default();
    let run = |n: &str, a: Value| ex.execute_catalogue(n, &a);
    assert!(run("get_uv_index", json!({"city": "Paris", "date": "2025-02-30"})).is_err());
    assert!(run("get_uv_index", json!({"city": "Gotham", "date": "2025-02-03"})).is_err());
    assert!(run("calculate_average", json!({"numbers": []})).is_err());
    assert!(run("calculate_average", json!({"numbers": ["a"]})).is_err());
    assert!(run("calculate_factorial", json!({"n": 21})).is_err());
    assert!(run("search_hotels", json!({"city": "Paris", "check_in": "2025-05-10", "check_out": "2025-05-09"})).is_err());
    assert!(run("send_email", json!({"to": "not-an-email", "subject": "x", "body": "y"})).is_err());
    assert!(run("nope", json!({})).is_err());
    // Real results.
    assert_eq!(run("calculate_average", json!({"numbers": [1, 2, 3, 4]})).ok(), Some(json!({"average": 2.5, "count": 4})));
    assert_eq!(run("find_prime_factors", json!({"number": 360})).ok().map(|v| v["factors"].clone()), Some(json!([2, 2, 2, 3, 3, 5])));
    assert_eq!(run("days_between_dates", json!({"start_date": "2025-01-01", "end_date": "2025-03-01"})).ok(), Some(json!({"days": 59})));
    assert_eq!(run("get_day_of_week", json!({"date": "2025-07-04"})).ok().map(|v| v["weekday"].clone()), Some(json!("Friday")));
    assert_eq!(
        run("convert_currency", json!({"amount": 100, "from_currency": "USD", "to_currency": "EUR"})).ok().map(|v| v["converted"].clone()),
        Some(json!(92.0))
    );
    assert_eq!(
        run("convert_temperature", json!({"value": 100, "from_scale": "celsius", "to_scale": "fahrenheit"})).ok().map(|v| v["result"].clone()),
        Some(json!(212.0))
    );
    assert!(run("convert_temperature", json!({"value": -500, "from_scale": "celsius", "to_scale": "kelvin"})).is_err());
    // Deterministic fake data, independent of key order.
    let a = run("get_current_weather", json!({"city": "Paris", "units": "metric"})).ok();
    let b = run("get_current_weather", json!({"units": "metric", "city": "Paris"})).ok();
    assert!(a.is_some() && a == b);
    // Budget: factorizing a large prime with a tiny budget stops.
    let tight = MockExecutor::new(100);
    assert_eq!(
        tight.execute_catalogue("find_prime_factors", &json!({"number": 999_999_999_989i64})),
        Err(fc_rewards::ExecError::Budget)
    );
    assert!(ex.execute_catalogue("find_prime_factors", &json!({"number": 999_999_999_989i64})).is_ok());
}

#[test]
fn generic_mock_and_bfcl_scoring() {
    let q = json!({"id": "simple_0", "question": [[{"role": "user", "content": "Area of a triangle with base 10 and height 5?"}]],
        "function": [{"name": "calculate_triangle_area", "description": "Area.", "parameters": {"type": "dict", "properties": {
            "base": {"type": "integer"}, "height": {"type": "integer"}, "unit": {"type": "string"}}, "required": ["base", "height"]}}]}).to_string();
    let answers = fc_data::BfclAnswers::from_reader(
        json!({"id": "simple_0", "ground_truth": [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]})
            .to_string()
            .as_bytes(),
    )
    .expect("answers");
    let s = load(q.as_bytes(), Format::Bfcl, Some(answers)).next().and_then(|r| r.ok()).and_then(|l| l.result.ok()).expect("sample");
    assert!(matches!(&s.expected, Expected::Bfcl(g) if g == &vec![BfclCall { name: "calculate_triangle_area".into(), allowed: serde_json::from_value(json!({"base": [10], "height": [5], "unit": ["units", ""]})).unwrap_or_default() }]));
    let sc = Scorer::default();
    let ok = sc.score(&s, &call("calculate_triangle_area", json!({"base": 10, "height": 5})));
    assert!(approx(ok.total, 1.0), "{ok:?}");
    let ok2 = sc.score(&s, &call("calculate_triangle_area", json!({"base": 10.0, "height": 5, "unit": "Units"})));
    assert!(approx(ok2.total, 1.0), "{ok2:?}");
    let wrong = sc.score(&s, &call("calculate_triangle_area", json!({"base": 10, "height": 6})));
    assert!(approx(wrong.components.semantic, 0.0) && approx(wrong.components.exec, 1.0), "{wrong:?}");
    let extra_arg = sc.score(&s, &call("calculate_triangle_area", json!({"base": 10, "height": 5, "color": "red"})));
    assert!(approx(extra_arg.components.semantic, 0.0));
    // Generic mock rejects schema violations.
    let ex = MockExecutor::default();
    assert!(ex.execute(&s.tools[0], &json!({"base": "x", "height": 5})).is_err());
    let r1 = ex.execute(&s.tools[0], &json!({"base": 1, "height": 5}));
    assert!(r1.is_ok() && r1 == ex.execute(&s.tools[0], &json!({"height": 5, "base": 1})));
}

#[test]
fn scoring_throughput() {
    // Informational: prints completions/second (test profile, opt-level 1).
    let recs = generate(200, 77);
    let mut buf = Vec::new();
    fc_data::write_xlam_json(&recs, &mut buf).expect("write");
    let samples: Vec<Sample> = load(&buf[..], Format::Xlam, None).filter_map(|l| l.ok()).filter_map(|l| l.result.ok()).collect();
    let sc = Scorer::default();
    let comps: Vec<(usize, String)> = samples
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            let gold = render_calls(&s.expected.representative_calls().into_iter().map(|c| ToolCall::new(c.name, c.arguments)).collect::<Vec<_>>());
            vec![(i, gold.clone()), (i, gold.replace("\"}", "\"")), (i, format!("<think>\nhmm\n</think>\n\n{gold}")), (i, "plain text".to_string())]
        })
        .collect();
    let t = Instant::now();
    let mut total = 0.0;
    for _ in 0..5 {
        for (i, c) in &comps {
            total += sc.score(&samples[*i], c).total;
        }
    }
    let el = t.elapsed();
    let n = comps.len() * 5;
    eprintln!("scored {n} completions in {el:?}: {:.0}/s (sum {total:.1})", n as f64 / el.as_secs_f64());
    assert!(el.as_secs_f64() < 20.0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn scoring_never_panics(text in ".{0,400}") {
        let s = weather_sample();
        let r = Scorer::default().score(&s, &text);
        prop_assert!((0.0..=1.0).contains(&r.total));
    }

    #[test]
    fn scoring_never_panics_on_tag_soup(parts in proptest::collection::vec(prop_oneof![
        Just("<tool_call>".to_string()), Just("</tool_call>".to_string()), Just("<think>".to_string()),
        Just("</think>".to_string()), Just("{\"name\": \"get_current_weather\", \"arguments\": ".to_string()),
        Just("{\"city\": \"Paris\"}}".to_string()), Just("{\"city\": 1e999}}".to_string()), Just("\n".to_string()),
        "[a-z{}\\[\\]\":,0-9 ]{0,12}"
    ], 0..20)) {
        let text: String = parts.concat();
        let s = weather_sample();
        let r = Scorer::default().score(&s, &text);
        prop_assert!((0.0..=1.0).contains(&r.total));
        let t = Scorer::default().score(&xlam_sample("hi", "[]"), &text);
        prop_assert!((0.0..=1.0).contains(&t.total));
    }

    #[test]
    fn executor_never_panics(city in ".{0,20}", n in proptest::num::f64::ANY, days in proptest::num::i64::ANY) {
        let ex = MockExecutor::default();
        for t in CATALOGUE {
            let args = json!({"city": city, "days": days, "number": n, "n": days, "value": n, "numbers": [n, days],
                "date": city, "from_unit": city, "to_unit": "km", "limit": days});
            let _ = ex.execute_catalogue(t.name, &args);
        }
    }
}

#[test]
fn scorer_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Scorer>();
    assert_send_sync::<MockExecutor>();
    assert_send_sync::<fc_rewards::Prepared<'static>>();
    let s = weather_sample();
    let sc = Scorer::default();
    let p = sc.prepare(&s);
    let text = call("get_current_weather", json!({"city": "Paris"}));
    let totals: Vec<f64> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..2).map(|_| scope.spawn(|| sc.score_prepared(&p, &text).total)).collect();
        hs.into_iter().map(|h| h.join().unwrap_or(-1.0)).collect()
    });
    assert!(totals.iter().all(|t| approx(*t, totals[0])) && totals[0] > 0.0);
}
