//! AdamW whose state can be saved and restored.
//!
//! candle-nn's `AdamW` keeps its moments private, so a trainer built on it cannot write a
//! checkpoint that resumes exactly. This one does the same arithmetic (decoupled weight
//! decay, bias-corrected moments, the same operation order, so results match candle-nn's
//! bit for bit) and exposes its state: [`AdamW::save_state`] / [`AdamW::load_state`].

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{ModelError, Result};

/// Hyper-parameters (candle-nn / PyTorch defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        AdamWParams { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

#[derive(Debug)]
struct Slot {
    var: Var,
    m: Var,
    v: Var,
}

/// AdamW over a fixed, ordered list of variables.
#[derive(Debug)]
pub struct AdamW {
    slots: Vec<Slot>,
    pub params: AdamWParams,
    step_t: usize,
}

const STEP_KEY: &str = "adamw.step";

impl AdamW {
    pub fn new(vars: Vec<Var>, params: AdamWParams) -> Result<Self> {
        let slots = vars
            .into_iter()
            .filter(|v| v.dtype().is_float())
            .map(|var| {
                let m = Var::zeros(var.shape(), var.dtype(), var.device())?;
                let v = Var::zeros(var.shape(), var.dtype(), var.device())?;
                Ok(Slot { var, m, v })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW { slots, params, step_t: 0 })
    }

    pub fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// Optimizer steps taken so far (the bias-correction counter).
    pub fn steps_taken(&self) -> usize {
        self.step_t
    }

    /// One update of every variable that has a gradient in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_t += 1;
        let p = self.params;
        let scale_m = 1f64 / (1f64 - p.beta1.powi(self.step_t as i32));
        let scale_v = 1f64 / (1f64 - p.beta2.powi(self.step_t as i32));
        for s in &self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else { continue };
            let next_m = ((s.m.as_tensor() * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let next_v = ((s.v.as_tensor() * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&next_m * scale_m)?;
            let v_hat = (&next_v * scale_v)?;
            let decayed = (s.var.as_tensor() * (1f64 - p.lr * p.weight_decay))?;
            let adjusted = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            let next = (decayed - (adjusted * p.lr)?)?;
            s.m.set(&next_m)?;
            s.v.set(&next_v)?;
            s.var.set(&next)?;
        }
        Ok(())
    }

    /// Writes the moments and the step counter to a safetensors file. Variables are keyed
    /// by position, so the optimizer that loads it must be built over the same list.
    pub fn save_state(&self, path: &Path) -> Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (i, s) in self.slots.iter().enumerate() {
            map.insert(format!("m.{i}"), s.m.as_tensor().clone());
            map.insert(format!("v.{i}"), s.v.as_tensor().clone());
        }
        map.insert(STEP_KEY.into(), Tensor::new(&[self.step_t as u32], &candle_core::Device::Cpu)?);
        candle_core::safetensors::save(&map, path).map_err(|e| ModelError::Weight(format!("{}: {e}", path.display())))
    }

    /// Restores what [`AdamW::save_state`] wrote, checking every shape.
    pub fn load_state(&mut self, path: &Path) -> Result<()> {
        let dev = self.slots.first().map(|s| s.var.device().clone()).unwrap_or(candle_core::Device::Cpu);
        let map = candle_core::safetensors::load(path, &dev).map_err(|e| ModelError::Weight(format!("{}: {e}", path.display())))?;
        let want = 2 * self.slots.len() + 1;
        if map.len() != want {
            return Err(ModelError::Weight(format!(
                "{}: {} tensors, expected {want} (an optimizer over a different adapter?)",
                path.display(),
                map.len()
            )));
        }
        let get = |k: &str| map.get(k).ok_or_else(|| ModelError::Weight(format!("{}: missing `{k}`", path.display())));
        for (i, s) in self.slots.iter().enumerate() {
            for (key, dst) in [(format!("m.{i}"), &s.m), (format!("v.{i}"), &s.v)] {
                let t = get(&key)?;
                if t.dims() != s.var.dims() {
                    return Err(ModelError::Weight(format!(
                        "{}: `{key}` has shape {:?}, the variable {:?}",
                        path.display(),
                        t.dims(),
                        s.var.dims()
                    )));
                }
                dst.set(&t.to_dtype(s.var.dtype())?)?;
            }
        }
        let step = get(STEP_KEY)?.to_device(&candle_core::Device::Cpu)?.to_vec1::<u32>()?;
        self.step_t = step.first().copied().unwrap_or(0) as usize;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::Optimizer;

    fn quad_loss(x: &Var) -> Tensor {
        x.as_tensor().sqr().unwrap().sum_all().unwrap()
    }

    #[test]
    fn matches_candle_nn_and_resumes_exactly() {
        let init = Tensor::new(&[1.0f32, -2.0, 3.0, 0.5], &Device::Cpu).unwrap();
        let params = AdamWParams { lr: 0.05, weight_decay: 0.1, ..Default::default() };
        let (a, b, c) = (Var::from_tensor(&init).unwrap(), Var::from_tensor(&init).unwrap(), Var::from_tensor(&init).unwrap());
        let mut ours = AdamW::new(vec![a.clone()], params).unwrap();
        let mut theirs = candle_nn::AdamW::new(
            vec![b.clone()],
            candle_nn::ParamsAdamW { lr: 0.05, weight_decay: 0.1, ..Default::default() },
        )
        .unwrap();
        let mut cur = c;
        let mut resumed = AdamW::new(vec![cur.clone()], params).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opt.safetensors");
        for step in 0..10 {
            ours.step(&quad_loss(&a).backward().unwrap()).unwrap();
            theirs.step(&quad_loss(&b).backward().unwrap()).unwrap();
            if step == 4 {
                // Save after 4 steps, rebuild variable and optimizer from scratch, carry on.
                resumed.save_state(&path).unwrap();
                cur = Var::from_tensor(&cur.as_tensor().copy().unwrap()).unwrap();
                resumed = AdamW::new(vec![cur.clone()], params).unwrap();
                resumed.load_state(&path).unwrap();
                assert_eq!(resumed.steps_taken(), 4);
            }
            resumed.step(&quad_loss(&cur).backward().unwrap()).unwrap();
        }
        let x = a.as_tensor().to_vec1::<f32>().unwrap();
        assert_eq!(x, b.as_tensor().to_vec1::<f32>().unwrap(), "same arithmetic as candle-nn");
        assert_eq!(x, cur.as_tensor().to_vec1::<f32>().unwrap(), "save + load resumes exactly");
        assert_eq!(resumed.steps_taken(), 10);
    }

    #[test]
    fn load_refuses_a_different_variable_list() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("opt.safetensors");
        let a = Var::zeros(4, DType::F32, &Device::Cpu).unwrap();
        AdamW::new(vec![a], AdamWParams::default()).unwrap().save_state(&p).unwrap();
        let b = Var::zeros(5, DType::F32, &Device::Cpu).unwrap();
        let err = AdamW::new(vec![b], AdamWParams::default()).unwrap().load_state(&p).unwrap_err();
        assert!(err.to_string().contains("shape"), "{err}");
    }
}
