//! `ha-sidecar demo`: placeholder replaced below.
pub async fn run() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
