//! Renders the key table for people: the effective configuration (`check-config --print`,
//! secrets redacted, each value's source) and the README's example config and reference, which
//! a test keeps equal to the table.

use std::fmt::Write as _;

use super::keys::{Key, KEYS};
use super::raw::{RawConfig, RawKey};

const REDACTED: &str = "<redacted>";

/// Where an effective value comes from.
fn source(raw: &RawConfig, k: &RawKey) -> Option<String> {
    match raw.from_env.get(k) {
        Some(var) => Some(format!("env {var}")),
        None => raw.values.contains_key(k).then(|| "file".to_owned()),
    }
}

/// Sections in table order, each with its subsections as they appear (`*` expanded to the
/// subsections the file has).
fn sections(raw: &RawConfig) -> Vec<(&'static str, Option<String>, Vec<&'static Key>)> {
    let mut out: Vec<(&'static str, Option<String>, Vec<&'static Key>)> = Vec::new();
    for key in KEYS {
        let subs: Vec<Option<String>> = match key.subsection {
            Some(_) if key.is_open_ended() => raw
                .values
                .keys()
                // Every subsection of the file the pattern covers, whichever keys it has.
                .filter(|k| key.matches(&k.section, k.subsection.as_deref(), key.name))
                .filter_map(|k| k.subsection.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(Some)
                .collect(),
            other => vec![other.map(str::to_owned)],
        };
        for sub in subs {
            match out
                .iter_mut()
                .find(|(s, ss, _)| *s == key.section && *ss == sub)
            {
                Some((_, _, keys)) => keys.push(key),
                None => out.push((key.section, sub, vec![key])),
            }
        }
    }
    out
}

fn header(section: &str, sub: Option<&str>) -> String {
    match sub {
        Some(sub) => format!("[{section} \"{sub}\"]"),
        None => format!("[{section}]"),
    }
}

/// The effective configuration as a git-config file: every key with its value (from the file,
/// the environment or the default), secrets redacted, the source as a comment.
pub fn effective(raw: &RawConfig) -> String {
    let mut out = String::new();
    for (section, sub, keys) in sections(raw) {
        let _ = writeln!(out, "{}", header(section, sub.as_deref()));
        for key in keys {
            let rk = RawKey::new(section, sub.as_deref(), key.name);
            let (values, from) = match (raw.values.get(&rk), source(raw, &rk)) {
                (Some(v), Some(src)) => (v.clone(), src),
                _ => match key.default {
                    Some(d) => (vec![d.to_owned()], "default".to_owned()),
                    None => {
                        let unset = key.default_doc.map_or(String::new(), |d| format!(": {d}"));
                        let _ = writeln!(out, "  # {} (unset{unset})", key.name);
                        continue;
                    }
                },
            };
            for value in values {
                let shown = if key.is_secret() { REDACTED } else { &value };
                let line = format!("  {} = {shown}", key.name);
                let _ = writeln!(out, "{line:<44} # {from}");
            }
        }
    }
    out
}

/// The README's example config: every key with an example (or its default) and its doc.
pub fn example_config() -> String {
    let mut out = String::from("```ini\n");
    // One `[cache "NAME"]` subsection shows the per-cache keys.
    // One `[event "consumer NAME"]` shows a stream consumer's.
    let with_cache = RawConfig::parse(
        "[cache \"projects\"]\n  maxEntries = 1\n[event \"consumer jenkins\"]\n  project = x\n",
    )
    .unwrap_or_default();
    for (section, sub, keys) in sections(&with_cache) {
        let _ = writeln!(out, "{}", header(section, sub.as_deref()));
        // Only the `static` strategy is in force: another strategy's keys would be warned about.
        let off = section == "peerInfo" && sub.as_deref() == Some("dns");
        for key in keys {
            let value = key.example.or(key.default);
            let hash = if off || value.is_none() { "# " } else { "" };
            let line = format!("  {hash}{} = {}", key.name, value.unwrap_or(""));
            let _ = writeln!(out, "{line:<42} # {}", key.doc);
        }
    }
    out.push_str("```\n");
    out
}

/// The README's reference table: key, default, environment variable, meaning.
pub fn reference() -> String {
    let mut out = String::from("| key | default | environment | meaning |\n|---|---|---|---|\n");
    for key in KEYS {
        let path = match key.subsection {
            Some(_) => format!(
                "{} \"{}\".{}",
                key.section,
                key.subsection_doc().unwrap_or_default(),
                key.name
            ),
            None => format!("{}.{}", key.section, key.name),
        };
        let default = match (key.default, key.default_doc) {
            (Some(d), _) => format!("`{d}`"),
            (None, Some(d)) => d.to_owned(),
            (None, None) => "–".to_owned(),
        };
        let env = key.env_var().map_or("–".to_owned(), |v| format!("`{v}`"));
        let repeat = if key.repeatable { " (repeatable)" } else { "" };
        let _ = writeln!(
            out,
            "| `{path}`{repeat} | {default} | {env} | {} |",
            key.doc.replace('|', "\\|")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn effective_config_names_sources_and_hides_secrets() {
        let mut raw = RawConfig::parse(
            "[main]\n instanceId = m1\n[sidecar]\n localToken = abcdefghijklmnopq\n[cache \"projects\"]\n maxEntries = 5\n",
        )
        .unwrap();
        raw.apply_env(&BTreeMap::from([(
            "HA_HTTP_RETRYINTERVAL".to_owned(),
            "2s".to_owned(),
        )]));
        let text = effective(&raw);
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(needle))
                .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
                .to_owned()
        };
        assert!(line("instanceId = m1").ends_with("# file"), "{text}");
        assert!(line("retryInterval = 2s").ends_with("# env HA_HTTP_RETRYINTERVAL"));
        assert!(line("socketTimeout = 5s").ends_with("# default"));
        assert!(line("localToken = <redacted>").ends_with("# file"));
        assert!(!text.contains("abcdefghijklmnopq"));
        assert!(
            text.contains("[cache \"projects\"]\n  maxEntries = 5"),
            "{text}"
        );
        // The output is itself a config that loads to the same values.
        assert!(RawConfig::parse(&text).is_ok());
    }

    fn readme_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")
    }

    /// Replaces the text between `<!-- BEGIN generated: NAME ...-->` and its END line.
    fn splice(readme: &str, name: &str, body: &str) -> String {
        let begin = format!("<!-- BEGIN generated: {name}");
        let end = format!("<!-- END generated: {name} -->");
        let a = readme
            .find(&begin)
            .unwrap_or_else(|| panic!("README has no {begin}"));
        let a = a + readme[a..].find('\n').expect("a line") + 1;
        let b = readme
            .find(&end)
            .unwrap_or_else(|| panic!("README has no {end}"));
        format!("{}{body}{}", &readme[..a], &readme[b..])
    }

    #[test]
    fn readme_config_example_and_reference_are_the_table() {
        let readme = std::fs::read_to_string(readme_path()).unwrap();
        let expected = splice(
            &splice(&readme, "config-example", &example_config()),
            "config-reference",
            &reference(),
        );
        if std::env::var("HA_UPDATE_README").as_deref() == Ok("1") {
            std::fs::write(readme_path(), &expected).unwrap();
            return;
        }
        assert!(
            readme == expected,
            "README.md's configuration example or reference differs from sidecar/src/config/keys.rs: \
             run `HA_UPDATE_README=1 cargo test --release -p ha-sidecar --lib readme` and commit README.md"
        );
    }

    #[test]
    fn readme_example_config_loads_without_a_warning() {
        let readme = std::fs::read_to_string(readme_path()).unwrap();
        let a = readme.find("<!-- BEGIN generated: config-example").unwrap();
        let block = &readme[a..];
        let text = &block[block.find("```ini\n").unwrap() + 7..];
        let text = &text[..text.find("```").unwrap()];
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("peer.key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = text.replace("/etc/ha/", &format!("{}/", dir.path().display()));
        let path = dir.path().join("high-availability.config");
        let (_, report) = crate::config::load(crate::config::Source {
            file: Some((&text, &path)),
            env: &BTreeMap::new(),
        })
        .unwrap_or_else(|r| panic!("the README's example does not load: {r:#?}"));
        assert!(report.warnings.is_empty(), "{:#?}", report.warnings);
    }

    #[test]
    fn readme_two_node_configs_load_without_a_warning() {
        let readme = std::fs::read_to_string(readme_path()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("peer.key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        for node in ["node-1", "node-2"] {
            let marker = format!("<!-- two-nodes: {node} -->\n```ini\n");
            let at = readme
                .find(&marker)
                .unwrap_or_else(|| panic!("README has no {marker}"));
            let text = &readme[at + marker.len()..];
            let text = text[..text.find("```").unwrap()]
                .replace("/etc/ha/", &format!("{}/", dir.path().display()));
            let path = dir.path().join("high-availability.config");
            let (c, report) = crate::config::load(crate::config::Source {
                file: Some((&text, &path)),
                env: &BTreeMap::new(),
            })
            .unwrap_or_else(|r| panic!("{node}: {r:#?}"));
            assert!(report.warnings.is_empty(), "{node}: {:#?}", report.warnings);
            assert!(
                matches!(&c.peers.discovery, crate::config::Discovery::Static { urls } if urls.len() == 1)
            );
        }
    }
}
