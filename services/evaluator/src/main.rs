//! The `evaluator` binary: see the library for what it does.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fc_runtime::service::main(
        evaluator::NAME,
        evaluator::ABOUT,
        evaluator::Config::vars(),
        evaluator::Config::from_source,
        evaluator::Config::bus_config,
        evaluator::run,
    )
    .await
}
