//! Dead letters: messages a peer refused for good, kept in `<data>/deadletter/<peer>.jsonl` for
//! an operator to inspect (and, if they wish, replay by hand). Never retried automatically.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Serialize)]
struct Entry<'a> {
    at_ms: u64,
    peer: &'a str,
    seq: u64,
    status: u16,
    error: &'a str,
    message: &'a serde_json::value::RawValue,
}

pub struct DeadLetters {
    dir: PathBuf,
}

impl DeadLetters {
    pub fn new(data_dir: &Path) -> Self {
        DeadLetters {
            dir: data_dir.join("deadletter"),
        }
    }

    pub fn path_for(&self, peer_dir_name: &str) -> PathBuf {
        self.dir.join(format!("{peer_dir_name}.jsonl"))
    }

    /// Appends one entry and fsyncs it (rare, so no batching).
    pub fn record(
        &self,
        peer: &str,
        peer_dir_name: &str,
        seq: u64,
        status: u16,
        error: &str,
        payload: &[u8],
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let raw: Box<serde_json::value::RawValue> =
            serde_json::from_slice(payload).unwrap_or_else(|_| {
                serde_json::value::to_raw_value(&String::from_utf8_lossy(payload))
                    .expect("a string serialises")
            });
        let entry = Entry {
            at_ms: crate::peers::outbox::now_ms(),
            peer,
            seq,
            status,
            error,
            message: &raw,
        };
        let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path_for(peer_dir_name))?;
        f.write_all(&line)?;
        f.sync_data()
    }
}
