//! Acceptance tests of the engine on a tiny random Qwen3.

mod common;

use common::*;
use fc_engine::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// A mask that constrains nothing but slows each step down, so that requests submitted
/// "a few tokens later" really join a running batch however fast the tiny model is.
fn throttle() -> Arc<dyn TokenMask> {
    Arc::new(|_: usize, _: &[u32]| {
        std::thread::sleep(Duration::from_millis(1));
        Allowed::All
    })
}

fn no_eos(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        stop_at_eos: false,
        ..Default::default()
    }
}

fn sampled(seed: u64, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_k: 100,
        top_p: 0.95,
        min_p: 0.01,
        seed: Some(seed),
        ..no_eos(max_tokens)
    }
}

/// Reads events until `k` tokens of the request arrived (or it ended).
async fn read_tokens(rx: &mut UnboundedReceiver<Event>, k: usize, sink: &mut Vec<Event>) {
    let mut got = 0;
    while got < k {
        match rx.recv().await {
            Some(ev) => {
                if matches!(ev, Event::Token { .. }) {
                    got += 1;
                }
                sink.push(ev);
            }
            None => return,
        }
    }
}

async fn drain(mut rx: UnboundedReceiver<Event>, mut sink: Vec<Event>) -> Vec<Event> {
    while let Some(ev) = rx.recv().await {
        sink.push(ev);
    }
    sink
}

fn outputs(events: &[Event]) -> Vec<Output> {
    let mut outs: Vec<Output> = events
        .iter()
        .filter_map(|e| match e {
            Event::Finished { output, .. } => Some(output.clone()),
            _ => None,
        })
        .collect();
    outs.sort_by_key(|o| o.seq_index);
    outs
}

