//! Constant-memory record splitting: a top-level JSON array is read
//! element by element (a small byte-level splitter that tracks string and
//! nesting state), JSONL line by line. Only one record is held in memory at
//! a time, so the 60k-record xLAM file (~100 MB) streams in a few MB.

use std::io::{BufRead, BufReader, Read};

use crate::error::{DataError, Reject, RejectReason};

/// Default maximum size of one record; larger records are skipped and
/// rejected as `too_large` so a corrupt file cannot exhaust memory.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// One raw record.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// 0-based record index.
    pub position: u64,
    /// The record text, or why it could not be read (invalid UTF-8, too
    /// large).
    pub text: Result<String, Reject>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Detect,
    Array,
    Lines,
    Done,
}

/// Splits an input stream into raw records. Auto-detects a top-level JSON
/// array (first non-blank byte `[`) versus JSONL.
pub struct RecordReader<R: Read> {
    inner: BufReader<R>,
    mode: Mode,
    position: u64,
    bytes_read: u64,
    max_record: usize,
    buf: Vec<u8>,
}

impl<R: Read> RecordReader<R> {
    /// A reader with the default record size limit.
    pub fn new(input: R) -> Self {
        Self::with_limit(input, DEFAULT_MAX_RECORD_BYTES)
    }

    /// A reader that rejects records larger than `max_record` bytes.
    pub fn with_limit(input: R, max_record: usize) -> Self {
        RecordReader {
            inner: BufReader::with_capacity(256 * 1024, input),
            mode: Mode::Detect,
            position: 0,
            bytes_read: 0,
            max_record: max_record.max(16),
            buf: Vec::new(),
        }
    }

    /// Bytes consumed from the input so far (for progress reporting).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    fn consume(&mut self, n: usize) {
        self.inner.consume(n);
        self.bytes_read += n as u64;
    }

    /// Skips whitespace (and a UTF-8 BOM); returns the next byte without
    /// consuming it, or `None` at EOF.
    fn peek_non_ws(&mut self) -> std::io::Result<Option<u8>> {
        loop {
            let chunk = self.inner.fill_buf()?;
            if chunk.is_empty() {
                return Ok(None);
            }
            let mut skip = 0;
            let mut found = None;
            for &b in chunk {
                if b.is_ascii_whitespace() || b == 0xEF || b == 0xBB || b == 0xBF {
                    skip += 1;
                } else {
                    found = Some(b);
                    break;
                }
            }
            self.consume(skip);
            if found.is_some() {
                return Ok(found);
            }
        }
    }

    /// Reads one array element into `self.buf`. Returns `(ended_array,
    /// overflowed)`. Consumes the terminating `,` or `]`.
    fn read_element(&mut self) -> std::io::Result<(bool, bool)> {
        self.buf.clear();
        let mut depth: usize = 0;
        let mut in_str = false;
        let mut esc = false;
        let mut overflow = false;
        loop {
            let chunk = self.inner.fill_buf()?;
            if chunk.is_empty() {
                // EOF inside an element or before `]`: treat as end.
                return Ok((true, overflow));
            }
            let mut end: Option<(usize, bool)> = None;
            for (i, &b) in chunk.iter().enumerate() {
                if in_str {
                    if esc {
                        esc = false;
                    } else if b == b'\\' {
                        esc = true;
                    } else if b == b'"' {
                        in_str = false;
                    }
                    continue;
                }
                match b {
                    b'"' => in_str = true,
                    b'{' | b'[' => depth += 1,
                    b'}' => depth = depth.saturating_sub(1),
                    b']' => {
                        if depth == 0 {
                            end = Some((i, true));
                            break;
                        }
                        depth -= 1;
                    }
                    b',' if depth == 0 => {
                        end = Some((i, false));
                        break;
                    }
                    _ => {}
                }
            }
            let take = match end {
                Some((i, _)) => i,
                None => chunk.len(),
            };
            if !overflow {
                if self.buf.len() + take > self.max_record {
                    overflow = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(&chunk[..take]);
                }
            }
            match end {
                Some((i, ended)) => {
                    self.consume(i + 1);
                    return Ok((ended, overflow));
                }
                None => {
                    let n = chunk.len();
                    self.consume(n);
                }
            }
        }
    }

    /// Reads one line into `self.buf` (without the newline). Returns
    /// `(eof_before_any_byte, overflowed)`.
    fn read_line(&mut self) -> std::io::Result<(bool, bool)> {
        self.buf.clear();
        let mut overflow = false;
        let mut any = false;
        loop {
            let chunk = self.inner.fill_buf()?;
            if chunk.is_empty() {
                return Ok((!any, overflow));
            }
            any = true;
            let nl = chunk.iter().position(|&b| b == b'\n');
            let take = nl.unwrap_or(chunk.len());
            if !overflow {
                if self.buf.len() + take > self.max_record {
                    overflow = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(&chunk[..take]);
                }
            }
            match nl {
                Some(i) => {
                    self.consume(i + 1);
                    return Ok((false, overflow));
                }
                None => {
                    let n = chunk.len();
                    self.consume(n);
                }
            }
        }
    }

    fn make_record(&mut self, overflow: bool) -> RawRecord {
        let position = self.position;
        self.position += 1;
        if overflow {
            return RawRecord {
                position,
                text: Err(Reject::new(
                    RejectReason::TooLarge,
                    format!("record larger than {} bytes", self.max_record),
                    position,
                )),
            };
        }
        let bytes = std::mem::take(&mut self.buf);
        let text = match String::from_utf8(bytes) {
            Ok(s) => Ok(s),
            Err(e) => Err(Reject::new(
                RejectReason::InvalidJson,
                format!("invalid UTF-8: {}", e.utf8_error()),
                position,
            )),
        };
        RawRecord { position, text }
    }

    fn next_record(&mut self) -> std::io::Result<Option<RawRecord>> {
        loop {
            match self.mode {
                Mode::Done => return Ok(None),
                Mode::Detect => match self.peek_non_ws()? {
                    None => {
                        self.mode = Mode::Done;
                    }
                    Some(b'[') => {
                        self.consume(1);
                        self.mode = Mode::Array;
                    }
                    Some(_) => self.mode = Mode::Lines,
                },
                Mode::Array => {
                    match self.peek_non_ws()? {
                        None => {
                            self.mode = Mode::Done;
                            continue;
                        }
                        Some(b']') => {
                            self.consume(1);
                            self.mode = Mode::Done;
                            continue;
                        }
                        Some(b',') => {
                            // Empty element / trailing comma: skip.
                            self.consume(1);
                            continue;
                        }
                        Some(_) => {}
                    }
                    let (ended, overflow) = self.read_element()?;
                    if ended {
                        self.mode = Mode::Done;
                    }
                    // Trim trailing whitespace.
                    while self.buf.last().is_some_and(|b| b.is_ascii_whitespace()) {
                        self.buf.pop();
                    }
                    if self.buf.is_empty() && !overflow {
                        continue;
                    }
                    return Ok(Some(self.make_record(overflow)));
                }
                Mode::Lines => {
                    let (eof, overflow) = self.read_line()?;
                    if eof {
                        self.mode = Mode::Done;
                        continue;
                    }
                    let blank = self.buf.iter().all(|b| b.is_ascii_whitespace());
                    if blank && !overflow {
                        continue;
                    }
                    return Ok(Some(self.make_record(overflow)));
                }
            }
        }
    }
}

