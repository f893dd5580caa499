//! SFT loop end to end on the tiny preset: loss goes down, val loss improves, the
//! adapter is saved and loads back; the assistant-only mask covers the completion.

use std::io::Write;
use std::path::Path;

use fc_data::Sample;
use fc_model::{DType, Device, LoraAdapter, Model};
use sft_trainer::train::{eval_loss, tokenize_sample, tokenize_samples, train, FinetuningType, SftConfig, StepInfo};

fn samples(n: usize, seed: u64) -> Vec<Sample> {
    let recs = fc_data::generate(n, seed);
    let mut buf = Vec::new();
    fc_data::write_xlam_json(&recs, &mut buf).expect("write");
    fc_data::load(buf.as_slice(), fc_data::Format::Xlam, None)
        .map(|i| i.expect("read").result.expect("valid"))
        .collect()
}

fn write_jsonl(path: &Path, s: &[Sample]) {
    let mut f = std::fs::File::create(path).expect("create");
    for x in s {
        writeln!(f, "{}", serde_json::to_string(x).expect("json")).expect("write");
    }
}

fn tiny(dir: &Path, s: &[Sample]) {
    let template = fc_chat::ChatTemplate::new(fc_model::tiny::QWEN3_CHAT_TEMPLATE).expect("template");
    let texts: Vec<String> =
        s.iter().map(|x| template.render(&fc_chat::sample::training_request(x)).expect("render")).collect();
    fc_model::init_tiny(&texts, 1, dir).expect("tiny");
}

#[test]
fn assistant_only_mask_covers_exactly_the_completion() {
    let dir = tempfile::tempdir().unwrap();
    let s = samples(20, 5);
    tiny(&dir.path().join("m"), &s);
    let tok = fc_chat::Tokenizer::from_dir(dir.path().join("m")).expect("tokenizer");
    let mut checked = 0;
    for x in &s {
        let Some(e) = tokenize_sample(&tok, x, 100_000, false).expect("tok") else { continue };
        checked += 1;
        let (_, p, _, c) = tok.apply_chat_template_split(&fc_chat::sample::training_request(x)).expect("split");
        assert_eq!(e.ids.len(), p.len() + c.len());
        assert_eq!(&e.ids[..p.len()], &p[..]);
        assert_eq!(&e.ids[p.len()..], &c[..]);
        assert!(e.labels[..p.len()].iter().all(|&l| !l));
        assert!(e.labels[p.len()..].iter().all(|&l| l));
        assert_eq!(e.num_targets(), c.len());
        let all = tokenize_sample(&tok, x, 100_000, true).expect("tok").unwrap();
        assert_eq!(all.num_targets(), e.ids.len() - 1);
        // prompt_loss_weight scales prompt targets only; the first token is never a target.
        assert_eq!(all.completion_start, p.len());
        assert_eq!(all.target_weight(0, 0.1), 0.0);
        assert!((1..p.len()).all(|i| all.target_weight(i, 0.1) == 0.1));
        assert!((p.len()..all.len()).all(|i| all.target_weight(i, 0.1) == 1.0 && e.target_weight(i, 0.1) == 1.0));
        assert!((0..p.len()).all(|i| e.target_weight(i, 0.1) == 0.0));
        let cut = tokenize_sample(&tok, x, p.len() + 3, false).expect("tok").unwrap();
        assert_eq!(cut.ids.len(), p.len() + 3);
        assert_eq!(cut.num_targets(), 3);
    }
    assert!(checked >= 10, "only {checked} samples with an answer");
}

