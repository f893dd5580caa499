//! Training-path tests: gradients, optimisation, frozen base, path agreement.

mod common;
use candle_core::{DType, Device, IndexOp, Tensor, Var};
use common::*;
use fc_model::{LoraAdapter, LoraConfig, Model, Proj, TokenBatch};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn batch() -> TokenBatch {
    // Row 0: 7 real tokens + 2 right pads; row 1: 2 left pads + 7 real tokens.
    let input_ids = vec![5, 9, 12, 40, 3, 33, 21, 0, 0, 0, 0, 7, 8, 50, 2, 60, 17, 4];
    let attention_mask = vec![1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1];
    let mut targets = input_ids[1..].to_vec();
    targets.push(0);
    TokenBatch {
        batch: 2,
        seq_len: 9,
        input_ids,
        attention_mask,
        targets,
    }
}

/// Loss mask: real token whose next token is also real.
fn loss_mask(b: &TokenBatch, dtype: DType) -> Tensor {
    let t = b.seq_len;
    let m: Vec<f64> = (0..b.batch * t)
        .map(|k| {
            let last = k % t == t - 1;
            if !last && b.attention_mask[k] == 1 && b.attention_mask[k + 1] == 1 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(m, (b.batch, t), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn loss(model: &Model, ad: &LoraAdapter, b: &TokenBatch, mask: &Tensor) -> Tensor {
    let lp = model.train_logprobs(b, Some(ad), None, 4).unwrap();
    let n = mask.sum_all().unwrap();
    lp.mul(mask)
        .unwrap()
        .sum_all()
        .unwrap()
        .neg()
        .unwrap()
        .div(&n)
        .unwrap()
}

fn randomize_b(ad: &LoraAdapter, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (k, v) in ad.vars().iter().enumerate() {
        if k % 2 == 1 {
            let vals: Vec<f64> = (0..v.elem_count())
                .map(|_| rand::Rng::random_range(&mut rng, -0.5..0.5))
                .collect();
            let t = Tensor::from_vec(vals, v.shape(), &Device::Cpu)
                .unwrap()
                .to_dtype(v.dtype())
                .unwrap();
            v.set(&t).unwrap();
        }
    }
}

#[test]
fn finite_difference_gradients_f64() {
    let model = tiny_model(DType::F64, 1);
    let cfg = LoraConfig {
        r: 2,
        alpha: 4.0,
        dropout: 0.0,
        ..Default::default()
    };
    let ad = LoraAdapter::new(&model, cfg, 2).unwrap();
    randomize_b(&ad, 3);
    let b = batch();
    let mask = loss_mask(&b, DType::F64);
    let l = loss(&model, &ad, &b, &mask);
    let grads = l.backward().unwrap();
    let vars = ad.vars();
    let eps = 1e-6;
    let mut checked = 0;
    for (vi, v) in vars.iter().enumerate().step_by(3) {
        let g = grads
            .get(v.as_tensor())
            .expect("grad for var")
            .flatten_all()
            .unwrap();
        let orig = v.as_tensor().flatten_all().unwrap();
        for &e in &[0usize, v.elem_count() / 2, v.elem_count() - 1] {
            let x0 = orig.i(e).unwrap().to_scalar::<f64>().unwrap();
            let set = |x: f64| {
                let mut vals = orig.to_vec1::<f64>().unwrap();
                vals[e] = x;
                v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap())
                    .unwrap();
            };
            set(x0 + eps);
            let lp = loss(&model, &ad, &b, &mask).to_scalar::<f64>().unwrap();
            set(x0 - eps);
            let lm = loss(&model, &ad, &b, &mask).to_scalar::<f64>().unwrap();
            set(x0);
            let num = (lp - lm) / (2.0 * eps);
            let ana = g.i(e).unwrap().to_scalar::<f64>().unwrap();
            let err = (num - ana).abs() / (num.abs() + ana.abs()).max(1e-6);
            assert!(
                err < 1e-5,
                "var {vi} elem {e}: numeric {num} analytic {ana} rel err {err}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 12);
}

#[test]
fn frozen_weights_get_no_gradient() {
    let model = tiny_model(DType::F32, 4);
    let ad = LoraAdapter::new(
        &model,
        LoraConfig {
            r: 2,
            ..Default::default()
        },
        5,
    )
    .unwrap();
    let b = batch();
    let mask = loss_mask(&b, DType::F32);
    let grads = loss(&model, &ad, &b, &mask).backward().unwrap();
    for (name, t) in model.named_tensors().unwrap() {
        if t.rank() == 2 {
            assert!(
                grads.get(&t).is_none(),
                "gradient computed for frozen {name}"
            );
        }
    }
    for v in ad.vars() {
        assert!(grads.get(v.as_tensor()).is_some());
    }
}

#[test]
fn loss_falls_and_only_lora_changes() {
    let model = tiny_model(DType::F32, 6);
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.05,
        ..Default::default()
    };
    let ad = LoraAdapter::new(&model, cfg, 7).unwrap();
    let before: Vec<Vec<f32>> = model
        .named_tensors()
        .unwrap()
        .iter()
        .map(|(_, t)| t.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let a0: Vec<f32> = ad.vars()[0].flatten_all().unwrap().to_vec1().unwrap();
    let mut opt = ad.adamw(1e-2, 0.0).unwrap();
    let b = batch();
    let mask = loss_mask(&b, DType::F32);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..50 {
        let lp = model
            .train_logprobs(&b, Some(&ad), Some(&mut rng), 5)
            .unwrap();
        let l = lp
            .mul(&mask)
            .unwrap()
            .sum_all()
            .unwrap()
            .neg()
            .unwrap()
            .div(&mask.sum_all().unwrap())
            .unwrap();
        let v = l.to_scalar::<f32>().unwrap();
        first.get_or_insert(v);
        last = v;
        let mut grads = l.backward().unwrap();
        let norm = fc_model::clip_grad_norm(&mut grads, &ad.vars(), 1.0).unwrap();
        assert!(norm.is_finite());
        opt.step(&grads).unwrap();
    }
    let first = first.unwrap();
    println!("loss {first} -> {last}");
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    let after: Vec<Vec<f32>> = model
        .named_tensors()
        .unwrap()
        .iter()
        .map(|(_, t)| t.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert!(before == after, "base weights changed");
    let a1: Vec<f32> = ad.vars()[0].flatten_all().unwrap().to_vec1().unwrap();
    assert!(a0 != a1, "LoRA A did not change");
}

#[test]
fn padding_does_not_change_real_token_logits() {
    let model = tiny_model(DType::F32, 9);
    let ad = LoraAdapter::new(
        &model,
        LoraConfig {
            r: 2,
            ..Default::default()
        },
        10,
    )
    .unwrap();
    randomize_b(&ad, 11);
    let b = batch();
    let lp = model.train_logprobs(&b, Some(&ad), None, 3).unwrap();
    // Row 1 unpadded vs. left padded; row 0 unpadded vs. right padded.
    for (row, range) in [(0usize, 0usize..6), (1, 2..8)] {
        let ids: Vec<u32> = range.clone().map(|k| b.input_ids[row * 9 + k]).collect();
        let tg: Vec<u32> = range.clone().map(|k| b.targets[row * 9 + k]).collect();
        let single = TokenBatch {
            batch: 1,
            seq_len: ids.len(),
            attention_mask: vec![1; ids.len()],
            input_ids: ids,
            targets: tg,
        };
        let lp1 = model
            .train_logprobs(&single, Some(&ad), None, 100)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let padded = lp.i((row, range.start..range.end)).unwrap();
        let d = max_abs_diff(&lp1, &padded);
        assert!(d < 1e-5, "row {row} diff {d}");
    }
}

#[test]
fn train_and_inference_paths_agree() {
    let model = tiny_model(DType::F32, 12);
    let ad = LoraAdapter::new(
        &model,
        LoraConfig {
            r: 2,
            ..Default::default()
        },
        13,
    )
    .unwrap();
    randomize_b(&ad, 14);
    let ids: Vec<u32> = vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5];
    let n = ids.len();
    let tb = TokenBatch {
        batch: 1,
        seq_len: n,
        input_ids: ids.clone(),
        attention_mask: vec![1; n],
        targets: ids.clone(),
    };
    for lora in [None, Some(&ad)] {
        let train = model.train_logits(&tb, lora).unwrap();
        // Inference: prefill 6 then decode one by one.
        let mut cache = model.new_cache();
        let x = Tensor::from_slice(&ids[..6], (1, 6), &Device::Cpu).unwrap();
        let mut parts = vec![model.forward(&x, &mut cache, lora).unwrap()];
        for &t in &ids[6..] {
            let x = Tensor::from_slice(&[t], (1, 1), &Device::Cpu).unwrap();
            parts.push(model.forward(&x, &mut cache, lora).unwrap());
        }
        let inf = Tensor::cat(&parts, 1).unwrap();
        let d = max_abs_diff(&train, &inf);
        println!("train vs cached inference max diff {d:.2e}");
        assert!(d < 1e-4, "diff {d}");
        // Chunked log-probs equal a full log-softmax.
        let full = candle_nn::ops::log_softmax(&train, 2).unwrap();
        let want = full
            .squeeze(0)
            .unwrap()
            .gather(&Tensor::from_slice(&ids, (n, 1), &Device::Cpu).unwrap(), 1)
            .unwrap();
        let lp = model.train_logprobs(&tb, lora, None, 4).unwrap();
        assert!(max_abs_diff(&lp.squeeze(0).unwrap(), &want.squeeze(1).unwrap()) < 1e-4);
    }
}

#[test]
fn merge_equals_unmerged_adapter() {
    let model = tiny_model(DType::F32, 15);
    let cfg = LoraConfig {
        r: 3,
        alpha: 5.0,
        targets: vec![Proj::K, Proj::Down],
        ..Default::default()
    };
    let ad = LoraAdapter::new(&model, cfg, 16).unwrap();
    randomize_b(&ad, 17);
    let tb = TokenBatch {
        batch: 1,
        seq_len: 5,
        input_ids: vec![1, 2, 3, 4, 5],
        attention_mask: vec![1; 5],
        targets: vec![0; 5],
    };
    let merged = model.merge_lora(&ad).unwrap();
    let d = max_abs_diff(
        &model.train_logits(&tb, Some(&ad)).unwrap(),
        &merged.train_logits(&tb, None).unwrap(),
    );
    assert!(d < 1e-4, "{d}");
    let base_d = max_abs_diff(
        &model.train_logits(&tb, None).unwrap(),
        &merged.train_logits(&tb, None).unwrap(),
    );
    assert!(base_d > 1e-3);
}

#[test]
fn bad_inputs_are_errors() {
    let model = tiny_model(DType::F32, 18);
    let tb = TokenBatch {
        batch: 1,
        seq_len: 2,
        input_ids: vec![1, 999],
        attention_mask: vec![1, 1],
        targets: vec![0, 0],
    };
    assert!(model.train_logits(&tb, None).is_err());
    let tb = TokenBatch {
        batch: 1,
        seq_len: 3,
        input_ids: vec![1, 2],
        attention_mask: vec![1, 1],
        targets: vec![0, 0],
    };
    assert!(model.train_logits(&tb, None).is_err());
    let _ = Var::zeros(1, DType::F32, &Device::Cpu);
}

#[test]
fn kv_cache_chunks_growth_and_fork() {
    let model = tiny_model(DType::F32, 20);
    // 300 tokens: crosses the 256-position buffer growth.
    let ids: Vec<u32> = (0..300u32).map(|i| (i * 37 + 11) % 61).collect();
    let n = ids.len();
    let tb = TokenBatch {
        batch: 1,
        seq_len: n,
        input_ids: ids.clone(),
        attention_mask: vec![1; n],
        targets: ids.clone(),
    };
    let want = model.train_logits(&tb, None).unwrap();
    let mut cache = model.new_cache();
    let mut parts = vec![];
    // Prefill 250, chunk of 3 (mask with offset), then chunk of 20 (growth), then singles.
    let mut pos = 0;
    for len in [250usize, 3, 20]
        .into_iter()
        .chain(std::iter::repeat_n(1, 27))
    {
        let x = Tensor::from_slice(&ids[pos..pos + len], (1, len), &Device::Cpu).unwrap();
        parts.push(model.forward(&x, &mut cache, None).unwrap());
        pos += len;
        if pos == 273 {
            // Fork: a deep copy continues independently of the original.
            let mut fork = cache.clone();
            let x = Tensor::from_slice(&[5u32, 6], (1, 2), &Device::Cpu).unwrap();
            model.forward(&x, &mut fork, None).unwrap();
            assert_eq!(fork.seq_len(), 275);
        }
    }
    assert_eq!(pos, n);
    let got = Tensor::cat(&parts, 1).unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d < 1e-4, "diff {d}");
    // Truncate back to a prefix and re-decode the same token: same logits.
    cache.truncate(100);
    let x = Tensor::from_slice(&ids[100..101], (1, 1), &Device::Cpu).unwrap();
    let again = model.forward(&x, &mut cache, None).unwrap();
    assert!(max_abs_diff(&again, &want.narrow(1, 100, 1).unwrap()) < 1e-4);
}

/// Loss and LoRA gradients of one dropout-on step, and the adapter's vars.
fn step_grads(model: &Model, dtype: DType) -> (f64, Vec<Tensor>) {
    let cfg = LoraConfig {
        r: 3,
        alpha: 6.0,
        dropout: 0.2,
        ..Default::default()
    };
    let ad = LoraAdapter::new(model, cfg, 21).unwrap();
    randomize_b(&ad, 22);
    let b = batch();
    let mask = loss_mask(&b, dtype);
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let lp = model.train_logprobs(&b, Some(&ad), Some(&mut rng), 4).unwrap();
    let n = mask.sum_all().unwrap();
    let l = lp.mul(&mask).unwrap().sum_all().unwrap().neg().unwrap().div(&n).unwrap();
    let grads = l.backward().unwrap();
    let gs = ad
        .vars()
        .iter()
        .map(|v| grads.get(v.as_tensor()).expect("every LoRA var gets a gradient").to_dtype(DType::F64).unwrap())
        .collect();
    (l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(), gs)
}

/// The CPU f32 training path fuses whole blocks (q/k norm + RoPE, attention in
/// `[B,T,H,D]`, the MLP half with a hand-written backward) and can recompute layers in the
/// backward; the f64 path composes per-op nodes. Same model, same dropout draws: the loss
/// and every LoRA gradient must agree, and recompute must not change anything.
#[test]
fn fused_blocks_and_recompute_match_the_composed_path() {
    let (l64, g64) = step_grads(&tiny_model(DType::F64, 30), DType::F64);
    let m32 = tiny_model(DType::F32, 30);
    let (l32, g32) = step_grads(&m32, DType::F32);
    let mut m32r = m32.clone();
    m32r.set_recompute_layers(1);
    let (l32r, g32r) = step_grads(&m32r, DType::F32);
    assert!((l64 - l32).abs() < 1e-4 * l64.abs().max(1.0), "loss f64 {l64} vs fused f32 {l32}");
    assert_eq!(l32, l32r, "recompute changed the loss");
    assert_eq!(g64.len(), g32.len());
    for (k, ((a, b), c)) in g64.iter().zip(&g32).zip(&g32r).enumerate() {
        let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().max(1e-3);
        let d = max_abs_diff(a, b) as f64;
        assert!(d < 2e-3 * scale, "var {k}: composed vs fused differ by {d} (scale {scale})");
        assert_eq!(max_abs_diff(b, c), 0.0, "var {k}: recompute changed the gradient");
    }
}

/// Full fine-tuning through the fused blocks (f32) against the composed per-op path (f64):
/// every weight's gradient (projections, norms, the tied embedding) agrees.
#[test]
fn fused_blocks_match_the_composed_path_for_full_fine_tuning() {
    let grads_of = |dtype: DType| {
        let mut model = tiny_model(dtype, 31);
        let vars = model.make_trainable().unwrap();
        let b = batch();
        let mask = loss_mask(&b, dtype);
        let lp = model.train_logprobs(&b, None, None, 4).unwrap();
        let n = mask.sum_all().unwrap();
        let l = lp.mul(&mask).unwrap().sum_all().unwrap().neg().unwrap().div(&n).unwrap();
        let grads = l.backward().unwrap();
        let gs: Vec<(String, Tensor)> = vars
            .iter()
            .map(|(name, v)| {
                let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
                (name.clone(), g.to_dtype(DType::F64).unwrap())
            })
            .collect();
        (l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(), gs)
    };
    let (l64, g64) = grads_of(DType::F64);
    let (l32, g32) = grads_of(DType::F32);
    assert!((l64 - l32).abs() < 1e-4 * l64.abs().max(1.0), "loss f64 {l64} vs fused f32 {l32}");
    for ((name, a), (_, b)) in g64.iter().zip(&g32) {
        let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().max(1e-3);
        let d = max_abs_diff(a, b) as f64;
        assert!(d < 2e-3 * scale, "{name}: composed vs fused differ by {d} (scale {scale})");
    }
}
