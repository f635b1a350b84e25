//! A throwaway PostgreSQL cluster for the tests: Debian's `postgresql` (initdb and postgres of
//! [`BIN`]), run as the `postgres` user (it refuses root), listening only on a unix socket in
//! its own directory, shared by every test of one test binary and killed with it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where Debian's `postgresql` package puts its programs (`.ci/run` installs it).
pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The running cluster: its socket directory.
pub struct Cluster {
    pub socket_dir: PathBuf,
}

/// Whether the suite runs against PostgreSQL (`IGNITE_TEST_POSTGRES=1`, the CI's matrix step).
pub fn requested() -> bool {
    std::env::var("IGNITE_TEST_POSTGRES").is_ok_and(|v| v == "1")
}

/// The test binary's cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(start)
}

impl Cluster {
    /// The URL of database `name`, made if it does not exist yet (a server restarted on the
    /// same data directory finds its store again).
    pub fn database(&self, name: &str) -> String {
        let exists = self.psql(
            "postgres",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
        );
        if exists.trim() != "1" {
            self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        }
        format!(
            "postgres://postgres@localhost/{name}?host={}",
            self.socket_dir.display()
        )
    }

    /// Runs one statement with `psql` in database `db` and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(Path::new(BIN).join("psql"))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-h"])
            .arg(&self.socket_dir)
            .args(["-d", db, "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql -c {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

/// The database of a server whose data directory is `data_dir`: one per directory.
pub fn database_for(data_dir: &Path) -> String {
    cluster().database(&database_name(data_dir))
}

/// The name of [`database_for`]'s database.
pub fn database_name(data_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut h);
    format!("ignite_{:016x}", h.finish())
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the postgres user exists (apt-get install postgresql)")
    };
    (id("-u"), id("-g"))
}

/// As the `postgres` user, with the parent-death signal set after the change of user.
fn as_postgres(program: &str) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid",
            "postgres",
            "--regid",
            "postgres",
            "--init-groups",
            "--pdeathsig",
            "KILL",
        ])
        .arg(Path::new(BIN).join(program));
    command
}

fn start() -> Cluster {
    assert!(
        Path::new(BIN).join("postgres").exists(),
        "PostgreSQL is not installed at {BIN}: `apt-get install postgresql` (the tests run a \
         throwaway cluster of their own)"
    );
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("postgres");
    // Clusters of earlier runs whose test process is gone.
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let pid = entry.file_name().to_string_lossy().to_string();
            if !Path::new("/proc").join(&pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    let data = dir.join("data");
    let out = as_postgres("initdb")
        .args([
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The postmaster is started by a thread that never ends: the parent-death signal is sent
    // when the *thread* that forked the child exits, and a test's thread ends with its test.
    let (tx, rx) = std::sync::mpsc::channel();
    let (socket, data_dir) = (dir.clone(), data.clone());
    std::thread::spawn(move || {
        let mut command = as_postgres("postgres");
        command
            .arg("-D")
            .arg(&data_dir)
            .arg("-k")
            .arg(&socket)
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=300",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let child = command.spawn();
        let _ = tx.send(child.map(|c| c.id()));
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap().expect("start postgres");
    let cluster = Cluster { socket_dir: dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = Command::new(Path::new(BIN).join("pg_isready"))
            .args(["-q", "-U", "postgres", "-h"])
            .arg(&cluster.socket_dir)
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return cluster;
        }
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not accept connections within 30 s (its data: {})",
            data.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