async fn wait_for(engine: &EngineHandle, f: impl Fn(&EngineStats) -> bool) -> EngineStats {
    let t0 = Instant::now();
    loop {
        let s = engine.stats();
        if f(&s) || t0.elapsed() > Duration::from_secs(10) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn batched_greedy_equals_one_at_a_time() {
    check_batched_greedy(EngineConfig::default()).await;
}

/// The same on an f16 KV cache: a sequence's cache holds the same values whether it
/// decodes alone or in a batch, so the outputs still agree exactly.
#[tokio::test]
async fn batched_greedy_equals_one_at_a_time_on_an_f16_cache() {
    check_batched_greedy(EngineConfig { kv_cache_dtype: Some(fc_engine::KvDtype::F16), ..Default::default() }).await;
}

/// A GPU runs candle's composed ops: none of the CPU kernels (packed and Q8_0 matmuls,
/// fused prompt attention, fused row steps, decode attention), which all need a CPU f32
/// model. An f64 model takes that same path on the CPU, so its batching, cache and
/// log-probs are checked here without a GPU.
#[tokio::test]
async fn the_composed_path_other_devices_run_batches_and_reports_logprobs() {
    let tok = tokenizer();
    let model = model_in(&tok, fc_model::DType::F64);
    let engine = Engine::start(model.clone(), tok.clone(), EngineConfig::default()).unwrap();
    let s = Setup { engine, model, tok };
    check_batched_greedy_on(&s).await;
    let v = s.tok.vocab_size();
    for (i, len) in [5usize, 13].into_iter().enumerate() {
        let p = prompt(len, 40 + i as u32, v);
        let o = s.engine.generate(Request::new(p.clone(), sampled(i as u64, 12))).await.unwrap().remove(0);
        assert_eq!(o.token_ids.len(), 12);
        let reference = reference_logprobs(&s.model, None, &p, &o.token_ids);
        for (j, (a, b)) in o.logprobs.iter().zip(&reference).enumerate() {
            assert!((a - b).abs() < 1e-4, "prompt {i} token {j}: {a} vs {b}");
        }
    }
}

async fn check_batched_greedy(config: EngineConfig) {
    check_batched_greedy_on(&setup(config)).await;
}

async fn check_batched_greedy_on(s: &Setup) {
    let v = s.tok.vocab_size();
    let prompts: Vec<Vec<u32>> = [3, 9, 17, 30]
        .iter()
        .enumerate()
        .map(|(i, &l)| prompt(l, i as u32, v))
        .collect();
    let mut alone = Vec::new();
    for p in &prompts {
        let o = s
            .engine
            .generate(Request::new(p.clone(), no_eos(24)))
            .await
            .unwrap();
        alone.push(o[0].token_ids.clone());
    }
    let before = s.engine.stats();
    // Join at different steps: each new request starts while the earlier ones decode.
    let mut rxs = Vec::new();
    let mut sinks = Vec::new();
    for p in &prompts {
        if let Some((rx, sink)) = rxs.last_mut().zip(sinks.last_mut()) {
            read_tokens(rx, 3, sink).await;
        }
        rxs.push(
            s.engine
                .submit(Request::new(p.clone(), no_eos(24)).with_mask(throttle()))
                .unwrap(),
        );
        sinks.push(Vec::new());
    }
    for (i, (rx, sink)) in rxs.into_iter().zip(sinks).enumerate() {
        let outs = outputs(&drain(rx, sink).await);
        assert_eq!(outs[0].token_ids, alone[i], "prompt {i}");
        assert_eq!(outs[0].finish_reason, FinishReason::Length);
    }
    let after = s.engine.stats();
    let steps = after.decode_steps - before.decode_steps;
    let seq_steps = after.decode_tokens - before.decode_tokens;
    assert_eq!(
        seq_steps,
        4 * 23,
        "every token after the first is one sequence-step"
    );
    assert!(
        steps < seq_steps,
        "decode must batch: {steps} steps for {seq_steps}"
    );
}

#[tokio::test]
async fn same_seed_same_samples_even_when_batched() {
    let s = setup(EngineConfig::default());
    let v = s.tok.vocab_size();
    let p = prompt(11, 5, v);
    let req = Request::new(p.clone(), sampled(42, 20)).with_n(3);
    let alone = s.engine.generate(req.clone()).await.unwrap();
    assert_eq!(alone.len(), 3);
    assert!(
        alone[0].token_ids != alone[1].token_ids || alone[1].token_ids != alone[2].token_ids,
        "samples of a group should differ"
    );
    // Same request again, now batched with unrelated traffic submitted first.
    let mut others = Vec::new();
    for i in 0..3 {
        let other = Request::new(prompt(5 + 4 * i, 77 + i as u32, v), sampled(i as u64, 30));
        others.push(s.engine.submit(other.with_n(2)).unwrap());
    }
    let batched = s.engine.generate(req).await.unwrap();
    for (a, b) in alone.iter().zip(&batched) {
        assert_eq!(a.token_ids, b.token_ids);
        assert_eq!(a.text, b.text);
    }
    let other_seed = s
        .engine
        .generate(Request::new(p, sampled(43, 20)).with_n(3))
        .await
        .unwrap();
    assert_ne!(other_seed[0].token_ids, alone[0].token_ids);
    for rx in others {
        assert_eq!(outputs(&drain(rx, vec![]).await).len(), 2);
    }
}

#[tokio::test]
async fn logprobs_match_full_forward() {
    let tok = tokenizer();
    let model = model(&tok);
    let ad = adapter(&model, 5);
    for lora in [None, Some(&ad)] {
        let engine = Engine::start_with_adapter(
            model.clone(),
            lora.cloned(),
            tok.clone(),
            EngineConfig::default(),
        )
        .unwrap();
        let v = tok.vocab_size();
        let p1 = prompt(13, 1, v);
        let p2 = prompt(6, 2, v);
        let mut params = sampled(9, 16);
        params.temperature = 1.0;
        let r1 = engine
            .submit(Request::new(p1.clone(), params).with_n(2))
            .unwrap();
        let r2 = engine.submit(Request::new(p2.clone(), no_eos(12))).unwrap();
        for (p, rx) in [(p1, r1), (p2, r2)] {
            for o in outputs(&drain(rx, vec![]).await) {
                let reference = reference_logprobs(&model, lora, &p, &o.token_ids);
                for (j, (a, b)) in o.logprobs.iter().zip(&reference).enumerate() {
                    assert!((a - b).abs() < 1e-4, "token {j}: {a} vs {b}");
                }
                assert!(o.sampling_logprobs.iter().all(|&x| x <= 1e-6));
            }
        }
    }
}

#[tokio::test]
async fn stops_and_lengths() {
    let s = setup(EngineConfig::default());
    let v = s.tok.vocab_size();
    let p = prompt(8, 3, v);
    let base = s
        .engine
        .generate(Request::new(p.clone(), sampled(1, 40)))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(base.finish_reason, FinishReason::Length);
    assert_eq!(base.token_ids.len(), 40);
    assert_eq!(base.usage.completion_tokens, 40);
    assert_eq!(base.usage.prompt_tokens, 8);
    // Streaming deltas concatenate to the full decode (multi-byte chars never split).
    assert_eq!(base.text, s.tok.decode(&base.token_ids, true).unwrap());

    // Stop token id: output ends at its first occurrence (kept in ids).
    let k = 6;
    let stop_id = base.token_ids[k];
    let first = base.token_ids.iter().position(|&t| t == stop_id).unwrap();
    let mut params = sampled(1, 40);
    params.stop_token_ids = vec![stop_id];
    let o = s
        .engine
        .generate(Request::new(p.clone(), params))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(o.token_ids, base.token_ids[..=first]);
    assert_eq!(o.finish_reason, FinishReason::Stop);
    assert_eq!(o.stop, Some(StopMatch::TokenId(stop_id)));

    // Stop string: a piece of the text from the middle; output text ends right before it.
    let chars: Vec<(usize, char)> = base.text.char_indices().collect();
    assert!(chars.len() > 12, "text too short: {:?}", base.text);
    let (a, _) = chars[chars.len() / 2];
    let b = chars
        .get(chars.len() / 2 + 3)
        .map_or(base.text.len(), |c| c.0);
    let stop = base.text[a..b].to_string();
    let cut = base.text.find(&stop).unwrap();
    let mut params = sampled(1, 40);
    params.stop = vec!["never-appears".into(), stop.clone()];
    let mut rx = s.engine.submit(Request::new(p.clone(), params)).unwrap();
    let mut deltas = String::new();
    let mut out = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token { text_delta, .. } => deltas.push_str(&text_delta),
            Event::Finished { output, .. } => out = Some(output),
            Event::Error { message } => panic!("{message}"),
        }
    }
    let o = out.unwrap();
    assert_eq!(o.text, base.text[..cut]);
    assert_eq!(deltas, o.text, "stop string must never be streamed");
    assert_eq!(o.finish_reason, FinishReason::Stop);
    assert_eq!(o.stop, Some(StopMatch::String(stop)));
    assert_eq!(o.token_ids, base.token_ids[..o.token_ids.len()]);

    // max_tokens
    let o = s
        .engine
        .generate(Request::new(p, sampled(1, 5)))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(o.token_ids, base.token_ids[..5]);
    assert_eq!(o.finish_reason, FinishReason::Length);
}

