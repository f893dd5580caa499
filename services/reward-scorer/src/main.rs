//! The `reward-scorer` binary: see the library for what it does.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fc_runtime::service::main(
        reward_scorer::NAME,
        reward_scorer::ABOUT,
        reward_scorer::Config::vars(),
        reward_scorer::Config::from_source,
        reward_scorer::Config::bus_config,
        reward_scorer::run,
    )
    .await
}
