//! Tests of the `members` module: id validation, wall-clock and skew-safe freshness.

use super::*;

const NOW: u64 = 1_893_456_000_000;
const TTL: Duration = Duration::from_secs(30);

fn hb(id: &str, at: u64, state: MemberState) -> Heartbeat {
    Heartbeat {
        instance_id: id.to_owned(),
        listen_url: format!("http://{id}:7710/"),
        started_at: NOW - 60_000,
        heartbeat_at: at,
        state,
    }
}

fn fresh_of(members: &[Member]) -> Vec<(&str, bool)> {
    members
        .iter()
        .map(|m| (m.heartbeat.instance_id.as_str(), m.fresh))
        .collect()
}

#[test]
fn instance_ids_are_validated_before_naming_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let m = Members::open(dir.path(), false).unwrap();
    for ok in ["master-1", "a", "A.b_c-9", &"x".repeat(64)] {
        assert!(instance_id_is_valid(ok), "{ok}");
    }
    let long = "x".repeat(65);
    for bad in [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "/etc/passwd",
        ".hidden",
        "a b",
        "é",
        &long,
    ] {
        assert!(!instance_id_is_valid(bad), "{bad:?}");
        let err = m
            .write_heartbeat(&hb(bad, NOW, MemberState::Up))
            .unwrap_err();
        assert!(matches!(err, MembersError::InvalidInstanceId(_)), "{bad:?}");
        assert!(matches!(
            m.remove(bad),
            Err(MembersError::InvalidInstanceId(_))
        ));
    }
    assert_eq!(std::fs::read_dir(m.dir()).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn list_by_wall_clock_with_ttl_and_leaving() {
    let dir = tempfile::tempdir().unwrap();
    let m = Members::open(dir.path(), false).unwrap();
    m.write_heartbeat(&hb("a", NOW - 1_000, MemberState::Up))
        .unwrap();
    m.write_heartbeat(&hb("b", NOW - 31_000, MemberState::Up))
        .unwrap();
    m.write_heartbeat(&hb("c", NOW, MemberState::Leaving))
        .unwrap();
    // Junk in the directory does not hide the others.
    std::fs::write(m.dir().join("d.json"), b"{half").unwrap();
    std::fs::write(
        m.dir().join("e.json"),
        serde_json::to_vec(&hb("f", NOW, MemberState::Up)).unwrap(),
    )
    .unwrap();
    let list = m.list(NOW, TTL).unwrap();
    assert_eq!(
        fresh_of(&list),
        vec![("a", true), ("b", false), ("c", false)]
    );
    assert_eq!(list[0].age, Duration::from_secs(1));
    assert_eq!(list[0].heartbeat.listen_url, "http://a:7710/");
    assert!(m.remove("a").unwrap());
    assert!(!m.remove("a").unwrap());
    assert_eq!(
        fresh_of(&m.list(NOW, TTL).unwrap()),
        vec![("b", false), ("c", false)]
    );
}

#[test]
fn heartbeat_file_is_the_documented_json() {
    let dir = tempfile::tempdir().unwrap();
    let m = Members::open(dir.path(), true).unwrap();
    m.write_heartbeat(&hb("n1", NOW, MemberState::Leaving))
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.dir().join("n1.json")).unwrap()).unwrap();
    assert_eq!(v["instance_id"], "n1");
    assert_eq!(v["heartbeat_at"], NOW);
    assert_eq!(v["state"], "leaving");
}

/// The writer's clock runs an hour ahead: by the wall clock its heartbeat never ages. The view
/// judges by change seen on the local monotonic clock, so a node that stops beating goes stale.
#[test]
fn view_is_safe_against_clock_skew() {
    let dir = tempfile::tempdir().unwrap();
    let m = Members::open(dir.path(), false).unwrap();
    let skew = 3_600_000;
    let mut view = MembersView::new(m.clone());
    let t0 = Instant::now();
    m.write_heartbeat(&hb("ahead", NOW + skew, MemberState::Up))
        .unwrap();
    let first = view.refresh_at(NOW, t0, TTL).unwrap();
    assert_eq!(fresh_of(&first), vec![("ahead", true)]);

    // Beats keep changing the content: fresh.
    m.write_heartbeat(&hb("ahead", NOW + skew + 5_000, MemberState::Up))
        .unwrap();
    let t1 = t0 + Duration::from_secs(20);
    assert_eq!(
        fresh_of(&view.refresh_at(NOW + 20_000, t1, TTL).unwrap()),
        vec![("ahead", true)]
    );
    let t2 = t1 + Duration::from_secs(25);
    let still = view.refresh_at(NOW + 45_000, t2, TTL).unwrap();
    assert_eq!(still[0].age, Duration::from_secs(25));
    assert!(still[0].fresh);

    // The node dies: same content for longer than the ttl → stale, whatever heartbeat_at says.
    let t3 = t1 + Duration::from_secs(31);
    assert_eq!(
        fresh_of(&view.refresh_at(NOW + 51_000, t3, TTL).unwrap()),
        vec![("ahead", false)]
    );
    assert!(
        m.list(NOW + 51_000, TTL).unwrap()[0].fresh,
        "the wall-clock reading is fooled"
    );

    // It comes back.
    m.write_heartbeat(&hb("ahead", NOW + skew + 60_000, MemberState::Up))
        .unwrap();
    let t4 = t3 + Duration::from_secs(1);
    assert_eq!(
        fresh_of(&view.refresh_at(NOW + 52_000, t4, TTL).unwrap()),
        vec![("ahead", true)]
    );
}

#[test]
fn view_first_sight_of_an_old_heartbeat_is_stale_until_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let m = Members::open(dir.path(), false).unwrap();
    m.write_heartbeat(&hb("dead", NOW - 86_400_000, MemberState::Up))
        .unwrap();
    m.write_heartbeat(&hb("bye", NOW, MemberState::Leaving))
        .unwrap();
    let mut view = MembersView::new(m.clone());
    let t0 = Instant::now();
    assert_eq!(
        fresh_of(&view.refresh_at(NOW, t0, TTL).unwrap()),
        vec![("bye", false), ("dead", false)]
    );
    m.write_heartbeat(&hb("dead", NOW - 86_000_000, MemberState::Up))
        .unwrap();
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(
        fresh_of(&view.refresh_at(NOW + 1_000, t1, TTL).unwrap()),
        vec![("bye", false), ("dead", true)]
    );
    // A removed member disappears from the view.
    m.remove("bye").unwrap();
    assert_eq!(
        fresh_of(&view.refresh_at(NOW + 2_000, t1, TTL).unwrap()),
        vec![("dead", true)]
    );
}

#[test]
fn a_fifo_or_symlink_heartbeat_is_skipped_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let m = Members::open(dir.path(), false).unwrap();
    m.write_heartbeat(&hb("real", NOW, MemberState::Up))
        .unwrap();
    let fifo = std::ffi::CString::new(
        m.dir()
            .join("fifo.json")
            .as_os_str()
            .as_encoded_bytes()
            .to_vec(),
    )
    .unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::os::unix::fs::symlink(m.dir().join("real.json"), m.dir().join("link.json")).unwrap();
    let started = Instant::now();
    let all = m.read_all().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    let ids: Vec<_> = all.iter().map(|h| h.instance_id.as_str()).collect();
    assert_eq!(ids, ["real"]);
}
