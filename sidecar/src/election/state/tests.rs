//! The rules between simulated nodes: messages are delivered by hand, time is passed in.

use super::*;

const TTL: Duration = Duration::from_secs(10);

fn node(id: &str, strategy: ElectionStrategy, started_at_ms: u64, now: Instant) -> State {
    State::new(
        Params {
            strategy,
            ttl: TTL,
            me: id.into(),
            started_at_ms,
        },
        0,
        now,
    )
}

fn cluster(strategy: ElectionStrategy, t0: Instant) -> Vec<State> {
    ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, id)| node(id, strategy, 1000 + i as u64, t0))
        .collect()
}

fn request(s: &State, claim: Claim, epoch: u64) -> ElectionRequest {
    ElectionRequest {
        instance_id: s.p.me.clone(),
        listen_url: format!("http://{}/", s.p.me),
        started_at_ms: s.p.started_at_ms,
        claim,
        epoch,
        health: "healthy".into(),
    }
}

/// `from` sends `claim` to every other node; returns the grants. Replies are applied to `from`.
fn round(
    nodes: &mut [State],
    from: usize,
    claim: Claim,
    epoch: u64,
    reach: &[usize],
    now: Instant,
) -> usize {
    let req = request(&nodes[from], claim, epoch);
    let mut grants = 0;
    for &to in reach {
        if to == from {
            continue;
        }
        let (reply, _) = nodes[to].on_request(&req, "healthy", now, 0);
        grants += reply.granted as usize;
        nodes[from].on_reply(&reply, now, 0);
    }
    grants
}

fn stand(nodes: &mut [State], i: usize, reach: &[usize], now: Instant) -> bool {
    let Some(e) = nodes[i].candidacy(true, now) else {
        return false;
    };
    nodes[i].begin_candidacy(e, now);
    let grants = round(nodes, i, Claim::Candidate, e, reach, now);
    nodes[i].end_candidacy(e, grants, 3, now, now, 0);
    nodes[i].role() == Role::Active
}

fn renew(nodes: &mut [State], i: usize, reach: &[usize], now: Instant) {
    let (claim, e) = nodes[i].claim();
    let grants = round(nodes, i, claim, e, reach, now);
    if claim == Claim::Active {
        nodes[i].end_renewal(grants, 3, now, now);
    }
}

fn actives(nodes: &[State]) -> Vec<&str> {
    nodes
        .iter()
        .filter(|n| n.role() == Role::Active)
        .map(|n| n.p.me.as_str())
        .collect()
}

#[test]
fn keep_majority_elects_one_and_nobody_stands_during_the_start_window() {
    let t0 = Instant::now();
    let mut n = cluster(ElectionStrategy::KeepMajority, t0);
    assert!(
        !stand(&mut n, 0, &[0, 1, 2], t0 + TTL / 2),
        "no candidacy in the start window"
    );
    let t = t0 + TTL;
    assert!(stand(&mut n, 0, &[0, 1, 2], t));
    // The others promised their vote: they neither stand nor vote for each other.
    assert!(n[1].candidacy(true, t).is_none());
    let e = n[0].active_epoch + 1;
    n[2].begin_candidacy(e, t);
    let (reply, _) = {
        let r = request(&n[2], Claim::Candidate, e);
        n[1].on_request(&r, "healthy", t, 0)
    };
    assert!(!reply.granted);
    n[2].end_candidacy(e, 0, 3, t, t, 0);
    assert_eq!(actives(&n), ["a"]);
}

#[test]
fn an_isolated_active_steps_down_within_ttl_and_the_majority_elects_another() {
    let t0 = Instant::now();
    let mut n = cluster(ElectionStrategy::KeepMajority, t0);
    let mut t = t0 + TTL;
    assert!(stand(&mut n, 0, &[0, 1, 2], t));
    // Partition {a} | {b, c}: a's renewals reach nobody.
    let cut = t;
    let mut a_down = None;
    let mut other = None;
    while t < cut + 3 * TTL {
        t += Duration::from_millis(500);
        renew(&mut n, 0, &[0], t);
        if n[0].tick(t, 0).is_some() {
            a_down.get_or_insert(t);
        }
        for i in [1, 2] {
            if n[i].role() == Role::Standby && stand(&mut n, i, &[1, 2], t) {
                other.get_or_insert(t);
                // Never two actives at one instant.
                assert!(n[0].role() == Role::Standby, "two actives at {:?}", t - cut);
            }
            if n[i].role() == Role::Active {
                renew(&mut n, i, &[1, 2], t);
            }
        }
    }
    let a_down = a_down.expect("a stepped down");
    assert!(a_down - cut <= TTL, "stepped down after {:?}", a_down - cut);
    assert!(other.is_some(), "the majority side elected a node");
    // Heal: a learns the newer active and follows it; still one active.
    renew(&mut n, 0, &[0, 1, 2], t);
    let active = actives(&n);
    assert_eq!(active.len(), 1);
    assert_eq!(n[0].active(t), Some(active[0]));
}

