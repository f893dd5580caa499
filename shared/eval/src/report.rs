//! Reports: one JSON document per run, a Markdown table comparing runs, and a PNG bar
//! chart comparing runs.
//!
//! The chart is drawn with plotters' bitmap backend only. Plotters' text needs its `ttf`
//! feature, which loads system fonts through font-kit/fontconfig; evaluation runs in slim
//! containers where those may be missing, so labels are drawn with a built-in 5x7 pixel
//! font instead ([`font`]) and rendering can never fail for lack of fonts.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::score::{Metrics, Summary, Verdict};
use crate::EvalError;

/// Everything about one evaluation run (e.g. `sft` on `val.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Display name (`base`, `sft`, `grpo`).
    pub name: String,
    pub summary: Summary,
    /// Prediction ids that match no sample (reported, not scored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmatched_predictions: Vec<String>,
    /// Per-sample verdicts (may be left empty to keep comparisons small).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<Verdict>,
}

impl RunReport {
    /// A report for `name`.
    pub fn new(name: impl Into<String>, summary: Summary, verdicts: Vec<Verdict>) -> Self {
        RunReport {
            name: name.into(),
            summary,
            unmatched_predictions: Vec::new(),
            verdicts,
        }
    }

    /// Pretty JSON text.
    pub fn to_json(&self) -> Result<String, EvalError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Parse a report written by [`RunReport::to_json`] (to compare earlier runs).
    pub fn from_json(text: &str) -> Result<Self, EvalError> {
        Ok(serde_json::from_str(text)?)
    }
}

fn cell(x: Option<f64>) -> String {
    match x {
        Some(v) => format!("{v:.3}"),
        None => "–".to_string(),
    }
}

fn rate_of(m: &Metrics, name: &str) -> Option<f64> {
    m.rates().into_iter().find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// Rate names present in any of `metrics`, in report order.
fn rate_names<'a>(metrics: impl Iterator<Item = &'a Metrics>) -> Vec<&'static str> {
    const ORDER: [&str; 9] = [
        "parse_rate",
        "schema_hit",
        "func_accuracy",
        "exec_rate",
        "args_match",
        "args_exact",
        "no_call_accuracy",
        "hallucination_rate",
        "ast_accuracy",
    ];
    let present: BTreeSet<&'static str> = metrics.flat_map(|m| m.rates().into_iter().map(|(k, _)| k)).collect();
    ORDER.into_iter().filter(|k| present.contains(k)).collect()
}

fn metrics_table(out: &mut String, runs: &[RunReport], pick: &dyn Fn(&RunReport) -> Option<&Metrics>) {
    let _ = write!(out, "| metric |");
    for r in runs {
        let _ = write!(out, " {} |", r.name.replace('|', "\\|"));
    }
    out.push_str("\n|---|");
    for _ in runs {
        out.push_str("---:|");
    }
    out.push('\n');
    let _ = write!(out, "| count |");
    for r in runs {
        let c = pick(r).map(|m| m.count.to_string()).unwrap_or_else(|| "–".into());
        let _ = write!(out, " {c} |");
    }
    out.push('\n');
    for name in rate_names(runs.iter().filter_map(pick)) {
        let _ = write!(out, "| {name} |");
        for r in runs {
            let _ = write!(out, " {} |", cell(pick(r).and_then(|m| rate_of(m, name))));
        }
        out.push('\n');
    }
}

