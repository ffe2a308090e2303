//! ha-sidecar: keeps caches, secondary indexes, stream events and web sessions of several
//! code-review masters in step. The binary (`main.rs`) is a thin shell over this library.

pub mod events;
pub mod index;
pub mod wire;
