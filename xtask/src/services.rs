//! Finding (or starting) the services the integration suites need: the URL given, else the
//! local server (started when installed but stopped), else a throwaway container through
//! testcontainers where Docker answers; the Python packages of the real peers used in tests
//! (an SMTP server, the Standard Webhooks verifier); and the console's browser test's Node.js,
//! Chromium and npm packages.

use std::net::{TcpStream, ToSocketAddrs};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::containers;

fn reachable(host_port: &str) -> bool {
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let hp = rest.split(['/', '?']).next().unwrap_or(rest);
    if hp.contains(':') {
        hp.to_owned()
    } else {
        format!("{hp}:{default_port}")
    }
}

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_for(host_port: &str) -> bool {
    for _ in 0..60 {
        if reachable(host_port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    false
}

/// A service to test against: its URL, and the container behind it when xtask started one
/// (removed when this is dropped).
pub struct Service {
    pub url: String,
    _container: Option<containers::Container>,
}

impl Service {
    fn at(url: String) -> Self {
        Self {
            url,
            _container: None,
        }
    }

    /// A testcontainers container, when Docker answers; `None` (with the reason) otherwise.
    fn in_docker(
        what: &str,
        start: fn() -> Result<(String, containers::Container)>,
    ) -> Option<Self> {
        if !containers::docker_available() {
            return None;
        }
        eprintln!("xtask: starting {what} in Docker (testcontainers); removed when done");
        match start() {
            Ok((url, c)) => Some(Self {
                url,
                _container: Some(c),
            }),
            Err(e) => {
                eprintln!("xtask: {e:#}");
                None
            }
        }
    }
}

/// Makes sure PostgreSQL answers at `DATABASE_URL` (default: the local server), starting the
/// machine's cluster if it is installed but stopped, else a container where Docker answers.
pub fn postgres() -> Result<Service> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let hp = host_port(&url, 5432);
    if reachable(&hp) {
        return Ok(Service::at(url));
    }
    eprintln!("xtask: PostgreSQL not reachable at {hp}; trying to start the local cluster");
    sh(
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | tail -n1) main start 2>/dev/null",
    );
    if wait_for(&hp) {
        return Ok(Service::at(url));
    }
    if let Some(s) = Service::in_docker("PostgreSQL", containers::postgres) {
        return Ok(s);
    }
    bail!(
        "PostgreSQL is needed at {hp} (set DATABASE_URL to use another).\n\
         Install it with `apt-get install postgresql` (trust auth for 127.0.0.1, user postgres), \
         or give xtask a Docker engine (it then starts one with testcontainers)."
    )
}

/// Makes sure Redis answers at `REDIS_URL` (default: the local server), starting the local
/// redis-server if it is installed, else a container where Docker answers.
pub fn redis() -> Result<Service> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let hp = host_port(&url, 6379);
    if reachable(&hp) {
        return Ok(Service::at(url));
    }
    eprintln!("xtask: Redis not reachable at {hp}; trying to start redis-server");
    sh(
        "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no >/dev/null 2>&1",
    );
    if wait_for(&hp) {
        return Ok(Service::at(url));
    }
    if let Some(s) = Service::in_docker("Redis", containers::redis) {
        return Ok(s);
    }
    bail!(
        "Redis is needed at {hp} (set REDIS_URL to use another). Install it with \
         `apt-get install redis-server`, or give xtask a Docker engine (it then starts one with \
         testcontainers)."
    )
}

/// Installs the Python packages the tests use as real peers, when missing.
pub fn python_peers() -> Result<()> {
    let python = std::env::var("OBSERVERS_PYTHON").unwrap_or_else(|_| "python3".into());
    let have = |module: &str| {
        Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    let missing: Vec<&str> = [
        ("aiosmtpd", "aiosmtpd"),
        ("standardwebhooks", "standardwebhooks"),
    ]
    .into_iter()
    .filter(|(module, _)| !have(module))
    .map(|(_, pkg)| pkg)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Python test peers: {}", missing.join(" "));
    let ok = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(&missing)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "could not install {} with pip; install them with `{python} -m pip install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    Ok(())
}

/// Where the browser test's npm packages live (playwright-core; see its package.json).
const BROWSER_TESTS: &str = "crates/observers-cli/tests/browser";

/// apt-get installs `packages` quietly; false when apt-get is missing or fails.
fn apt_install(packages: &str) -> bool {
    sh("command -v apt-get >/dev/null 2>&1")
        && sh("apt-get update -qq >/dev/null 2>&1")
        && sh(&format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {packages} >/dev/null 2>&1"
        ))
}

/// Makes sure the console's browser test can run: Node.js and npm, Debian's Chromium (or
/// `CHROMIUM`), and the test's npm packages (`npm ci`, no browser download), installing what
/// is missing.
pub fn browser_peers() -> Result<()> {
    if !sh("command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1") {
        eprintln!("xtask: installing Node.js for the browser test (apt-get install nodejs npm)");
        if !apt_install("nodejs npm") {
            bail!(
                "Node.js is needed for the console's browser test; install it with `apt-get install nodejs npm`"
            );
        }
    }
    let chromium = std::env::var_os("CHROMIUM").is_some()
        || sh("command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1");
    if !chromium {
        eprintln!("xtask: installing Chromium for the browser test (apt-get install chromium)");
        if !apt_install("chromium") {
            bail!(
                "Chromium is needed for the console's browser test; install it with `apt-get install chromium` or set CHROMIUM=/path/to/chrome"
            );
        }
    }
    let dir = crate::workspace_root().join(BROWSER_TESTS);
    if dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return Ok(());
    }
    eprintln!("xtask: installing the browser test's npm packages (npm ci in {BROWSER_TESTS})");
    let ok = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("`npm ci` failed in {BROWSER_TESTS}; run it there by hand to see why");
    }
    Ok(())
}

