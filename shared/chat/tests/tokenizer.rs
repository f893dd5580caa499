//! Tokenizer wrapper and incremental detokenizer against the real Qwen3 vocabulary.

mod common;

use common::{tok, tokenizer_dir};
use fc_chat::{ChatError, Tokenizer};
use proptest::prelude::*;

#[test]
fn encode_matches_transformers() {
    let tok = tok();
    // Values from transformers: tokenizer("Hello world")["input_ids"] etc.
    assert_eq!(
        tok.encode("Hello world").expect("encodes"),
        vec![9707, 1879]
    );
    assert_eq!(
        tok.encode("你好，世界！😀👍🏽 naïve café 𝄞")
            .expect("encodes"),
        vec![108386, 3837, 99489, 6313, 141334, 144349, 145375, 94880, 586, 51950, 81250, 226, 252]
    );
    // Special-token text is recognised as one token, nothing is added around it.
    assert_eq!(
        tok.encode("<|im_start|>user\nhi").expect("encodes"),
        vec![151644, 872, 198, 6023]
    );
    assert_eq!(tok.encode("").expect("encodes"), Vec::<u32>::new());
}

#[test]
fn special_tokens_and_eos() {
    let tok = tok();
    let s = tok.special_tokens();
    assert_eq!(s.im_start, Some(151644));
    assert_eq!(s.im_end, Some(151645));
    assert_eq!(s.endoftext, Some(151643));
    assert_eq!(s.tool_call_open, Some(151657));
    assert_eq!(s.tool_call_close, Some(151658));
    assert_eq!(s.think_open, Some(151667));
    assert_eq!(s.think_close, Some(151668));
    assert_eq!(s.pad, Some(151643));
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert_eq!(tok.eos_token_ids(), &[151645]);
    assert!(tok.is_eos(151645));
    assert!(!tok.is_eos(151643));
    assert_eq!(tok.token_to_id("<tool_call>"), Some(151657));
    assert_eq!(tok.id_to_token(151668).as_deref(), Some("</think>"));
    assert!(tok.vocab_size() >= 151669);
    assert!(tok.chat_template().is_some());
}

#[test]
fn generation_config_adds_eos_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = tokenizer_dir();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::os::unix::fs::symlink(src.join(f), dir.path().join(f)).expect("symlink");
    }
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [151645, 151643], "top_k": 20}"#,
    )
    .expect("write");
    let t = Tokenizer::from_dir(dir.path()).expect("loads");
    assert_eq!(t.eos_token_ids(), &[151645, 151643]);

    std::fs::write(dir.path().join("generation_config.json"), "{not json").expect("write");
    assert!(matches!(
        Tokenizer::from_dir(dir.path()),
        Err(ChatError::Json { .. })
    ));
}

#[test]
fn missing_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        Tokenizer::from_dir(dir.path()),
        Err(ChatError::Io { .. })
    ));
    std::fs::write(dir.path().join("tokenizer.json"), "{}").expect("write");
    assert!(matches!(
        Tokenizer::from_dir(dir.path()),
        Err(ChatError::Tokenizer(_))
    ));
}

#[test]
fn decode_keeps_tool_tags_and_can_skip_specials() {
    let tok = tok();
    let ids = tok
        .encode("<think>\nok\n</think>\n\n<tool_call>\n{}\n</tool_call><|im_end|>")
        .expect("encodes");
    assert_eq!(
        tok.decode(&ids, false).expect("decodes"),
        "<think>\nok\n</think>\n\n<tool_call>\n{}\n</tool_call><|im_end|>"
    );
    assert_eq!(
        tok.decode(&ids, true).expect("decodes"),
        "<think>\nok\n</think>\n\n<tool_call>\n{}\n</tool_call>"
    );
}

fn stream_decode(tok: &Tokenizer, ids: &[u32], skip: bool) -> (String, Vec<String>) {
    let mut dec = tok.incremental_decoder(skip);
    let mut deltas = Vec::new();
    for &id in ids {
        deltas.push(dec.step(id).expect("step"));
    }
    deltas.push(dec.flush().expect("flush"));
    (deltas.concat(), deltas)
}

#[test]
fn incremental_decoder_never_splits_characters() {
    let tok = tok();
    let text = "你好，世界！😀👍🏽 naïve café 𝄞 — Ελληνικά, 日本語のテキスト 🇫🇷🇯🇵 end";
    let ids = tok.encode(text).expect("encodes");
    let (joined, deltas) = stream_decode(tok, &ids, false);
    assert_eq!(joined, text);
    assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
    // '𝄞' is split over three byte tokens: the first two steps must emit nothing.
    assert!(
        deltas.iter().filter(|d| d.is_empty()).count() >= 2,
        "{deltas:?}"
    );
}

#[test]
fn incremental_decoder_skips_specials_and_flushes_incomplete_tail() {
    let tok = tok();
    let mut ids = tok.encode("<|im_start|>assistant\nHi 😀").expect("encodes");
    ids.push(151645);
    let (joined, _) = stream_decode(tok, &ids, true);
    assert_eq!(joined, "assistant\nHi 😀");
    // A generation cut inside a character: held back, then flushed like a full decode.
    let ids = tok.encode("a𝄞").expect("encodes");
    let cut = &ids[..ids.len() - 1];
    let (joined, deltas) = stream_decode(tok, cut, false);
    assert_eq!(joined, tok.decode(cut, false).expect("decodes"));
    assert!(deltas[..deltas.len() - 1].concat() == "a", "{deltas:?}");
    // Out-of-vocabulary ids do not panic.
    let mut dec = tok.incremental_decoder(false);
    let _ = dec.step(u32::MAX);
    let _ = dec.flush();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn streamed_text_equals_full_decode(text in "[a-zA-Z0-9 ,.!?\n你好世界日本語éèçñüß😀👍🏽🇫🇷𝄞∑≈]{0,40}") {
        let tok = tok();
        let ids = tok.encode(&text).expect("encodes");
        let (joined, deltas) = stream_decode(tok, &ids, false);
        prop_assert_eq!(&joined, &text);
        let clean = deltas.iter().all(|d| !d.contains(char::REPLACEMENT_CHARACTER));
        prop_assert!(clean, "replacement character in {:?}", deltas);
    }
}
