//! ha-sidecar: keeps caches, secondary indexes, stream events and web sessions of several
//! code-review masters in step. The binary (`main.rs`) is a thin shell over this library.

pub mod api;
pub mod app;
pub mod auth;
pub mod backoff;
pub mod cache;
pub mod cli_http;
pub mod clock;
pub mod config;
pub mod demo;
pub mod durable;
pub mod election;
pub mod event_history;
pub mod event_relay;
pub mod events;
pub mod gerrit;
pub mod health;
pub mod index;
pub mod index_sync;
pub mod lifecycle;
pub mod local;
pub mod locks;
pub mod log_writer;
pub mod memory;
pub mod metrics;
pub mod parsers;
pub mod peers;
pub mod plausible;
pub mod receiver;
pub mod reindex;
pub mod sessions;
pub mod shared_dir;
pub mod status_cli;
pub mod stream_client;
pub mod tls;
pub mod wire;
