//! The one writer of small whole files: marks (`seq.next`; `acked`, the receiver's high-water
//! marks and `events.queued` are created here, then rewritten in place at a fixed size by the
//! outbox queue and `durable::Mark`), flags (the drain flag), rosters (`peers.json`) and
//! cursors (`stream-events --cursor-file`). Every one is replaced whole: written aside, then renamed
//! over, so a reader or a crash sees the old content or the new, never a mix. Whether it is
//! also fsync'd is the caller's choice, named at the call by [`Fsync`].

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How durable a small file must be once [`write_small`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Renamed into place, not fsync'd: after a crash the previous content may come back. For
    /// marks whose loss only repeats work that is idempotent (a re-sent message is dropped as
    /// a duplicate, a re-queued event too).
    No,
    /// The file's data fsync'd before the rename and the directory after it: it survives a
    /// crash. For marks that must never go backwards (seq reservations, high-water marks), the
    /// drain flag, the roster.
    Durable,
}

/// Replaces `path` with `bytes` (see the module docs): via `<path>.tmp`, under `policy`.
pub fn write_small(path: &Path, bytes: &[u8], policy: Fsync) -> io::Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    if policy == Fsync::Durable {
        f.sync_data()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)?;
    if policy == Fsync::Durable {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_replaced_whole_under_either_policy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mark");
        for (i, policy) in [Fsync::No, Fsync::Durable, Fsync::No]
            .into_iter()
            .enumerate()
        {
            write_small(&p, format!("{i}\n").as_bytes(), policy).unwrap();
            assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{i}\n"));
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("mark")],
            "no temporary file left"
        );
        assert!(write_small(&dir.path().join("missing/x"), b"1", Fsync::Durable).is_err());
    }
}
