//! `ha-sidecar demo`: two nodes on loopback in temporary directories, and a simulated master
//! that writes and evicts through the local API (as a real master would, over HTTP), printing
//! what flows until Ctrl-C.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

use crate::app::{Listeners, Node};
use crate::config;

fn bind() -> std::io::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
}

fn node_config(
    dir: &std::path::Path,
    id: &str,
    listen: &TcpListener,
    local: &TcpListener,
    peer: &TcpListener,
) -> std::io::Result<String> {
    Ok(format!(
        "[main]\n  instanceId = {id}\n  sharedDirectory = {shared}\n  dataDirectory = {data}\n\
         [sidecar]\n  listenUrl = http://{l}/\n  localListenUrl = http://{ll}/\n\
         [peerInfo \"static\"]\n  url = http://{p}/\n\
         [auth]\n  secretFile = {secret}\n\
         [http]\n  retryInterval = 200ms\n",
        shared = dir.join("shared").display(),
        data = dir.join(id).display(),
        l = listen.local_addr()?,
        ll = local.local_addr()?,
        p = peer.local_addr()?,
        secret = dir.join("peer.key").display(),
    ))
}

async fn start_pair(dir: &std::path::Path) -> Result<(Node, Node), String> {
    let secret: [u8; 32] = rand::random();
    {
        // Only the owner may read a secret file (the config refuses it otherwise).
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("peer.key"))
            .and_then(|mut f| f.write_all(hex::encode(secret).as_bytes()))
            .map_err(|e| e.to_string())?;
    }
    let ls: Vec<TcpListener> = (0..4)
        .map(|_| bind())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    let mut ls = ls.into_iter();
    let (a_peer, a_local, b_peer, b_local) = (
        ls.next().expect("4 listeners"),
        ls.next().expect("4 listeners"),
        ls.next().expect("4 listeners"),
        ls.next().expect("4 listeners"),
    );
    let texts = [
        node_config(dir, "demo-a", &a_peer, &a_local, &b_peer).map_err(|e| e.to_string())?,
        node_config(dir, "demo-b", &b_peer, &b_local, &a_peer).map_err(|e| e.to_string())?,
    ];
    let env = BTreeMap::new();
    for (text, (peer, local)) in texts.iter().zip([(a_peer, a_local), (b_peer, b_local)]) {
        let path = dir.join("demo.config");
        let (cfg, _) = config::load(config::Source {
            file: Some((text, &path)),
            env: &env,
        })
        .map_err(|r| r.to_string())?;
        nodes.push(
            Node::start(cfg, Listeners { peer, local })
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let b = nodes.pop().expect("two nodes");
    let a = nodes.pop().expect("two nodes");
    Ok((a, b))
}

pub async fn run() -> ExitCode {
    let dir = match tempfile::Builder::new().prefix("ha-sidecar-demo").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("demo: cannot create a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (a, b) = match start_pair(dir.path()).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("demo: cannot start the nodes: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("ha-sidecar demo: two nodes in {}", dir.path().display());
    println!(
        "  node demo-a: local API {}  peer/ops {}",
        a.local_url(),
        a.peer_url()
    );
    println!(
        "  node demo-b: local API {}  peer/ops {}",
        b.local_url(),
        b.peer_url()
    );
    println!(
        "  try: curl -s {}v1/status | python3 -m json.tool",
        a.peer_url()
    );
    println!(
        "the simulated master caches a project on B, evicts it on A, and checks B. Ctrl-C stops.\n"
    );
    let http = reqwest::Client::new();
    let mut round = 0u64;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        round += 1;
        let key = format!("tools/project-{}", round % 5);
        let res = simulate(&http, &a, &b, &key, round).await;
        match res {
            Ok(line) => println!("{line}"),
            Err(e) => println!("round {round}: {e}"),
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(1000)) => {}
        }
    }
    println!("\nstopping both nodes");
    a.shutdown().await;
    b.shutdown().await;
    ExitCode::SUCCESS
}

async fn simulate(
    http: &reqwest::Client,
    a: &Node,
    b: &Node,
    key: &str,
    round: u64,
) -> Result<String, String> {
    let e = |e: reqwest::Error| e.to_string();
    let b_url = format!("{}v1/cache/projects/{key}", b.local_url());
    http.put(&b_url)
        .json(&serde_json::json!({"name": key, "round": round}))
        .send()
        .await
        .map_err(e)?;
    let t0 = std::time::Instant::now();
    let r = http
        .post(format!("{}v1/cache/projects/evict", a.local_url()))
        .json(&serde_json::json!({"keys": [key]}))
        .send()
        .await
        .map_err(e)?;
    let accepted: serde_json::Value = r.json().await.map_err(e)?;
    // Poll B until the eviction has arrived (bounded).
    for _ in 0..200 {
        let s = http.get(&b_url).send().await.map_err(e)?.status();
        if s == 404 {
            return Ok(format!(
                "round {round}: master put `projects/{key}` on B; evicted on A (seq {}); gone from B after {:.1} ms",
                accepted["seq"],
                t0.elapsed().as_secs_f64() * 1000.0
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(format!(
        "round {round}: eviction of `{key}` not yet on B after 1 s (is B reachable?)"
    ))
}