#[test]
fn sft_on_tiny_reduces_loss_and_saves_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let all = samples(240, 11);
    let (tr, va) = all.split_at(200);
    let model_dir = dir.path().join("tiny");
    tiny(&model_dir, &all);
    let (train_file, val_file) = (dir.path().join("train.jsonl"), dir.path().join("val.jsonl"));
    write_jsonl(&train_file, tr);
    write_jsonl(&val_file, va);

    // Short sequences and few steps keep this well under a minute on 2 CPU cores.
    let cfg = SftConfig {
        max_steps: Some(24),
        cutoff_len: 192,
        learning_rate: 5e-3,
        log_every: 0,
        eval_each_epoch: false,
        finetuning_type: FinetuningType::Lora,
        ..SftConfig::tiny_from_scratch()
    };

    // Before: the base model (adapter off), same masking as training.
    let tok = fc_chat::Tokenizer::from_dir(&model_dir).unwrap();
    let model = Model::load(&model_dir, &Device::Cpu, DType::F32).unwrap();
    let (val_ex, dropped) = tokenize_samples(&tok, va, cfg.cutoff_len, cfg.train_on_prompt).unwrap();
    let pad = tok.special_tokens().pad.unwrap_or(0);
    eprintln!("val examples {} (dropped {dropped}), mean len {}", val_ex.len(), val_ex.iter().map(|e| e.len()).sum::<usize>() / val_ex.len());
    let before = eval_loss(&model, None, &val_ex, 8, 256, pad).unwrap();

    let mut steps: Vec<StepInfo> = Vec::new();
    let t0 = std::time::Instant::now();
    let out = dir.path().join("out");
    let rep = train(&cfg, &model_dir, &train_file, Some(val_file.as_path()), &out, &mut |s| steps.push(s)).expect("train");
    eprintln!(
        "before val {before:.3} -> {:?}; train {:.3} -> {:.3}; {:.0} tok/s; {} steps in {:.1}s",
        rep.val_loss, rep.train_loss_first, rep.train_loss_last, rep.tokens_per_second, rep.steps, t0.elapsed().as_secs_f64()
    );
    println!("{}", serde_json::to_string(&rep).unwrap());
    assert_eq!(rep.steps, 24);
    assert_eq!(steps.len(), 24);
    assert_eq!(steps.last().unwrap().total_steps, 24);
    assert!(steps.iter().all(|s| s.loss.is_finite() && s.grad_norm.is_finite()));
    let after = rep.val_loss.expect("val loss");
    assert!(after < before - 0.3, "val loss {before} -> {after}");
    assert!(rep.train_loss_last < rep.train_loss_first - 0.3, "{rep:?}");
    assert!(rep.tokens_per_second > 0.0);
    assert!(rep.adapter.join("adapter_config.json").exists());
    assert!(rep.adapter.join("adapter_model.safetensors").exists());
    let ad = LoraAdapter::load_peft(&rep.adapter, &model).expect("load adapter");
    let reloaded = eval_loss(&model, Some(&ad), &val_ex, 8, 256, pad).unwrap();
    assert!((reloaded - after).abs() < 1e-3, "reloaded {reloaded} vs {after}");
}

#[test]
fn runs_are_reproducible_with_grad_accum() {
    let dir = tempfile::tempdir().unwrap();
    let all = samples(60, 3);
    let model_dir = dir.path().join("tiny");
    tiny(&model_dir, &all);
    let train_file = dir.path().join("train.jsonl");
    write_jsonl(&train_file, &all);
    let cfg = SftConfig {
        max_steps: Some(3),
        batch_size: 2,
        grad_accum: 2,
        cutoff_len: 96,
        lora_dropout: 0.1,
        log_every: 0,
        finetuning_type: FinetuningType::Lora,
        ..SftConfig::tiny_from_scratch()
    };
    let run = |out: &str| {
        let mut steps: Vec<StepInfo> = Vec::new();
        let rep = train(&cfg, &model_dir, &train_file, None, &dir.path().join(out), &mut |s| steps.push(s)).expect("train");
        (rep, steps)
    };
    let (ra, sa) = run("a");
    let (rb, sb) = run("b");
    assert_eq!(ra.steps, 3);
    assert!(ra.val_loss.is_none());
    let key = |s: &[StepInfo]| s.iter().map(|x| (x.loss, x.grad_norm, x.learning_rate, x.epoch)).collect::<Vec<_>>();
    assert_eq!(key(&sa), key(&sb));
    assert_eq!(ra.train_loss_last, rb.train_loss_last);
    // 2 micro-batches per step: the epoch advances by 2 / batches-per-epoch.
    let per = 2.0 / ra.train_examples.div_ceil(2) as f64;
    assert!((sa[0].epoch - per).abs() < 1e-9, "{:?}", sa[0]);
    assert!(sa[1].learning_rate > 0.0);
}

