//! A real systemd for the system test (`system.rs`): Debian 12 containers
//! booted with systemd-nspawn from one root filesystem built once, and the
//! lookout package to install in them.
//!
//! The root filesystem (`debootstrap --variant=minbase
//! --include=systemd,dbus bookworm`, ~250 MB, about a minute) is kept in
//! `<target>/tmp/nspawn/` and reused; each container boots from an overlay
//! of it (4 ms; a copy took 1.1 s) that is thrown away afterwards, so every
//! test starts from a clean system. The containers share the host's
//! network (a broker on the host's loopback is reachable) but have their
//! own host name, PID 1, journal and /tmp.
//!
//! Two settings make the container's systemd enforce what the unit asks:
//! `SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1` (these hosts mount cgroup v1 and
//! v2 side by side; v1's device controller is read-only inside, so
//! `DevicePolicy=` did nothing) and `--system-call-filter=bpf` (systemd
//! attaches the device allow-list as a BPF program, which nspawn's
//! seccomp filter otherwise refuses). Checked: with both, a service with
//! `DevicePolicy=closed` gets EPERM opening /dev/net/tun, and opens it with
//! `DeviceAllow=/dev/net/tun r`; without them it opens it either way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::*;

/// What the system test needs from the host, or why it cannot run.
pub struct Host {
    pub rootfs: PathBuf,
    /// The package to install.
    pub deb: PathBuf,
}

/// The host, prepared once per test run; `None` (after printing why) when
/// this machine cannot run containers. With LOOKOUT_REQUIRE_SYSTEM_TEST set
/// (CI) that is a failure instead.
pub fn host() -> Option<&'static Host> {
    static HOST: OnceLock<Result<Host, String>> = OnceLock::new();
    match HOST.get_or_init(prepare) {
        Ok(h) => Some(h),
        Err(why) if std::env::var_os("LOOKOUT_REQUIRE_SYSTEM_TEST").is_some() => {
            panic!("the system test cannot run: {why}")
        }
        Err(why) => {
            println!("skipped: {why}");
            None
        }
    }
}

fn prepare() -> Result<Host, String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("systemd-nspawn needs root (tools/test.sh runs the suite as root on CI)".into());
    }
    for tool in ["systemd-nspawn", "debootstrap", "nsenter"] {
        if tool_path(tool).is_none() {
            return Err(format!("{tool} is not installed (apt-get install systemd-container debootstrap)"));
        }
    }
    let rootfs = rootfs()?;
    let deb = package()?;
    Ok(Host { rootfs, deb })
}

/// Where `tool` is: on PATH, or in /usr/sbin, which a user's PATH may lack.
fn tool_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin")]).map(|d| d.join(tool)).find(|p| p.is_file())
}

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nspawn")
}

/// Changing this rebuilds the root filesystems already built.
const ROOTFS_RECIPE: &str = "debootstrap --variant=minbase --include=systemd,dbus bookworm";

/// The Debian root filesystem, built when missing (or built by another
/// recipe). `LOOKOUT_NSPAWN_ROOTFS` names one to use instead.
fn rootfs() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("LOOKOUT_NSPAWN_ROOTFS") {
        return Ok(p.into());
    }
    let name = "bookworm-rootfs";
    let dir = work_dir().join(name);
    let stamp = dir.join(".lookout-rootfs");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == ROOTFS_RECIPE) {
        return Ok(dir);
    }
    let mirror = debian_mirror();
    println!("building the container root filesystem in {} from {mirror} (once)", dir.display());
    let t = Instant::now();
    let partial = work_dir().join(format!("{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(tool_path("debootstrap").expect("checked in prepare"));
    cmd.args(["--variant=minbase", "--include=systemd,dbus", "bookworm"]).arg(&partial).arg(&mirror);
    let out = cmd.output().map_err(|e| format!("debootstrap: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        let log = String::from_utf8_lossy(&out.stdout);
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        return Err(format!("debootstrap from {mirror} failed: {}", tail.join(" | ")));
    }
    // The downloaded packages: 100 MB nothing reads again.
    for e in std::fs::read_dir(partial.join("var/cache/apt/archives")).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "deb") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    std::fs::write(partial.join(".lookout-rootfs"), ROOTFS_RECIPE).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir).map_err(|e| e.to_string())?;
    println!("root filesystem built in {:.0} s", t.elapsed().as_secs_f64());
    Ok(dir)
}