impl<R: Read> Iterator for RecordReader<R> {
    type Item = Result<RawRecord, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_record() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => None,
            Err(e) => {
                self.mode = Mode::Done;
                Some(Err(DataError::Io(e)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(input: &str) -> Vec<Result<String, RejectReason>> {
        RecordReader::new(input.as_bytes())
            .map(|r| match r {
                Ok(r) => r.text.map_err(|e| e.reason),
                Err(_) => Err(RejectReason::Unsupported),
            })
            .collect()
    }

    #[test]
    fn array_elements() {
        let got = texts(r#" [ {"a": "x,]}"}, {"b": [1, 2, {"c": "\"]"}]} ,3, "s" ] "#);
        assert_eq!(
            got,
            vec![
                Ok(r#"{"a": "x,]}"}"#.to_string()),
                Ok(r#"{"b": [1, 2, {"c": "\"]"}]}"#.to_string()),
                Ok("3".to_string()),
                Ok(r#""s""#.to_string()),
            ]
        );
    }

    #[test]
    fn empty_and_truncated() {
        assert!(texts("[]").is_empty());
        assert!(texts("").is_empty());
        assert!(texts("  \n ").is_empty());
        let got = texts(r#"[{"a": 1}, {"b": "#);
        assert_eq!(got.len(), 2);
        assert!(serde_json::from_str::<serde_json::Value>(got[1].as_ref().map(|s| s.as_str()).unwrap_or("")).is_err());
    }

    #[test]
    fn jsonl_lines() {
        let got = texts("{\"a\":1}\n\n  \n{\"b\":2}\r\nnot json\n{\"c\":3}");
        assert_eq!(got.len(), 4);
        assert_eq!(got[3], Ok("{\"c\":3}".to_string()));
    }

    #[test]
    fn size_limit_and_utf8() {
        let big = format!("[{{\"a\": \"{}\"}}, {{\"b\": 1}}]", "x".repeat(100));
        let got: Vec<_> = RecordReader::with_limit(big.as_bytes(), 50)
            .map(|r| r.ok().map(|r| r.text.map_err(|e| e.reason)))
            .collect();
        assert_eq!(got[0], Some(Err(RejectReason::TooLarge)));
        assert_eq!(got[1], Some(Ok("{\"b\": 1}".to_string())));
        let bad = b"{\"a\": \"\xff\"}\n{\"b\":1}\n";
        let got: Vec<_> = RecordReader::new(&bad[..])
            .map(|r| r.ok().map(|r| r.text.map_err(|e| e.reason)))
            .collect();
        assert_eq!(got[0], Some(Err(RejectReason::InvalidJson)));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn tiny_buffer_boundaries() {
        // Records straddling BufReader refills must still split correctly.
        let mut s = String::from("[");
        for i in 0..2000 {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!("{{\"id\": {i}, \"q\": \"a, b ] }} \\\" [\"}}"));
        }
        s.push(']');
        let n = RecordReader::new(s.as_bytes())
            .filter(|r| r.as_ref().is_ok_and(|r| r.text.as_ref().is_ok_and(|t| serde_json::from_str::<serde_json::Value>(t).is_ok())))
            .count();
        assert_eq!(n, 2000);
    }
}
