//! Manual timing run: generate N xLAM records, write the JSON array file,
//! ingest it. `cargo run --release -p fc-data --example gen_ingest_bench -- 60000`
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(60_000);
    let dir = std::env::temp_dir().join(format!("fc-data-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("xlam.json");
    let t = Instant::now();
    let recs = fc_data::generate(n, 42);
    let gen = t.elapsed();
    let t = Instant::now();
    fc_data::write_xlam_json(&recs, std::io::BufWriter::new(std::fs::File::create(&input)?))?;
    let write = t.elapsed();
    drop(recs);
    let size = std::fs::metadata(&input)?.len();
    let t = Instant::now();
    let (rep, _) = fc_data::ingest_file(&input, fc_data::Format::Xlam, None, &dir.join("out"), &Default::default(), None)?;
    let ingest = t.elapsed();
    println!("n={n} file={:.1} MB generate={gen:?} write={write:?} ingest={ingest:?} ({:.0} rec/s)", size as f64 / 1e6, n as f64 / ingest.as_secs_f64());
    println!("{}", serde_json::to_string(&rep)?);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
