//! One test binary for every multi-node and multi-process test (see STYLE.md).

mod config_fixtures;
mod membership;
mod events;
mod process;
mod receiver;
mod sessions;
mod transport;
