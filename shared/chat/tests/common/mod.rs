#![allow(dead_code)]

use fc_chat::Tokenizer;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The real Qwen3 tokenizer lives in the shared folder beside the repository
/// (/work/shared/qwen3-tokenizer for the checkout /work/main).
pub fn tokenizer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/qwen3-tokenizer")
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/chat")
}

/// Load once per test binary. A missing tokenizer is a failure, never a skip: these tests
/// are the only guard that our prompts match transformers.
pub fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = tokenizer_dir();
        match Tokenizer::from_dir(&dir) {
            Ok(t) => t,
            Err(e) => panic!(
                "cannot load the Qwen3 tokenizer from {} ({e}); it must be present as \
                 shared/qwen3-tokenizer beside the repository checkout",
                dir.display()
            ),
        }
    })
}
