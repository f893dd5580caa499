//! The `data-ingest` binary: see the library for what it does.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fc_runtime::service::main(
        data_ingest::NAME,
        data_ingest::ABOUT,
        data_ingest::Config::vars(),
        data_ingest::Config::from_source,
        data_ingest::Config::bus_config,
        data_ingest::run,
    )
    .await
}
