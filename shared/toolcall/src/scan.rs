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

/// One piece of segmented output. `T` is `String` for the buffering (streaming) path and
/// `&str` for the one-shot path, which borrows from the complete text without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg<T = String> {
    /// Text belonging to the given mode.
    Text(Mode, T),
    ThinkOpen,
    ThinkClose,
    /// `</think>` in content before any `<think>`/`<tool_call>`: the text so far was reasoning.
    StrayThinkClose,
    CallOpen,
    /// End of a block: `</tool_call>`, the next `<tool_call>`, or the end of the output.
    CallClose,
}

/// Append a borrowed segment to an owned list, merging consecutive text of one mode.
fn push_owned(out: &mut Vec<Seg>, s: Seg<&str>) {
    let owned = match s {
        Seg::Text(m, t) => {
            if t.is_empty() {
                return;
            }
            if let Some(Seg::Text(lm, lt)) = out.last_mut() {
                if *lm == m {
                    lt.push_str(t);
                    return;
                }
            }
            Seg::Text(m, t.to_string())
        }
        Seg::ThinkOpen => Seg::ThinkOpen,
        Seg::ThinkClose => Seg::ThinkClose,
        Seg::StrayThinkClose => Seg::StrayThinkClose,
        Seg::CallOpen => Seg::CallOpen,
        Seg::CallClose => Seg::CallClose,
    };
    out.push(owned);
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
///
/// One forward pass over the `<` bytes instead of one `find` per tag: this runs on every
/// scored completion, and the three full-text searches showed up in reward profiles.
pub(crate) fn starts_in_reasoning(text: &str) -> bool {
    const TAGS: [Tag; 3] = [Tag::ThinkClose, Tag::ThinkOpen, Tag::ToolOpen];
    let mut pos = 0;
    while let Some(lt) = find_lt(text.as_bytes(), pos) {
        match match_at(text, lt, &TAGS) {
            TagAt::Full(tag) => return matches!(tag, Tag::ThinkClose),
            TagAt::Partial | TagAt::None => pos = lt + 1,
        }
    }
    false
}

/// Position of the next `<` at or after `from` (core's byte search is memchr-accelerated).
fn find_lt(bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .iter()
        .position(|&b| b == b'<')
        .map(|p| p + from)
}

/// What the text starting at a `<` is, relative to a set of tags.
enum TagAt {
    /// A complete tag.
    Full(Tag),
    /// The text ends inside what could still become one of the tags.
    Partial,
    None,
}

/// Classify `text[at..]` (where `text[at]` is `<`) against `tags`. All tags start with `<`
/// and contain no other `<`, and none is a prefix of another, so at most one can match.
fn match_at(text: &str, at: usize, tags: &[Tag]) -> TagAt {
    let rest = &text.as_bytes()[at..];
    let mut partial = false;
    for &t in tags {
        let tag = t.text().as_bytes();
        if rest.starts_with(tag) {
            return TagAt::Full(t);
        }
        if rest.len() < tag.len() && tag.starts_with(rest) {
            partial = true;
        }
    }
    if partial {
        TagAt::Partial
    } else {
        TagAt::None
    }
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

    #[cfg_attr(not(test), allow(dead_code))]
    fn emit_text(&self, text: &str, out: &mut Vec<Seg>) {
        push_owned(out, Seg::Text(self.mode, text));
    }

    /// Segment a complete output in one pass, borrowing text from it (for [`crate::parse`]).
    /// Same segments as `push(text)` + `finish()` on a fresh segmenter, without copies.
    pub(crate) fn scan_all<'a>(&mut self, text: &'a str, f: &mut impl FnMut(Seg<&'a str>)) {
        self.scan(text, true, f);
        if self.mode == Mode::Call {
            f(Seg::CallClose);
            self.mode = Mode::Content;
        }
    }

    /// Emit every complete tag and the text between tags, in a single forward scan over the
    /// `<` positions of `buf`, and return how much of `buf` was consumed. Text after the
    /// last tag is emitted too, except a tail that may still grow into a tag (unless
    /// `final_flush`): since tags begin with their only `<`, such a tail starts at the first
    /// `<` whose remainder is a proper prefix of an allowed tag, and no complete tag can
    /// follow it. (This replaced one `str::find` per tag per step, which dominated reward
    /// scoring.)
    fn scan<'a>(&mut self, buf: &'a str, final_flush: bool, f: &mut impl FnMut(Seg<&'a str>)) -> usize {
        // `start`: beginning of text not yet emitted; `pos`: where the `<` search resumes.
        let mut start = 0;
        let mut pos = 0;
        let mut hold_from = None;
        while let Some(lt) = find_lt(buf.as_bytes(), pos) {
            match match_at(buf, lt, self.tags()) {
                TagAt::Full(tag) => {
                    if lt > start {
                        f(Seg::Text(self.mode, &buf[start..lt]));
                    }
                    for s in self.transition_segs(tag).into_iter().flatten() {
                        f(s);
                    }
                    start = lt + tag.text().len();
                    pos = start;
                }
                TagAt::Partial if !final_flush => {
                    hold_from = Some(lt);
                    break;
                }
                TagAt::Partial | TagAt::None => pos = lt + 1,
            }
        }
        let end = hold_from.unwrap_or(buf.len());
        if end > start {
            f(Seg::Text(self.mode, &buf[start..end]));
        }
        end
    }

    fn drain(&mut self, out: &mut Vec<Seg>, final_flush: bool) {
        let mut buf = std::mem::take(&mut self.buf);
        let end = self.scan(&buf, final_flush, &mut |s| push_owned(out, s));
        // Reuse the allocation for what is held back.
        buf.drain(..end);
        self.buf = buf;
    }

    #[cfg_attr(not(test), allow(dead_code))]
    fn transition(&mut self, tag: Tag, out: &mut Vec<Seg>) {
        for s in self.transition_segs(tag).into_iter().flatten() {
            push_owned(out, s);
        }
    }

    /// Apply `tag` to the state; returns the (at most two) segments it produces.
    fn transition_segs(&mut self, tag: Tag) -> [Option<Seg<&'static str>>; 2] {
        match (self.mode, tag) {
            (Mode::Content, Tag::ToolOpen) => {
                self.think_allowed = false;
                self.mode = Mode::Call;
                [Some(Seg::CallOpen), None]
            }
            (Mode::Content, Tag::ThinkOpen) => {
                self.think_allowed = false;
                self.mode = Mode::Reasoning;
                [Some(Seg::ThinkOpen), None]
            }
            (Mode::Content, Tag::ThinkClose) => {
                self.think_allowed = false;
                [Some(Seg::StrayThinkClose), None]
            }
            (Mode::Reasoning, Tag::ThinkClose) => {
                self.think_allowed = false;
                self.mode = Mode::Content;
                [Some(Seg::ThinkClose), None]
            }
            (Mode::Call, Tag::ToolClose) => {
                self.mode = Mode::Content;
                [Some(Seg::CallClose), None]
            }
            (Mode::Call, Tag::ToolOpen) => [Some(Seg::CallClose), Some(Seg::CallOpen)],
            // tags() never offers other combinations; treat them as text to stay total.
            (_, t) => [Some(Seg::Text(self.mode, t.text())), None],
        }
    }
}

/// Differential tests: the single-scan segmenter must produce exactly the segments of the
/// original one-`find`-per-tag algorithm (kept here as the reference) for any input split.
#[cfg(test)]
mod reference {
    use super::*;
    use proptest::prelude::*;

    fn ref_starts_in_reasoning(text: &str) -> bool {
        let Some(close) = text.find(THINK_CLOSE) else {
            return false;
        };
        let before = |tag: &str| text.find(tag).is_none_or(|p| p > close);
        before(THINK_OPEN) && before(TOOL_CALL_OPEN)
    }

    fn partial_suffix_len(buf: &str, tag: &str) -> usize {
        (1..tag.len())
            .rev()
            .find(|&k| buf.ends_with(&tag[..k]))
            .unwrap_or(0)
    }

    /// The pre-optimisation `Segmenter::drain`, verbatim in behaviour.
    fn ref_drain(s: &mut Segmenter, out: &mut Vec<Seg>, final_flush: bool) {
        loop {
            let found = s
                .tags()
                .iter()
                .filter_map(|t| s.buf.find(t.text()).map(|p| (p, *t)))
                .min_by_key(|(p, _)| *p);
            if let Some((pos, tag)) = found {
                let rest = s.buf.split_off(pos);
                let before = std::mem::replace(&mut s.buf, rest[tag.text().len()..].to_string());
                s.emit_text(&before, out);
                s.transition(tag, out);
                continue;
            }
            let hold = if final_flush {
                0
            } else {
                s.tags()
                    .iter()
                    .map(|t| partial_suffix_len(&s.buf, t.text()))
                    .max()
                    .unwrap_or(0)
            };
            let keep = s.buf.split_off(s.buf.len() - hold);
            let text = std::mem::replace(&mut s.buf, keep);
            s.emit_text(&text, out);
            return;
        }
    }

    fn run(parts: &[String], start: Mode, reference: bool) -> Vec<Seg> {
        let mut s = Segmenter::new(start);
        let mut out = Vec::new();
        for p in parts {
            s.buf.push_str(p);
            if reference {
                ref_drain(&mut s, &mut out, false);
            } else {
                s.drain(&mut out, false);
            }
            // Per-push boundaries matter to the stream parser: compare them too.
            out.push(Seg::Text(Mode::Call, "|".into()));
        }
        if reference {
            ref_drain(&mut s, &mut out, true);
            if s.mode == Mode::Call {
                out.push(Seg::CallClose);
            }
        } else {
            s.finish(&mut out);
        }
        out
    }

    proptest! {
        #[test]
        fn single_scan_matches_reference(
            pieces in prop::collection::vec(prop_oneof![
                Just("<tool_call>"), Just("</tool_call>"), Just("<think>"), Just("</think>"),
                Just("<"), Just("</"), Just("<tool"), Just("</thi"), Just("<<"), Just("é<"),
                Just("x"), Just("{\"name\": \"f\"}"), Just(" \n"),
            ], 0..24),
            cuts in prop::collection::vec(0usize..400, 0..12),
            reasoning in any::<bool>(),
        ) {
            let text: String = pieces.concat();
            prop_assert_eq!(starts_in_reasoning(&text), ref_starts_in_reasoning(&text));
            let mut points: Vec<usize> = cuts
                .iter()
                .map(|c| c % (text.len() + 1))
                .filter(|&c| text.is_char_boundary(c))
                .collect();
            points.sort_unstable();
            points.dedup();
            let mut parts = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain(std::iter::once(text.len())) {
                parts.push(text[last..p].to_string());
                last = p;
            }
            let start = if reasoning { Mode::Reasoning } else { Mode::Content };
            prop_assert_eq!(run(&parts, start, false), run(&parts, start, true));
            // The borrowing one-shot path (`parse`) against the reference on the whole text.
            let mut fast = Vec::new();
            Segmenter::new(start).scan_all(&text, &mut |s| push_owned(&mut fast, s));
            let mut r = Segmenter::new(start);
            r.buf.push_str(&text);
            let mut slow = Vec::new();
            ref_drain(&mut r, &mut slow, true);
            if r.mode == Mode::Call {
                slow.push(Seg::CallClose);
            }
            prop_assert_eq!(fast, slow);
        }
    }
}