#[tokio::test]
async fn eos_stops_by_default() {
    let s = setup(EngineConfig::default());
    let eos = s.model.config.eos_token_ids[0];
    // A mask that forces eos at the third token.
    let mask = Arc::new(move |_: usize, gen: &[u32]| {
        if gen.len() == 2 {
            Allowed::Only(vec![eos])
        } else {
            Allowed::All
        }
    });
    let params = SamplingParams::greedy(20);
    let o = s
        .engine
        .generate(Request::new(prompt(4, 1, 300), params).with_mask(mask))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(o.token_ids.len(), 3);
    assert_eq!(o.stop, Some(StopMatch::TokenId(eos)));
}

#[tokio::test]
async fn token_mask_constrains_decoding() {
    let s = setup(EngineConfig::default());
    let allowed = vec![5u32, 9, 13, 200];
    let a2 = allowed.clone();
    let mask = Arc::new(move |_: usize, _: &[u32]| Allowed::Only(a2.clone()));
    let o = s
        .engine
        .generate(
            Request::new(prompt(6, 2, 300), sampled(3, 25))
                .with_mask(mask)
                .with_n(2),
        )
        .await
        .unwrap();
    for o in &o {
        assert!(o.token_ids.iter().all(|t| allowed.contains(t)));
    }
    let empty = Arc::new(|_: usize, _: &[u32]| Allowed::Mask(vec![false; 10]));
    let o = s
        .engine
        .generate(Request::new(prompt(6, 2, 300), no_eos(5)).with_mask(empty))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(o.finish_reason, FinishReason::Error);
    assert!(o.token_ids.is_empty());
}

