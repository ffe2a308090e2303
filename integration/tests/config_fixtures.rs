//! Data-driven config tests: every `fixtures/config/invalid/NAME.config` must fail with the
//! `KEY: message` of `NAME.error`; every `fixtures/config/valid/*.config` must load; env
//! overrides win over the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ha_sidecar::config;

/// The fixtures directory, with its secret files given the modes the fixtures mean (git keeps
/// no file mode but the executable bit): `readable.key` is readable by others, the rest 0600.
fn fixtures() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/config");
    for (name, mode) in [
        ("peer.key", 0o600),
        ("short.key", 0o600),
        ("readable.key", 0o644),
    ] {
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    dir
}

fn load(
    path: &Path,
    env: &BTreeMap<String, String>,
) -> Result<(config::Config, config::Report), config::Report> {
    config::load_path(Some(path), env)
}

#[test]
fn every_invalid_fixture_gives_its_error() {
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(fixtures().join("invalid"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "config"))
    {
        let expected = std::fs::read_to_string(path.with_extension("error"))
            .unwrap_or_else(|_| panic!("{} has no .error file", path.display()));
        let expected = expected.trim();
        let (key, message) = expected.split_once(": ").expect("KEY: message");
        let report = match load(path, &BTreeMap::new()) {
            Ok(_) => panic!("{} loaded but should fail with {expected}", path.display()),
            Err(r) => r,
        };
        assert!(
            report
                .errors
                .iter()
                .any(|e| (e.key == key || e.key.ends_with(key)) && e.message.contains(message)),
            "{}: expected `{expected}`, got {:#?}",
            path.display(),
            report.errors
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} fixtures");
}

#[test]
fn every_valid_fixture_loads() {
    for entry in std::fs::read_dir(fixtures().join("valid"))
        .unwrap()
        .flatten()
    {
        let path = entry.path();
        if let Err(r) = load(&path, &BTreeMap::new()) {
            panic!("{} failed: {:#?}", path.display(), r.errors);
        }
    }
    let (c, report) = load(
        &fixtures().join("valid/production.config"),
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(c.instance_id, "master-1");
    assert_eq!(
        c.http.retry_interval,
        std::time::Duration::from_millis(1000)
    );
    assert_eq!(c.http.socket_timeout, std::time::Duration::from_secs(5));
    assert_eq!(c.cache.caches["projects"].max_entries, 10_000);
    assert_eq!(
        c.cache.patterns,
        vec!["^my_.*".to_owned(), "changes".to_owned()]
    );
    assert_eq!(c.auth.secrets.len(), 2);
    match &c.peers.discovery {
        config::Discovery::Static { urls } => assert_eq!(urls.len(), 2),
        other => panic!("{other:?}"),
    }
    assert!(report.errors.is_empty());
    let (_, report) = load(
        &fixtures().join("valid/gerrit-plugin.config"),
        &BTreeMap::new(),
    )
    .unwrap();
    assert!(
        report.warnings.iter().any(|w| w.key == "http.maxTries"),
        "{:?}",
        report.warnings
    );
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.key == "jgroups.clusterName"),
        "{:?}",
        report.warnings
    );
    let (_, report) = load(
        &fixtures().join("valid/readable-secret-allowed.config"),
        &BTreeMap::new(),
    )
    .unwrap();
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.key == "auth.secretFile" && w.message.contains("readable by group")),
        "{:?}",
        report.warnings
    );
}

