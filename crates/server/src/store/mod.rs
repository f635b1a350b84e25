//! Persistent state, through sqlx's `Any` driver: SQLite (one server, the default) or
//! PostgreSQL (several control replicas on one database). The SQL is kept portable: the same
//! statements run on both, the migrations are the same files (with the few type names
//! PostgreSQL spells differently translated in [`postgres_dialect`]), and every value is read
//! as one of `i64`, `f64`, `String` or `Vec<u8>`, which both drivers decode alike.

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection, Executor, Row};

mod apps;
mod builds;
mod executions;
mod nodes;
mod notify;
mod sessions;
mod versions;

pub use apps::*;
pub use builds::*;
pub use executions::*;
pub use nodes::*;
pub use notify::*;
pub use sessions::*;
pub use versions::*;

pub type Db = sqlx::AnyPool;

/// Which database a store is on; the few statements that differ ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn backend(db: &Db) -> Backend {
    if db
        .connect_options()
        .database_url
        .scheme()
        .starts_with("postgres")
    {
        Backend::Postgres
    } else {
        Backend::Sqlite
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Opens the store: `url` (`postgres://…` or `sqlite://<path>`) when given, else SQLite at
/// `<data-dir>/ignite.db`; the migrations are applied (on PostgreSQL under sqlx's advisory lock,
/// so replicas starting together migrate once).
pub async fn open(data_dir: &Path, url: Option<&str>) -> anyhow::Result<Db> {
    sqlx::any::install_default_drivers();
    let default_url;
    let url = match url {
        Some(url) => url,
        None => {
            default_url = format!("sqlite://{}", data_dir.join("ignite.db").display());
            &default_url
        }
    };
    let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        AnyPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot connect to the PostgreSQL database of --database-url: {e}; check                      that the server is reachable and that the URL's user, password and                      database are right"
                )
            })?
    } else if url.starts_with("sqlite:") {
        open_sqlite(url).await?
    } else {
        anyhow::bail!(
            "--database-url must start with postgres:// (or postgresql://) or sqlite://, not \
             {:?}",
            url.split(':').next().unwrap_or_default()
        );
    };
    migrator(backend(&pool)).run(&pool).await?;
    Ok(pool)
}

async fn open_sqlite(url: &str) -> anyhow::Result<Db> {
    // WAL is a property of the file: one connection of SQLite's own driver sets it (and creates
    // the file); the pool's connections, through `Any`, cannot be given pragmas but by SQL.
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    options.connect().await?.close().await?;
    let pool = AnyPoolOptions::new()
        .max_connections(8)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // WAL with synchronous=NORMAL: a commit is atomic and survives a crash of the
                // process (it is in the OS's page cache once `COMMIT` returns); only a crash of
                // the machine can lose the last few, and no commit waits for an fsync.
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                conn.execute("PRAGMA busy_timeout = 5000").await?;
                Ok(())
            })
        })
        .connect(url)
        .await?;
    Ok(pool)
}

/// The schema's migrations (`crates/server/migrations`), embedded as sqlx's `migrate!` macro
/// would embed them — the same versions, descriptions and checksums (sha384 of the text), so a
/// store migrated by either accepts the other — without building that proc macro, and a second
/// SQLite with it, into every build.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        2,
        "scaling",
        include_str!("../../migrations/0002_scaling.sql"),
    ),
    (
        3,
        "build cache",
        include_str!("../../migrations/0003_build_cache.sql"),
    ),
    (
        4,
        "network",
        include_str!("../../migrations/0004_network.sql"),
    ),
    (
        5,
        "hostname",
        include_str!("../../migrations/0005_hostname.sql"),
    ),
    (
        6,
        "start kind",
        include_str!("../../migrations/0006_start_kind.sql"),
    ),
    (
        7,
        "images",
        include_str!("../../migrations/0007_images.sql"),
    ),
    (
        8,
        "console",
        include_str!("../../migrations/0008_console.sql"),
    ),
    (
        9,
        "build jobs",
        include_str!("../../migrations/0009_build_jobs.sql"),
    ),
    (10, "nodes", include_str!("../../migrations/0010_nodes.sql")),
];

