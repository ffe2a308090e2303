//! `[main] mode` and `[election] strategy`: active-active or hot-standby, and how a hot-standby
//! cluster picks its one active node (SPEC §9).

use super::V;
use crate::config::{ElectionStrategy, Mode};

pub(super) fn roles_config(v: &mut V<'_>) -> (Mode, ElectionStrategy) {
    let mode = match v.choice("main", "mode").as_str() {
        "hot-standby" => Mode::HotStandby,
        _ => Mode::ActiveActive,
    };
    let strategy = match v.choice("election", "strategy").as_str() {
        "keep-oldest" => ElectionStrategy::KeepOldest,
        "manual" => ElectionStrategy::Manual,
        _ => ElectionStrategy::KeepMajority,
    };
    // election.strategy is ignored with active-active (every healthy node is active): no
    // warning, so one file can serve both modes through HA_MAIN_MODE.
    (mode, strategy)
}
