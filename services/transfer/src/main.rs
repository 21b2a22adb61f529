//! `transfer-service [--config FILE] [serve | migrate]`

fn main() -> std::process::ExitCode {
    portal_platform::cli::run(&transfer_service::SERVICE)
}
