//! Dataset samples as chat requests: the one place that decides how a training example
//! is rendered, so SFT, evaluation, rollouts and tokenizer training agree.

use fc_data::{Expected, Role, Sample};
use fc_toolcall::ToolCall;

use crate::{ChatMessage, ChatRequest, ToolSpec};

fn calls(c: &[fc_data::Call]) -> Vec<ToolCall> {
    c.iter().map(|c| ToolCall::new(&c.name, c.arguments.clone())).collect()
}

fn base(s: &Sample) -> ChatRequest {
    let messages = s
        .messages
        .iter()
        .map(|m| match m.role {
            Role::System => ChatMessage::system(m.content.clone()),
            Role::User => ChatMessage::user(m.content.clone()),
            Role::Tool => ChatMessage::tool(m.name.clone().unwrap_or_default(), m.content.clone()),
            Role::Assistant if !m.tool_calls.is_empty() => {
                ChatMessage::assistant_calls(Some(m.content.clone()).filter(|c| !c.is_empty()), &calls(&m.tool_calls))
            }
            Role::Assistant => ChatMessage::assistant(m.content.clone()),
        })
        .collect();
    let tools: Vec<ToolSpec> =
        s.tools.iter().map(|t| ToolSpec::function(&t.name, &t.description, t.parameters.clone())).collect();
    ChatRequest {
        messages,
        tools: if tools.is_empty() { None } else { Some(tools) },
        add_generation_prompt: None,
        enable_thinking: None,
        chat_template_kwargs: None,
    }
}

/// The prompt a model sees for `s`: its messages and tools, with the generation prompt.
pub fn prompt_request(s: &Sample) -> ChatRequest {
    let mut r = base(s);
    r.add_generation_prompt = Some(true);
    r
}

/// The assistant turn a sample teaches when no tool fits and its source gives no text
/// (xLAM rows with `answers: []`, BFCL irrelevance). Without a target these samples would
/// be dropped from training and the model would never learn to abstain; any non-empty
/// text without a call is what the evaluator counts as a correct abstention.
pub const NO_CALL_REPLY: &str = "None of the available tools can help with this request.";

/// The full training conversation: the prompt plus the expected answer as the assistant
/// turn (its tool calls, the plain-text answer when the source gives one, or
/// [`NO_CALL_REPLY`]).
pub fn training_request(s: &Sample) -> ChatRequest {
    let mut r = base(s);
    match &s.expected {
        Expected::Calls(c) => r.messages.push(ChatMessage::assistant_calls(None, &calls(c))),
        Expected::Bfcl(_) => r.messages.push(ChatMessage::assistant_calls(None, &calls(&s.expected.representative_calls()))),
        Expected::Text(Some(t)) => r.messages.push(ChatMessage::assistant(t.clone())),
        Expected::Text(None) => r.messages.push(ChatMessage::assistant(NO_CALL_REPLY)),
    }
    r.add_generation_prompt = Some(false);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_sample_renders_with_its_answer() {
        let recs = fc_data::generate(60, 3);
        let mut buf = Vec::new();
        fc_data::write_xlam_json(&recs, &mut buf).expect("write");
        // The real Qwen3 template, beside the checkout (see tests/common).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/qwen3-tokenizer");
        let t = crate::ChatTemplate::from_dir(&dir)
            .unwrap_or_else(|e| panic!("the Qwen3 tokenizer files must be at {}: {e}", dir.display()));
        let mut with_calls = 0;
        let mut abstain = 0;
        for item in fc_data::load(buf.as_slice(), fc_data::Format::Xlam, None) {
            let s = item.expect("read").result.expect("valid");
            let full = t.render(&training_request(&s)).expect("render");
            let prompt = t.render(&prompt_request(&s)).expect("render");
            assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
            assert!(full.contains("# Tools"));
            if let Expected::Calls(c) = &s.expected {
                if !c.is_empty() {
                    with_calls += 1;
                    assert!(full.contains("<tool_call>"), "{full}");
                    assert!(full.contains(&format!("\"name\": \"{}\"", c[0].name)), "{full}");
                }
            }
            if let Expected::Text(None) = &s.expected {
                abstain += 1;
                assert!(full.ends_with(&format!("{NO_CALL_REPLY}<|im_end|>\n")), "{full}");
                assert!(!full.get(prompt.len()..).unwrap_or("").contains("<tool_call>"), "{full}");
            }
        }
        assert!(with_calls > 10);
        // The generator mixes in requests no offered tool can serve (about one in ten).
        assert!(abstain > 0, "no abstention sample among 60");
    }
}