/// The first `URIs:` of the host's deb822 Debian sources, else its
/// sources.list, else deb.debian.org; `LOOKOUT_DEBIAN_MIRROR` overrides.
fn debian_mirror() -> String {
    if let Ok(m) = std::env::var("LOOKOUT_DEBIAN_MIRROR") {
        return m;
    }
    let deb822 = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let from_deb822 = deb822.lines().find_map(|l| l.strip_prefix("URIs:")).map(|u| u.split_whitespace().next());
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    let from_list = list.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        (w.first() == Some(&"deb") && w.get(2) == Some(&"bookworm")).then(|| w.get(1).copied())
    });
    from_deb822
        .flatten()
        .or(from_list.flatten())
        .filter(|u| !u.contains("security"))
        .unwrap_or("http://deb.debian.org/debian")
        .to_string()
}

/// The .deb to install: `LOOKOUT_DEB` (e.g. the release package from
/// `cross/build.sh --deb x86_64`), else one `cargo deb` makes from the
/// binary this `cargo test` built. That one has the unit, config, labels
/// and docs of the release package (the same Cargo.toml metadata, the same
/// files) and differs only in how the binary was compiled, which the other
/// tests cover; it takes 5 s where the release build with zig takes many
/// minutes. `--fast`: xz at its fast preset (5 s instead of 47 s for the
/// stripped debug binary).
fn package() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("LOOKOUT_DEB") {
        return Ok(p.into());
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_lookout"));
    // target/<profile dir>/lookout; cargo calls the dev profile's folder debug.
    let profile = match bin.parent().and_then(|d| d.file_name()).and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(p) => p.to_string(),
        None => return Err(format!("cannot tell the profile of {}", bin.display())),
    };
    let out_dir = work_dir().join("deb");
    let _ = std::fs::remove_dir_all(&out_dir);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let t = Instant::now();
    let out = Command::new(cargo)
        .current_dir(root())
        .args(["deb", "--no-build", "--fast", "--profile", &profile, "-o"])
        .arg(&out_dir)
        .output()
        .map_err(|e| format!("cargo deb: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("no such command") {
            return Err("cargo-deb is not installed (cargo install --locked cargo-deb; tools/test.sh does)".into());
        }
        return Err(format!("cargo deb failed: {err}"));
    }
    let deb = std::fs::read_dir(&out_dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("cargo deb made no .deb")?;
    println!("{} made in {:.1} s", deb.display(), t.elapsed().as_secs_f64());
    Ok(deb)
}

/// Runs `cmd` with a time limit (killed after it), collecting its output.
pub fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut b = vec![];
        std::io::Read::read_to_end(&mut out, &mut b).ok();
        b
    });
    let mut stderr = vec![];
    let err_reader = std::thread::spawn(move || {
        std::io::Read::read_to_end(&mut err, &mut stderr).ok();
        stderr
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: reader.join().unwrap(), stderr: err_reader.join().unwrap() }
}

/// One booted container. Dropping it powers it off and removes its files.
pub struct Container {
    pub name: String,
    /// The container's root as the host sees it: files written here are
    /// the container's.
    pub root: PathBuf,
    nspawn: Child,
    /// The container's PID 1, as the host numbers it.
    init: u32,
    run_dir: PathBuf,
    overlay: bool,
}