fn migrator(backend: Backend) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                let sql = match backend {
                    Backend::Sqlite => sql.to_string(),
                    Backend::Postgres => postgres_dialect(sql),
                };
                let no_tx = sql.starts_with("-- no-transaction");
                Migration::new(
                    version,
                    std::borrow::Cow::Borrowed(description),
                    MigrationType::Simple,
                    sqlx::AssertSqlSafe(sql).into_sql_str(),
                    no_tx,
                )
            })
            .collect(),
    )
}

/// A migration as PostgreSQL reads it: the type names SQLite accepts but PostgreSQL spells
/// otherwise. The files themselves stay as they are — existing SQLite stores hold their
/// checksums — and a PostgreSQL store holds the checksums of this translation, which is why it
/// must stay deterministic: change a rule and existing PostgreSQL stores refuse to start.
fn postgres_dialect(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    for line in sql.lines() {
        if line.trim_start().starts_with("--") {
            out.push_str(line);
        } else {
            let mut word = String::new();
            for c in line.chars().chain(std::iter::once('\n')) {
                if c.is_ascii_alphanumeric() || c == '_' {
                    word.push(c);
                    continue;
                }
                out.push_str(match word.as_str() {
                    "BLOB" => "BYTEA",
                    "REAL" => "DOUBLE PRECISION",
                    // An INTEGER of SQLite is 64 bits; PostgreSQL's is 32.
                    "INTEGER" => "BIGINT",
                    w => w,
                });
                word.clear();
                if c != '\n' {
                    out.push(c);
                }
            }
        }
        out.push('\n');
    }
    out
}

/// A transaction that writes: on SQLite it takes the write lock up front (`BEGIN IMMEDIATE`), so
/// that it waits for another writer (busy timeout) instead of failing when a read inside it would
/// have to be upgraded to a write under concurrent writes. PostgreSQL locks rows as they are
/// written; a plain `BEGIN` serves.
async fn begin_write(db: &Db) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Any>> {
    match backend(db) {
        Backend::Sqlite => db.begin_with("BEGIN IMMEDIATE").await,
        Backend::Postgres => db.begin().await,
    }
}

/// Text as PostgreSQL stores it: a NUL byte, which SQLite keeps and PostgreSQL's `TEXT`
/// refuses, becomes U+FFFD. Every free text a user or a handler sends that is stored as is
/// goes through it (a token's name, an app's description, a registry login, a build log, a
/// handler's error); JSON columns need not (serde_json writes NUL as `\u0000`).
pub(crate) fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct App {
    pub org: String,
    pub name: String,
    pub runtime: String,
    pub description: String,
    pub env: Vec<(String, String)>,
    pub active_version: Option<i64>,
    pub scaling: ignite_api::ScalingConfig,
    pub network: ignite_api::NetworkConfig,
    pub created_at: i64,
}

/// A version as the API shows it; the store reads it straight into the API's type.
pub type Version = ignite_api::Version;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Execution {
    pub id: String,
    pub org: String,
    pub app: String,
    pub version: i64,
    pub status: String,
    pub trigger: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub cold_start_ms: Option<f64>,
    pub init_ms: Option<f64>,
    pub queue_ms: Option<f64>,
    pub fetch_ms: Option<f64>,
    pub spawn_ms: Option<f64>,
    /// Starting a template first (Python), on a cold start that had to.
    #[serde(default)]
    pub template_ms: Option<f64>,
    /// `exec`, `fork` or `component`, on a cold start.
    #[serde(default)]
    pub start_kind: Option<String>,
    /// Unpacking an image's root first (image mode), on a cold start that had to.
    #[serde(default)]
    pub unpack_ms: Option<f64>,
    pub duration_ms: Option<f64>,
    pub billed_duration_ms: Option<i64>,
    pub response_status: Option<i64>,
    pub error: Option<String>,
    pub logs: Vec<String>,
}