/// Makes sure `promtool` (Debian's `prometheus` package) is on the PATH, installing it with
/// apt-get when missing: the test of docs/prometheus/alerts.yml runs `promtool check rules`.
pub fn promtool() -> Result<()> {
    if sh("command -v promtool >/dev/null 2>&1") {
        return Ok(());
    }
    eprintln!("xtask: installing promtool (apt-get install prometheus)");
    let installed = apt_install("prometheus");
    if installed && sh("command -v promtool >/dev/null 2>&1") {
        return Ok(());
    }
    bail!(
        "promtool is needed to check docs/prometheus/alerts.yml; install it with \
         `apt-get install prometheus` (Debian/Ubuntu) or put promtool on the PATH"
    )
}

/// A private PostgreSQL cluster for a benchmark or a test suite (the WAL source needs
/// `wal_level = logical`), configured as a production server would be
/// rather than as a distribution's defaults (128 MB of shared buffers): `settings` are passed
/// to the server. Created with the machine's `initdb` in a temporary directory on a free port,
/// run as the `postgres` user when this runs as root (`initdb` refuses root), and stopped and
/// removed on drop.
pub struct PrivatePostgres {
    bindir: String,
    data: std::path::PathBuf,
    as_postgres: bool,
    /// The `settings` it was started with, for a single-user backend on the same cluster.
    settings: Vec<String>,
    pub url: String,
}

impl PrivatePostgres {
    /// `None` (with the reason on stderr) when the server binaries are not installed.
    pub fn start(settings: &[&str]) -> Option<Self> {
        let bindir = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|d| std::path::Path::new(d).join("initdb").exists());
        let Some(bindir) = bindir else {
            eprintln!("xtask: no initdb (pg_config --bindir); skipping the private PostgreSQL");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let data = std::env::temp_dir().join(format!("observers-private-pg-{port}"));
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let pg = Self {
            bindir,
            data,
            as_postgres,
            settings: settings.iter().map(|s| (*s).to_owned()).collect(),
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        };
        std::fs::create_dir_all(&pg.data).ok()?;
        if as_postgres && !sh(&format!("chown postgres {}", pg.data.display())) {
            return None;
        }
        let mut options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            pg.data.display()
        );
        for s in settings {
            options.push_str(" -c ");
            options.push_str(s);
        }
        let cluster = pg.data.join("cluster");
        let ok = pg.as_server(&[
            "initdb",
            "-D",
            &cluster.to_string_lossy(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]) && pg.as_server(&[
            "pg_ctl",
            "-D",
            &cluster.to_string_lossy(),
            "-o",
            &options,
            "-l",
            &pg.data.join("log").to_string_lossy(),
            "-w",
            "start",
        ]);
        if !ok {
            eprintln!(
                "xtask: the private PostgreSQL did not start; see {}",
                pg.data.display()
            );
            return None;
        }
        Some(pg)
    }

    /// Stops the server (it stays on disk, for [`PrivatePostgres::single_user_instructions`]).
    pub fn stop(&self) -> bool {
        let cluster = self.data.join("cluster");
        self.as_server(&[
            "pg_ctl",
            "-D",
            &cluster.to_string_lossy(),
            "-m",
            "fast",
            "-w",
            "stop",
        ])
    }

    /// The instructions a stopped cluster's single-user backend executes to run `script` (one
    /// statement per line, each its own transaction) in `database`, counted by valgrind's
    /// callgrind: the same count for the same binary and input, whatever else the machine does.
    /// `None` when valgrind is missing or the run fails.
    pub fn single_user_instructions(&self, database: &str, script: &str) -> Option<u64> {
        use std::io::Write as _;
        let out = self.data.join("callgrind.out");
        let postgres = format!("{}/postgres", self.bindir);
        let cluster = self.data.join("cluster");
        let mut cmd = self.command("valgrind");
        cmd.args([
            "--tool=callgrind",
            &format!("--callgrind-out-file={}", out.display()),
            &postgres,
            "--single",
            "-D",
            &cluster.to_string_lossy(),
        ]);
        // The server's settings again (a logical slot refuses to load under a lower wal_level).
        for s in &self.settings {
            cmd.args(["-c", s]);
        }
        let mut child = cmd
            .arg(database)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(script.as_bytes()).ok()?;
        if !child.wait().ok()?.success() {
            return None;
        }
        let text = std::fs::read_to_string(&out).ok()?;
        let _ = std::fs::remove_file(&out);
        text.lines()
            .find_map(|l| {
                l.strip_prefix("totals:")
                    .or_else(|| l.strip_prefix("summary:"))
            })
            .and_then(|n| n.trim().parse().ok())
    }

    /// Runs one of the server's programs, as `postgres` when we are root; quietly.
    fn as_server(&self, args: &[&str]) -> bool {
        let Some((program, rest)) = args.split_first() else {
            return false;
        };
        self.command(&format!("{}/{program}", self.bindir))
            .args(rest)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `program`, run as `postgres` when we are root (the server refuses root).
    fn command(&self, program: &str) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", program]);
            c
        } else {
            Command::new(program)
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let cluster = self.data.join("cluster");
        // Already stopped (for a single-user backend): nothing to stop.
        if cluster.join("postmaster.pid").exists() {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
