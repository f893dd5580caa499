//! The `gateway` binary: see the library for what it does.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fc_runtime::service::main(
        gateway::NAME,
        gateway::ABOUT,
        gateway::Config::vars(),
        gateway::Config::from_source,
        gateway::Config::bus_config,
        gateway::run,
    )
    .await
}