impl Execution {
    /// A record of an execution that has just begun: `running`, nothing measured yet.
    pub fn begun(id: String, org: &str, app: &str, version: i64, trigger: &str) -> Execution {
        Execution {
            id,
            org: org.into(),
            app: app.into(),
            version,
            status: "running".into(),
            trigger: trigger.into(),
            started_at: now_ms(),
            finished_at: None,
            cold_start_ms: None,
            init_ms: None,
            queue_ms: None,
            fetch_ms: None,
            spawn_ms: None,
            template_ms: None,
            start_kind: None,
            unpack_ms: None,
            duration_ms: None,
            billed_duration_ms: None,
            response_status: None,
            error: None,
            logs: vec![],
        }
    }
}

fn env_of(text: &str) -> Vec<(String, String)> {
    serde_json::from_str(text).unwrap_or_default()
}

fn app_of(row: &AnyRow) -> App {
    App {
        org: row.get("org"),
        name: row.get("name"),
        runtime: row.get("runtime"),
        description: row.get("description"),
        env: env_of(&row.get::<String, _>("env")),
        active_version: row.get("active_version"),
        scaling: serde_json::from_str(&row.get::<String, _>("scaling")).unwrap_or_default(),
        network: serde_json::from_str(&row.get::<String, _>("network")).unwrap_or_default(),
        created_at: row.get("created_at"),
    }
}

fn version_of(row: &AnyRow) -> Version {
    Version {
        version: row.get("version"),
        runtime: row.get("runtime"),
        rust_target: row.get("rust_target"),
        toolchain: row.get("toolchain"),
        source_digest: row.get("source_digest"),
        source_kind: row.get("source_kind"),
        compile_status: row.get("compile_status"),
        compile_error: row.get("compile_error"),
        build_id: row.get("build_id"),
        artifact_digest: row.get("artifact_digest"),
        artifact_size: row.get("artifact_size"),
        artifact_target: row.get("artifact_target"),
        env: env_of(&row.get::<String, _>("env")).into_iter().collect(),
        created_at: row.get("created_at"),
    }
}

