//! Reads the git-config file (with gix-config) into a flat raw form and applies `HA_<SECTION>_<KEY>`
//! environment overrides. No meaning is given to values here; `validate` does that.

use std::collections::BTreeMap;
use std::str::FromStr;

/// Where a value is: section, optional subsection, key. Section and key are lower-cased
/// (git-config names are case-insensitive); the subsection keeps its case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RawKey {
    pub section: String,
    pub subsection: Option<String>,
    pub key: String,
}

impl RawKey {
    pub fn new(section: &str, subsection: Option<&str>, key: &str) -> Self {
        RawKey {
            section: section.to_ascii_lowercase(),
            subsection: subsection.map(str::to_owned),
            key: key.to_ascii_lowercase(),
        }
    }
}

impl std::fmt::Display for RawKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.subsection {
            Some(sub) => write!(f, "{}.{}.{}", self.section, sub, self.key),
            None => write!(f, "{}.{}", self.section, self.key),
        }
    }
}

/// Every value of the file, in file order per key (keys may repeat), and where each came from.
#[derive(Debug, Default, Clone)]
pub struct RawConfig {
    pub values: BTreeMap<RawKey, Vec<String>>,
    /// The key as first written in the file (`http.maxTries`), for messages.
    pub spelling: BTreeMap<RawKey, String>,
    /// Keys set by an environment variable, with the variable's name.
    pub from_env: BTreeMap<RawKey, String>,
}

impl RawConfig {
    /// Parses git-config text. The error names the line when gix-config reports one.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file = gix_config::File::from_str(text).map_err(|e| e.to_string())?;
        let mut raw = RawConfig::default();
        for section in file.sections() {
            let header = section.header();
            let name = header.name().to_string();
            let sub = header.subsection_name().map(|s| s.to_string());
            // A section may appear several times (`[cache]` twice): every one adds its values.
            let mut seen = std::collections::BTreeSet::new();
            for key in section.value_names() {
                let k = RawKey::new(&name, sub.as_deref(), &key);
                if !seen.insert(k.clone()) {
                    continue; // `values()` below already returned every occurrence in this section
                }
                let vals = section
                    .values(&key)
                    .into_iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>();
                raw.spelling.entry(k.clone()).or_insert_with(|| match &sub {
                    Some(s) => format!("{name}.{s}.{key}"),
                    None => format!("{name}.{key}"),
                });
                raw.values.entry(k).or_default().extend(vals);
            }
        }
        Ok(raw)
    }

    /// Applies `HA_<SECTION>_<KEY>` overrides from `env`, as named by the key table (so an
    /// override finds its subsection: `HA_PEERINFO_URL` is `peerInfo.static.url`). Repeatable
    /// keys take a comma-separated list. Returns the `HA_*` variables that are neither a key
    /// nor one of the other variables the binary reads.
    pub fn apply_env(&mut self, env: &BTreeMap<String, String>) -> Vec<String> {
        let mut unknown = Vec::new();
        for (var, value) in env.iter().filter(|(k, _)| k.starts_with("HA_")) {
            let Some(key) = super::keys::for_env_var(var) else {
                if !super::keys::OTHER_ENV_VARS.contains(&var.as_str()) {
                    unknown.push(var.clone());
                }
                continue;
            };
            let values = if key.repeatable {
                value
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .collect()
            } else {
                vec![value.clone()]
            };
            let k = RawKey::new(key.section, key.subsection, key.name);
            self.values.insert(k.clone(), values);
            self.from_env.insert(k, var.clone());
        }
        unknown
    }

    /// The last value of a key (git's rule for single-valued keys).
    pub fn last(&self, section: &str, sub: Option<&str>, key: &str) -> Option<&str> {
        self.values
            .get(&RawKey::new(section, sub, key))
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// Every value of a repeatable key.
    pub fn all(&self, section: &str, sub: Option<&str>, key: &str) -> &[String] {
        self.values
            .get(&RawKey::new(section, sub, key))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sections_subsections_and_repeated_keys() {
        let raw = RawConfig::parse(
            "[main]\n  instanceId = m1\n[peerInfo \"static\"]\n  url = http://a:1/\n  url = http://b:1/\n[Cache \"Projects\"]\n  MaxEntries = 5\n",
        )
        .unwrap();
        assert_eq!(raw.last("main", None, "instanceid"), Some("m1"));
        assert_eq!(raw.all("peerinfo", Some("static"), "url").len(), 2);
        assert_eq!(raw.last("cache", Some("Projects"), "maxentries"), Some("5"));
        assert_eq!(
            raw.spelling[&RawKey::new("cache", Some("Projects"), "maxentries")],
            "Cache.Projects.MaxEntries"
        );
    }

    #[test]
    fn a_repeated_section_keeps_every_value() {
        let raw =
            RawConfig::parse("[cache]\n pattern = a\n[main]\n x = 1\n[cache]\n pattern = b\n")
                .unwrap();
        assert_eq!(raw.all("cache", None, "pattern"), ["a", "b"]);
    }

    #[test]
    fn env_overrides_find_their_subsection() {
        let mut raw = RawConfig::parse("[main]\n instanceId = m1\n").unwrap();
        let env = BTreeMap::from([
            ("HA_MAIN_INSTANCEID".to_owned(), "m2".to_owned()),
            (
                "HA_PEERINFO_URL".to_owned(),
                "http://x:1/, http://y:1/".to_owned(),
            ),
        ]);
        assert!(raw.apply_env(&env).is_empty());
        assert_eq!(raw.last("main", None, "instanceid"), Some("m2"));
        assert_eq!(
            raw.all("peerinfo", Some("static"), "url"),
            ["http://x:1/", "http://y:1/"]
        );
        assert_eq!(
            raw.from_env[&RawKey::new("main", None, "instanceId")],
            "HA_MAIN_INSTANCEID"
        );
        let env = BTreeMap::from([
            ("HA_PEERINFO_STATIC_URL".to_owned(), "x".to_owned()),
            ("HA_LOG".to_owned(), "debug".to_owned()),
        ]);
        assert_eq!(raw.apply_env(&env), ["HA_PEERINFO_STATIC_URL"]);
    }
}