/// Stops at step 3 (as a SIGTERM would), resumes from the checkpoint, and ends with the
/// same adapter, losses and step records as a run that never stopped.
#[test]
fn resume_from_checkpoint_matches_an_uninterrupted_run_lora() {
    resume_matches(FinetuningType::Lora);
}

#[test]
fn resume_from_checkpoint_matches_an_uninterrupted_run_full() {
    resume_matches(FinetuningType::Full);
}

fn resume_matches(kind: FinetuningType) {
    use sft_trainer::train::{train_with, Observer, Outcome, RunInfo, TrainOptions, TrainerState};
    struct Rec {
        steps: Vec<StepInfo>,
        checkpoints: Vec<(std::path::PathBuf, usize)>,
        stop_at: Option<usize>,
        started: Vec<RunInfo>,
    }
    impl Observer for Rec {
        fn started(&mut self, info: &RunInfo) -> sft_trainer::train::Result<()> {
            self.started.push(info.clone());
            Ok(())
        }
        fn step(&mut self, info: &StepInfo) {
            self.steps.push(info.clone());
        }
        fn checkpoint(&mut self, dir: &Path, st: &TrainerState) -> sft_trainer::train::Result<()> {
            self.checkpoints.push((dir.to_path_buf(), st.step));
            Ok(())
        }
        fn should_stop(&self) -> bool {
            self.stop_at.is_some_and(|s| self.steps.len() >= s)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let all = samples(24, 9);
    let model_dir = dir.path().join("tiny");
    tiny(&model_dir, &all);
    let train_file = dir.path().join("train.jsonl");
    write_jsonl(&train_file, &all);
    // At most 24 examples at batch 2 x accum 2: at most 6 steps per epoch, so 9 steps
    // cross an epoch boundary (the data order of epoch 2 must be rebuilt on resume).
    let cfg = SftConfig {
        max_steps: Some(9),
        batch_size: 2,
        grad_accum: 2,
        cutoff_len: 80,
        lora_dropout: 0.1,
        log_every: 0,
        finetuning_type: kind,
        ..SftConfig::tiny_from_scratch()
    };
    let run = |out: &str, opts: &TrainOptions, stop_at: Option<usize>| {
        let mut rec = Rec { steps: vec![], checkpoints: vec![], stop_at, started: vec![] };
        let o = train_with(&cfg, &model_dir, &train_file, None, &dir.path().join(out), opts, &mut rec, &Device::Cpu, DType::F32)
            .expect("train");
        (o, rec)
    };
    let every2 = TrainOptions { checkpoint_every: 2, keep_checkpoints: 2, ..Default::default() };
    let (full, full_rec) = run("full", &every2, None);
    let Outcome::Completed(full) = full else { panic!("the full run completes") };
    assert_eq!(full_rec.checkpoints.iter().map(|c| c.1).collect::<Vec<_>>(), vec![2, 4, 6, 8]);
    let kept = std::fs::read_dir(dir.path().join("full/checkpoints")).unwrap().count();
    assert_eq!(kept, 2, "only the newest checkpoints stay on disk");

    let (stopped, rec) = run("part", &TrainOptions::default(), Some(3));
    let Outcome::Stopped { step, checkpoint } = stopped else { panic!("stops when asked") };
    assert_eq!(step, 3);
    assert_eq!(rec.checkpoints.len(), 1, "a stop always leaves a checkpoint");
    let st = TrainerState::read(&checkpoint).unwrap();
    assert_eq!((st.step, st.data_position.batches_consumed), (3, 6));

    let resume = TrainOptions { resume_from: Some(checkpoint), ..Default::default() };
    let (done, rec2) = run("part", &resume, None);
    let Outcome::Completed(done) = done else { panic!("the resumed run completes") };
    assert_eq!(rec2.started[0].resumed_from_step, Some(3));
    assert_eq!(done.steps, 9);
    let key = |s: &[StepInfo]| s.iter().map(|x| (x.step, x.loss, x.grad_norm, x.learning_rate, x.epoch)).collect::<Vec<_>>();
    let mut joined = rec.steps.clone();
    joined.extend(rec2.steps.clone());
    let (a, b) = (key(&full_rec.steps), key(&joined));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.0, x.3, x.4), (y.0, y.3, y.4));
        assert!((x.1 - y.1).abs() < 1e-5 && (x.2 - y.2).abs() < 1e-4, "step {}: {x:?} vs {y:?}", x.0);
    }
    assert_eq!(a.len(), b.len());
    assert!(full_rec.steps.last().unwrap().epoch > 1.0, "the run crosses an epoch boundary");

    assert_eq!(full.finetuning_type, kind);
    let max = fc_model::max_weight_diff(&full.adapter, &done.adapter).unwrap();
    eprintln!("{kind:?}: resumed vs uninterrupted weights: max abs diff {max:e}");
    assert!(max < 1e-5, "weights differ by {max}");

    // A checkpoint refuses another config.
    let other = SftConfig { learning_rate: 1e-3, ..cfg.clone() };
    let ck = full_rec.checkpoints.last().unwrap().0.clone();
    let err = train_with(&other, &model_dir, &train_file, None, &dir.path().join("x"), &TrainOptions { resume_from: Some(ck), ..Default::default() }, &mut Rec { steps: vec![], checkpoints: vec![], stop_at: None, started: vec![] }, &Device::Cpu, DType::F32).unwrap_err();
    assert!(err.to_string().contains("different SFT config"), "{err}");
}

