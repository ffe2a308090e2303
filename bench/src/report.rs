//! The figures of one run and how they are written.

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Default)]
pub struct Report {
    pub figures: BTreeMap<String, f64>,
    /// (figure, limit figure, what the limit is) rows of the Markdown table.
    pub rows: Vec<(String, Option<String>, String)>,
    /// figure → the peer's (Redis's) figure it is compared with, in the table's peer column.
    pub peers: BTreeMap<String, String>,
    /// The machine's load average (1 min) at the start of the run, for context.
    pub load_at_start: Option<String>,
}

/// The 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

/// Every figure the issue asks `latest.json` to hold (a full run of every part writes them all).
pub const REQUIRED: &[&str] = &[
    "evictions_per_s_batched",
    "evictions_per_s_single",
    "eviction_p99_ms_at_1k",
    "raw_http_msgs_per_s_batched",
    "index_updates_per_s",
    "index_visible_p99_ms_at_1k",
    "query_p99_ms_100k",
    "events_per_s",
    "event_p99_ms_at_1k",
    "event_replay_per_s",
    "session_creates_per_s",
    "session_reads_per_s_cached",
    "redis_set_fsync_per_s",
    "redis_get_per_s",
    "redis_pubsub_msgs_per_s",
    "plugin_baseline_evictions_per_s",
    "rss_idle_mib",
    "rss_after_outage_mib",
    "gerrit_relay_msgs_per_s",
    "gerrit_relay_p99_ms_at_100",
];

impl Report {
    pub fn set(&mut self, name: &str, value: f64) {
        eprintln!("  {name} = {value:.3}");
        self.figures.insert(name.to_owned(), value);
    }

    pub fn row(&mut self, figure: &str, limit: Option<&str>, note: &str) {
        self.rows
            .push((figure.to_owned(), limit.map(str::to_owned), note.to_owned()));
    }

    /// Shows `peer` (a Redis figure of the same run) beside `figure` in the table.
    pub fn peer(&mut self, figure: &str, peer: &str) {
        self.peers.insert(figure.to_owned(), peer.to_owned());
    }

    /// Required figures this run did not produce.
    pub fn missing(&self) -> Vec<&'static str> {
        REQUIRED
            .iter()
            .copied()
            .filter(|f| !self.figures.contains_key(*f))
            .collect()
    }

    /// Writes `latest.json` and `latest.md`. With `merge` (the parts this run measured, from
    /// `--only … --merge`), the figures of earlier runs stay in `latest.json` (this run's
    /// replace theirs) and this run's table becomes a section of `latest.md` of its own,
    /// replacing the section of an earlier merge of the same parts.
    pub fn write(&self, dir: &Path, quick: bool, merge: Option<&[String]>) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut figures = self.figures.clone();
        let mut md = String::new();
        if let Some(parts) = merge {
            if let Ok(text) = std::fs::read_to_string(dir.join("latest.json")) {
                let earlier: BTreeMap<String, f64> = serde_json::from_str(&text)?;
                for (k, v) in earlier {
                    figures.entry(k).or_insert(v);
                }
            }
            let header = format!("## Part run: {}", parts.join(", "));
            let old = std::fs::read_to_string(dir.join("latest.md")).unwrap_or_default();
            md = match old.find(&format!("\n{header}")) {
                Some(i) => {
                    let rest = &old[i + 1..];
                    let end = rest[header.len()..]
                        .find("\n## ")
                        .map_or(old.len(), |j| i + 1 + header.len() + j + 1);
                    format!("{}{}", &old[..i + 1], &old[end..])
                }
                None => old,
            };
            if !md.ends_with("\n\n") {
                md.push('\n');
            }
            md.push_str(&format!(
                "{header}\n\n`ha-bench {}--only {} --merge`; its figures are also in `latest.json`.\n\n",
                if quick { "--quick " } else { "" },
                parts.join(" --only ")
            ));
        } else {
            md.push_str("# ha-sidecar benchmark\n\n");
            md.push_str(if quick {
                "Quick run (`make bench-quick`): short phases.\n\n"
            } else {
                "Full run (`make bench`).\n\n"
            });
        }
        std::fs::write(
            dir.join("latest.json"),
            serde_json::to_string_pretty(&figures)? + "\n",
        )?;
        md.push_str(&format!(
            "Run finished {} UTC on {} cores; load average (1 min) {} at the start, {} at the end \
             (other work on the machine makes absolute figures drift; the ratios less so).\n\n",
            utc_now(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            self.load_at_start.as_deref().unwrap_or("?"),
            load_average().as_deref().unwrap_or("?"),
        ));
        md.push_str("Every figure was measured in this run on this machine; ratios compare figures of the same run \
            (ours / limit: how close to what the machine can do; ours / peer: against Redis doing the same job).\n\n");
        md.push_str("| figure | ours | limit (same run) | ratio | peer: Redis (same run) | ratio | what |\n\
                     |---|---:|---:|---:|---:|---:|---|\n");
        for (fig, limit, note) in &self.rows {
            // A Redis figure given as the limit is the peer, not a limit of the machine.
            let (limit, peer) = match limit {
                Some(l) if l.starts_with("redis_") => (None, Some(l)),
                l => (l.as_ref(), self.peers.get(fig)),
            };
            let ours = self.figures.get(fig).copied();
            let cell = |other: Option<&String>| -> (String, String) {
                let v = other.and_then(|l| self.figures.get(l).copied());
                let ratio = match (ours, v) {
                    (Some(o), Some(l)) if l > 0.0 => format!("{:.2}", o / l),
                    _ => "–".into(),
                };
                let shown = match (other, v) {
                    (Some(l), Some(v)) => format!("{} (`{l}`)", fmt(v)),
                    _ => "–".into(),
                };
                (shown, ratio)
            };
            let (lim, lim_ratio) = cell(limit);
            let (peer, peer_ratio) = cell(peer);
            md.push_str(&format!(
                "| `{fig}` | {} | {lim} | {lim_ratio} | {peer} | {peer_ratio} | {note} |\n",
                ours.map(fmt).unwrap_or_else(|| "–".into()),
            ));
        }
        std::fs::write(dir.join("latest.md"), md)?;
        eprintln!("wrote {}/latest.json and latest.md", dir.display());
        Ok(())
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{:.0}", v)
    } else {
        format!("{:.2}", v)
    }
}

/// `YYYY-MM-DD HH:MM` of now, UTC.
fn utc_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M")
        .to_string()
}
