//! Where log lines go: stderr, with the access log (target `access`, one line per request)
//! buffered. The master reads its session on every request it serves, so a `write(2)` per
//! access line was ~6 % of the sidecar's CPU on cached session reads (perf, `bench/NOTES.md`).
//! Access lines are appended to a buffer that a thread writes out every [`FLUSH_EVERY`] (or at
//! once past [`FLUSH_BYTES`]); every other line (start, stop, warnings, errors) is written at
//! once, as before. So an access line may appear up to [`FLUSH_EVERY`] late, and after lines
//! logged meanwhile; a SIGKILL loses at most that much of the access log. The [`FlushGuard`]
//! writes out the rest when the process ends normally.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::locks::LockExt;
use tracing_subscriber::fmt::MakeWriter;

/// Longest time an access line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered bytes that make the writer flush at once.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// The tracing target of the access log.
pub const ACCESS_TARGET: &str = "access";

#[derive(Default)]
struct Buffer {
    bytes: Mutex<Vec<u8>>,
}

impl Buffer {
    fn append(&self, line: &[u8]) {
        let mut b = self.bytes.locked();
        b.extend_from_slice(line);
        if b.len() >= FLUSH_BYTES {
            write_out(&mut b);
        }
    }

    fn flush(&self) {
        write_out(&mut self.bytes.locked());
    }
}

/// Writes the buffer to stderr (under the buffer's lock, so lines keep their order).
fn write_out(b: &mut Vec<u8>) {
    if !b.is_empty() {
        let _ = std::io::stderr().write_all(b);
        b.clear();
    }
}

/// The `MakeWriter` of the node's tracing subscriber (see the module docs).
#[derive(Clone)]
pub struct LogWriter {
    buf: Arc<Buffer>,
    /// False when the flusher thread could not start: then every line is written at once.
    buffered: bool,
}

/// Flushes the access log every [`FLUSH_EVERY`]; dropping it stops the thread and writes out
/// what is left.
pub struct FlushGuard {
    buf: Arc<Buffer>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// The writer and the guard that keeps its flusher running.
    pub fn start() -> (LogWriter, FlushGuard) {
        let buf = Arc::new(Buffer::default());
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (b, s) = (buf.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || {
                let (lock, cv) = &*s;
                let mut stopped = lock.locked();
                while !*stopped {
                    stopped = cv
                        .wait_timeout(stopped, FLUSH_EVERY)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    b.flush();
                }
            })
            .ok();
        if thread.is_none() {
            eprintln!("cannot start the log flusher; access lines are written at once");
        }
        (
            LogWriter {
                buf: buf.clone(),
                buffered: thread.is_some(),
            },
            FlushGuard { buf, stop, thread },
        )
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.locked() = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.buf.flush();
    }
}

/// One log line's writer: into the access buffer, or straight to stderr.
pub enum Line<'a> {
    Buffered(&'a LogWriter),
    Direct(std::io::Stderr),
}

impl Write for Line<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Line::Buffered(w) => {
                w.buf.append(data);
                Ok(data.len())
            }
            Line::Direct(e) => e.write(data),
        }
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Line::Buffered(w) => {
                w.buf.append(data);
                Ok(())
            }
            Line::Direct(e) => e.write_all(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Line::Buffered(_) => Ok(()),
            Line::Direct(e) => e.flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line::Direct(std::io::stderr())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line<'a> {
        if self.buffered && meta.target() == ACCESS_TARGET && *meta.level() >= tracing::Level::INFO
        {
            Line::Buffered(self)
        } else {
            Line::Direct(std::io::stderr())
        }
    }
}