#[test]
fn a_release_lets_the_others_elect_at_once() {
    let t0 = Instant::now();
    let mut n = cluster(ElectionStrategy::KeepMajority, t0);
    let t = t0 + TTL;
    assert!(stand(&mut n, 0, &[0, 1, 2], t));
    renew(&mut n, 0, &[0, 1, 2], t);
    let t = t + Duration::from_millis(100);
    n[0].step_down("stopping", 0);
    n[1].on_leave("a");
    n[2].on_leave("a");
    // Without the release b and c would wait for their promises (ttl) to run out.
    assert!(stand(&mut n, 1, &[1, 2], t));
    assert_eq!(actives(&n), ["b"]);
}

#[test]
fn one_vote_per_epoch() {
    let t0 = Instant::now();
    let mut n = cluster(ElectionStrategy::KeepMajority, t0);
    let t = t0 + TTL;
    let (r1, _) = {
        let r = request(&n[1], Claim::Candidate, 5);
        n[0].on_request(&r, "healthy", t, 0)
    };
    assert!(r1.granted);
    let (r2, _) = {
        let r = request(&n[2], Claim::Candidate, 5);
        n[0].on_request(&r, "healthy", t, 0)
    };
    assert!(!r2.granted, "second vote in one epoch");
    // A later epoch is still refused while the promise to b holds, then granted.
    let (r3, _) = {
        let r = request(&n[2], Claim::Candidate, 6);
        n[0].on_request(&r, "healthy", t, 0)
    };
    assert!(!r3.granted);
    let (r4, _) = {
        let r = request(&n[2], Claim::Candidate, 6);
        n[0].on_request(&r, "healthy", t + TTL, 0)
    };
    assert!(r4.granted);
}

#[test]
fn keep_oldest_picks_the_oldest_and_a_returning_node_stays_standby() {
    let t0 = Instant::now();
    let mut n = cluster(ElectionStrategy::KeepOldest, t0);
    let t = t0 + TTL;
    for i in 0..3 {
        round(&mut n, i, Claim::Ping, 0, &[0, 1, 2], t);
    }
    for s in n.iter_mut() {
        s.decide_oldest(true, t, 0);
    }
    assert_eq!(actives(&n), ["a"]);
    // a crashes: after ttl, b (the oldest left) takes over; c does not.
    let t = t + TTL + Duration::from_millis(1);
    for i in [1, 2] {
        round(&mut n, i, Claim::Ping, 0, &[1, 2], t);
    }
    for i in [2, 1] {
        n[i].decide_oldest(true, t, 0);
    }
    assert_eq!(actives(&n)[1..], ["b"]);
    // a comes back (a new start: the youngest) and stays standby.
    n[0] = node("a", ElectionStrategy::KeepOldest, 5000, t);
    let t = t + TTL;
    renew(&mut n, 1, &[0, 1, 2], t);
    round(&mut n, 0, Claim::Ping, 0, &[0, 1, 2], t);
    n[0].decide_oldest(true, t, 0);
    assert_eq!(actives(&n), ["b"]);
}

#[test]
fn keep_oldest_after_a_symmetric_partition_the_older_active_stays() {
    let t0 = Instant::now();
    let mut n = cluster(ElectionStrategy::KeepOldest, t0);
    let t = t0 + TTL;
    // Split from the start: {a} and {b, c} each elect their oldest.
    round(&mut n, 1, Claim::Ping, 0, &[1, 2], t);
    round(&mut n, 2, Claim::Ping, 0, &[1, 2], t);
    for s in n.iter_mut() {
        s.decide_oldest(true, t, 0);
    }
    assert_eq!(actives(&n), ["a", "b"], "one active per side (documented)");
    // Heal.
    renew(&mut n, 1, &[0, 1, 2], t);
    renew(&mut n, 0, &[0, 1, 2], t);
    for s in n.iter_mut() {
        s.decide_oldest(true, t, 0);
    }
    assert_eq!(actives(&n), ["a"]);
    assert!(
        n[0].active_epoch > n[1].epoch.min(1),
        "a took a newer epoch"
    );
}

#[test]
fn manual_never_promotes_itself_and_a_promotion_deposes_the_old_active() {
    let t0 = Instant::now();
    let mut n = cluster(ElectionStrategy::Manual, t0);
    let t = t0 + 3 * TTL;
    for s in n.iter_mut() {
        assert!(s.candidacy(true, t).is_none());
        assert!(s.decide_oldest(true, t, 0).is_none());
    }
    assert!(actives(&n).is_empty());
    let (e1, c) = n[1].promote(t, 0);
    assert!(c.is_some());
    renew(&mut n, 1, &[0, 1, 2], t);
    let (e2, _) = n[2].promote(t, 0);
    assert!(e2 > e1);
    renew(&mut n, 2, &[0, 1, 2], t);
    assert_eq!(actives(&n), ["c"]);
    assert_eq!(n[0].active(t), Some("c"));
}
