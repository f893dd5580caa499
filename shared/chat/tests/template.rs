//! Template engine behaviour that the golden fixtures do not cover: request tolerance,
//! errors, transformers' tojson options and globals.

mod common;

use fc_chat::{ChatError, ChatMessage, ChatRequest, ChatTemplate, ToolSpec};
use fc_toolcall::ToolCall;
use serde_json::json;

fn qwen3() -> ChatTemplate {
    ChatTemplate::from_dir(common::tokenizer_dir()).unwrap_or_else(|e| {
        panic!(
            "Qwen3 chat template missing at {}: {e}",
            common::tokenizer_dir().display()
        )
    })
}

#[test]
fn openai_request_with_unknown_fields_parses() {
    let req: ChatRequest = serde_json::from_value(json!({
        "model": "qwen3", "stream": true, "temperature": 0.7, "tool_choice": "auto",
        "messages": [
            {"role": "user", "content": "hi", "extra": 1},
            {"role": "assistant", "content": null, "refusal": null,
             "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": [{"type": "text", "text": "ok"}]}
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    }))
    .expect("tolerant parse");
    assert_eq!(req.tools.as_ref().map(Vec::len), Some(1));
    assert_eq!(req.tools.as_ref().and_then(|t| t[0].name()), Some("f"));
    let text = qwen3().render(&req).expect("renders");
    assert!(
        text.contains("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>"),
        "{text}"
    );
    assert!(
        text.contains("<tool_response>\nok\n</tool_response>"),
        "{text}"
    );
    assert!(text.ends_with("<|im_start|>assistant\n"));
}

#[test]
fn builders_render_like_training_format() {
    let calls = vec![ToolCall::new(
        "get_weather",
        json!({"city": "Paris", "unit": "celsius"}),
    )];
    let req = ChatRequest {
        messages: vec![
            ChatMessage::user("Weather?"),
            ChatMessage::assistant_calls(None, &calls),
            ChatMessage::tool("call_0", "sunny"),
            ChatMessage::assistant("Sunny."),
        ],
        tools: Some(vec![ToolSpec::function(
            "get_weather",
            "Weather",
            json!({"type": "object"}),
        )]),
        add_generation_prompt: Some(false),
        ..Default::default()
    };
    let text = qwen3().render(&req).expect("renders");
    // The assistant turn contains exactly fc_toolcall's rendering: SFT targets and
    // inference prompts agree.
    let expected_turn = format!(
        "<|im_start|>assistant\n{}<|im_end|>\n",
        fc_toolcall::render_calls(&calls)
    );
    assert!(text.contains(&expected_turn), "{text}");
    // Qwen3 gives the final assistant turn after the last user query an (empty) think block.
    assert!(
        text.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\nSunny.<|im_end|>\n"),
        "{text}"
    );
}

#[test]
fn bad_requests_are_client_errors() {
    let t = qwen3();
    let bad_args: ChatRequest = serde_json::from_value(json!({"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}
    ]}))
    .expect("parses");
    let err = t.render(&bad_args).expect_err("invalid arguments");
    assert!(
        matches!(err, ChatError::InvalidRequest(_)) && err.is_client_error(),
        "{err}"
    );

    let image: ChatRequest = serde_json::from_value(json!({"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    ]}))
    .expect("parses");
    assert!(matches!(
        t.render(&image),
        Err(ChatError::InvalidRequest(_))
    ));

    // No messages: the Qwen3 template indexes messages[0]; must be an error, not a panic.
    assert!(t.render(&ChatRequest::default()).is_err());
}

#[test]
fn transformers_tojson_options_and_globals() {
    let t = ChatTemplate::new(
        "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(sort_keys=true, ensure_ascii=true) }}|{{ s | tojson }}",
    )
    .expect("compiles");
    let mut ctx = serde_json::Map::new();
    ctx.insert("messages".into(), json!([]));
    ctx.insert(
        "x".into(),
        serde_json::from_str(r#"{"b": [1, 2.0], "a": "é<&>"}"#).expect("json"),
    );
    ctx.insert("s".into(), json!("it's \"q\""));
    assert_eq!(
        t.render_context(ctx).expect("renders"),
        "{\"b\": [1, 2.0], \"a\": \"é<&>\"}|{\n  \"b\": [\n    1,\n    2.0\n  ],\n  \"a\": \"é<&>\"\n}|{\"a\": \"\\u00e9<&>\", \"b\": [1, 2.0]}|\"it's \\\"q\\\"\""
    );

    let t = ChatTemplate::new(
        "{% if messages|length == 0 %}{{ raise_exception('need messages') }}{% endif %}ok",
    )
    .expect("compiles");
    let mut ctx = serde_json::Map::new();
    ctx.insert("messages".into(), json!([]));
    let err = t.render_context(ctx).expect_err("raises");
    assert!(err.to_string().contains("need messages"), "{err}");
}

#[test]
fn jinja_whitespace_control_matches_hf() {
    // trim_blocks + lstrip_blocks, like transformers' environment.
    let t = ChatTemplate::new("{% for m in messages %}\n    {% if true %}\n[{{ m.role }}]\n    {% endif %}\n{% endfor %}\n")
        .expect("compiles");
    let req = ChatRequest::new(vec![ChatMessage::user("a"), ChatMessage::assistant("b")]);
    assert_eq!(t.render(&req).expect("renders"), "[user]\n[assistant]\n");
}

#[test]
fn syntax_errors_and_missing_templates() {
    assert!(matches!(
        ChatTemplate::new("{% if %}"),
        Err(ChatError::TemplateSyntax(_))
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        ChatTemplate::from_dir(dir.path()),
        Err(ChatError::NoChatTemplate(_))
    ));
    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"eos_token": "<e>", "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ eos_token }}D"}]}"#)
        .expect("write");
    let t = ChatTemplate::from_dir(dir.path()).expect("named templates");
    assert_eq!(
        t.render(&ChatRequest::new(vec![ChatMessage::user("x")]))
            .expect("renders"),
        "<e>D"
    );
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "J{{ messages|length }}",
    )
    .expect("write");
    let t = ChatTemplate::from_dir(dir.path()).expect("jinja file wins");
    assert_eq!(
        t.render(&ChatRequest::new(vec![ChatMessage::user("x")]))
            .expect("renders"),
        "J1"
    );
}

#[test]
fn thinking_flag_sources() {
    let t = qwen3();
    let mut req = ChatRequest::new(vec![ChatMessage::user("hi")]);
    assert!(t
        .render(&req)
        .expect("renders")
        .ends_with("<|im_start|>assistant\n"));
    req.enable_thinking = Some(false);
    assert!(t
        .render(&req)
        .expect("renders")
        .ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    req.enable_thinking = None;
    req.chat_template_kwargs =
        Some(serde_json::from_value(json!({"enable_thinking": false})).expect("map"));
    assert_eq!(req.enable_thinking(), Some(false));
    assert!(t
        .render(&req)
        .expect("renders")
        .ends_with("<think>\n\n</think>\n\n"));
}
