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

/// Every value of the file, in file order per key (keys may repeat).
#[derive(Debug, Default, Clone)]
pub struct RawConfig {
    pub values: BTreeMap<RawKey, Vec<String>>,
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
            let mut names: Vec<String> = section.value_names().collect();
            names.dedup();
            for key in names {
                let k = RawKey::new(&name, sub.as_deref(), &key);
                if raw.values.contains_key(&k) {
                    continue; // `values()` below already returned every occurrence in this section
                }
                let vals = section
                    .values(&key)
                    .into_iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>();
                raw.values.entry(k).or_default().extend(vals);
            }
        }
        Ok(raw)
    }

    /// Applies `HA_<SECTION>_<KEY>` overrides from `env`. `known` lists the keys that exist, so an
    /// override finds its subsection (e.g. `HA_PEERINFO_URL` → `peerInfo.static.url`). Repeatable
    /// keys take a comma-separated list. Returns the keys that were overridden.
    pub fn apply_env(
        &mut self,
        env: &BTreeMap<String, String>,
        known: &[(&str, Option<&str>, &str, bool)],
    ) -> Vec<String> {
        let mut applied = Vec::new();
        for (section, sub, key, repeatable) in known {
            let var = format!(
                "HA_{}_{}",
                section.to_ascii_uppercase(),
                key.to_ascii_uppercase()
            );
            let Some(value) = env.get(&var) else { continue };
            // A subsection-less key wins the name when both forms exist ([cache] maxEntries).
            if sub.is_some()
                && known.iter().any(|(s, ss, k, _)| {
                    ss.is_none() && s.eq_ignore_ascii_case(section) && k.eq_ignore_ascii_case(key)
                })
            {
                continue;
            }
            let values = if *repeatable {
                value
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .collect()
            } else {
                vec![value.clone()]
            };
            self.values.insert(RawKey::new(section, *sub, key), values);
            applied.push(var);
        }
        applied
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
        let known = [
            ("main", None, "instanceId", false),
            ("peerInfo", Some("static"), "url", true),
        ];
        raw.apply_env(&env, &known);
        assert_eq!(raw.last("main", None, "instanceid"), Some("m2"));
        assert_eq!(
            raw.all("peerinfo", Some("static"), "url"),
            ["http://x:1/", "http://y:1/"]
        );
    }
}
