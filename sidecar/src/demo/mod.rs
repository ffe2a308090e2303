//! `ha-sidecar demo`: two nodes on loopback in temporary directories, and a simulated master
//! that uses the local API as a real master would (over HTTP), printing what flows until
//! Ctrl-C. Rounds take turns (`rounds`): a cache eviction, an index write, a stream event seen
//! on the other node's tail, a web session, and an outage of node B with its catch-up.

mod rounds;

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
         [http]\n  retryInterval = 200ms\n  maxRetryInterval = 1s\n",
        shared = dir.join("shared").display(),
        data = dir.join(id).display(),
        l = listen.local_addr()?,
        ll = local.local_addr()?,
        p = peer.local_addr()?,
        secret = dir.join("peer.key").display(),
    ))
}

/// Node B's config and addresses, to start it again after the outage round.
pub(crate) struct Restart {
    config: config::Config,
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
}

impl Restart {
    pub(crate) async fn start(&self) -> Result<Node, String> {
        let peer = TcpListener::bind(self.peer).map_err(|e| e.to_string())?;
        let local = TcpListener::bind(self.local).map_err(|e| e.to_string())?;
        Node::start(self.config.clone(), Listeners { peer, local })
            .await
            .map_err(|e| e.to_string())
    }
}

async fn start_pair(dir: &std::path::Path) -> Result<(Node, Node, Restart), String> {
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
    let mut restart = None;
    for (text, (peer, local)) in texts.iter().zip([(a_peer, a_local), (b_peer, b_local)]) {
        let path = dir.join("demo.config");
        let (cfg, _) = config::load(config::Source {
            file: Some((text, &path)),
            env: &env,
        })
        .map_err(|r| r.to_string())?;
        restart = Some(Restart {
            config: cfg.clone(),
            peer: peer.local_addr().map_err(|e| e.to_string())?,
            local: local.local_addr().map_err(|e| e.to_string())?,
        });
        nodes.push(
            Node::start(cfg, Listeners { peer, local })
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let b = nodes.pop().expect("two nodes");
    let a = nodes.pop().expect("two nodes");
    Ok((a, b, restart.expect("two nodes")))
}

pub async fn run() -> ExitCode {
    let dir = match tempfile::Builder::new().prefix("ha-sidecar-demo").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("demo: cannot create a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (a, b, restart) = match start_pair(dir.path()).await {
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
        "the simulated master works on A; each round shows what reaches B (times rounded). \
         Ctrl-C stops.\n"
    );
    let mut demo = rounds::Demo::new(a, b, restart);
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let mut round = 0u64;
    loop {
        round += 1;
        match demo.round(round).await {
            Ok(line) => println!("{line}"),
            Err(e) => println!("round {round}: {e}"),
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(700)) => {}
        }
    }
    println!("\nstopping both nodes");
    demo.shutdown().await;
    ExitCode::SUCCESS
}
