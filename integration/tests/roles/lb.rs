//! The hot-standby HAProxy recipe (`examples/haproxy-hot-standby.cfg`) with real HAProxy in
//! front of three real processes: the health check alone sends traffic to the active node.

use std::time::{Duration, Instant};

use integration::lb::{self, Traffic};
use integration::{eventually, free_port, http, mesh_specs, NodeSpec};

use super::{hot, one_active, spawn_all, TTL_MS};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn haproxy_hot_standby_recipe_sends_traffic_to_the_active_node_only() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 3, &hot("keep-majority"));
    let mut procs = spawn_all(&specs, dir.path());
    let h = http();
    for p in &procs {
        p.wait_ready(&h).await;
    }
    let front = free_port();
    let (_hp, socket) = lb::start_haproxy_recipe(
        dir.path(),
        "haproxy-hot-standby.cfg",
        &[
            ("bind :8080", format!("bind 127.0.0.1:{front}")),
            // The test's "masters" are the sidecars themselves (they answer /livez with their
            // X-HA-Instance), so the check goes to the server's own port.
            (" port 7710", String::new()),
            (
                "192.0.2.11:8080",
                format!("127.0.0.1:{}", specs[0].listen_port),
            ),
            (
                "192.0.2.12:8080",
                format!("127.0.0.1:{}", specs[1].listen_port),
            ),
            (
                "192.0.2.13:8080",
                format!("127.0.0.1:{}", specs[2].listen_port),
            ),
        ],
    );
    let all: Vec<&NodeSpec> = specs.iter().collect();
    let ttl = Duration::from_millis(TTL_MS);
    let first = one_active(&h, &all, ttl * 4).await;
    let servers = ["master-1", "master-2", "master-3"];
    let up_is = |want: usize| {
        let socket = socket.clone();
        async move {
            for (i, s) in servers.iter().enumerate() {
                let st = lb::haproxy_status(&socket, "masters", s)
                    .await
                    .unwrap_or_default();
                if (i == want) != st.starts_with("UP") {
                    return false;
                }
            }
            true
        }
    };
    eventually(
        "haproxy: only the active node UP",
        Duration::from_secs(10),
        || up_is(first),
    )
    .await;
    let traffic = Traffic::start(format!("http://127.0.0.1:{front}/livez"));
    let t = Instant::now();
    let seen = traffic.next_answers(t, 30).await;
    assert!(
        seen.iter().all(|id| *id == specs[first].id),
        "only the active answers: {seen:?}"
    );

    // A graceful stop of the active: the check follows the role to the new active node.
    let moved_at = Instant::now();
    procs[first].terminate(libc::SIGTERM, Duration::from_secs(15));
    let rest: Vec<&NodeSpec> = (0..3).filter(|i| *i != first).map(|i| &specs[i]).collect();
    let next = one_active(&h, &rest, Duration::from_secs(3)).await;
    let next_id = rest[next].id.clone();
    let next_index = specs.iter().position(|s| s.id == next_id).unwrap();
    eventually(
        "haproxy: the new active UP",
        Duration::from_secs(10),
        || up_is(next_index),
    )
    .await;
    let switched = moved_at.elapsed();
    let t = Instant::now();
    let seen = traffic.next_answers(t, 30).await;
    assert!(
        seen.iter().all(|id| *id == next_id),
        "only the new active answers: {seen:?}"
    );
    let after: Vec<_> = traffic
        .all()
        .into_iter()
        .filter(|a| a.at > moved_at)
        .collect();
    let failed: Vec<_> = after
        .iter()
        .filter_map(|a| a.outcome.clone().err())
        .collect();
    eprintln!(
        "roles: haproxy moved traffic to the new active {switched:?} after SIGTERM; \
         {} of {} requests since the SIGTERM failed: {failed:?}",
        failed.len(),
        after.len()
    );
}
