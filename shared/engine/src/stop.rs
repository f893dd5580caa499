//! Stop strings on streamed text.
//!
//! Text is emitted incrementally, but a stop string may arrive split over several tokens
//! and must not appear in the output. So the tail of the text that could still be the
//! start of a stop string is held back until it is either completed (then the output is
//! cut right before the match) or ruled out (then it is emitted).

/// Tracks emitted / held-back text of one sequence.
#[derive(Debug, Default)]
pub struct StopText {
    stops: Vec<String>,
    emitted: String,
    pending: String,
}

/// Result of feeding one text delta.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    /// Text that became final.
    pub delta: String,
    /// The stop string that matched (the sequence must end).
    pub matched: Option<String>,
}

impl StopText {
    pub fn new(stops: Vec<String>) -> Self {
        StopText {
            stops,
            ..Default::default()
        }
    }

    /// All final text so far.
    pub fn text(&self) -> &str {
        &self.emitted
    }

    /// Adds decoded text; with `finish` everything not matching a stop string is released.
    pub fn feed(&mut self, text: &str, finish: bool) -> Fed {
        self.pending.push_str(text);
        // Any match starts inside `pending`: a match starting earlier would have had its
        // beginning held back.
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|p| (p, s)))
            .min_by_key(|&(p, s)| (p, std::cmp::Reverse(s.len())));
        if let Some((p, s)) = first {
            let matched = s.clone();
            let delta = self.pending[..p].to_string();
            self.emitted.push_str(&delta);
            self.pending.clear();
            return Fed {
                delta,
                matched: Some(matched),
            };
        }
        let hold = if finish { 0 } else { self.held_suffix() };
        let cut = self.pending.len() - hold;
        let delta: String = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        self.emitted.push_str(&delta);
        Fed {
            delta,
            matched: None,
        }
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop string.
    fn held_suffix(&self) -> usize {
        let mut best = 0;
        for (i, _) in self.pending.char_indices() {
            let suf = &self.pending[i..];
            if self
                .stops
                .iter()
                .any(|s| s.len() > suf.len() && s.starts_with(suf))
            {
                best = suf.len();
                break;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_stop_is_cut() {
        let mut s = StopText::new(vec!["</end>".into()]);
        assert_eq!(s.feed("hello <", false).delta, "hello ");
        assert_eq!(s.feed("/e", false).delta, "");
        let f = s.feed("nd> tail", false);
        assert_eq!(f.delta, "");
        assert_eq!(f.matched.as_deref(), Some("</end>"));
        assert_eq!(s.text(), "hello ");
    }

    #[test]
    fn false_start_is_released() {
        let mut s = StopText::new(vec!["ab".into(), "é!".into()]);
        assert_eq!(s.feed("xa", false).delta, "x");
        assert_eq!(s.feed("c", false).delta, "ac");
        assert_eq!(s.feed("é", false).delta, "");
        assert_eq!(s.feed("", true).delta, "é");
        assert_eq!(s.text(), "xacé");
        let mut s = StopText::new(vec![]);
        assert_eq!(s.feed("abc", false).delta, "abc");
    }
}