/// Markdown comparison of runs: overall metrics, then per category, per split and BFCL
/// AST accuracy, one column per run (`–` where a run lacks a value).
pub fn markdown_table(runs: &[RunReport]) -> String {
    let mut out = String::from("## Overall\n\n");
    metrics_table(&mut out, runs, &|r| Some(&r.summary.overall));
    let missing: Vec<String> = runs
        .iter()
        .filter(|r| r.summary.overall.missing > 0)
        .map(|r| format!("{}: {}", r.name, r.summary.overall.missing))
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(out, "\nMissing predictions (counted as failures): {}", missing.join(", "));
    }
    let groups = |f: &dyn Fn(&Summary) -> Vec<String>| -> Vec<String> {
        let set: BTreeSet<String> = runs.iter().flat_map(|r| f(&r.summary)).collect();
        set.into_iter().collect()
    };
    let cats = groups(&|s| s.by_category.keys().cloned().collect());
    if !cats.is_empty() {
        out.push_str("\n## By category\n");
        for c in cats {
            let _ = write!(out, "\n### {c}\n\n");
            metrics_table(&mut out, runs, &|r| r.summary.by_category.get(&c));
        }
    }
    let splits = groups(&|s| s.by_split.keys().cloned().collect());
    if !splits.is_empty() {
        out.push_str("\n## By split\n");
        for s in splits {
            let _ = write!(out, "\n### {s}\n\n");
            metrics_table(&mut out, runs, &|r| r.summary.by_split.get(&s));
        }
    }
    let bcats = groups(&|s| s.bfcl.keys().cloned().collect());
    if !bcats.is_empty() {
        out.push_str("\n## BFCL AST accuracy\n\n| category |");
        for r in runs {
            let _ = write!(out, " {} |", r.name.replace('|', "\\|"));
        }
        out.push_str("\n|---|");
        for _ in runs {
            out.push_str("---:|");
        }
        out.push('\n');
        let order = ["simple", "multiple", "parallel", "parallel_multiple", "overall"];
        let mut names: Vec<&String> = bcats.iter().collect();
        names.sort_by_key(|n| order.iter().position(|o| o == n).unwrap_or(order.len()));
        for c in names {
            let _ = write!(out, "| {c} |");
            for r in runs {
                let v = r
                    .summary
                    .bfcl
                    .get(c)
                    .map(|b| format!("{:.3} ({}/{})", b.ast_accuracy, b.correct, b.count))
                    .unwrap_or_else(|| "–".into());
                let _ = write!(out, " {v} |");
            }
            out.push('\n');
        }
    }
    out
}

/// Bar colours, one per run (cycled).
const PALETTE: [RGBColor; 6] = [
    RGBColor(66, 133, 244),
    RGBColor(219, 68, 55),
    RGBColor(244, 180, 0),
    RGBColor(15, 157, 88),
    RGBColor(171, 71, 188),
    RGBColor(0, 172, 193),
];

/// Chart size in pixels.
pub const CHART_SIZE: (u32, u32) = (1000, 560);