#[tokio::test]
async fn cancelled_sequence_frees_its_cache() {
    let cfg = EngineConfig {
        prefix_cache_entries: 0,
        ..Default::default()
    };
    let s = setup(cfg);
    let v = s.tok.vocab_size();
    let mut rx = s
        .engine
        .submit(
            Request::new(prompt(20, 1, v), no_eos(2000))
                .with_n(3)
                .with_mask(throttle()),
        )
        .unwrap();
    let mut sink = Vec::new();
    read_tokens(&mut rx, 6, &mut sink).await;
    let st = s.engine.stats();
    assert!(st.kv_bytes > 0 && st.active_sequences == 3, "{st:?}");
    drop(rx);
    let st = wait_for(&s.engine, |st| st.active_sequences == 0 && st.kv_bytes == 0).await;
    assert_eq!((st.active_sequences, st.kv_bytes), (0, 0), "{st:?}");

    // With the prefix cache on, the cached prompt is the only memory left; clearing frees it.
    let s = setup(EngineConfig::default());
    let mut rx = s
        .engine
        .submit(Request::new(prompt(40, 1, v), no_eos(2000)).with_mask(throttle()))
        .unwrap();
    read_tokens(&mut rx, 3, &mut Vec::new()).await;
    drop(rx);
    let st = wait_for(&s.engine, |st| st.active_sequences == 0).await;
    assert!(st.kv_bytes > 0);
    s.engine.clear_prefix_cache().unwrap();
    let st = wait_for(&s.engine, |st| st.kv_bytes == 0).await;
    assert_eq!(st.kv_bytes, 0);
}

#[tokio::test]
async fn n_samples_share_one_prefill_and_prefixes_are_reused() {
    let s = setup(EngineConfig {
        prefix_min_tokens: 16,
        ..Default::default()
    });
    let v = s.tok.vocab_size();
    let system = prompt(48, 9, v);
    let mut p1 = system.clone();
    p1.extend(prompt(7, 1, v));
    let before = s.engine.stats();
    let outs = s
        .engine
        .generate(Request::new(p1.clone(), sampled(5, 10)).with_n(4))
        .await
        .unwrap();
    assert_eq!(outs.len(), 4);
    let after = s.engine.stats();
    assert_eq!(after.prefill_calls - before.prefill_calls, 1);
    assert_eq!(
        after.prefill_tokens - before.prefill_tokens,
        p1.len() as u64
    );

    // Same tools/system prefix, different user turn: only the suffix is prefilled, and
    // the result equals an engine without prefix reuse.
    let mut p2 = system.clone();
    p2.extend(prompt(9, 2, v));
    let o2 = s
        .engine
        .generate(Request::new(p2.clone(), no_eos(15)))
        .await
        .unwrap()
        .remove(0);
    let after2 = s.engine.stats();
    assert_eq!(o2.usage.cached_prompt_tokens, system.len());
    assert_eq!(after2.prefill_tokens - after.prefill_tokens, 9);
    let fresh = setup(EngineConfig {
        prefix_cache_entries: 0,
        ..Default::default()
    });
    let reference = fresh
        .engine
        .generate(Request::new(p2.clone(), no_eos(15)))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(o2.token_ids, reference.token_ids);
    for (a, b) in o2.logprobs.iter().zip(&reference.logprobs) {
        assert!((a - b).abs() < 1e-4);
    }
    // An identical prompt reuses all but its last token.
    let o3 = s
        .engine
        .generate(Request::new(p2.clone(), no_eos(15)))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(o3.usage.cached_prompt_tokens, p2.len() - 1);
    assert_eq!(o3.token_ids, reference.token_ids);
}

#[tokio::test]
async fn adapter_swap_keeps_running_sequences() {
    let s = setup(EngineConfig::default());
    let v = s.tok.vocab_size();
    let p = prompt(10, 4, v);
    let mut rx = s
        .engine
        .submit(Request::new(p.clone(), no_eos(30)).with_mask(throttle()))
        .unwrap();
    let mut sink = Vec::new();
    read_tokens(&mut rx, 5, &mut sink).await;
    let ad = adapter(&s.model, 8);
    let version = s.engine.swap_adapter(Some(ad.clone())).unwrap();
    assert_eq!(version, 1);
    let events = drain(rx, sink).await;
    let o = outputs(&events).remove(0);
    assert_eq!(o.finish_reason, FinishReason::Length);
    assert_eq!(o.token_ids.len(), 30);
    assert_eq!(o.versions, (0, 1));
    let versions: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Token { version, .. } => Some(*version),
            _ => None,
        })
        .collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]) && versions[..5].iter().all(|&x| x == 0));
    // New requests use the adapter (and not a prefix cached under the old weights).
    let after = s
        .engine
        .generate(Request::new(p.clone(), no_eos(10)))
        .await
        .unwrap()
        .remove(0);
    let reference = reference_logprobs(&s.model, Some(&ad), &p, &after.token_ids);
    for (a, b) in after.logprobs.iter().zip(&reference) {
        assert!((a - b).abs() < 1e-4);
    }
    // Swapping back to the base model and a model swap also work.
    s.engine.swap_adapter(None).unwrap();
    assert_eq!(s.engine.swap_model(s.model.clone(), None).unwrap(), 3);
    let o = s
        .engine
        .generate(Request::new(p, no_eos(5)))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(o.versions, (3, 3));
}

