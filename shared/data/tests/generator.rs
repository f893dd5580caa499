use std::collections::HashSet;
use std::time::Instant;

use fc_data::gen::catalogue::{heldout_names, CATALOGUE};
use fc_data::gen::render_value;
use fc_data::{generate, generate_heldout, ingest, write_xlam_json, Format, IngestOptions, IngestSinks};
use serde_json::Value;

fn values(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Bool(_) | Value::Null => {}
        Value::Array(a) => a.iter().for_each(|x| values(x, out)),
        Value::Object(o) => o.values().for_each(|x| values(x, out)),
        other => out.push(render_value(other)),
    }
}

#[test]
fn generated_records_pass_validation_and_ingest_fast() {
    let n = 5000;
    let t0 = Instant::now();
    let recs = generate(n, 1234);
    let gen_time = t0.elapsed();
    let mut buf = Vec::new();
    write_xlam_json(&recs, &mut buf).expect("write");
    let t1 = Instant::now();
    let (mut tr, mut va, mut rj) = (Vec::new(), Vec::new(), Vec::new());
    let mut sinks = IngestSinks {
        train: &mut tr,
        val: &mut va,
        rejects: &mut rj,
        progress: None,
    };
    let rep = ingest(&buf[..], Format::Xlam, None, &IngestOptions::default(), &mut sinks).expect("ingest");
    let ingest_time = t1.elapsed();
    assert_eq!(rep.read, n as u64);
    assert_eq!(rep.accepted, n as u64, "rejects: {}", String::from_utf8_lossy(&rj[..rj.len().min(2000)]));
    assert!(rep.val > 300 && rep.val < 700, "{rep:?}");
    eprintln!("generate {n}: {gen_time:?}, ingest {n} ({} bytes): {ingest_time:?}", buf.len());
    // Generous bound (debug-ish test profile on a shared 2-core box); a
    // release 60k run takes seconds.
    assert!(ingest_time.as_secs_f64() < 20.0, "ingest too slow: {ingest_time:?}");
}

#[test]
fn mix_languages_heldout_and_derivability() {
    let recs = generate(4000, 99);
    let held: HashSet<&str> = heldout_names().into_iter().collect();
    let (mut none, mut single, mut parallel, mut multi, mut non_ascii) = (0, 0, 0, 0, 0);
    let mut used_tools = HashSet::new();
    for r in &recs {
        assert!(r.tools.starts_with("[{\"name\": \""), "{}", r.tools);
        assert!(r.tools.is_ascii() && r.answers.is_ascii());
        let tools: Vec<Value> = serde_json::from_str(&r.tools).expect("tools");
        let answers: Vec<Value> = serde_json::from_str(&r.answers).expect("answers");
        assert!(!tools.is_empty() && tools.len() <= 8);
        for t in &tools {
            let name = t["name"].as_str().unwrap_or("");
            assert!(!held.contains(name), "held-out tool {name} in main set");
        }
        let names: HashSet<&str> = answers.iter().filter_map(|a| a["name"].as_str()).collect();
        used_tools.extend(names.iter().map(|s| s.to_string()));
        match (answers.len(), names.len()) {
            (0, _) => none += 1,
            (1, _) => single += 1,
            (_, 1) => parallel += 1,
            _ => multi += 1,
        }
        if !r.query.is_ascii() {
            non_ascii += 1;
        }
        // Every argument value is spelled out in the query.
        for a in &answers {
            let mut vals = Vec::new();
            values(&a["arguments"], &mut vals);
            for v in vals {
                assert!(r.query.contains(&v), "value {v:?} not in query {:?} ({})", r.query, r.answers);
            }
        }
    }
    let pct = |x: i32| x as f64 * 100.0 / recs.len() as f64;
    eprintln!(
        "none {:.1}% single {:.1}% parallel {:.1}% multi {:.1}% non-ascii {:.1}%",
        pct(none),
        pct(single),
        pct(parallel),
        pct(multi),
        pct(non_ascii)
    );
    assert!((5.0..11.0).contains(&pct(none)));
    assert!((45.0..56.0).contains(&pct(single)));
    assert!((19.0..27.0).contains(&pct(parallel)));
    assert!((15.0..22.0).contains(&pct(multi)));
    assert!(pct(non_ascii) > 2.0);
    assert_eq!(used_tools.len(), CATALOGUE.len() - held.len(), "every main tool gets used");

    let h = generate_heldout(500, 99);
    let mut any = false;
    for r in &h {
        let tools: Vec<Value> = serde_json::from_str(&r.tools).expect("tools");
        for t in &tools {
            assert!(held.contains(t["name"].as_str().unwrap_or("")));
        }
        any |= r.answers != "[]";
    }
    assert!(any);
    // Held-out records validate too.
    let mut buf = Vec::new();
    write_xlam_json(&h, &mut buf).expect("write");
    let (mut tr, mut va, mut rj) = (Vec::new(), Vec::new(), Vec::new());
    let mut sinks = IngestSinks {
        train: &mut tr,
        val: &mut va,
        rejects: &mut rj,
        progress: None,
    };
    let rep = ingest(&buf[..], Format::Xlam, None, &IngestOptions::default(), &mut sinks).expect("ingest");
    assert_eq!(rep.accepted, 500, "{}", String::from_utf8_lossy(&rj[..rj.len().min(2000)]));
}
