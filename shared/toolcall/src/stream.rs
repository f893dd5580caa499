//! Incremental parsing of model output for OpenAI-style streaming.
//!
//! The gateway receives generated text delta by delta and must forward `content`,
//! `reasoning_content` and `tool_calls` chunks as soon as they are known, with the same
//! result [`crate::parse`] gives on the full text. Events follow OpenAI semantics: a call's
//! name is announced once ([`StreamEvent::ToolCallStart`]), then its arguments arrive as
//! [`StreamEvent::ToolCallArgs`] deltas whose concatenation is the compact JSON that
//! [`crate::ToolCall::arguments_json`] returns (`{}` for parameterless calls).
//!
//! Arguments are streamed while they are generated when the block starts in the canonical
//! form `{"name": "...", "arguments": {` (what the model is trained to emit); each JSON
//! token is re-serialized the way serde_json prints it, so the deltas add up to the exact
//! compact text. Any other shape is buffered and sent in one delta when the block ends.
//! A block that turns out malformed yields [`StreamEvent::Malformed`]; if its start was
//! already sent, the event carries that call index so the client can drop the call.

use crate::scan::{Mode, Seg, Segmenter};
use crate::{parse_call_json, THINK_CLOSE};

/// One streaming event. `index` in call events is the 0-based position of the call among the
/// calls announced so far (OpenAI's `tool_calls[].index`); call ids are the caller's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Assistant text outside calls and reasoning. Leading and trailing whitespace of the
    /// whole content is withheld, so the concatenation equals [`crate::ParsedOutput::content`].
    Content(String),
    /// Text of the think block, whitespace handled like `Content`.
    Reasoning(String),
    /// A call begins; its name is final.
    ToolCallStart { index: usize, name: String },
    /// The next piece of the call's compact arguments JSON.
    ToolCallArgs { index: usize, delta: String },
    /// The call is complete and valid.
    ToolCallEnd { index: usize },
    /// Block number `block` is not a valid call. `index` is set when a `ToolCallStart` was
    /// already sent for it (that call must be discarded); that index is not reused.
    Malformed {
        block: usize,
        index: Option<usize>,
        reason: String,
    },
}

/// Streaming counterpart of [`crate::parse`]. Feed deltas with [`StreamParser::push`], then
/// call [`StreamParser::finish`] once generation ends. Never panics on any input.
pub struct StreamParser {
    seg: Segmenter,
    content: Trimmer,
    reasoning: Trimmer,
    call: Option<CallState>,
    blocks: usize,
    next_call: usize,
    segs: Vec<Seg>,
}

impl Default for StreamParser {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamParser {
    /// Parser for an output that starts as content (`<think>` is recognised if generated).
    ///
    /// A `</think>` arriving before any `<think>`/`<tool_call>` switches to content from then
    /// on, but text already emitted as `Content` cannot be recalled: when the prompt itself
    /// ends inside an open think block, use [`StreamParser::in_reasoning`].
    pub fn new() -> Self {
        Self::with_mode(Mode::Content)
    }

    /// Parser for an output whose think block was opened by the prompt (templates that
    /// append `<think>\n` to the generation prompt): everything up to `</think>` is reasoning.
    pub fn in_reasoning() -> Self {
        Self::with_mode(Mode::Reasoning)
    }

    /// Choose [`StreamParser::in_reasoning`] when `prompt`'s last think tag is an unclosed
    /// `<think>`, [`StreamParser::new`] otherwise.
    pub fn for_prompt(prompt: &str) -> Self {
        let open = prompt.rfind(crate::THINK_OPEN);
        let close = prompt.rfind(THINK_CLOSE);
        match (open, close) {
            (Some(o), Some(c)) if o > c => Self::in_reasoning(),
            (Some(_), None) => Self::in_reasoning(),
            _ => Self::new(),
        }
    }

    fn with_mode(mode: Mode) -> Self {
        StreamParser {
            seg: Segmenter::new(mode),
            content: Trimmer::default(),
            reasoning: Trimmer::default(),
            call: None,
            blocks: 0,
            next_call: 0,
            segs: Vec::new(),
        }
    }

