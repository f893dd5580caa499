//! LoRA adapters: PEFT-compatible init, save/load, merge, and optimizer helpers.
//!
//! Layout follows PEFT exactly so adapters move freely between this crate and
//! Python: `lora_A` is `[r, in]` (kaiming-uniform init, bound `1/sqrt(in)`),
//! `lora_B` is `[out, r]` (zeros), and the update is `scale * B @ A @ x` with
//! `scale = alpha / r` (or `alpha / sqrt(r)` for rsLoRA). Dropout is applied
//! to the input of A, as in PEFT.

use crate::error::{ModelError, Result};
use crate::io;
use crate::model::{Model, Proj};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::path::Path;

/// File names PEFT uses.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// LoRA hyper-parameters (the subset of PEFT's `LoraConfig` we support).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Projections that get an adapter; default: all seven.
    pub targets: Vec<Proj>,
    pub use_rslora: bool,
    /// Written to `adapter_config.json` for provenance.
    pub base_model_name_or_path: Option<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: Proj::ALL.to_vec(),
            use_rslora: false,
            base_model_name_or_path: None,
        }
    }
}

impl LoraConfig {
    /// Multiplier of `B @ A`: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// The PEFT `adapter_config.json` content.
    pub fn to_peft_json(&self) -> Value {
        let alpha = if self.alpha.fract() == 0.0 && self.alpha.abs() < 1e15 {
            json!(self.alpha as i64)
        } else {
            json!(self.alpha)
        };
        let targets: Vec<&str> = self.targets.iter().map(|p| p.hf_name()).collect();
        json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": alpha,
            "lora_dropout": self.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": targets,
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": self.use_rslora
        })
    }

    /// Parses a PEFT `adapter_config.json`, refusing features we would silently get wrong.
    pub fn from_peft_json(v: &Value) -> Result<Self> {
        let bad = |m: String| ModelError::Config(format!("adapter_config: {m}"));
        if let Some(pt) = v.get("peft_type").and_then(Value::as_str) {
            if pt != "LORA" {
                return Err(bad(format!("peft_type `{pt}` is not LORA")));
            }
        }
        let r = v
            .get("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("missing `r`".into()))? as usize;
        if r == 0 {
            return Err(bad("r = 0".into()));
        }
        let alpha = v.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
        let dropout = v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
        if !(0.0..1.0).contains(&dropout) {
            return Err(bad(format!("lora_dropout {dropout} not in [0, 1)")));
        }
        let targets = match v.get("target_modules") {
            Some(Value::Array(a)) => {
                let mut t = Vec::new();
                for x in a {
                    let name = x
                        .as_str()
                        .ok_or_else(|| bad("non-string target module".into()))?;
                    let p = Proj::from_hf_name(name)
                        .ok_or_else(|| bad(format!("unsupported target module `{name}`")))?;
                    if !t.contains(&p) {
                        t.push(p);
                    }
                }
                t.sort();
                t
            }
            Some(Value::String(s)) if s == "all-linear" => Proj::ALL.to_vec(),
            Some(Value::String(s)) => match Proj::from_hf_name(s) {
                Some(p) => vec![p],
                None => return Err(bad(format!("regex target_modules `{s}` not supported"))),
            },
            _ => return Err(bad("missing target_modules".into())),
        };
        if v.get("bias")
            .and_then(Value::as_str)
            .is_some_and(|b| b != "none")
        {
            return Err(bad("only bias = \"none\" is supported".into()));
        }
        if v.get("use_dora").and_then(Value::as_bool) == Some(true) {
            return Err(bad("DoRA is not supported".into()));
        }
        if v.get("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
            return Err(bad("fan_in_fan_out is not supported".into()));
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if v.get(key)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
            {
                return Err(bad(format!("`{key}` is not supported")));
            }
        }
        if v.get("lora_bias").and_then(Value::as_bool) == Some(true) {
            return Err(bad("lora_bias is not supported".into()));
        }
        for key in [
            "layers_to_transform",
            "modules_to_save",
            "exclude_modules",
            "layer_replication",
            "target_parameters",
        ] {
            if v.get(key).is_some_and(|x| !x.is_null()) {
                return Err(bad(format!("`{key}` is not supported")));
            }
        }
        Ok(LoraConfig {
            r,
            alpha,
            dropout,
            targets,
            use_rslora: v
                .get("use_rslora")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            base_model_name_or_path: v
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }
}

/// Trainable low-rank pair of one projection.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// `[r, in]`
    pub a: Var,
    /// `[out, r]`
    pub b: Var,
}

/// A LoRA adapter over a [`Model`]'s layers.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub config: LoraConfig,
    /// `layers[i][proj as usize]`
    pub layers: Vec<Vec<Option<LoraPair>>>,
}

fn peft_key(layer: usize, p: Proj, ab: &str) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.lora_{ab}.weight",
        p.module_path()
    )
}

