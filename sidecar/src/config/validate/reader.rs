//! The validator's typed reader over the raw file: each accessor marks its key read, parses it
//! by its kind in the key table and files a problem under the key's name when it does not parse.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::keys::{self, Check, Key, Kind};
use super::super::raw::{RawConfig, RawKey};
use super::super::*;

/// The validator's state: the raw values, the report being filled, and the keys read so far
/// (every key of the file not read by a section is checked by its kind at the end).
pub(in crate::config) struct V<'a> {
    pub(in crate::config) raw: &'a RawConfig,
    pub(in crate::config) report: &'a mut Report,
    pub(in crate::config) base_dir: &'a Path,
    pub(in crate::config) read: BTreeSet<RawKey>,
}

impl<'a> V<'a> {
    pub(in crate::config) fn err(&mut self, key: &str, message: impl Into<String>) {
        self.report.errors.push(Problem {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(in crate::config) fn warn(&mut self, key: &str, message: impl Into<String>) {
        self.report.warnings.push(Problem {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// The table's row; a key read here but missing from the table is a bug the tests catch.
    pub(in crate::config) fn spec(&self, s: &str, sub: Option<&str>, k: &str) -> &'static Key {
        keys::find(s, sub, k).unwrap_or_else(|| panic!("{s}.{k} is not in the key table"))
    }

    /// The key as messages name it: the table's spelling, the subsection as written.
    pub(in crate::config) fn path(&self, s: &str, sub: Option<&str>, k: &str) -> String {
        let spec = self.spec(s, sub, k);
        match sub {
            Some(sub) => format!("{}.{sub}.{}", spec.section, spec.name),
            None => format!("{}.{}", spec.section, spec.name),
        }
    }

    /// The last value given (file or environment), marking the key read.
    pub(in crate::config) fn given(
        &mut self,
        s: &str,
        sub: Option<&str>,
        k: &str,
    ) -> Option<&'a str> {
        self.read.insert(RawKey::new(s, sub, k));
        self.raw.last(s, sub, k)
    }

    /// Every value of a repeatable key.
    pub(in crate::config) fn list(&mut self, s: &str, sub: Option<&str>, k: &str) -> Vec<String> {
        self.read.insert(RawKey::new(s, sub, k));
        self.raw.all(s, sub, k).to_vec()
    }

    /// A text value (blank counts as unset), else the table's default.
    pub(in crate::config) fn string(
        &mut self,
        s: &str,
        sub: Option<&str>,
        k: &str,
    ) -> Option<String> {
        let default = self.spec(s, sub, k).default;
        self.given(s, sub, k)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .or(default)
            .map(str::to_owned)
    }

    /// A duration, else the table's default (`None` when the key has none).
    pub(in crate::config) fn duration_opt(
        &mut self,
        s: &str,
        sub: Option<&str>,
        k: &str,
    ) -> Option<Duration> {
        let spec = self.spec(s, sub, k);
        let default = spec
            .default
            .map(|d| parse_duration(d).expect("table defaults parse"));
        let Some(text) = self.given(s, sub, k) else {
            return default;
        };
        let path = self.path(s, sub, k);
        let d = match parse_duration(text) {
            Ok(d) => d,
            Err(e) => {
                self.err(&path, e);
                return default;
            }
        };
        let ms = d.as_millis();
        for check in spec.checks {
            let broken = match *check {
                Check::MinMs(min, msg) => (ms < min as u128).then_some(msg),
                Check::MaxMs(max, msg) => (ms > max as u128).then_some(msg),
                _ => None,
            };
            if let Some(msg) = broken {
                self.err(&path, msg);
                return default;
            }
        }
        Some(d)
    }

    pub(in crate::config) fn duration(&mut self, s: &str, sub: Option<&str>, k: &str) -> Duration {
        self.duration_opt(s, sub, k).unwrap_or_default()
    }

    /// A size or count, else the table's default (`None` when the key has none).
    pub(in crate::config) fn size_opt(
        &mut self,
        s: &str,
        sub: Option<&str>,
        k: &str,
    ) -> Option<u64> {
        let spec = self.spec(s, sub, k);
        let default = spec
            .default
            .map(|d| parse_size(d).expect("table defaults parse"));
        let Some(text) = self.given(s, sub, k) else {
            return default;
        };
        let path = self.path(s, sub, k);
        let n = match parse_size(text) {
            Ok(n) => n,
            Err(e) => {
                self.err(&path, e);
                return default;
            }
        };
        for check in spec.checks {
            let broken = match *check {
                Check::Min(min) if n < min => Some(format!("{n} is below the minimum {min}")),
                Check::Max(max, msg) if n > max => Some(msg.to_owned()),
                _ => None,
            };
            if let Some(msg) = broken {
                self.err(&path, msg);
                return default;
            }
        }
        Some(n)
    }

    pub(in crate::config) fn size(&mut self, s: &str, k: &str) -> u64 {
        self.size_opt(s, None, k).unwrap_or_default()
    }

    pub(in crate::config) fn boolean(&mut self, s: &str, k: &str) -> bool {
        let default = self.spec(s, None, k).default == Some("true");
        let Some(text) = self.given(s, None, k) else {
            return default;
        };
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" | "" => true,
            "false" | "no" | "off" | "0" => false,
            v => {
                let path = self.path(s, None, k);
                self.err(&path, format!("`{v}` is not a boolean (true/false)"));
                default
            }
        }
    }

    pub(in crate::config) fn token(&mut self, s: &str, k: &str) -> Option<Secret> {
        self.token_in(s, None, k)
    }

    pub(in crate::config) fn token_in(
        &mut self,
        s: &str,
        sub: Option<&str>,
        k: &str,
    ) -> Option<Secret> {
        let t = self.string(s, sub, k)?;
        if t.len() < 16 {
            let path = self.path(s, sub, k);
            self.err(&path, "token is too short: use at least 16 characters");
        }
        Some(Secret(t.into_bytes()))
    }

    /// One of the words of a `Kind::Choice` key, lower-cased.
    pub(in crate::config) fn choice(&mut self, s: &str, k: &str) -> String {
        let spec = self.spec(s, None, k);
        let Kind::Choice(words) = spec.kind else {
            panic!("{s}.{k} is not a choice");
        };
        let default = spec.default.unwrap_or(words[0]);
        let text = self
            .string(s, None, k)
            .unwrap_or_else(|| default.to_owned())
            .to_ascii_lowercase();
        if words.contains(&text.as_str()) {
            return text;
        }
        let path = self.path(s, None, k);
        let options = match words {
            [init @ .., last] => format!("{} or {last}", init.join(", ")),
            [] => String::new(),
        };
        self.err(
            &path,
            format!("`{text}` is not a {}: use {options}", spec.name),
        );
        default.to_owned()
    }

    /// A path, relative to the config file's directory.
    pub(in crate::config) fn file_path(&self, text: &str) -> PathBuf {
        let p = PathBuf::from(text.trim());
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }
}

/// Reads one `secretFile`. A file readable by group or others is refused (anyone who can read
/// it can speak for any node) unless `auth.allowReadableSecretFile` says so, e.g. for a mount
/// whose mode the operator cannot set; then it is a warning.
pub(super) fn read_secret(v: &mut V<'_>, text: &str, allow_readable: bool) -> Option<Secret> {
    let key = "auth.secretFile";
    let path = v.file_path(text);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let trimmed = bytes.trim_ascii().to_vec();
            if trimmed.len() < 16 {
                v.err(
                    key,
                    format!("{}: the secret is too short: use at least 16 bytes (32 random bytes recommended)", path.display()),
                );
                return None;
            }
            #[cfg(unix)]
            if let Ok(meta) = std::fs::metadata(&path) {
                use std::os::unix::fs::PermissionsExt;
                if meta.permissions().mode() & 0o077 != 0 {
                    let what = format!("{} is readable by group or others", path.display());
                    if !allow_readable {
                        v.err(
                            key,
                            format!(
                                "{what}: chmod 600 it (or set auth.allowReadableSecretFile = true)"
                            ),
                        );
                        return None;
                    }
                    v.warn(key, format!("{what}; chmod 600 it"));
                }
            }
            Some(Secret(trimmed))
        }
        Err(e) => {
            v.err(key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}
