//! `[gerrit]`: this node's own master (SPEC §8). Defaults follow the plugin's own keys, so an
//! existing `high-availability.config` needs only `gerrit.url` added.

use super::V;
use crate::config::{GerritConfig, HttpConfig, Secret};

pub(super) fn gerrit_config(v: &mut V<'_>, http: &HttpConfig) -> GerritConfig {
    let url = v
        .string("gerrit", None, "url")
        .and_then(|text| match url::Url::parse(&text) {
            Ok(mut u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                if !u.path().ends_with('/') {
                    let p = format!("{}/", u.path());
                    u.set_path(&p);
                }
                Some(u)
            }
            Ok(_) => {
                v.err(
                    "gerrit.url",
                    format!("`{text}` must be an http:// or https:// URL with a host"),
                );
                None
            }
            Err(e) => {
                v.err("gerrit.url", format!("`{text}` is not a URL: {e}"));
                None
            }
        });
    let plugin_name = v.string("gerrit", None, "pluginName").unwrap_or_default();
    if plugin_name.is_empty()
        || plugin_name.starts_with('.')
        || !plugin_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        v.err(
            "gerrit.pluginName",
            format!("`{plugin_name}` is not a plugin name (letters, digits, `.`, `_`, `-`)"),
        );
    }
    let password = match (
        v.string("gerrit", None, "password"),
        v.string("gerrit", None, "passwordFile"),
    ) {
        (Some(_), Some(_)) => {
            v.err(
                "gerrit.passwordFile",
                "set either gerrit.password or gerrit.passwordFile, not both",
            );
            None
        }
        (Some(p), None) => Some(Secret(p.into_bytes())),
        (None, Some(path)) => {
            let path = v.file_path(&path);
            match std::fs::read(&path) {
                Ok(bytes) => Some(Secret(bytes.trim_ascii().to_vec())),
                Err(e) => {
                    v.err(
                        "gerrit.passwordFile",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, None) => http.password.clone(),
    };
    let ca_file = v.string("gerrit", None, "caFile").map(|p| v.file_path(&p));
    if let Some(p) = &ca_file {
        if let Err(e) = std::fs::metadata(p) {
            v.err("gerrit.caFile", format!("cannot read {}: {e}", p.display()));
        }
    }
    GerritConfig {
        url,
        plugin_name,
        user: v
            .string("gerrit", None, "user")
            .or_else(|| http.user.clone()),
        password,
        ca_file,
        health_interval: v.duration("gerrit", None, "healthInterval"),
        timeout: v.duration("gerrit", None, "timeout"),
        set_aside_after: v.size("gerrit", "setAsideAfter"),
    }
}