#[tokio::test]
async fn kv_cap_queues_and_rejects() {
    let tok = tokenizer();
    let m = model(&tok);
    let bpp = fc_model::batch::kv_bytes_per_position(&m);
    // Room for one request of 10 + 20 positions at a time.
    let cfg = EngineConfig {
        kv_cache_bytes: 45 * bpp,
        prefix_cache_entries: 0,
        ..Default::default()
    };
    let engine = Engine::start(m, tok.clone(), cfg).unwrap();
    let v = tok.vocab_size();
    let rxs: Vec<_> = (0..3)
        .map(|i| {
            engine
                .submit(Request::new(prompt(10, i, v), no_eos(20)))
                .unwrap()
        })
        .collect();
    let mut peak = 0;
    let mut done = 0;
    for rx in rxs {
        let events = drain(rx, vec![]).await;
        peak = peak.max(engine.stats().kv_bytes);
        done += outputs(&events).len();
    }
    assert_eq!(done, 3);
    assert!(peak <= 45 * bpp);
    let err = engine
        .generate(Request::new(prompt(10, 1, v), no_eos(100)))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Failed(_)), "{err}");
    assert!(matches!(
        engine.submit(Request::new(vec![], no_eos(3))),
        Err(EngineError::InvalidRequest(_))
    ));
    assert!(matches!(
        engine.submit(Request::new(vec![100_000], no_eos(3))),
        Err(EngineError::InvalidRequest(_))
    ));
}

#[test]
fn sync_batch_api() {
    let s = setup(EngineConfig::default());
    let v = s.tok.vocab_size();
    let prompts: Vec<Vec<u32>> = (0..4).map(|i| prompt(5 + 3 * i, i as u32, v)).collect();
    let outs = s.engine.generate_batch(&prompts, &no_eos(12)).unwrap();
    assert_eq!(outs.len(), 4);
    for (p, o) in prompts.iter().zip(&outs) {
        let single = s
            .engine
            .generate_blocking(Request::new(p.clone(), no_eos(12)))
            .unwrap()
            .remove(0);
        assert_eq!(o.token_ids, single.token_ids);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let e = s.engine.clone();
    let r = rt.block_on(async move { e.generate_batch(&[vec![1]], &no_eos(2)) });
    assert!(matches!(r, Err(EngineError::BlockingInAsync)));
}

/// GPT-2 byte-level alphabet: the token string of a single byte.
fn byte_token(b: u8) -> String {
    let printable =
        |x: u32| (33..=126).contains(&x) || (161..=172).contains(&x) || (174..=255).contains(&x);
    if printable(b as u32) {
        return char::from_u32(b as u32).unwrap().to_string();
    }
    let n = (0..b as u32).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap().to_string()
}

#[tokio::test]
async fn streamed_text_never_splits_utf8() {
    let s = setup(EngineConfig::default());
    let text = "東京 🙂é";
    // Force one token per byte, so every multi-byte character spans several tokens.
    let forced: Vec<u32> = text
        .bytes()
        .map(|b| s.tok.token_to_id(&byte_token(b)).expect("byte token"))
        .collect();
    assert_eq!(s.tok.decode(&forced, true).unwrap(), text);
    let f2 = forced.clone();
    let mask = Arc::new(move |_: usize, gen: &[u32]| {
        Allowed::Only(f2.get(gen.len()).copied().into_iter().collect())
    });
    let mut rx = s
        .engine
        .submit(Request::new(prompt(5, 1, 300), no_eos(forced.len())).with_mask(mask))
        .unwrap();
    let mut deltas = Vec::new();
    let mut out = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token { text_delta, .. } => deltas.push(text_delta),
            Event::Finished { output, .. } => out = Some(output),
            Event::Error { message } => panic!("{message}"),
        }
    }
    let out = out.unwrap();
    assert_eq!(out.token_ids, forced);
    assert_eq!(out.text, text);
    assert_eq!(deltas.concat(), text);
    assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
    assert!(
        deltas.iter().filter(|d| d.is_empty()).count() >= 5,
        "{deltas:?}"
    );
}

