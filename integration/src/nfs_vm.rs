//! Real Linux kernel NFS clients for tests: QEMU VMs (TCG) running Debian's kernel, each
//! mounting one nfs-ganesha export over NFSv4.2, after `shared/lab/INFRA.md` §1c(iv).
//!
//! Layout, all inside two network namespaces this harness creates and deletes (nothing is
//! added to the root namespace, no route, no address): a "switch" namespace with a bridge
//! (`10.203.0.1`), a tap per VM (`10.203.0.11`, `.12`, …) and a veth to a server namespace
//! where ganesha listens on `10.203.0.2`. Each VM shares the host's `/` read-only over 9p, so
//! `chroot /host` runs the host's release `ha-sidecar` unchanged; the harness's share
//! directory (configs, logs) is mounted read-write at its host path inside the VM. The test
//! reaches a VM's ports through [`KernelNfsVms::url`]: a loopback listener whose connections
//! are opened from a thread that entered the switch namespace (`setns`).
//!
//! The kit (QEMU, kernel, initramfs) comes from `integration/vm/prepare.sh` (`make deps` runs
//! it as root); when it is missing the test fails saying so. Needs root.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The NFS server's address inside the namespaces.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 2);
/// The mount options the README recommends to operators (and the VMs use).
pub const NFS_OPTIONS: &str = "vers=4.2,hard,lookupcache=positive";
/// Where each VM mounts the export (the host's `/mnt`, seen through 9p, is the mount point).
pub const MOUNT_POINT: &str = "/mnt";

fn vm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vm")
}

/// The kit directory: `HA_NFS_VM_KIT`, else `nfs-vm` beside the binary's profile directory
/// (`<target>/nfs-vm`, where `make deps` prepares it).
pub fn kit_dir() -> PathBuf {
    if let Ok(p) = std::env::var("HA_NFS_VM_KIT") {
        return PathBuf::from(p);
    }
    let bin = crate::bin();
    bin.parent()
        .and_then(|p| p.parent())
        .map(|t| t.join("nfs-vm"))
        .unwrap_or_else(|| PathBuf::from("target/nfs-vm"))
}

/// The address of the `i`th VM (0-based).
pub fn vm_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 203, 0, 11 + i as u8)
}

struct Vm {
    role: String,
    child: Child,
    serial: PathBuf,
}

/// ganesha in its namespace plus the VMs booted so far; everything is stopped (by PID) and the
/// namespaces deleted on drop.
pub struct KernelNfsVms {
    dir: tempfile::TempDir,
    kit: PathBuf,
    switch_ns: String,
    server_ns: String,
    ganesha: Option<Child>,
    vms: Vec<Vm>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
}

