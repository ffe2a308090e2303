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
        /// The config file (git-config format, `high-availability.config`); `HA_<SECTION>_<KEY>`
        /// variables override its keys.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print every problem (exit 64 if any).
    CheckConfig {
        /// The config file to check.
        #[arg(short, long)]
        config: PathBuf,
        /// Also print the effective configuration: every key's value (file, `HA_*` variable
        /// or default, named after each value), secrets redacted.
        #[arg(long)]
        print: bool,
    },
    /// A two-node cluster on loopback with a simulated master's traffic, until Ctrl-C.
    Demo,
    /// The cluster as one node sees it, as a table (exit 0 ok, 1 warning, 2 error, 3 no answer).
    Status {
        /// The node's listenUrl, e.g. http://master-1:7710/ (not the local API).
        #[arg(long, value_parser = base_url)]
        url: url::Url,
        /// Print the raw JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Make this node the active one of a hot-standby cluster (election.strategy = manual);
    /// the node tells its peers, and the previous active one steps down.
    Promote {
        /// The node's listenUrl, e.g. http://master-2:7710/.
        #[arg(long, value_parser = base_url)]
        url: url::Url,
        /// Bearer token of `sidecar.adminToken`.
        #[arg(long, env = "HA_SIDECAR_ADMINTOKEN", hide_env_values = true)]
        token: String,
    },
    /// Tail stream events as JSON lines (like `gerrit stream-events`); fails over between the
    /// URLs and resumes without loss or repeats.
    StreamEvents {
        /// A sidecar's listenUrl (or a load balancer in front of several); repeatable.
        #[arg(long = "url", required = true, value_parser = base_url)]
        urls: Vec<url::Url>,
        /// Only events of this type; repeatable.
        #[arg(short = 's', long = "subscribe")]
        types: Vec<String>,
        /// Where to start without a cursor: `beginning`, `now`, epoch seconds, a date
        /// (`2026-12-04`, `2026-12-04T10:00:00Z`) or a cursor.
        #[arg(long, value_parser = since_arg)]
        since: Option<String>,
        /// Keeps the cursor here across runs (read at start, written after each chunk).
        #[arg(long)]
        cursor_file: Option<PathBuf>,
        /// Bearer token of `[event] streamToken`.
        #[arg(long, env = "HA_STREAM_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Longest wait between reconnections.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        max_backoff: std::time::Duration,
        /// Give a silent connection up after this long (the server sends heartbeats).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        idle_timeout: std::time::Duration,
    },
    /// Bulk-load a JSON-lines file ({"id", "version", "doc"} per line) into a running node;
    /// its peers receive the documents through the transport.
    Reindex {
        /// changes, accounts, groups or projects.
        #[arg(long)]
        kind: String,
        /// The JSON-lines file to load: one {"id", "version", "doc"} (or {"id", "version",
        /// "deleted": true}) per line.
        #[arg(long)]
        from: PathBuf,
        /// The node's config: its localListenUrl, localToken and maxLocalBody are used.
        #[arg(short, long, conflicts_with = "url")]
        config: Option<PathBuf>,
        /// The node's local API (default http://127.0.0.1:7711/).
        #[arg(long, value_parser = base_url)]
        url: Option<url::Url>,
        /// Bearer token of the local API (`sidecar.localToken`); with `-c` it is read from the
        /// config.
        #[arg(long, env = "HA_SIDECAR_LOCALTOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

fn base_url(s: &str) -> Result<url::Url, String> {
    ha_sidecar::cli_http::parse_base_url(s)
}

fn since_arg(s: &str) -> Result<String, String> {
    ha_sidecar::stream_client::since_arg(s)
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    config::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints what flows itself: its nodes' access log would drown it.
    let default_filter = match cli.command {
        Command::Demo => "info,actix_server=warn,access=warn",
        _ => "info,actix_server=warn",
    };
    // Held to the end of `main`: writes out the buffered access log.
    let _log_flush = init_tracing(default_filter);
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("HA_"))
        .collect();
    match cli.command {
        Command::CheckConfig { config, print } => check_config(&config, print, &env),
        Command::Run { config } => {
            let path = config.or_else(|| {
                let p = PathBuf::from("high-availability.config");
                p.exists().then_some(p)
            });
            run(path, &env)
        }
        Command::Demo => runtime().block_on(ha_sidecar::demo::run()),
        Command::Status { url, json } => status(&url, json),
        Command::Promote { url, token } => promote(&url, &token),
        Command::StreamEvents {
            urls,
            types,
            since,
            cursor_file,
            token,
            max_backoff,
            idle_timeout,
        } => {
            let mut opts = ha_sidecar::stream_client::Options::new(urls);
            opts.types = types;
            opts.since = since;
            opts.cursor_file = cursor_file;
            opts.token = token;
            opts.max_backoff = max_backoff;
            opts.idle_timeout = idle_timeout;
            stream_events(opts)
        }
        Command::Reindex {
            kind,
            from,
            config,
            url,
            token,
        } => reindex(&kind, &from, config, url, token, &env),
    }
}

fn reindex(
    kind: &str,
    from: &std::path::Path,
    config: Option<PathBuf>,
    url: Option<url::Url>,
    token: Option<String>,
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
                c.local_token.map(|t| t.0).or(token.map(String::into_bytes)),
                c.limits.max_local_body,
            ),
            Err(report) => {
                eprintln!("ha-sidecar reindex: bad configuration: {report}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        (None, url) => (
            url.unwrap_or_else(|| url::Url::parse("http://127.0.0.1:7711/").expect("a valid url")),
            token.map(String::into_bytes),
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

fn stream_events(opts: ha_sidecar::stream_client::Options) -> ExitCode {
    runtime().block_on(async move {
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            s.cancel();
        });
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        match ha_sidecar::stream_client::run(&opts, &mut out, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ha-sidecar stream-events: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn init_tracing(default_filter: &str) -> ha_sidecar::log_writer::FlushGuard {
    let (writer, guard) = ha_sidecar::log_writer::LogWriter::start();
    let filter = tracing_subscriber::EnvFilter::try_from_env("HA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colours only for a terminal: log files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    if std::env::var("HA_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ha-sidecar")
        .build()
        .expect("the tokio runtime starts")
}

fn check_config(path: &std::path::Path, print: bool, env: &BTreeMap<String, String>) -> ExitCode {
    let report = match config::load_path(Some(path), env) {
        Ok((_, report)) => report,
        Err(report) => report,
    };
    if print {
        if let Ok(text) = config::describe_path(path, env) {
            println!(
                "# effective configuration of {} (secrets redacted)",
                path.display()
            );
            print!("{text}");
        }
    }
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

fn status(url: &url::Url, json: bool) -> ExitCode {
    use ha_sidecar::status_cli;
    let fetched = runtime().block_on(status_cli::fetch(url, std::time::Duration::from_secs(10)));
    match fetched {
        Ok(s) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s.raw).unwrap_or_default()
                );
            } else {
                print!("{}", status_cli::render(&s));
            }
            ExitCode::from(status_cli::exit_code(&s))
        }
        Err(e) => {
            eprintln!("ha-sidecar status: {e}");
            ExitCode::from(3)
        }
    }
}

fn promote(url: &url::Url, token: &str) -> ExitCode {
    let done = runtime().block_on(ha_sidecar::status_cli::promote(
        url,
        token,
        std::time::Duration::from_secs(10),
    ));
    match done {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ha-sidecar promote: {e}");
            ExitCode::FAILURE
        }
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
    ha_sidecar::app::raise_open_files_limit();
    let listeners = match Listeners::bind(&config) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    // In-flight requests get `shutdownGrace`; saying goodbye to peers (1 s) and closing the
    // stores get a few seconds more; past that the process exits anyway (every accepted
    // mutation is already durable: nothing is lost by not waiting longer).
    let stop_bound = config.shutdown_grace + std::time::Duration::from_secs(5);
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
        if tokio::time::timeout(stop_bound, node.shutdown())
            .await
            .is_err()
        {
            tracing::error!(
                bound_ms = stop_bound.as_millis() as u64,
                "graceful stop took too long; exiting anyway"
            );
            return ExitCode::FAILURE;
        }
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