    /// Feed the next piece of generated text; returns the events it completes.
    pub fn push(&mut self, delta: &str) -> Vec<StreamEvent> {
        let mut segs = std::mem::take(&mut self.segs);
        segs.clear();
        self.seg.push(delta, &mut segs);
        let mut events = Vec::new();
        for s in segs.drain(..) {
            self.handle(s, &mut events);
        }
        self.segs = segs;
        events
    }

    /// Flush everything held back (partial tags, an unclosed final block).
    pub fn finish(mut self) -> Vec<StreamEvent> {
        let mut segs = Vec::new();
        self.seg.finish(&mut segs);
        let mut events = Vec::new();
        for s in segs {
            self.handle(s, &mut events);
        }
        // Trailing whitespace of content/reasoning is dropped, as `parse` trims it.
        events
    }

    fn handle(&mut self, seg: Seg, events: &mut Vec<StreamEvent>) {
        match seg {
            Seg::Text(Mode::Content, t) => {
                if let Some(s) = self.content.push(&t) {
                    events.push(StreamEvent::Content(s));
                }
            }
            Seg::Text(Mode::Reasoning, t) => {
                if let Some(s) = self.reasoning.push(&t) {
                    events.push(StreamEvent::Reasoning(s));
                }
            }
            Seg::Text(Mode::Call, t) => {
                if let Some(call) = self.call.as_mut() {
                    call.push(&t, &mut self.next_call, events);
                }
            }
            Seg::ThinkOpen | Seg::ThinkClose | Seg::StrayThinkClose => {}
            Seg::CallOpen => {
                self.call = Some(CallState::new(self.blocks));
                self.blocks += 1;
            }
            Seg::CallClose => {
                if let Some(call) = self.call.take() {
                    call.finish(&mut self.next_call, events);
                }
            }
        }
    }
}

/// Withholds leading and trailing whitespace so streamed text equals the trimmed text.
#[derive(Default)]
struct Trimmer {
    started: bool,
    pending: String,
}

impl Trimmer {
    fn push(&mut self, text: &str) -> Option<String> {
        let text = if self.started {
            text
        } else {
            text.trim_start()
        };
        let body = text.trim_end();
        if body.is_empty() {
            if self.started {
                self.pending.push_str(text);
            }
            return None;
        }
        self.started = true;
        let mut out = std::mem::take(&mut self.pending);
        out.push_str(body);
        self.pending.push_str(&text[body.len()..]);
        Some(out)
    }
}

/// One `<tool_call>` block in progress.
struct CallState {
    block: usize,
    raw: String,
    head: Head,
    /// Call index once `ToolCallStart` has been sent.
    index: Option<usize>,
    name: String,
    args: Option<ArgStreamer>,
    streamed: String,
}

enum Head {
    Pending,
    Matched,
    Buffered,
}

impl CallState {
    fn new(block: usize) -> Self {
        CallState {
            block,
            raw: String::new(),
            head: Head::Pending,
            index: None,
            name: String::new(),
            args: None,
            streamed: String::new(),
        }
    }

    fn push(&mut self, text: &str, next_call: &mut usize, events: &mut Vec<StreamEvent>) {
        self.raw.push_str(text);
        match self.head {
            Head::Buffered => {}
            Head::Matched => self.feed_args(text, events),
            Head::Pending => match match_head(&self.raw) {
                HeadMatch::NeedMore => {}
                HeadMatch::No => self.head = Head::Buffered,
                HeadMatch::Yes { name, value_at } => {
                    let index = *next_call;
                    *next_call += 1;
                    self.index = Some(index);
                    self.name = name.clone();
                    self.head = Head::Matched;
                    events.push(StreamEvent::ToolCallStart { index, name });
                    self.args = Some(ArgStreamer::default());
                    let rest = self.raw[value_at..].to_string();
                    self.feed_args(&rest, events);
                }
            },
        }
    }

    fn feed_args(&mut self, text: &str, events: &mut Vec<StreamEvent>) {
        let (Some(args), Some(index)) = (self.args.as_mut(), self.index) else {
            return;
        };
        let delta = args.feed(text);
        if !delta.is_empty() {
            self.streamed.push_str(&delta);
            events.push(StreamEvent::ToolCallArgs { index, delta });
        }
    }

