//! Real NFS for tests: an nfs-ganesha server and two gvfs FUSE NFS clients in a private network
//! namespace (`integration/nfs/gvfs-up.sh`, after `shared/lab/INFRA.md` §1). Each client is a
//! separate NFS connection with its own caches, so two nodes using one mount each see each
//! other only through the NFS protocol. Needs root, `/dev/fuse` and the Debian packages named
//! by the script (`make deps` installs them); when one is missing the test fails saying so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("nfs").join(name)
}

/// A running ganesha export with two gvfs mounts of it; torn down on drop.
pub struct GvfsNfs {
    dir: tempfile::TempDir,
    netns: String,
}

impl GvfsNfs {
    /// Starts the server and both clients (about a second).
    pub fn start() -> GvfsNfs {
        let dir = tempfile::Builder::new()
            .prefix("ha-gvfs-")
            .tempdir()
            .unwrap();
        let netns = format!(
            "hagvfs{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let nfs = GvfsNfs { dir, netns };
        let out = Command::new("bash")
            .arg(script("gvfs-up.sh"))
            .arg(nfs.dir.path())
            .arg(&nfs.netns)
            .output()
            .expect("run gvfs-up.sh");
        if !out.status.success() {
            panic!(
                "cannot start ganesha + gvfs NFS mounts (run `make deps` as root to install them):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        nfs
    }

    /// The first client's mount point.
    pub fn mount_a(&self) -> PathBuf {
        self.dir.path().join("mnt-a")
    }

    /// The second client's mount point.
    pub fn mount_b(&self) -> PathBuf {
        self.dir.path().join("mnt-b")
    }

    /// The PID of the ganesha server (to freeze it with SIGSTOP: a hung NFS server).
    pub fn server_pid(&self) -> i32 {
        let text = std::fs::read_to_string(self.dir.path().join("ganesha.pid")).unwrap();
        let pid: i32 = text.trim().parse().unwrap();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(
            comm.trim(),
            "ganesha.nfsd",
            "ganesha.pid does not name the server"
        );
        pid
    }

    /// Freezes the server (SIGSTOP) until the guard is dropped (SIGCONT): every call on the
    /// mounts blocks meanwhile, as on a hung `hard` NFS mount.
    pub fn freeze(&self) -> Frozen {
        let pid = self.server_pid();
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGSTOP) },
            0,
            "SIGSTOP ganesha"
        );
        Frozen(pid)
    }

    /// The server's own directory (what the clients see), for inspection.
    pub fn export(&self) -> PathBuf {
        self.dir.path().join("export")
    }
}

impl Drop for GvfsNfs {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script("gvfs-down.sh"))
            .arg(self.dir.path())
            .arg(&self.netns)
            .status();
    }
}

/// A frozen ganesha server; thawed when dropped (also when a test fails).
pub struct Frozen(i32);

impl Drop for Frozen {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}