/// The tiny preset's default recipe trains every weight; it learns far faster than LoRA
/// over the random base, and the saved model dir loads back with the same loss.
#[test]
fn full_finetune_of_the_tiny_preset_beats_lora_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let all = samples(200, 21);
    let (tr, va) = all.split_at(170);
    let model_dir = dir.path().join("tiny");
    tiny(&model_dir, &all);
    let (train_file, val_file) = (dir.path().join("train.jsonl"), dir.path().join("val.jsonl"));
    write_jsonl(&train_file, tr);
    write_jsonl(&val_file, va);
    let base = SftConfig { max_steps: Some(30), cutoff_len: 160, log_every: 0, eval_each_epoch: false, ..SftConfig::tiny_from_scratch() };
    assert_eq!(base.finetuning_type, FinetuningType::Full, "the tiny recipe is a full fine-tune");
    let run = |cfg: &SftConfig, out: &str| train(cfg, &model_dir, &train_file, Some(val_file.as_path()), &dir.path().join(out), &mut |_| {}).expect("train");
    let full = run(&base, "full");
    let lora = run(&SftConfig { finetuning_type: FinetuningType::Lora, ..base.clone() }, "lora");
    let (vf, vl) = (full.val_loss.unwrap(), lora.val_loss.unwrap());
    eprintln!("30 steps: full val loss {vf:.3} ({:.0} tok/s), LoRA val loss {vl:.3} ({:.0} tok/s)", full.tokens_per_second, lora.tokens_per_second);
    assert!(vf < vl - 0.5, "full {vf} vs lora {vl}");
    assert!(full.adapter.join("config.json").is_file() && full.adapter.join("tokenizer.json").is_file());
    let tok = fc_chat::Tokenizer::from_dir(&full.adapter).unwrap();
    let reloaded = Model::load(&full.adapter, &Device::Cpu, DType::F32).unwrap();
    let (val_ex, _) = tokenize_samples(&tok, va, base.cutoff_len, base.train_on_prompt).unwrap();
    let pad = tok.special_tokens().pad.unwrap_or(0);
    let again = eval_loss(&reloaded, None, &val_ex, 8, 256, pad).unwrap();
    assert!((again - vf).abs() < 1e-3, "reloaded {again} vs {vf}");
}