    fn finish(self, next_call: &mut usize, events: &mut Vec<StreamEvent>) {
        let call = match parse_call_json(&self.raw) {
            Ok(call) => call,
            Err(e) => {
                events.push(StreamEvent::Malformed {
                    block: self.block,
                    index: self.index,
                    reason: e.to_string(),
                });
                return;
            }
        };
        let full = call.arguments_json();
        match self.index {
            Some(index) => {
                // Holds unless the block repeats a key ("name" twice, duplicate argument keys).
                let rest = (call.name == self.name)
                    .then(|| full.strip_prefix(self.streamed.as_str()))
                    .flatten();
                match rest {
                    Some(rest) => {
                        if !rest.is_empty() {
                            events.push(StreamEvent::ToolCallArgs {
                                index,
                                delta: rest.to_string(),
                            });
                        }
                        events.push(StreamEvent::ToolCallEnd { index });
                    }
                    None => events.push(StreamEvent::Malformed {
                        block: self.block,
                        index: Some(index),
                        reason: "streamed call diverged from the final block (duplicate keys?)"
                            .to_string(),
                    }),
                }
            }
            None => {
                let index = *next_call;
                *next_call += 1;
                events.push(StreamEvent::ToolCallStart {
                    index,
                    name: call.name,
                });
                events.push(StreamEvent::ToolCallArgs { index, delta: full });
                events.push(StreamEvent::ToolCallEnd { index });
            }
        }
    }
}

enum HeadMatch {
    NeedMore,
    No,
    Yes { name: String, value_at: usize },
}

/// Match the canonical block start `{"name": "<name>", "arguments": {` (whitespace free,
/// `parameters` accepted), returning the decoded name and where the arguments value begins.
fn match_head(raw: &str) -> HeadMatch {
    let mut c = Cursor { s: raw, pos: 0 };
    macro_rules! step {
        ($e:expr) => {
            match $e {
                Step::Ok(v) => v,
                Step::More => return HeadMatch::NeedMore,
                Step::No => return HeadMatch::No,
            }
        };
    }
    step!(c.ws());
    step!(c.lit("{"));
    step!(c.ws());
    let key = step!(c.string());
    if key != "name" {
        return HeadMatch::No;
    }
    step!(c.ws());
    step!(c.lit(":"));
    step!(c.ws());
    let name = step!(c.string());
    if name.trim().is_empty() {
        return HeadMatch::No;
    }
    step!(c.ws());
    step!(c.lit(","));
    step!(c.ws());
    let key = step!(c.string());
    if key != "arguments" && key != "parameters" {
        return HeadMatch::No;
    }
    step!(c.ws());
    step!(c.lit(":"));
    step!(c.ws());
    match c.s[c.pos..].chars().next() {
        None => HeadMatch::NeedMore,
        Some('{') => HeadMatch::Yes {
            name,
            value_at: c.pos,
        },
        Some(_) => HeadMatch::No,
    }
}

enum Step<T> {
    Ok(T),
    More,
    No,
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    /// Skip whitespace; needs at least one more character to know what follows.
    fn ws(&mut self) -> Step<()> {
        let rest = self.rest();
        let trimmed = rest.trim_start_matches([' ', '\t', '\n', '\r']);
        self.pos += rest.len() - trimmed.len();
        if trimmed.is_empty() {
            Step::More
        } else {
            Step::Ok(())
        }
    }

    fn lit(&mut self, lit: &str) -> Step<()> {
        let rest = self.rest();
        if rest.starts_with(lit) {
            self.pos += lit.len();
            Step::Ok(())
        } else if lit.starts_with(rest) {
            Step::More
        } else {
            Step::No
        }
    }

    /// A complete JSON string literal, decoded.
    fn string(&mut self) -> Step<String> {
        let rest = self.rest();
        if !rest.starts_with('"') {
            return if rest.is_empty() {
                Step::More
            } else {
                Step::No
            };
        }
        let mut escaped = false;
        for (i, ch) in rest.char_indices().skip(1) {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                let lit = &rest[..=i];
                return match serde_json::from_str::<String>(lit) {
                    Ok(s) => {
                        self.pos += i + 1;
                        Step::Ok(s)
                    }
                    Err(_) => Step::No,
                };
            }
        }
        Step::More
    }
}

/// Re-serializes one JSON value token by token as serde_json's compact writer would print it,
/// so that the emitted pieces concatenate to `serde_json::to_string(&value)`.
#[derive(Default)]
struct ArgStreamer {
    depth: usize,
    done: bool,
    started: bool,
    tok: Tok,
}

