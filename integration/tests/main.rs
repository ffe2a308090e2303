//! One test binary for every multi-node and multi-process test (see STYLE.md).

mod config_fixtures;
mod events;
mod index;
mod membership;
mod peer_flood;
mod process;
mod receiver;
mod sessions;
mod shared_dir;
mod tls;
mod transport;
