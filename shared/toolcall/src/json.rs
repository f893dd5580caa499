//! Python-compatible JSON serialization.
//!
//! Hugging Face's chat templates render tool schemas and tool-call arguments with Jinja's
//! `tojson` filter, which transformers implements as `json.dumps(x, ensure_ascii=False)`.
//! The prompt the model was trained on therefore uses Python's separators (`", "` and `": "`),
//! Python's float `repr`, and raw (unescaped) non-ASCII characters. Any byte of difference
//! changes the token ids, so both the renderer here and the chat crate's `tojson` filter go
//! through [`to_json_pythonic`].

use serde_json::{Number, Value};
use std::fmt::Write as _;

/// Serialize `v` exactly like Python's `json.dumps(v, ensure_ascii=False)`.
///
/// Object keys keep their insertion order (the workspace enables serde_json's
/// `preserve_order`), matching Python dicts. Known deviation: integers beyond the u64/i64
/// range are already floats inside `serde_json::Value` and print as floats.
pub fn to_json_pythonic(v: &Value) -> String {
    to_json_python(v, &PyJsonOptions::default())
}

/// The `json.dumps` keyword arguments that chat templates pass to `tojson`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PyJsonOptions {
    /// `indent=N`: pretty-print with N spaces (Python then uses `","` as item separator).
    pub indent: Option<usize>,
    /// `sort_keys=True`.
    pub sort_keys: bool,
    /// `ensure_ascii=True`: escape non-ASCII as `\uXXXX` (surrogate pairs above the BMP).
    pub ensure_ascii: bool,
}

/// Serialize `v` like Python's `json.dumps(v, indent=.., sort_keys=.., ensure_ascii=..)`.
pub fn to_json_python(v: &Value, opts: &PyJsonOptions) -> String {
    let mut out = String::new();
    write_value(&mut out, v, opts, 0);
    out
}

fn newline_indent(out: &mut String, opts: &PyJsonOptions, level: usize) {
    if let Some(n) = opts.indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', n * level));
    }
}

fn write_value(out: &mut String, v: &Value, opts: &PyJsonOptions, level: usize) {
    let item_sep = if opts.indent.is_some() { "," } else { ", " };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string_opts(out, s, opts.ensure_ascii),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline_indent(out, opts, level + 1);
                write_value(out, item, opts, level + 1);
            }
            newline_indent(out, opts, level);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline_indent(out, opts, level + 1);
                write_string_opts(out, k, opts.ensure_ascii);
                out.push_str(": ");
                write_value(out, item, opts, level + 1);
            }
            newline_indent(out, opts, level);
            out.push('}');
        }
    }
}

fn write_string_opts(out: &mut String, s: &str, ensure_ascii: bool) {
    if !ensure_ascii {
        write_string(out, s);
        return;
    }
    let mut tmp = String::new();
    write_string(&mut tmp, s);
    // Python's ASCII mode escapes everything outside ' '..='~' (DEL included).
    for c in tmp.chars() {
        if c.is_ascii() && c != '\u{7f}' {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                let _ = write!(out, "\\u{:04x}", unit);
            }
        }
    }
}

/// Python's `json` escapes only `"`, `\\` and control characters when `ensure_ascii=False`;
/// control characters other than the five short forms use lowercase `\u00XX`.
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_number(out: &mut String, n: &Number) {
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(f) = n.as_f64() {
        out.push_str(&python_float_repr(f));
    } else {
        // Unreachable without serde_json's arbitrary_precision; fall back to its own text.
        out.push_str(&n.to_string());
    }
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation when the decimal
/// exponent is in `-4..=15` (always with a fractional part, e.g. `1.0`), otherwise
/// scientific with a signed, at least two-digit exponent (`1e-05`, `1.5e+16`).
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7", "1e16", "0e0".
    let sci = format!("{:e}", f);
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = (exp + 1) as usize;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn separators_and_order_match_python() {
        let v: Value = serde_json::from_str(r#"{"b": 1, "a": [1, 2, {"z": null, "y": true}]}"#)
            .expect("valid json");
        assert_eq!(
            to_json_pythonic(&v),
            r#"{"b": 1, "a": [1, 2, {"z": null, "y": true}]}"#
        );
        assert_eq!(to_json_pythonic(&json!({})), "{}");
        assert_eq!(to_json_pythonic(&json!([])), "[]");
    }

    #[test]
    fn strings_escape_like_python_without_ensure_ascii() {
        let v = json!("a\"b\\c\nd\te\u{1}f/é中😀\u{7f}\u{2028}");
        assert_eq!(
            to_json_pythonic(&v),
            "\"a\\\"b\\\\c\\nd\\te\\u0001f/é中😀\u{7f}\u{2028}\""
        );
        assert_eq!(
            to_json_pythonic(&json!("\u{8}\u{c}\r\u{1f}")),
            r#""\b\f\r\u001f""#
        );
    }

    #[test]
    fn indent_sort_and_ensure_ascii_options() {
        let v: Value =
            serde_json::from_str(r#"{"b": [1, {}], "a": "é😀", "c": []}"#).expect("json");
        let opts = PyJsonOptions {
            indent: Some(2),
            sort_keys: true,
            ensure_ascii: true,
        };
        assert_eq!(
            to_json_python(&v, &opts),
            "{\n  \"a\": \"\\u00e9\\ud83d\\ude00\",\n  \"b\": [\n    1,\n    {}\n  ],\n  \"c\": []\n}"
        );
    }

    #[test]
    fn floats_match_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (123.456, "123.456"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e100, "1.2345e+100"),
            (-2.5e-300, "-2.5e-300"),
            (2.71, "2.71"),
            (12345678.9, "12345678.9"),
        ];
        for (f, want) in cases {
            assert_eq!(python_float_repr(f), want, "repr of {f}");
        }
        assert_eq!(
            to_json_pythonic(&json!([1, -3, 2.0, 18446744073709551615u64])),
            "[1, -3, 2.0, 18446744073709551615]"
        );
    }
}
