//! Tag segmentation shared by [`crate::parse`] and [`crate::StreamParser`].
//!
//! Both parsers run this one state machine so that a streamed output and the same output
//! parsed at once always agree on where blocks start and end. Text is buffered only while
//! its tail could still be the beginning of a tag, which is what lets tags split across
//! deltas (`"<tool"` + `"_call>"`) work.

use crate::{THINK_CLOSE, THINK_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Content,
    Reasoning,
    Call,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// Text belonging to the given mode.
    Text(Mode, String),
    ThinkOpen,
    ThinkClose,
    /// `</think>` in content before any `<think>`/`<tool_call>`: the text so far was reasoning.
    StrayThinkClose,
    CallOpen,
    /// End of a block: `</tool_call>`, the next `<tool_call>`, or the end of the output.
    CallClose,
}

#[derive(Debug, Clone, Copy)]
enum Tag {
    ToolOpen,
    ToolClose,
    ThinkOpen,
    ThinkClose,
}

impl Tag {
    fn text(self) -> &'static str {
        match self {
            Tag::ToolOpen => TOOL_CALL_OPEN,
            Tag::ToolClose => TOOL_CALL_CLOSE,
            Tag::ThinkOpen => THINK_OPEN,
            Tag::ThinkClose => THINK_CLOSE,
        }
    }
}

/// True when the first of `<think>`, `</think>`, `<tool_call>` in `text` is `</think>`:
/// the prompt opened the think block and everything before the close is reasoning.
pub(crate) fn starts_in_reasoning(text: &str) -> bool {
    let Some(close) = text.find(THINK_CLOSE) else {
        return false;
    };
    let before = |tag: &str| text.find(tag).is_none_or(|p| p > close);
    before(THINK_OPEN) && before(TOOL_CALL_OPEN)
}

pub(crate) struct Segmenter {
    mode: Mode,
    /// Think tags are only meaningful before the first call and only once.
    think_allowed: bool,
    buf: String,
}

impl Segmenter {
    pub(crate) fn new(mode: Mode) -> Self {
        Segmenter {
            mode,
            think_allowed: mode == Mode::Content,
            buf: String::new(),
        }
    }

    fn tags(&self) -> &'static [Tag] {
        match (self.mode, self.think_allowed) {
            (Mode::Content, true) => &[Tag::ToolOpen, Tag::ThinkOpen, Tag::ThinkClose],
            (Mode::Content, false) => &[Tag::ToolOpen],
            (Mode::Reasoning, _) => &[Tag::ThinkClose],
            (Mode::Call, _) => &[Tag::ToolClose, Tag::ToolOpen],
        }
    }

    pub(crate) fn push(&mut self, delta: &str, out: &mut Vec<Seg>) {
        self.buf.push_str(delta);
        self.drain(out, false);
    }

    pub(crate) fn finish(&mut self, out: &mut Vec<Seg>) {
        self.drain(out, true);
        if self.mode == Mode::Call {
            out.push(Seg::CallClose);
            self.mode = Mode::Content;
        }
    }

    fn emit_text(&self, text: &str, out: &mut Vec<Seg>) {
        if text.is_empty() {
            return;
        }
        if let Some(Seg::Text(m, t)) = out.last_mut() {
            if *m == self.mode {
                t.push_str(text);
                return;
            }
        }
        out.push(Seg::Text(self.mode, text.to_string()));
    }

    fn drain(&mut self, out: &mut Vec<Seg>, final_flush: bool) {
        loop {
            let found = self
                .tags()
                .iter()
                .filter_map(|t| self.buf.find(t.text()).map(|p| (p, *t)))
                .min_by_key(|(p, _)| *p);
            if let Some((pos, tag)) = found {
                let rest = self.buf.split_off(pos);
                let before = std::mem::replace(&mut self.buf, rest[tag.text().len()..].to_string());
                self.emit_text(&before, out);
                self.transition(tag, out);
                continue;
            }
            // No complete tag: keep back the longest tail that may still grow into one.
            let hold = if final_flush {
                0
            } else {
                self.tags()
                    .iter()
                    .map(|t| partial_suffix_len(&self.buf, t.text()))
                    .max()
                    .unwrap_or(0)
            };
            let keep = self.buf.split_off(self.buf.len() - hold);
            let text = std::mem::replace(&mut self.buf, keep);
            self.emit_text(&text, out);
            return;
        }
    }

    fn transition(&mut self, tag: Tag, out: &mut Vec<Seg>) {
        match (self.mode, tag) {
            (Mode::Content, Tag::ToolOpen) => {
                self.think_allowed = false;
                self.mode = Mode::Call;
                out.push(Seg::CallOpen);
            }
            (Mode::Content, Tag::ThinkOpen) => {
                self.think_allowed = false;
                self.mode = Mode::Reasoning;
                out.push(Seg::ThinkOpen);
            }
            (Mode::Content, Tag::ThinkClose) => {
                self.think_allowed = false;
                out.push(Seg::StrayThinkClose);
            }
            (Mode::Reasoning, Tag::ThinkClose) => {
                self.think_allowed = false;
                self.mode = Mode::Content;
                out.push(Seg::ThinkClose);
            }
            (Mode::Call, Tag::ToolClose) => {
                self.mode = Mode::Content;
                out.push(Seg::CallClose);
            }
            (Mode::Call, Tag::ToolOpen) => {
                out.push(Seg::CallClose);
                out.push(Seg::CallOpen);
            }
            // tags() never offers other combinations; treat them as text to stay total.
            (_, t) => self.emit_text(t.text(), out),
        }
    }
}

/// Length of the longest proper prefix of `tag` that `buf` ends with. Tags are ASCII, so
/// the returned length always cuts `buf` on a character boundary.
fn partial_suffix_len(buf: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&k| buf.ends_with(&tag[..k]))
        .unwrap_or(0)
}