/// Grouped bar chart of the overall rates (one group per metric, one bar per run), with
/// a legend and axis labels, written as PNG to `path`. Hallucination rate is left out:
/// it is the only lower-is-better rate and would read wrongly next to the others.
pub fn render_chart(runs: &[RunReport], path: &Path) -> Result<(), EvalError> {
    let chart_err = |e: &dyn std::fmt::Display| EvalError::Chart(e.to_string());
    let names: Vec<&str> = rate_names(runs.iter().map(|r| &r.summary.overall))
        .into_iter()
        .filter(|n| *n != "hallucination_rate")
        .collect();
    let (w, h) = (CHART_SIZE.0 as i32, CHART_SIZE.1 as i32);
    let root = BitMapBackend::new(path, CHART_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(&e))?;
    let (left, right, top, bottom) = (56, w - 16, 80, h - 70);
    let plot_h = (bottom - top) as f64;
    let y_of = |v: f64| bottom - (v.clamp(0.0, 1.0) * plot_h).round() as i32;
    let grey = RGBColor(200, 200, 200);
    let black = RGBColor(30, 30, 30);

    font::draw(&root, "FUNCTION CALLING EVALUATION", (left, 12), 2, &black).map_err(|e| chart_err(&e))?;
    // Legend.
    let mut lx = left;
    for (i, r) in runs.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        root.draw(&Rectangle::new([(lx, 40), (lx + 14, 54)], c.filled()))
            .map_err(|e| chart_err(&e))?;
        let label = font::fit(&r.name, 24);
        font::draw(&root, &label, (lx + 20, 40), 2, &black).map_err(|e| chart_err(&e))?;
        lx += 20 + font::width(&label, 2) + 24;
    }
    // Grid and y axis.
    for t in 0..=4 {
        let v = t as f64 / 4.0;
        let y = y_of(v);
        root.draw(&PathElement::new(vec![(left, y), (right, y)], grey))
            .map_err(|e| chart_err(&e))?;
        let label = format!("{v:.2}");
        font::draw(&root, &label, (left - 6 - font::width(&label, 1), y - 3), 1, &black).map_err(|e| chart_err(&e))?;
    }
    root.draw(&PathElement::new(vec![(left, top), (left, bottom), (right, bottom)], black))
        .map_err(|e| chart_err(&e))?;
    if names.is_empty() || runs.is_empty() {
        root.present().map_err(|e| chart_err(&e))?;
        return Ok(());
    }
    let group_w = (right - left) as f64 / names.len() as f64;
    let bar_w = ((group_w * 0.8) / runs.len() as f64).max(1.0);
    for (g, name) in names.iter().enumerate() {
        let gx = left as f64 + g as f64 * group_w + group_w * 0.1;
        for (i, r) in runs.iter().enumerate() {
            let Some(v) = rate_of(&r.summary.overall, name) else {
                continue;
            };
            let x0 = (gx + i as f64 * bar_w).round() as i32;
            let x1 = (gx + (i + 1) as f64 * bar_w).round() as i32 - 1;
            let c = PALETTE[i % PALETTE.len()];
            root.draw(&Rectangle::new([(x0, y_of(v)), (x1.max(x0), bottom)], c.filled()))
                .map_err(|e| chart_err(&e))?;
            let label = format!("{:.0}", v * 100.0);
            let lw = font::width(&label, 1);
            if lw <= x1 - x0 + 4 {
                font::draw(&root, &label, ((x0 + x1 - lw) / 2 + 1, y_of(v) - 10), 1, &black)
                    .map_err(|e| chart_err(&e))?;
            }
        }
        let label = font::fit(name, ((group_w as i32) / 6).max(1) as usize);
        let lw = font::width(&label, 1);
        let cx = (left as f64 + (g as f64 + 0.5) * group_w) as i32;
        font::draw(&root, &label, (cx - lw / 2, bottom + 10), 1, &black).map_err(|e| chart_err(&e))?;
    }
    font::draw(&root, "BAR LABELS IN %", (left, h - 24), 1, &black).map_err(|e| chart_err(&e))?;
    root.present().map_err(|e| chart_err(&e))?;
    Ok(())
}

/// A 5x7 pixel font (upper-case ASCII letters, digits and a few signs) drawn with filled
/// squares, so chart labels need no font files.
pub mod font {
    use plotters::coord::Shift;
    use plotters::prelude::*;

    /// Rows top to bottom, bit 4 = leftmost column.
    fn glyph(c: char) -> [u8; 7] {
        match c.to_ascii_uppercase() {
            'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
            'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
            'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
            'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
            'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
            'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
            'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
            'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
            'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
            'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
            'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
            'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
            'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
            'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
            'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
            'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
            'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
            'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
            'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
            'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
            'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
            'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
            'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
            'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
            'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
            'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
            '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
            '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
            '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
            '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
            '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
            '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
            '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
            '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
            '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
            '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
            '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
            '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
            '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
            ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
            '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
            '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
            '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
            ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
            '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
            ' ' => [0; 7],
            _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
        }
    }

    /// Width in pixels of `text` at `scale` (6 columns per character incl. spacing).
    pub fn width(text: &str, scale: i32) -> i32 {
        (text.chars().count() as i32 * 6 - 1).max(0) * scale
    }

    /// `text` cut to at most `max` characters (with a trailing `.` when cut).
    pub fn fit(text: &str, max: usize) -> String {
        if text.chars().count() <= max {
            return text.to_string();
        }
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('.');
        s
    }

    /// Draw `text` with its top-left corner at `pos`, each font pixel a `scale` square.
    pub fn draw<DB: DrawingBackend>(
        area: &DrawingArea<DB, Shift>,
        text: &str,
        pos: (i32, i32),
        scale: i32,
        color: &RGBColor,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let s = scale.max(1);
        for (i, c) in text.chars().enumerate() {
            let x0 = pos.0 + i as i32 * 6 * s;
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        let x = x0 + col * s;
                        let y = pos.1 + row as i32 * s;
                        // Pixel by pixel: plotters' filled rectangles of size 1 draw nothing.
                        for dx in 0..s {
                            for dy in 0..s {
                                area.draw_pixel((x + dx, y + dy), color)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
