//! The `grpo-learner` binary: see the library for what it does.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fc_runtime::service::main(
        grpo_learner::NAME,
        grpo_learner::ABOUT,
        grpo_learner::Config::vars(),
        grpo_learner::Config::from_source,
        grpo_learner::Config::bus_config,
        grpo_learner::run,
    )
    .await
}