fn execution_of(row: &AnyRow) -> Execution {
    Execution {
        id: row.get("id"),
        org: row.get("org"),
        app: row.get("app"),
        version: row.get("version"),
        status: row.get("status"),
        trigger: row.get("trigger"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
        cold_start_ms: row.get("cold_start_ms"),
        init_ms: row.get("init_ms"),
        queue_ms: row.get("queue_ms"),
        fetch_ms: row.get("fetch_ms"),
        spawn_ms: row.get("spawn_ms"),
        template_ms: row.get("template_ms"),
        start_kind: row.get("start_kind"),
        unpack_ms: row.get("unpack_ms"),
        duration_ms: row.get("duration_ms"),
        billed_duration_ms: row.get("billed_duration_ms"),
        response_status: row.get("response_status"),
        error: row.get("error"),
        logs: serde_json::from_str(&row.get::<String, _>("logs")).unwrap_or_default(),
    }
}

// ---- orgs and tokens ----

pub async fn org_exists(db: &Db, org: &str) -> sqlx::Result<bool> {
    Ok(sqlx::query("SELECT 1 FROM orgs WHERE name = $1")
        .bind(org)
        .fetch_optional(db)
        .await?
        .is_some())
}

/// Creates the org unless it exists; whether this call created it (of replicas starting
/// together on one store, one does, and only that one mints the admin token).
pub async fn create_org(db: &Db, org: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO orgs (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(org)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn insert_token(
    db: &Db,
    id: &str,
    org: &str,
    name: &str,
    hash: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO tokens (id, org, name, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(org)
    .bind(storable(name).as_ref())
    .bind(hash)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(())
}

/// `(org, secret_hash)` of a live token.
pub async fn token(db: &Db, id: &str) -> sqlx::Result<Option<(String, String)>> {
    let row =
        sqlx::query("SELECT org, secret_hash FROM tokens WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|r| (r.get("org"), r.get("secret_hash"))))
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

pub async fn list_tokens(db: &Db, org: &str) -> sqlx::Result<Vec<TokenInfo>> {
    let rows = sqlx::query(
        "SELECT id, name, created_at, revoked_at FROM tokens WHERE org = $1 ORDER BY created_at",
    )
    .bind(org)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| TokenInfo {
            id: r.get("id"),
            name: r.get("name"),
            created_at: r.get("created_at"),
            revoked_at: r.get("revoked_at"),
        })
        .collect())
}

pub async fn revoke_token(db: &Db, org: &str, id: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE tokens SET revoked_at = $1 WHERE org = $2 AND id = $3 AND revoked_at IS NULL",
    )
    .bind(now_ms())
    .bind(org)
    .bind(id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    /// The type names PostgreSQL spells otherwise are translated as whole words, outside
    /// comments only; everything else is left as it is.
    #[test]
    fn migrations_are_translated_for_postgresql() {
        let cases = [
            ("secret BLOB NOT NULL,", "secret BYTEA NOT NULL,"),
            (
                "ALTER TABLE e ADD COLUMN t_ms REAL;",
                "ALTER TABLE e ADD COLUMN t_ms DOUBLE PRECISION;",
            ),
            (
                "created_at INTEGER NOT NULL,",
                "created_at BIGINT NOT NULL,",
            ),
            (
                "x DOUBLE PRECISION, realm TEXT, blob_id TEXT",
                "x DOUBLE PRECISION, realm TEXT, blob_id TEXT",
            ),
            (
                "-- a REAL comment about a BLOB",
                "-- a REAL comment about a BLOB",
            ),
        ];
        for (sqlite, postgres) in cases {
            assert_eq!(super::postgres_dialect(sqlite), format!("{postgres}\n"));
        }
    }

    /// Every file in the migrations directory is embedded, under the version and description
    /// sqlx derives from its name (`<version>_<description>.sql`).
    #[test]
    fn every_migration_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<(i64, String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .map(|p| {
                let name = p.file_stem().unwrap().to_string_lossy().to_string();
                let (version, description) = name.split_once('_').unwrap();
                (
                    version.parse().unwrap(),
                    description.replace('_', " "),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        let embedded: Vec<(i64, String, String)> = super::MIGRATIONS
            .iter()
            .map(|&(v, d, sql)| (v, d.to_string(), sql.to_string()))
            .collect();
        assert_eq!(embedded, files);
    }
}

/// Credentials an org keeps for a registry: `(host, username, sealed password, created_at)`.
#[derive(Debug, Clone)]
pub struct RegistryCredential {
    pub host: String,
    pub username: String,
    pub secret: Vec<u8>,
    pub created_at: i64,
}

pub async fn put_registry_credential(
    db: &Db,
    org: &str,
    host: &str,
    username: &str,
    secret: &[u8],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO registry_credentials (org, host, username, secret, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (org, host) DO UPDATE SET \
         username = excluded.username, secret = excluded.secret, created_at = excluded.created_at",
    )
    .bind(org)
    .bind(storable(host).as_ref())
    .bind(storable(username).as_ref())
    .bind(secret)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(())
}

pub async fn registry_credentials(db: &Db, org: &str) -> sqlx::Result<Vec<RegistryCredential>> {
    let rows = sqlx::query(
        "SELECT host, username, secret, created_at FROM registry_credentials WHERE org = $1 \
         ORDER BY host",
    )
    .bind(org)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| RegistryCredential {
            host: r.get("host"),
            username: r.get("username"),
            secret: r.get("secret"),
            created_at: r.get("created_at"),
        })
        .collect())
}

/// Whether there was something to delete.
pub async fn delete_registry_credential(db: &Db, org: &str, host: &str) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM registry_credentials WHERE org = $1 AND host = $2")
        .bind(org)
        .bind(host)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}
