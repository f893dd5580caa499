//! Golden tests: our rendering and tokenization must equal transformers' byte for byte.
//! Fixtures come from scripts/gen_chat_fixtures.py.

mod common;

use common::{fixtures_dir, tok};
use fc_chat::{ChatRequest, ChatTemplate};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    request: ChatRequest,
    text: String,
    token_ids: Vec<u32>,
}

fn load_fixtures() -> Vec<(String, Fixture)> {
    let dir = fixtures_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "fixtures missing at {} ({e}); run scripts/gen_chat_fixtures.py",
            dir.display()
        )
    });
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.expect("readable dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable fixture");
        let fx: Fixture =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        out.push((name, fx));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn first_diff(a: &str, b: &str) -> String {
    let pos = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map(|((i, _), _)| i)
        .unwrap_or(a.len().min(b.len()));
    let ctx = |s: &str| {
        s.get(pos.saturating_sub(40)..)
            .unwrap_or("")
            .chars()
            .take(80)
            .collect::<String>()
    };
    format!(
        "first difference at byte {pos}:\n ours:   {:?}\n theirs: {:?}",
        ctx(a),
        ctx(b)
    )
}

#[test]
fn fixtures_match_transformers_exactly() {
    let fixtures = load_fixtures();
    assert!(
        fixtures.len() >= 12,
        "expected at least 12 fixtures, found {}",
        fixtures.len()
    );
    let tok = tok();
    let mut failures = Vec::new();
    for (name, fx) in &fixtures {
        match tok.apply_chat_template(&fx.request) {
            Ok((text, ids)) => {
                if text != fx.text {
                    failures.push(format!(
                        "{name}: text differs; {}",
                        first_diff(&text, &fx.text)
                    ));
                } else if ids != fx.token_ids {
                    failures.push(format!(
                        "{name}: token ids differ ({} vs {})",
                        ids.len(),
                        fx.token_ids.len()
                    ));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn template_renders_from_config_alone() {
    // The template does not need tokenizer.json: `fcmesh chat-template` may run on a
    // directory holding only tokenizer_config.json.
    let tmpl = ChatTemplate::from_dir(common::tokenizer_dir()).expect("template loads");
    for (name, fx) in load_fixtures() {
        assert_eq!(
            tmpl.render(&fx.request).expect("renders"),
            fx.text,
            "{name}"
        );
    }
}

#[test]
fn fixture_ids_decode_back_to_text() {
    let tok = tok();
    for (name, fx) in load_fixtures() {
        assert_eq!(
            tok.decode(&fx.token_ids, false).expect("decodes"),
            fx.text,
            "{name}"
        );
    }
}

#[test]
fn string_and_object_arguments_render_identically() {
    let fixtures = load_fixtures();
    let (_, fx) = fixtures
        .iter()
        .find(|(n, _)| n == "arguments_string_vs_object")
        .expect("fixture present");
    let a = "<tool_call>\n{\"name\": \"search_flights\", \"arguments\": {\"origin\": \"SFO\", \"destination\": \"LAX\", \"max_price\": 120.0}}\n</tool_call>";
    assert_eq!(fx.text.matches(a).count(), 2, "{}", fx.text);
}

#[test]
fn prompt_completion_split_is_consistent_with_full_rendering() {
    let tok = tok();
    let mut checked = 0;
    for (name, fx) in load_fixtures() {
        let ends_with_assistant =
            fx.request.messages.last().map(|m| m.role.as_str()) == Some("assistant");
        if !ends_with_assistant || fx.request.add_generation_prompt() {
            continue;
        }
        let (prompt, prompt_ids, completion, completion_ids) = tok
            .apply_chat_template_split(&fx.request)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(format!("{prompt}{completion}"), fx.text, "{name}");
        assert_eq!(
            [prompt_ids, completion_ids].concat(),
            fx.token_ids,
            "{name}"
        );
        assert!(
            completion.ends_with("<|im_end|>\n"),
            "{name}: {completion:?}"
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "only {checked} fixtures end with an assistant turn"
    );
}
