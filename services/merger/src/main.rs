//! The `merger` binary: see the library for what it does.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fc_runtime::service::main(
        merger::NAME,
        merger::ABOUT,
        merger::Config::vars(),
        merger::Config::from_source,
        merger::Config::bus_config,
        merger::run,
    )
    .await
}