#[tokio::test]
async fn chunked_prefill_matches_whole_prefill() {
    let whole = setup(EngineConfig::default());
    let chunked = setup(EngineConfig {
        max_prefill_tokens_per_step: 7,
        ..Default::default()
    });
    let v = whole.tok.vocab_size();
    // A long-running stream first, so the chunks are interleaved with its decode steps.
    let mut bg = chunked
        .engine
        .submit(Request::new(prompt(5, 8, v), no_eos(60)).with_mask(throttle()))
        .unwrap();
    read_tokens(&mut bg, 2, &mut Vec::new()).await;
    let before = chunked.engine.stats();
    let prompts: Vec<Vec<u32>> = (0..3)
        .map(|i| prompt(20 + 9 * i, 30 + i as u32, v))
        .collect();
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| {
            chunked
                .engine
                .submit(Request::new(p.clone(), no_eos(10)).with_n(2))
                .unwrap()
        })
        .collect();
    for (p, rx) in prompts.iter().zip(rxs) {
        let got = outputs(&drain(rx, vec![]).await);
        let want = whole
            .engine
            .generate(Request::new(p.clone(), no_eos(10)).with_n(2))
            .await
            .unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.token_ids, w.token_ids);
            for (a, b) in g.logprobs.iter().zip(&w.logprobs) {
                assert!((a - b).abs() < 1e-4);
            }
        }
    }
    let after = chunked.engine.stats();
    assert_eq!(after.prefill_calls - before.prefill_calls, 3);
    let total: usize = prompts.iter().map(Vec::len).sum();
    assert_eq!(
        (after.prefill_tokens - before.prefill_tokens) as usize,
        total
    );
    let o = outputs(&drain(bg, vec![]).await);
    assert_eq!(o[0].token_ids.len(), 60);
}

/// A GGUF-quantized model is an ordinary `Model` to the engine: Q8_0 and Q4_0 run the
/// same scheduler, batch as they do dense, and report log-probs of their own forward.
#[test]
fn quantized_models_run_through_the_same_engine() {
    let tok = tokenizer();
    let dense = model(&tok);
    let v = tok.vocab_size();
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| prompt(4 + 5 * i, 40 + i as u32, v)).collect();
    for dtype in [fc_model::GgufDType::Q8_0, fc_model::GgufDType::Q4_0] {
        let q = dense.quantize(dtype).unwrap();
        assert!(q.is_quantized() && !dense.is_quantized());
        assert!(q.decode_weight_bytes() * 3 < dense.decode_weight_bytes(), "{dtype:?} must read fewer bytes");
        // Where the CPU has AVX-512 VNNI or AVX2, Q8_0 runs our kernel (fc_model::q8gemv):
        // this test then checks its batch invariance and log-probs too.
        if dtype == fc_model::GgufDType::Q8_0 && fc_model::q8gemv::available() {
            let ours = q.layers.iter().flat_map(|l| l.proj.iter()).all(|p| {
                matches!(&p.weight, fc_model::Weight::Quantized(fc_model::quantized::QWeight::Q8(_)))
            });
            assert!(ours, "Q8_0 projections should be repacked for our kernel");
        }
        let engine = Engine::start(q.clone(), tok.clone(), EngineConfig::default()).unwrap();
        let together = engine.generate_batch(&prompts, &no_eos(10)).unwrap();
        for (p, o) in prompts.iter().zip(&together) {
            let alone = engine.generate_blocking(Request::new(p.clone(), no_eos(10))).unwrap().remove(0);
            assert_eq!(o.token_ids, alone.token_ids, "{dtype:?}: batched vs alone");
            let reference = reference_logprobs(&q, None, p, &o.token_ids);
            for (j, (a, b)) in o.logprobs.iter().zip(&reference).enumerate() {
                assert!((a - b).abs() < 1e-4, "{dtype:?} token {j}: {a} vs {b}");
            }
        }
        engine.shutdown();
    }
}
