//! One test binary for every multi-node and multi-process test (see STYLE.md).

mod config_fixtures;
mod index;
mod process;
mod receiver;
mod transport;