#[derive(Default)]
enum Tok {
    #[default]
    None,
    /// Inside a string; `esc` holds an escape sequence still being read.
    Str { esc: String },
    /// A number or literal (`true`, `false`, `null`) being read.
    Scalar(String),
}

impl ArgStreamer {
    fn feed(&mut self, text: &str) -> String {
        let mut out = String::new();
        for ch in text.chars() {
            if self.done {
                break;
            }
            self.char(ch, &mut out);
        }
        out
    }

    fn char(&mut self, ch: char, out: &mut String) {
        match &mut self.tok {
            Tok::Str { esc } => {
                if !esc.is_empty() {
                    esc.push(ch);
                    if let Some(decoded) = finish_escape(esc) {
                        out.push_str(&decoded);
                        esc.clear();
                    }
                } else if ch == '\\' {
                    esc.push(ch);
                } else if ch == '"' {
                    out.push('"');
                    self.tok = Tok::None;
                } else {
                    push_json_char(out, ch);
                }
                return;
            }
            Tok::Scalar(s) => {
                if ch.is_ascii_alphanumeric() || matches!(ch, '+' | '-' | '.') {
                    s.push(ch);
                    return;
                }
                let scalar = std::mem::take(s);
                self.tok = Tok::None;
                out.push_str(&reserialize_scalar(&scalar));
                if self.depth == 0 && self.started {
                    self.done = true;
                    return;
                }
            }
            Tok::None => {}
        }
        match ch {
            ' ' | '\t' | '\n' | '\r' => {}
            '{' | '[' => {
                self.started = true;
                self.depth += 1;
                out.push(ch);
            }
            '}' | ']' => {
                out.push(ch);
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 0 {
                    self.done = true;
                }
            }
            ',' | ':' => out.push(ch),
            '"' => {
                self.started = true;
                out.push('"');
                self.tok = Tok::Str { esc: String::new() };
            }
            c => {
                self.started = true;
                self.tok = Tok::Scalar(c.to_string());
            }
        }
    }
}

/// Decode a complete escape sequence (`\n`, `\u00e9`, a `\ud83d\ude00` pair) and return it as
/// serde_json would write the character; `None` while more characters are needed. Invalid
/// escapes are passed through (the final parse reports the block as malformed).
fn finish_escape(esc: &str) -> Option<String> {
    let b = esc.as_bytes();
    if b.len() < 2 {
        return None;
    }
    if b[1] != b'u' {
        return Some(decode_escape(esc));
    }
    if b.len() < 6 {
        return None;
    }
    let hi = esc.get(2..6).and_then(|h| u32::from_str_radix(h, 16).ok());
    match hi {
        Some(h) if (0xD800..0xDC00).contains(&h) => {
            if b.len() < 12 {
                // A high surrogate must be followed by `\uXXXX`; stop waiting if it is not.
                let plausible = b[6..].iter().enumerate().all(|(i, &c)| match i {
                    0 => c == b'\\',
                    1 => c == b'u',
                    _ => c.is_ascii_hexdigit(),
                });
                return if plausible {
                    None
                } else {
                    Some(esc.to_string())
                };
            }
            Some(decode_escape(esc))
        }
        _ => Some(decode_escape(esc)),
    }
}

fn decode_escape(esc: &str) -> String {
    match serde_json::from_str::<String>(&format!("\"{esc}\"")) {
        Ok(s) => {
            let mut out = String::new();
            for c in s.chars() {
                push_json_char(&mut out, c);
            }
            out
        }
        Err(_) => esc.to_string(),
    }
}

/// One string character as serde_json's compact writer escapes it.
fn push_json_char(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{08}' => out.push_str("\\b"),
        '\u{0c}' => out.push_str("\\f"),
        c if (c as u32) < 0x20 => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let v = c as usize;
            out.push_str("\\u00");
            out.push(HEX[v >> 4] as char);
            out.push(HEX[v & 0xf] as char);
        }
        c => out.push(c),
    }
}

fn reserialize_scalar(s: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v) if !v.is_object() && !v.is_array() && !v.is_string() => {
            serde_json::to_string(&v).unwrap_or_else(|_| s.to_string())
        }
        _ => s.to_string(),
    }
}
