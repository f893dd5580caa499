//! Every file in deploy/config/ is valid for the component that reads it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn pipeline_file_is_valid() {
    let (run, req) = fcmesh::pipeline::load(&repo().join("deploy/config/pipeline.toml")).expect("pipeline.toml");
    assert!(fc_events::subjects::valid_token(&run));
    assert_eq!(req.dataset.format, "xlam");
    let _: evaluator::PromoteRule = serde_json::from_value(req.promote).expect("promote section");
    let _: evaluator::EvalSettings = serde_json::from_value(req.eval).expect("eval section");
}

#[test]
fn reward_and_service_files_are_valid() {
    let rewards = reward_scorer::load_reward_config(&repo().join("deploy/config/rewards.toml")).expect("rewards.toml");
    assert_eq!(rewards, fc_rewards::RewardConfig::default(), "the file spells out the seed defaults");
    // The service file, read the way the binary reads it (paths relative to the repo root).
    let cwd = std::env::current_dir().expect("cwd");
    std::env::set_current_dir(repo()).expect("cd repo");
    let env: HashMap<String, String> =
        [("FC_CONFIG".to_string(), "deploy/config/reward-scorer.toml".to_string())].into();
    let src = fc_runtime::ConfigSource::from_parts("reward-scorer", env).expect("source");
    let cfg = reward_scorer::Config::from_source(&src);
    std::env::set_current_dir(cwd).expect("cd back");
    let cfg = cfg.expect("reward-scorer.toml");
    assert_eq!(cfg.workers, 2);
}

#[test]
fn a_bad_pipeline_file_names_the_problem() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "base_model = \"m\"\n[dataset]\nsource = \"x\"\nformat = \"csv\"\n").expect("write");
    let err = fcmesh::pipeline::load(&p).expect_err("bad format").to_string();
    assert!(err.contains("csv"), "{err}");
    std::fs::write(&p, "base_model = \"m\"\nbogus = 1\n[dataset]\nsource = \"x\"\n").expect("write");
    let err = format!("{:#}", fcmesh::pipeline::load(&p).expect_err("unknown key"));
    assert!(err.contains("bogus"), "{err}");
}

/// `FC_DEVICE` is part of the model services' configuration: unset means the CPU, a bad
/// name fails start-up with the others' problems, and the name is kept for `run`.
#[test]
fn the_model_services_read_fc_device() {
    let src = |v: Option<&str>| {
        let env: HashMap<String, String> = v.map(|v| ("FC_DEVICE".to_string(), v.to_string())).into_iter().collect();
        fc_runtime::ConfigSource::from_parts("t", env).expect("source")
    };
    use fc_model::device::DeviceSpec;
    assert_eq!(sft_trainer::Config::from_source(&src(None)).expect("default").device, DeviceSpec::Cpu);
    assert_eq!(evaluator::Config::from_source(&src(Some("cuda:1"))).expect("cuda:1").device, DeviceSpec::Cuda(1));
    for service in ["sft-trainer", "evaluator"] {
        let err = match service {
            "sft-trainer" => sft_trainer::Config::from_source(&src(Some("tpu"))).map(|_| ()),
            _ => evaluator::Config::from_source(&src(Some("tpu"))).map(|_| ()),
        }
        .expect_err("bad device")
        .to_string();
        assert!(err.contains("FC_DEVICE") && err.contains("expected cpu, cuda or cuda:N"), "{service}: {err}");
    }
    assert!(sft_trainer::Config::vars().iter().any(|v| v.name == "FC_DEVICE"));
    assert!(evaluator::Config::vars().iter().any(|v| v.name == "FC_DEVICE"));
}
