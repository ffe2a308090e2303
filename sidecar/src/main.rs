//! The `ha-sidecar` binary: arguments, logging, config, bind, start, wait for a signal, drain.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ha_sidecar::app::{Listeners, Node};
use ha_sidecar::config;

/// Exit code for a bad configuration (EX_USAGE, like linkerd and sysexits).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "ha-sidecar",
    version,
    about = "Keeps several code-review masters in step"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (default config: ./high-availability.config if present, else embedded defaults).
    Run {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print every problem.
    CheckConfig {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// A two-node cluster on loopback with a simulated master's traffic, until Ctrl-C.
    Demo,
    /// Bulk-load a JSON-lines file ({"id", "version", "doc"} per line) into a running node;
    /// its peers receive the documents through the transport.
    Reindex {
        /// changes, accounts, groups or projects.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        from: PathBuf,
        /// The node's config: its localListenUrl, localToken and maxLocalBody are used.
        #[arg(short, long, conflicts_with = "url")]
        config: Option<PathBuf>,
        /// The node's local API (default http://127.0.0.1:7711/).
        #[arg(long)]
        url: Option<url::Url>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("HA_"))
        .collect();
    match cli.command {
        Command::CheckConfig { config } => check_config(&config, &env),
        Command::Run { config } => {
            let path = config.or_else(|| {
                let p = PathBuf::from("high-availability.config");
                p.exists().then_some(p)
            });
            run(path, &env)
        }
        Command::Demo => runtime().block_on(ha_sidecar::demo::run()),
        Command::Reindex {
            kind,
            from,
            config,
            url,
        } => reindex(&kind, &from, config, url, &env),
    }
}

fn reindex(
    kind: &str,
    from: &std::path::Path,
    config: Option<PathBuf>,
    url: Option<url::Url>,
    env: &BTreeMap<String, String>,
) -> ExitCode {
    let kind = match kind.parse() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("ha-sidecar reindex: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (url, token, max_body) = match (config, url) {
        (Some(path), _) => match config::load_path(Some(&path), env) {
            Ok((c, _)) => (
                c.local_listen.url,
                c.local_token.map(|t| t.0),
                c.limits.max_local_body,
            ),
            Err(report) => {
                eprintln!("ha-sidecar reindex: bad configuration: {report}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        (None, Some(u)) => (
            u,
            env.get("HA_SIDECAR_LOCALTOKEN")
                .map(|t| t.clone().into_bytes()),
            4 << 20,
        ),
        (None, None) => (
            url::Url::parse("http://127.0.0.1:7711/").expect("a valid url"),
            None,
            4 << 20,
        ),
    };
    let args = ha_sidecar::reindex::ReindexArgs {
        kind,
        from,
        url,
        token,
        batch_bytes: (max_body / 2).clamp(64 << 10, 4 << 20),
    };
    match runtime().block_on(ha_sidecar::reindex::run(args)) {
        Ok(s) => {
            println!(
                "reindexed {} {kind} documents: {} applied, {} already up to date",
                s.docs, s.applied, s.stale
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ha-sidecar reindex: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,actix_server=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("HA_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ha-sidecar")
        .build()
        .expect("the tokio runtime starts")
}

fn check_config(path: &std::path::Path, env: &BTreeMap<String, String>) -> ExitCode {
    let report = match config::load_path(Some(path), env) {
        Ok((_, report)) => report,
        Err(report) => report,
    };
    for w in &report.warnings {
        println!("warning: {w}");
    }
    for e in &report.errors {
        println!("error: {e}");
    }
    if report.errors.is_empty() {
        println!("{}: ok", path.display());
        ExitCode::SUCCESS
    } else {
        println!("{}: {} error(s)", path.display(), report.errors.len());
        ExitCode::from(EXIT_CONFIG)
    }
}

fn run(path: Option<PathBuf>, env: &BTreeMap<String, String>) -> ExitCode {
    let (config, report) = match config::load_path(path.as_deref(), env) {
        Ok(ok) => ok,
        Err(report) => {
            eprintln!("ha-sidecar: bad configuration: {report}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if config.embedded_defaults {
        tracing::info!(
            shared = %config.shared_dir.display(),
            data = %config.data_dir.display(),
            "no config file: running a single node on embedded defaults (no peers)"
        );
    }
    for w in &report.warnings {
        tracing::warn!(key = %w.key, "{}", w.message);
    }
    let listeners = match Listeners::bind(&config) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    runtime().block_on(async move {
        let node = match Node::start(config, listeners).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down: draining requests and closing the outbox");
        node.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
