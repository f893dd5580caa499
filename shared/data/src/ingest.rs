//! The ingest driver: stream records, convert, validate, split
//! deterministically into train/val, dead-letter the rejects.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{DataError, RejectReason};
use crate::loaders::{BfclAnswers, Loader};
use crate::sample::Format;
use crate::schema::SchemaCache;
use crate::validate::validate_with;

/// Options of one ingest run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestOptions {
    /// Fraction of accepted samples routed to validation (default 0.1).
    pub val_fraction: f64,
    /// Seed of the split hash (same seed + same ids = same split).
    pub seed: u64,
    /// Maximum bytes of raw text kept per dead-letter line.
    pub max_raw_bytes: usize,
    /// Call the progress hook every this many records.
    pub progress_every: u64,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            val_fraction: 0.1,
            seed: 0,
            max_raw_bytes: 64 * 1024,
            progress_every: 1000,
        }
    }
}

/// Counters of an ingest run. Invariant: `read == accepted + sum(rejected)`
/// and `accepted == train + val`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestReport {
    pub read: u64,
    pub accepted: u64,
    pub rejected: BTreeMap<RejectReason, u64>,
    pub train: u64,
    pub val: u64,
}

impl IngestReport {
    /// Total rejected records.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Snapshot passed to the progress hook.
#[derive(Debug, Clone, Copy)]
pub struct IngestProgress {
    pub read: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Input bytes consumed so far (compare with the file size for a bar).
    pub bytes_read: u64,
}

/// Output sinks and the optional progress hook of [`ingest`].
pub struct IngestSinks<'a> {
    pub train: &'a mut dyn Write,
    pub val: &'a mut dyn Write,
    /// Dead-letter JSONL: `{position, id?, reason, detail, raw}` per line.
    pub rejects: &'a mut dyn Write,
    pub progress: Option<&'a mut dyn FnMut(IngestProgress)>,
}

#[derive(Serialize)]
struct DeadLetter<'a> {
    position: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    reason: RejectReason,
    detail: &'a str,
    raw: &'a str,
}

/// True when `id` goes to the validation split: the first 8 bytes of
/// SHA-256(seed || id) as a uniform number in [0,1) compared with
/// `val_fraction`. Depends only on (seed, id), so re-ingesting with more
/// data never moves an existing sample between splits.
pub fn is_val(id: &str, seed: u64, val_fraction: f64) -> bool {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(id.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    let x = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    x < val_fraction
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while cut > 0 && !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Ingests one input stream. `answers` is the BFCL possible-answer file
/// (ignored for other formats). Fatal errors (I/O, unreadable answers file,
/// bad options) abort; bad records are counted and dead-lettered.
pub fn ingest<Rd: Read>(
    input: Rd,
    format: Format,
    answers: Option<&Path>,
    opts: &IngestOptions,
    sinks: &mut IngestSinks<'_>,
) -> Result<IngestReport, DataError> {
    if !(0.0..=1.0).contains(&opts.val_fraction) {
        return Err(DataError::Options(format!(
            "val_fraction must be in [0,1], got {}",
            opts.val_fraction
        )));
    }
    let answers = match (format, answers) {
        (Format::Bfcl, Some(p)) => Some(BfclAnswers::from_path(p)?),
        _ => None,
    };
    let cache = SchemaCache::global();
    let mut loader = Loader::new(input, format, answers);
    let mut rep = IngestReport::default();
    let mut line = Vec::with_capacity(4096);
    let every = opts.progress_every.max(1);
    while let Some(item) = loader.next() {
        let loaded = item?;
        rep.read += 1;
        let outcome = loaded
            .result
            .and_then(|s| validate_with(cache, &s).map(|()| s));
        line.clear();
        match outcome {
            Ok(sample) => {
                rep.accepted += 1;
                serde_json::to_writer(&mut line, &sample)?;
                line.push(b'\n');
                if is_val(&sample.id, opts.seed, opts.val_fraction) {
                    rep.val += 1;
                    sinks.val.write_all(&line)?;
                } else {
                    rep.train += 1;
                    sinks.train.write_all(&line)?;
                }
            }
            Err(rj) => {
                *rep.rejected.entry(rj.reason).or_insert(0) += 1;
                let dl = DeadLetter {
                    position: loaded.position,
                    id: rj.id.as_deref(),
                    reason: rj.reason,
                    detail: &rj.detail,
                    raw: truncate(&loaded.raw, opts.max_raw_bytes),
                };
                serde_json::to_writer(&mut line, &dl)?;
                line.push(b'\n');
                sinks.rejects.write_all(&line)?;
            }
        }
        if rep.read % every == 0 {
            if let Some(p) = sinks.progress.as_mut() {
                p(IngestProgress {
                    read: rep.read,
                    accepted: rep.accepted,
                    rejected: rep.read - rep.accepted,
                    bytes_read: loader.bytes_read(),
                });
            }
        }
    }
    if let Some(p) = sinks.progress.as_mut() {
        p(IngestProgress {
            read: rep.read,
            accepted: rep.accepted,
            rejected: rep.read - rep.accepted,
            bytes_read: loader.bytes_read(),
        });
    }
    sinks.train.flush()?;
    sinks.val.flush()?;
    sinks.rejects.flush()?;
    Ok(rep)
}

/// Paths written by [`ingest_to_dir`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestPaths {
    pub train: PathBuf,
    pub val: PathBuf,
    pub rejects: PathBuf,
}

impl IngestPaths {
    /// `train.jsonl`, `val.jsonl`, `rejects.jsonl` under `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        IngestPaths {
            train: dir.join("train.jsonl"),
            val: dir.join("val.jsonl"),
            rejects: dir.join("rejects.jsonl"),
        }
    }
}

fn create(p: &Path) -> Result<BufWriter<File>, DataError> {
    File::create(p)
        .map(|f| BufWriter::with_capacity(256 * 1024, f))
        .map_err(|source| DataError::IoPath {
            path: p.to_path_buf(),
            source,
        })
}

/// Ingests a file into `out_dir` (`train.jsonl`, `val.jsonl`,
/// `rejects.jsonl`). For BFCL without an explicit answers path the answers
/// are looked up beside the question file (`possible_answer/<name>`).
pub fn ingest_file(
    input: &Path,
    format: Format,
    answers: Option<&Path>,
    out_dir: &Path,
    opts: &IngestOptions,
    progress: Option<&mut dyn FnMut(IngestProgress)>,
) -> Result<(IngestReport, IngestPaths), DataError> {
    let f = File::open(input).map_err(|source| DataError::IoPath {
        path: input.to_path_buf(),
        source,
    })?;
    std::fs::create_dir_all(out_dir).map_err(|source| DataError::IoPath {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let located;
    let answers = match (format, answers) {
        (Format::Bfcl, None) => {
            located = BfclAnswers::locate(input);
            located.as_deref()
        }
        (_, a) => a,
    };
    let paths = IngestPaths::in_dir(out_dir);
    let mut train = create(&paths.train)?;
    let mut val = create(&paths.val)?;
    let mut rejects = create(&paths.rejects)?;
    let mut sinks = IngestSinks {
        train: &mut train,
        val: &mut val,
        rejects: &mut rejects,
        progress: match progress {
            Some(p) => Some(&mut *p),
            None => None,
        },
    };
    let rep = ingest(f, format, answers, opts, &mut sinks)?;
    Ok((rep, paths))
}