#[test]
fn env_overrides_win_over_the_file() {
    let env = BTreeMap::from([
        ("HA_MAIN_INSTANCEID".to_owned(), "from-env".to_owned()),
        ("HA_HTTP_RETRYINTERVAL".to_owned(), "2s".to_owned()),
        ("HA_CACHE_PATTERN".to_owned(), "^a.*,^b.*".to_owned()),
    ]);
    let (c, _) = load(&fixtures().join("valid/production.config"), &env).unwrap();
    assert_eq!(c.instance_id, "from-env");
    assert_eq!(c.http.retry_interval, std::time::Duration::from_secs(2));
    assert_eq!(c.cache.patterns, vec!["^a.*".to_owned(), "^b.*".to_owned()]);
    // An override also repairs a bad file value, and a bad override is named by its key.
    let (c, _) = load(&fixtures().join("invalid/bad-duration.config"), &env).unwrap();
    assert_eq!(c.http.retry_interval, std::time::Duration::from_secs(2));
    let bad = BTreeMap::from([("HA_HTTP_SOCKETTIMEOUT".to_owned(), "forever".to_owned())]);
    let r = load(&fixtures().join("valid/empty.config"), &bad).unwrap_err();
    assert_eq!(r.errors[0].key, "http.socketTimeout");
    assert!(
        r.errors[0]
            .message
            .ends_with("(from HA_HTTP_SOCKETTIMEOUT)"),
        "{:?}",
        r.errors
    );
}

#[test]
fn unknown_env_variables_are_warned_with_the_likely_one() {
    let env = BTreeMap::from([
        (
            "HA_PEERINFO_STATIC_URL".to_owned(),
            "http://10.0.0.2:7710/".to_owned(),
        ),
        ("HA_LOG".to_owned(), "debug".to_owned()),
    ]);
    let (_, report) = load(&fixtures().join("valid/empty.config"), &env).unwrap();
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    let w = &report.warnings[0];
    assert_eq!(w.key, "HA_PEERINFO_STATIC_URL");
    assert!(w.message.contains("did you mean HA_PEERINFO_URL?"), "{w}");
}

#[test]
fn warnings_keep_the_key_as_written_and_never_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("loose.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = dir.path().join("c.config");
    std::fs::write(
        &path,
        format!(
            "[Sidecar]\n  listenURL = http://127.0.0.1:7710/\n  maxSpeed = 3\n\
             [auth]\n  allowReadableSecretFile = true\n  secretFile = {k}\n  secretFile = {k}\n",
            k = key.display()
        ),
    )
    .unwrap();
    let (_, report) = load(&path, &BTreeMap::new()).unwrap();
    let keys: Vec<&str> = report.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(
        keys,
        ["Sidecar.maxSpeed", "auth.secretFile"],
        "{:?}",
        report.warnings
    );
}

#[test]
fn embedded_defaults_are_a_single_loopback_node() {
    let (c, _) = config::load_path(None, &BTreeMap::new()).unwrap();
    assert!(c.embedded_defaults);
    assert!(c.listen.is_loopback() && c.local_listen.is_loopback());
    assert_eq!(c.data_dir, PathBuf::from("./var/data"));
    assert!(matches!(&c.peers.discovery, config::Discovery::Static { urls } if urls.is_empty()));
}

#[test]
fn discovery_strategies_and_membership_keys_parse() {
    let none = BTreeMap::new();
    let (c, _) = load(&fixtures().join("valid/shared-fs.config"), &none).unwrap();
    assert_eq!(
        c.peers.discovery,
        config::Discovery::SharedFs {
            heartbeat: std::time::Duration::from_secs(5),
            ttl: std::time::Duration::from_secs(30)
        }
    );
    assert_eq!(c.advertise_url.as_str(), "http://10.0.0.11:7710/");
    assert_eq!(c.trusted_proxies.len(), 2);
    assert!(c.trusted_proxies[0].contains("10.1.2.3".parse().unwrap()));
    assert_eq!(c.catch_up_timeout, std::time::Duration::from_secs(60));
    assert_eq!(
        c.peers.retain_absent,
        std::time::Duration::from_secs(86_400)
    );
    let (c, _) = load(&fixtures().join("valid/dns.config"), &none).unwrap();
    match c.peers.discovery {
        config::Discovery::Dns {
            name,
            port,
            interval,
            hosts_file,
        } => {
            assert_eq!(name, "ha-sidecar.review.svc.cluster.local");
            assert_eq!(port, 7710);
            assert_eq!(interval, std::time::Duration::from_secs(10));
            assert_eq!(hosts_file, None);
        }
        other => panic!("{other:?}"),
    }
}