impl LoraAdapter {
    /// Fresh adapter initialised like PEFT: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform
    /// with a = sqrt(5)), B = 0 — so the adapted model starts equal to the base.
    pub fn new(model: &Model, config: LoraConfig, seed: u64) -> Result<Self> {
        if config.r == 0 {
            return Err(ModelError::Config("LoRA rank must be > 0".into()));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (dev, dt) = (model.device(), model.dtype());
        let mut layers = Vec::with_capacity(model.layers.len());
        for _ in 0..model.layers.len() {
            let mut slots = vec![None; 7];
            for &p in &config.targets {
                let (out, inp) = p.shape(&model.config);
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f64> = (0..config.r * inp)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Tensor::from_vec(a, (config.r, inp), dev)?.to_dtype(dt)?;
                slots[p as usize] = Some(LoraPair {
                    a: Var::from_tensor(&a)?,
                    b: Var::zeros((out, config.r), dt, dev)?,
                });
            }
            layers.push(slots);
        }
        Ok(LoraAdapter { config, layers })
    }

    pub fn scale(&self) -> f64 {
        self.config.scale()
    }

    pub fn pair(&self, layer: usize, p: Proj) -> Option<&LoraPair> {
        self.layers
            .get(layer)
            .and_then(|l| l.get(p as usize))
            .and_then(Option::as_ref)
    }

    /// All trainable variables (A then B per projection), for the optimizer.
    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flatten()
            .flatten()
            .flat_map(|p| [p.a.clone(), p.b.clone()])
            .collect()
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// PEFT key names and tensors (f32).
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for p in Proj::ALL {
                if let Some(pair) = &l[p as usize] {
                    out.push((
                        peft_key(i, p, "A"),
                        pair.a.as_tensor().to_dtype(DType::F32)?,
                    ));
                    out.push((
                        peft_key(i, p, "B"),
                        pair.b.as_tensor().to_dtype(DType::F32)?,
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Writes `adapter_config.json` + `adapter_model.safetensors` (PEFT `save_pretrained` layout).
    pub fn save_peft(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        io::write_safetensors(&dir.join(ADAPTER_WEIGHTS), self.named_tensors()?)?;
        io::write_json(&dir.join(ADAPTER_CONFIG), &self.config.to_peft_json())
    }

    /// Loads a PEFT adapter dir for `model`, checking every shape.
    pub fn load_peft(dir: &Path, model: &Model) -> Result<Self> {
        let config = LoraConfig::from_peft_json(&io::read_json(&dir.join(ADAPTER_CONFIG))?)?;
        let st = io::mmap_files(&[dir.join(ADAPTER_WEIGHTS)])?;
        let (dev, dt) = (model.device(), model.dtype());
        let mut layers = Vec::with_capacity(model.layers.len());
        for i in 0..model.layers.len() {
            let mut slots = vec![None; 7];
            for &p in &config.targets {
                let (out, inp) = p.shape(&model.config);
                let get = |ab: &str, shape: [usize; 2]| -> Result<Var> {
                    let key = peft_key(i, p, ab);
                    let t = st
                        .load(&key, dev)
                        .map_err(|e| ModelError::Weight(format!("`{key}`: {e}")))?;
                    if t.dims() != shape {
                        return Err(ModelError::Weight(format!(
                            "`{key}` has shape {:?}, expected {shape:?}",
                            t.dims()
                        )));
                    }
                    Ok(Var::from_tensor(&t.to_dtype(dt)?)?)
                };
                let a = get("A", [config.r, inp])?;
                let b = get("B", [out, config.r])?;
                slots[p as usize] = Some(LoraPair { a, b });
            }
            layers.push(slots);
        }
        Ok(LoraAdapter { config, layers })
    }

    /// A fresh AdamW over this adapter's variables (state can be checkpointed).
    pub fn adamw(&self, lr: f64, weight_decay: f64) -> Result<crate::optim::AdamW> {
        crate::optim::AdamW::new(
            self.vars(),
            crate::optim::AdamWParams { lr, weight_decay, ..Default::default() },
        )
    }
}

/// Scales the gradients of `vars` so their global L2 norm is at most `max_norm`;
/// returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if norm.is_finite() && norm > max_norm && norm > 0.0 {
        let f = max_norm / norm;
        for v in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let scaled = g.affine(f, 0.0)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

impl Model {
    /// A copy of this model with `W += scale * B @ A` folded into every adapted projection
    /// (the same math as PEFT's `merge_and_unload`).
    pub fn merge_lora(&self, adapter: &LoraAdapter) -> Result<Model> {
        if adapter.layers.len() != self.layers.len() {
            return Err(ModelError::Input(
                "adapter has a different layer count".into(),
            ));
        }
        let mut merged = self.clone();
        let scale = adapter.scale();
        for (i, layer) in merged.layers.iter_mut().enumerate() {
            for p in Proj::ALL {
                if let Some(pair) = adapter.pair(i, p) {
                    let lin = &mut layer.proj[p as usize];
                    let delta = pair
                        .b
                        .as_tensor()
                        .matmul(pair.a.as_tensor())?
                        .affine(scale, 0.0)?;
                    let w = lin.dense_weight_mut()?;
                    *w = (&*w + delta.to_dtype(w.dtype())?)?.detach();
                }
            }
        }
        Ok(merged)
    }
}