/// Makes `cmd`'s process die with the thread that spawns it (the test's own thread), so a
/// test runner killed with SIGKILL leaves no VM or server behind.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl KernelNfsVms {
    /// Checks the kit, creates the namespaces and starts ganesha (about a second). Panics with
    /// what to install or run when a piece is missing.
    pub fn start() -> KernelNfsVms {
        let kit = kit_dir();
        let prepare = vm_dir().join("prepare.sh");
        if !kit.join("ready").is_file() {
            panic!(
                "the kernel-NFS VM kit is missing in {}: prepare it as root with `{} {}` \
                 (or `make deps`; it downloads QEMU and Debian's kernel with apt-get download, \
                 about 20 s)",
                kit.display(),
                prepare.display(),
                kit.display()
            );
        }
        // A kit from older inputs (init, modules) would boot the wrong initramfs.
        let st = Command::new(&prepare)
            .arg(&kit)
            .status()
            .expect("run prepare.sh");
        assert!(
            st.success(),
            "the kernel-NFS VM kit in {} is stale and could not be rebuilt (see above): \
             run `{} {}` as root",
            kit.display(),
            prepare.display(),
            kit.display()
        );
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the kernel-NFS VM test needs root (network namespaces, taps, ganesha)"
        );
        for (cmd, pkg) in [
            ("ganesha.nfsd", "nfs-ganesha nfs-ganesha-vfs"),
            ("ip", "iproute2"),
        ] {
            let found = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {cmd}"))
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                found,
                "missing {cmd}: install with `apt-get install -y --no-install-recommends {pkg}` \
                 (or `make deps` as root)"
            );
        }
        assert!(
            Path::new(MOUNT_POINT).is_dir(),
            "the VMs mount NFS on the host's {MOUNT_POINT} (seen through 9p); create it"
        );
        let dir = tempfile::Builder::new()
            .prefix("ha-nfsvm-")
            .tempdir()
            .unwrap();
        let tag = format!(
            "hanv{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut lab = KernelNfsVms {
            dir,
            kit,
            switch_ns: format!("{tag}sw"),
            server_ns: format!("{tag}srv"),
            ganesha: None,
            vms: Vec::new(),
            forwarders: Vec::new(),
        };
        if let Err(e) = lab.network() {
            panic!("cannot set up the test network: {e}");
        }
        lab.start_ganesha();
        lab
    }

    fn network(&self) -> Result<(), String> {
        let (sw, srv) = (self.switch_ns.as_str(), self.server_ns.as_str());
        run(&["ip", "netns", "add", sw])?;
        run(&["ip", "netns", "add", srv])?;
        run(&["ip", "-n", sw, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", srv, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", sw, "addr", "add", "10.203.0.1/24", "dev", "br0"])?;
        run(&["ip", "-n", sw, "link", "set", "br0", "up"])?;
        // The veth is created inside the switch namespace, its peer moved straight into the
        // server's: no name is ever taken in the root namespace.
        run(&[
            "ip", "-n", sw, "link", "add", "srv0", "type", "veth", "peer", "name", "eth0", "netns",
            srv,
        ])?;
        run(&["ip", "-n", sw, "link", "set", "srv0", "master", "br0"])?;
        run(&["ip", "-n", sw, "link", "set", "srv0", "up"])?;
        let server = format!("{SERVER_IP}/24");
        run(&["ip", "-n", srv, "addr", "add", &server, "dev", "eth0"])?;
        run(&["ip", "-n", srv, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    fn start_ganesha(&mut self) {
        let d = self.dir.path();
        for sub in ["export", "recov", "share"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let conf = format!(
            "NFS_CORE_PARAM {{ Bind_addr = {SERVER_IP}; NFS_Port = 2049; Protocols = 4;\n\
             \x20 Enable_NLM = false; Enable_RQUOTA = false; }}\n\
             NFSV4 {{ RecoveryBackend = fs; RecoveryRoot = {recov}; Graceless = true;\n\
             \x20 Lease_Lifetime = 10; Allow_Numeric_Owners = true; Only_Numeric_Owners = true; }}\n\
             NFS_KRB5 {{ Active_krb5 = false; }}\n\
             EXPORT_DEFAULTS {{ Squash = No_Root_Squash; Access_Type = RW; SecType = sys; }}\n\
             EXPORT {{ Export_Id = 1; Path = {export}; Pseudo = /export; Protocols = 4;\n\
             \x20 Transports = TCP; Access_Type = RW; Squash = No_Root_Squash;\n\
             \x20 CLIENT {{ Clients = 10.203.0.0/24; Access_Type = RW; }} FSAL {{ Name = VFS; }} }}\n\
             LOG {{ Default_Log_Level = EVENT; }}\n",
            recov = d.join("recov").display(),
            export = d.join("export").display(),
        );
        std::fs::write(d.join("ganesha.conf"), conf).unwrap();
        let out = File::create(d.join("ganesha.out")).unwrap();
        // NFSv4 only: no rpcbind. A private /run keeps ganesha's pid and sockets its own.
        // `ip netns exec`, `unshare` and `sh` all exec: the child's PID is ganesha's.
        let child = die_with_parent(&mut Command::new("ip"))
            .args(["netns", "exec", &self.server_ns])
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs ha-run /run && mkdir -p /run/ganesha && \
                 exec ganesha.nfsd -F -f '{}' -L '{}' -p /run/ganesha/ganesha.pid",
                d.join("ganesha.conf").display(),
                d.join("ganesha.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn ganesha.nfsd");
        self.ganesha = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = std::fs::read_to_string(d.join("ganesha.log")).unwrap_or_default();
            if log.contains("NFS SERVER INITIALIZED") {
                return;
            }
            if let Some(st) = self.ganesha.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "ganesha exited ({st}):\n{log}\n{}",
                    std::fs::read_to_string(d.join("ganesha.out")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                panic!("ganesha did not start within 15 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's exported directory on the host.
    pub fn export(&self) -> PathBuf {
        self.dir.path().join("export")
    }

    /// The directory shared read-write with every VM, at the same path inside them.
    pub fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    /// Boots the `i`th VM (address [`vm_ip`]`(i)`): it mounts the export on [`MOUNT_POINT`]
    /// with [`NFS_OPTIONS`], then runs `ha-sidecar run -c CONFIG` (host binary, in
    /// `chroot /host`) for each config, logging to `CONFIG.log`. Returns at once.
    pub fn boot(&mut self, i: usize, role: &str, configs: &[PathBuf]) {
        assert_eq!(i, self.vms.len(), "boot VMs in order");
        let share = self.share();
        std::fs::copy(vm_dir().join("guest.sh"), share.join("guest.sh")).unwrap();
        let configs: Vec<String> = configs.iter().map(|c| c.display().to_string()).collect();
        let env = format!(
            "CLIENT_ID='ha-test-{role}-{ns}'\nNFS_SOURCE='{SERVER_IP}:/export'\n\
             NFS_OPTIONS='{NFS_OPTIONS}'\nMOUNT_POINT='{MOUNT_POINT}'\nBIN='{bin}'\n\
             CONFIGS='{configs}'\n",
            ns = self.switch_ns,
            bin = crate::bin().display(),
            configs = configs.join(" "),
        );
        std::fs::write(share.join(format!("{role}.env")), env).unwrap();
        let tap = format!("tap{i}");
        let sw = self.switch_ns.clone();
        run(&["ip", "-n", &sw, "tuntap", "add", "dev", &tap, "mode", "tap"]).unwrap();
        run(&["ip", "-n", &sw, "link", "set", &tap, "master", "br0"]).unwrap();
        run(&["ip", "-n", &sw, "link", "set", &tap, "up"]).unwrap();
        let k = &self.kit;
        let q = k.join("root");
        let serial = self.dir.path().join(format!("vm-{role}.serial"));
        let log = File::create(&serial).unwrap();
        let ip = vm_ip(i);
        let child = die_with_parent(&mut Command::new("ip"))
            .args(["netns", "exec", &sw])
            .arg(q.join("usr/bin/qemu-system-x86_64"))
            .env(
                "LD_LIBRARY_PATH",
                format!(
                    "{}:{}",
                    q.join("usr/lib/x86_64-linux-gnu").display(),
                    q.join("lib/x86_64-linux-gnu").display()
                ),
            )
            // KVM hangs the guest on these machines (INFRA.md §1c(iv)): TCG only.
            .args(["-name", role, "-machine", "q35,accel=tcg", "-cpu", "max"])
            .args([
                "-smp",
                "1",
                "-m",
                "512",
                "-nographic",
                "-no-reboot",
                "-nodefaults",
            ])
            .arg("-L")
            .arg(q.join("usr/share/qemu"))
            .arg("-L")
            .arg(q.join("usr/share/seabios"))
            .arg("-kernel")
            .arg(k.join("vmlinuz"))
            .arg("-initrd")
            .arg(k.join("initrd.gz"))
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 rdinit=/init ha.ip={ip}/24 ha.role={role} ha.share={}",
                share.display()
            ))
            .arg("-netdev")
            .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,netdev=n0,mac=52:54:00:cb:00:{:02x},romfile=",
                ip.octets()[3]
            ))
            .args([
                "-fsdev",
                "local,id=hr,path=/,security_model=none,readonly=on,multidevs=remap",
            ])
            .args(["-device", "virtio-9p-pci,fsdev=hr,mount_tag=hostroot"])
            .arg("-fsdev")
            .arg(format!(
                "local,id=sh,path={},security_model=none",
                share.display()
            ))
            .args(["-device", "virtio-9p-pci,fsdev=sh,mount_tag=share"])
            .args(["-serial", "stdio"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn qemu-system-x86_64");
        self.vms.push(Vm {
            role: role.to_owned(),
            child,
            serial,
        });
    }

    /// The NFS mount as the `i`th VM's kernel reports it (its `/proc/mounts` line), once mounted.
    pub fn mount_line(&self, i: usize) -> Option<String> {
        let serial = std::fs::read_to_string(&self.vms.get(i)?.serial).ok()?;
        let needle = format!(" /host{MOUNT_POINT} nfs4 ");
        serial
            .lines()
            .find(|l| l.contains(&needle))
            .map(|l| l.trim().to_owned())
    }

    /// Panics with the logs when a VM has stopped or reported a failure.
    pub fn check_vms(&mut self) {
        let mut dead = None;
        for vm in &mut self.vms {
            let exited = vm.child.try_wait().unwrap();
            let serial = std::fs::read_to_string(&vm.serial).unwrap_or_default();
            if exited.is_some() || serial.contains("GUEST FAILED") {
                dead = Some(format!("VM {} stopped ({exited:?})", vm.role));
            }
        }
        if let Some(why) = dead {
            panic!("{why}\n{}", self.diagnostics());
        }
    }

    /// Serial consoles, the sidecars' logs and ganesha's log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        for vm in &self.vms {
            let serial = std::fs::read_to_string(&vm.serial).unwrap_or_default();
            let tail: Vec<&str> = serial.lines().rev().take(40).collect();
            s.push_str(&format!("--- VM {} serial (last 40 lines)\n", vm.role));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.share()) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    let t = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = t.lines().rev().take(30).collect();
                    s.push_str(&format!("--- {}\n", e.path().display()));
                    for l in tail.into_iter().rev() {
                        s.push_str(l);
                        s.push('\n');
                    }
                }
            }
        }
        let g = std::fs::read_to_string(self.dir.path().join("ganesha.log")).unwrap_or_default();
        s.push_str("--- ganesha.log (last 10 lines)\n");
        for l in g
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// A loopback URL (`http://127.0.0.1:PORT/`) whose connections reach `ip:port` inside
    /// the switch namespace.
    pub async fn url(&mut self, ip: Ipv4Addr, port: u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let ns = self.switch_ns.clone();
        let target = SocketAddr::V4(SocketAddrV4::new(ip, port));
        self.forwarders.push(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let ns = ns.clone();
                tokio::spawn(async move {
                    let out =
                        tokio::task::spawn_blocking(move || connect_in_netns(&ns, target)).await;
                    let Ok(Ok(out)) = out else {
                        return; // dropping `inbound` closes the client's connection
                    };
                    out.set_nonblocking(true).unwrap();
                    let mut out = tokio::net::TcpStream::from_std(out).unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                });
            }
        }));
        format!("http://{local}/")
    }

    /// Waits until `GET url` answers 200, checking the VMs meanwhile.
    pub async fn wait_ok(&mut self, http: &reqwest::Client, url: &str, timeout: Duration) {
        let deadline = Instant::now() + crate::patience(timeout);
        loop {
            if let Ok(r) = http.get(url).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            self.check_vms();
            if Instant::now() > deadline {
                panic!("{url} not ready after {timeout:?}\n{}", self.diagnostics());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Opens a TCP connection from inside network namespace `netns` (a fresh thread enters it, so
/// no other thread of the test changes namespace).
fn connect_in_netns(netns: &str, addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let f = File::open(path)?;
        // SAFETY: setns on this thread only; `f` is a valid namespace fd.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("connect thread panicked")))
}

impl Drop for KernelNfsVms {
    fn drop(&mut self) {
        for f in &self.forwarders {
            f.abort();
        }
        for vm in &mut self.vms {
            let _ = vm.child.kill();
            let _ = vm.child.wait();
        }
        if let Some(mut g) = self.ganesha.take() {
            let _ = g.kill();
            let _ = g.wait();
        }
        for ns in [&self.switch_ns, &self.server_ns] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        if std::env::var_os("HA_KEEP_NFSVM").is_some() {
            eprintln!("HA_KEEP_NFSVM: keeping {}", self.dir.path().display());
            self.dir.disable_cleanup(true);
        }
    }
}
