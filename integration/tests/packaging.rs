//! The Debian package (issue 15 item 9): the systemd unit passes `systemd-analyze verify`, the
//! maintainer scripts parse, and (`make deb`, which sets `HA_DEB`) the packaged binary — stripped,
//! its debug info split off — runs from the extracted package with the packaged config's shape.
//! `make test` runs only the cheap checks (the first test); `make deb` runs the second on the
//! package it built (standalone, it builds one with `packaging/deb/build-deb.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use integration::{eventually, free_port, http};

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/deb")
}

/// `systemd-analyze verify` of `unit` with its commands pointing at `bin`; every complaint
/// (an unknown key is only a warning on stderr) fails.
fn verify_unit(unit: &str, bin: &Path, dir: &Path) {
    let analyze = integration::lb::require("systemd-analyze", "systemd");
    let unit = unit.replace("/usr/bin/ha-sidecar", &bin.display().to_string());
    let path = dir.join("ha-sidecar.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn the_unit_and_maintainer_scripts_check_out() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(packaging().join("ha-sidecar.service")).unwrap();
    for hardening in [
        "User=ha-sidecar",
        "StateDirectory=ha-sidecar",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "LimitNOFILE=",
    ] {
        assert!(unit.contains(hardening), "the unit lacks {hardening}");
    }
    verify_unit(&unit, &integration::bin(), dir.path());
    // A key systemd does not know is caught (the check can fail).
    let typo = unit.replace("NoNewPrivileges=yes", "NoNewPrivilegez=yes");
    let caught = std::panic::catch_unwind(|| verify_unit(&typo, &integration::bin(), dir.path()));
    assert!(
        caught.is_err(),
        "a misspelt key passed systemd-analyze verify"
    );
    for script in ["postinst", "prerm", "postrm", "build-deb.sh"] {
        let out = Command::new("sh")
            .arg("-n")
            .arg(packaging().join(script))
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
    }
}

/// The package `make deb` built (`HA_DEB`), else one built now.
fn package(dir: &Path) -> PathBuf {
    if let Ok(deb) = std::env::var("HA_DEB") {
        return PathBuf::from(deb);
    }
    let out = Command::new(packaging().join("build-deb.sh"))
        .arg(integration::bin())
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert!(out.status.success(), "build-deb.sh: {out:?}");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packaged_binary_runs_from_the_extracted_package() {
    let dir = tempfile::tempdir().unwrap();
    let deb = package(dir.path());
    let root = dir.path().join("root");
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output()
        .unwrap();
    assert!(x.status.success(), "dpkg-deb -x: {x:?}");
    let info = Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("Package: ha-sidecar") && info.contains("postinst"),
        "{info}"
    );
    let conffiles = Command::new("dpkg-deb")
        .args(["--ctrl-tarfile"])
        .arg(&deb)
        .output()
        .unwrap();
    assert!(!conffiles.stdout.is_empty());

    // Stripped: no DWARF left in the binary, a debug link to the split-off file instead.
    let bin = root.join("usr/bin/ha-sidecar");
    let sections = Command::new("readelf")
        .arg("-S")
        .arg(&bin)
        .output()
        .unwrap();
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(
        !sections.contains(".debug_info") && !sections.contains(".debug_line"),
        "not stripped"
    );
    assert!(sections.contains(".gnu_debuglink"), "no debug link");
    let size = std::fs::metadata(&bin).unwrap().len();
    let full = std::fs::metadata(integration::bin()).unwrap().len();
    eprintln!(
        "packaged binary: {} MB (unstripped {} MB)",
        size >> 20,
        full >> 20
    );
    assert!(size < full / 2, "{size} bytes: the debug info is still in");
    verify_unit(
        &std::fs::read_to_string(root.join("lib/systemd/system/ha-sidecar.service")).unwrap(),
        &bin,
        dir.path(),
    );

    // The packaged config, with its paths moved under the test's directory, checks out and
    // runs the packaged binary; the secret is made as postinst makes it (0600).
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let key = etc.join("peer.key");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \\n' > {}",
            key.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    let (port, local) = (free_port(), free_port());
    let config = std::fs::read_to_string(root.join("etc/ha-sidecar/ha-sidecar.config"))
        .unwrap()
        .replace(
            "/var/lib/ha-sidecar",
            &dir.path().join("var").display().to_string(),
        )
        .replace("/etc/ha-sidecar/peer.key", &key.display().to_string())
        .replace("127.0.0.1:7710", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:7711", &format!("127.0.0.1:{local}"));
    let cfg = etc.join("ha-sidecar.config");
    std::fs::write(&cfg, config).unwrap();
    let check = Command::new(&bin)
        .args(["check-config", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(check.status.success(), "check-config: {check:?}");
    let mut child = Command::new(&bin)
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let h = http();
    eventually(
        "the packaged binary answers /readyz",
        Duration::from_secs(15),
        || async {
            h.get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful stop: {status:?}");
}
