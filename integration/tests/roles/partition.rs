//! keep-majority across a real network partition: three processes, each in its own network
//! namespace on a bridge (INFRA.md §2); the test cuts the active node's link. The shared
//! directory stays reachable on both sides (one file system), so only the election's own
//! exchange can tell the partition: the isolated node must step down, the majority side must
//! elect one, and after healing there is still one active node. Health is read on each node's
//! local listener from inside its namespace, which the cut does not touch.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration::{bin, patience, write_secret};

const TTL_MS: u64 = 1500;
const SUBNET: &str = "10.204.0";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A switch namespace with a bridge and one namespace per host; deleted on drop (the veths go
/// with them). Nothing is added to the root namespace.
struct Lab {
    switch: String,
    hosts: Vec<String>,
}

impl Lab {
    fn new(n: usize) -> Lab {
        let tag = format!("hsr{}", std::process::id());
        let lab = Lab {
            switch: format!("{tag}sw"),
            hosts: (1..=n).map(|i| format!("{tag}h{i}")).collect(),
        };
        let sw = lab.switch.as_str();
        ip(&["netns", "add", sw]);
        ip(&["-n", sw, "link", "set", "lo", "up"]);
        ip(&["-n", sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", sw, "link", "set", "br0", "up"]);
        for (i, h) in lab.hosts.iter().enumerate() {
            let port = format!("sw{}", i + 1);
            ip(&["netns", "add", h]);
            ip(&["-n", h, "link", "set", "lo", "up"]);
            ip(&[
                "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", h,
            ]);
            ip(&["-n", sw, "link", "set", &port, "master", "br0"]);
            ip(&["-n", sw, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                h,
                "addr",
                "add",
                &format!("{SUBNET}.{}/24", i + 1),
                "dev",
                "eth0",
            ]);
            ip(&["-n", h, "link", "set", "eth0", "up"]);
        }
        lab
    }

    /// Cuts (or heals) host `i`'s link to the switch.
    fn link(&self, i: usize, up: bool) {
        let port = format!("sw{}", i + 1);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// `ha-sidecar run` inside a namespace (`ip netns exec` execs: the PID is the sidecar's).
struct NsProc(Child);

impl Drop for NsProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET /health` on `127.0.0.1:7711` inside `netns` (a fresh thread enters it): the status
/// and the reason, `None` when nothing answers.
fn health_in(netns: &str) -> Option<(u16, String)> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || -> io::Result<(u16, String)> {
        let f = File::open(path)?;
        // SAFETY: setns on this thread only; `f` is a valid namespace fd.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let addr = "127.0.0.1:7711".parse().unwrap();
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let reason = text
            .split("\"status\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_owned();
        Ok((status, reason))
    })
    .join()
    .ok()?
    .ok()
}

fn roles(lab: &Lab) -> Vec<Option<(u16, String)>> {
    lab.hosts.iter().map(|h| health_in(h)).collect()
}

fn actives(r: &[Option<(u16, String)>]) -> Vec<usize> {
    (0..r.len())
        .filter(|i| matches!(r[*i], Some((204, _))))
        .collect()
}

fn config(dir: &Path, i: usize, n: usize, secret: &Path) -> String {
    let mut t = format!(
        "[main]\n  instanceId = node-{i}\n  sharedDirectory = {shared}\n  dataDirectory = {data}\n\
         \x20 mode = hot-standby\n[election]\n  strategy = keep-majority\n\
         [sidecar]\n  listenUrl = http://{SUBNET}.{i}:7710/\n  localListenUrl = http://127.0.0.1:7711/\n\
         [http]\n  retryInterval = 50ms\n  maxRetryInterval = 1s\n  socketTimeout = 2s\n  connectionTimeout = 500ms\n\
         [peerInfo \"shared-fs\"]\n  heartbeat = 200ms\n  ttl = {TTL_MS}ms\n\
         [event]\n  streamToken = roles-stream-token-0123456789\n\
         [auth]\n  secretFile = {secret}\n[peerInfo \"static\"]\n",
        shared = dir.join("shared").display(),
        data = dir.join(format!("node-{i}")).display(),
        secret = secret.display(),
    );
    for j in (1..=n).filter(|j| *j != i) {
        t.push_str(&format!("  url = http://{SUBNET}.{j}:7710/\n"));
    }
    t
}

/// Every node's log, for a failure message.
fn logs(dir: &Path) -> String {
    (1..=3)
        .map(|i| {
            let p = dir.join(format!("node-{i}.log"));
            format!(
                "--- node-{i}:\n{}",
                std::fs::read_to_string(p).unwrap_or_default()
            )
        })
        .collect()
}

/// Polls every node until `done` says yes; panics with the last view after `within`.
fn wait_for(
    dir: &Path,
    lab: &Lab,
    what: &str,
    within: Duration,
    done: impl Fn(&[Option<(u16, String)>]) -> bool,
) -> Vec<Option<(u16, String)>> {
    let deadline = Instant::now() + patience(within);
    loop {
        let r = roles(lab);
        assert!(actives(&r).len() <= 1, "two actives at once: {r:?}");
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}: {r:?}\n{}",
            logs(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn keep_majority_isolated_active_steps_down_and_the_majority_elects_one() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(
        dir.path(),
        "peer.key",
        "0123456789abcdef0123456789abcdef-roles",
    );
    let lab = Lab::new(3);
    let _procs: Vec<NsProc> = (1..=3)
        .map(|i| {
            let cfg = dir.path().join(format!("node-{i}.config"));
            std::fs::write(&cfg, config(dir.path(), i, 3, &secret)).unwrap();
            let log = File::create(dir.path().join(format!("node-{i}.log"))).unwrap();
            NsProc(
                Command::new("ip")
                    .args(["netns", "exec", &lab.hosts[i - 1]])
                    .arg(bin())
                    .args(["run", "-c"])
                    .arg(&cfg)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .expect("start ha-sidecar in a namespace"),
            )
        })
        .collect();
    let ttl = Duration::from_millis(TTL_MS);
    let settled = |r: &[Option<(u16, String)>]| {
        actives(r).len() == 1
            && r.iter().all(|x| {
                matches!(x, Some((204, _))) || matches!(x, Some((503, w)) if w == "standby")
            })
    };
    let r = wait_for(
        dir.path(),
        &lab,
        "one active node",
        Duration::from_secs(20),
        settled,
    );
    let first = actives(&r)[0];

    // Cut the active node off: it steps down within ttl, the two others elect one.
    let cut = Instant::now();
    lab.link(first, false);
    wait_for(
        dir.path(),
        &lab,
        "the isolated node steps down",
        ttl + Duration::from_secs(1),
        |r| matches!(&r[first], Some((503, w)) if w == "standby"),
    );
    let stepped_down = cut.elapsed();
    let r = wait_for(
        dir.path(),
        &lab,
        "the majority side elects one",
        ttl * 3 + Duration::from_secs(2),
        |r| actives(r).len() == 1,
    );
    let elected = cut.elapsed();
    let second = actives(&r)[0];
    assert_ne!(second, first);
    eprintln!(
        "roles: partition: isolated active stepped down after {stepped_down:?}, node-{} elected after {elected:?} (ttl {ttl:?})",
        second + 1
    );
    assert!(stepped_down <= patience(ttl + Duration::from_millis(500)));

    // Heal: still exactly one active node, and the returning one stays standby.
    lab.link(first, true);
    let end = Instant::now() + ttl * 2;
    while Instant::now() < end {
        let r = roles(&lab);
        assert_eq!(actives(&r), [second], "after healing: {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
