//! `approval-service [--config FILE] [serve | migrate]`

fn main() -> std::process::ExitCode {
    portal_platform::cli::run(&approval_service::SERVICE)
}
