//! The `rollout-generator` binary: see the library for what it does.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fc_runtime::service::main(
        rollout_generator::NAME,
        rollout_generator::ABOUT,
        rollout_generator::Config::vars(),
        rollout_generator::Config::from_source,
        rollout_generator::Config::bus_config,
        rollout_generator::run,
    )
    .await
}
