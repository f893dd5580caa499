//! Model commands: `fcmesh generate`, `fcmesh chat-template`.

use std::path::Path;

use anyhow::{bail, Context};
use fc_chat::{ChatRequest, Tokenizer};
use fc_model::{DType, GenerateParams, Model};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct GenerateOutput {
    /// Ids of the generated part only.
    pub token_ids: Vec<u32>,
    pub text: String,
}

/// Raw-prompt generation: the prompt is tokenized as given (no chat template, no BOS unless
/// the tokenizer itself adds one), as `transformers` `generate` on `tokenizer(prompt)` does.
pub fn generate(model_dir: &Path, prompt: &str, params: &GenerateParams) -> anyhow::Result<GenerateOutput> {
    let tok = Tokenizer::from_dir(model_dir).with_context(|| format!("loading the tokenizer from {}", model_dir.display()))?;
    let ids = tok.encode(prompt)?;
    if ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let device = fc_model::device::from_env()?;
    let mut model = Model::load(model_dir, &device, DType::F32)
        .with_context(|| format!("loading the model from {}", model_dir.display()))?;
    model.pack_for_inference()?;
    let out = fc_model::generate(&model, &ids, params)?;
    let text = tok.decode(&out, false)?;
    Ok(GenerateOutput { token_ids: out, text })
}

#[derive(Debug, Serialize)]
pub struct TemplateOutput {
    pub text: String,
    pub token_ids: Vec<u32>,
}

/// Renders an OpenAI-style request (messages, tools) with the model's own chat template.
/// `model_dir` may hold only tokenizer files.
pub fn chat_template(model_dir: &Path, request_file: &Path) -> anyhow::Result<TemplateOutput> {
    let body = std::fs::read_to_string(request_file).with_context(|| format!("reading {}", request_file.display()))?;
    let req: ChatRequest =
        serde_json::from_str(&body).with_context(|| format!("{} is not a chat request", request_file.display()))?;
    let tok = Tokenizer::from_dir(model_dir).with_context(|| format!("loading the tokenizer from {}", model_dir.display()))?;
    let (text, token_ids) = tok.apply_chat_template(&req)?;
    Ok(TemplateOutput { text, token_ids })
}
