#![allow(dead_code)]
use candle_core::{DType, Device, Tensor};
use fc_model::{Model, ModelConfig};
use std::collections::HashMap;
use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn expected(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("expected.safetensors"), &Device::Cpu)
        .expect("expected.safetensors")
}

pub fn ids(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    a.to_dtype(DType::F32)
        .unwrap()
        .sub(&b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A tiny random Qwen3 for training tests.
pub fn tiny_model(dtype: DType, seed: u64) -> Model {
    let cfg = ModelConfig::qwen3(61, 16, 32, 2, 4, 2, 8, true, 0, 1).unwrap();
    let mut m = Model::random(cfg, seed, &Device::Cpu, dtype).unwrap();
    // Larger-than-default weights so gradients are not vanishingly small.
    for l in m.layers.iter_mut() {
        for p in l.proj.iter_mut() {
            let w = p.dense_weight().unwrap();
            let fan_in = w.dim(1).unwrap() as f64;
            p.weight = fc_model::Weight::Dense(w.affine(1.0 / (0.02 * fan_in.sqrt()), 0.0).unwrap());
        }
    }
    m.embed_tokens = m.embed_tokens.affine(50.0, 0.0).unwrap();
    m
}
