//! Test fixtures: the generated change documents of `fixtures/index/changes.jsonl` and helpers.
//!
//! The file is the output of [`generate_changes`]; `fixture_file_is_current` fails when they
//! drift apart and rewrites the file when `UPDATE_FIXTURES=1`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{IndexOptions, IndexStore};

pub const PROJECTS: &[&str] = &[
    "tools/gerrit",
    "plugins/replication",
    "platform/build",
    "apps/review",
];
pub const BRANCHES: &[&str] = &["master", "stable-3.9", "dev"];
pub const STATUSES: &[&str] = &["NEW", "MERGED", "ABANDONED"];
pub const OWNERS: &[&str] = &["alice", "bob", "carol", "dave", "erin"];
pub const TOPICS: &[&str] = &["crash-fixes", "ui", "perf"];
pub const HASHTAGS: &[&str] = &["security", "flaky", "cleanup"];
const VERBS: &[&str] = &["Fix", "Add", "Remove", "Refactor", "Document"];
const NOUNS: &[&str] = &["crash", "leak", "test", "cache", "button", "query"];
const PLACES: &[&str] = &[
    "review screen",
    "index writer",
    "event stream",
    "login page",
    "the build",
];

/// A small deterministic generator (xorshift64*), so fixtures never depend on a crate's RNG.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` change documents like Gerrit's ChangeInfo, with every field the schema knows, a few it
/// does not, and `updated` in the three accepted forms.
pub fn generate_changes(n: usize) -> Vec<Value> {
    let mut r = Rng::new(0x5eed);
    let base = 1_704_067_200i64; // 2024-01-01T00:00:00Z
    (1..=n)
        .map(|number| {
            let project = r.pick(PROJECTS);
            let branch = r.pick(BRANCHES);
            let owner = r.pick(OWNERS);
            let subject = format!("{} {} in {}", r.pick(VERBS), r.pick(NOUNS), r.pick(PLACES));
            let change_id = format!("I{:040x}", r.next() as u128 * 0x1_0000_0001);
            let body = format!("{} {} when the {} is busy", r.pick(VERBS), r.pick(NOUNS), r.pick(NOUNS));
            let updated_secs = base + r.below(120 * 86_400) as i64;
            let updated = match number % 3 {
                0 => json!(updated_secs),
                1 => json!(format_gerrit(updated_secs)),
                _ => json!(format_gerrit(updated_secs).replacen(' ', "T", 1).replace(".000000000", "Z")),
            };
            let hashtags: Vec<&str> = HASHTAGS.iter().copied().filter(|_| r.below(4) == 0).collect();
            let mut doc = json!({
                "id": format!("{}~{}~{}", project, branch, change_id),
                "_number": number,
                "project": project,
                "branch": branch,
                "status": r.pick(STATUSES),
                "owner": {"_account_id": 1000 + OWNERS.iter().position(|o| *o == owner).unwrap_or(0), "username": owner, "email": format!("{owner}@example.com")},
                "subject": subject,
                "message": format!("{subject}\n\n{body}.\n\nChange-Id: {change_id}\n"),
                "hashtags": hashtags,
                "updated": updated,
                "insertions": r.below(500),
                "labels": {"Code-Review": {"approved": {"username": r.pick(OWNERS)}}},
            });
            if r.below(3) > 0 {
                doc["topic"] = json!(r.pick(TOPICS));
            }
            doc
        })
        .collect()
}

/// Gerrit's REST timestamp form, `2024-01-02 10:11:12.000000000` (UTC).
pub fn format_gerrit(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.000000000",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

pub fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/index/changes.jsonl")
}

/// The change documents of the fixture file.
pub fn changes() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture_path())
        .expect("fixtures/index/changes.jsonl (UPDATE_FIXTURES=1 makes it)");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("fixture line is JSON"))
        .collect()
}

/// Options with a short refresh interval, for tests.
pub fn fast_opts() -> IndexOptions {
    IndexOptions {
        refresh_interval: Duration::from_millis(50),
        ..IndexOptions::default()
    }
}

pub fn open(dir: &Path, opts: IndexOptions) -> IndexStore {
    IndexStore::open(dir, opts).expect("open index store")
}

/// Polls `cond` until it holds or `patience` runs out; returns how long it took.
pub async fn eventually(
    patience: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < patience,
            "not within {patience:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn fixture_file_is_current() {
    let generated: String = generate_changes(300)
        .iter()
        .map(|d| serde_json::to_string(d).expect("serialize") + "\n")
        .collect();
    let path = fixture_path();
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create fixtures/index");
        std::fs::write(&path, &generated).expect("write fixture");
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} is stale: run the tests with UPDATE_FIXTURES=1",
        path.display()
    );
    assert_eq!(changes().len(), 300);
}