impl Container {
    /// Boots a container whose host name starts as `name`, and waits until
    /// its systemd has finished booting.
    pub fn boot(host: &Host, name: &str) -> Container {
        let run_dir = work_dir().join("run").join(format!("{name}-{}", std::process::id()));
        let _ = Command::new("umount").arg(run_dir.join("root")).output();
        let _ = std::fs::remove_dir_all(&run_dir);
        let root = run_dir.join("root");
        for d in ["upper", "work", "root"] {
            std::fs::create_dir_all(run_dir.join(d)).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            host.rootfs.display(),
            run_dir.join("upper").display(),
            run_dir.join("work").display()
        );
        // A host whose own root is an overlay cannot stack another: copy.
        let overlay = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&root)
            .status()
            .is_ok_and(|s| s.success());
        if !overlay {
            let ok = Command::new("cp").arg("-a").arg(format!("{}/.", host.rootfs.display())).arg(&root).status();
            assert!(ok.is_ok_and(|s| s.success()), "copying {} failed", host.rootfs.display());
        }
        let log = std::fs::File::create(run_dir.join("console.log")).unwrap();
        let nspawn = Command::new(tool_path("systemd-nspawn").expect("checked in prepare"))
            .args(["-q", "--boot", "--register=no", "--keep-unit", "--console=read-only", "--system-call-filter=bpf"])
            .arg("-D")
            .arg(&root)
            .arg("-M")
            .arg(name)
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("systemd-nspawn");
        let mut c = Container { name: name.into(), root, init: 0, nspawn, run_dir, overlay };
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.init == 0 {
            assert!(Instant::now() < deadline, "{name}: no PID 1 within 30 s: {}", c.console());
            if let Ok(Some(status)) = c.nspawn.try_wait() {
                panic!("{name}: systemd-nspawn exited ({status}): {}", c.console());
            }
            // nspawn's own child first sets the container up, then execs
            // systemd: only then is it the container's PID 1.
            c.init = child_of(c.nspawn.id())
                .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|n| n.trim() == "systemd"))
                .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(20));
        }
        // Until systemd's own socket is up, systemctl has nobody to ask.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = c.sh_within("systemctl is-system-running --wait", Duration::from_secs(60));
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: booted to {state:?}: {}", c.console());
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("console.log")).unwrap_or_default()
    }

    /// `script` run by /bin/sh inside the container as root, in /root, with
    /// a clean environment plus `env`.
    pub fn sh_env_within(&self, script: &str, env: &[(&str, &str)], limit: Duration) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t").arg(self.init.to_string()).args(["-a", "--", "env", "-i"]);
        cmd.args(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"]);
        cmd.args(env.iter().map(|(k, v)| format!("{k}={v}")));
        cmd.args(["/bin/sh", "-c", &format!("cd /root && {script}")]);
        cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        output_within(cmd, limit)
    }

    pub fn sh_within(&self, script: &str, limit: Duration) -> Output {
        self.sh_env_within(script, &[], limit)
    }

    /// Runs `script` (60 s at most) and returns its stdout; panics with
    /// its output when it fails.
    pub fn sh(&self, script: &str) -> String {
        let out = self.sh_within(script, Duration::from_secs(60));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}: `{script}` failed ({}):\n{text}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// A property of a unit (`systemctl show -P`).
    pub fn show(&self, unit: &str, property: &str) -> String {
        self.sh(&format!("systemctl show -P {property} {unit}")).trim().to_string()
    }

    /// Waits until `unit`'s ActiveState is `state`; panics with the
    /// unit's journal otherwise.
    pub fn wait_state(&self, unit: &str, state: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let now = self.show(unit, "ActiveState");
            if now == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {unit} is {now}, not {state}, after {limit:?}:\n{}",
                self.name,
                self.journal(unit)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The unit's journal, messages only.
    pub fn journal(&self, unit: &str) -> String {
        self.sh(&format!("journalctl -q --no-pager -o cat -u {unit}"))
    }

    /// Writes a file into the container (its parent folders too).
    pub fn write(&self, path: &str, data: impl AsRef<[u8]>) {
        let p = self.root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    }
}

/// The first process whose parent is `pid`.
fn child_of(pid: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let child: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == pid).then_some(child)
    })
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM makes systemd-nspawn shut the container down in order.
        let _ = Command::new("kill").arg("-TERM").arg(self.nspawn.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.nspawn.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.nspawn.kill();
                let _ = self.nspawn.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.overlay {
            let _ = Command::new("umount").arg(&self.root).status();
        }
        if std::env::var_os("LOOKOUT_KEEP_CONTAINERS").is_none() {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}
