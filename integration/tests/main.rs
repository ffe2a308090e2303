//! One test binary for every multi-node and multi-process test (see STYLE.md).

mod config_fixtures;
mod conn_flood;
mod consumers;
mod damage;
mod durability;
mod events;
mod gerrit;
mod gerrit_delivery;
mod index;
mod lb_gerrit;
mod membership;
mod memory_flood;
mod ops;
mod packaging;
mod peer_flood;
mod process;
mod receiver;
mod roles;
mod sessions;
mod shared_dir;
mod tls;
mod transport;
