//! The `sft-trainer` binary: see the library for what it does.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fc_runtime::service::main(
        sft_trainer::NAME,
        sft_trainer::ABOUT,
        sft_trainer::Config::vars(),
        sft_trainer::Config::from_source,
        sft_trainer::Config::bus_config,
        sft_trainer::run,
    )
    .await
}
