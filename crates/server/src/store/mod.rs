//! Persistent state, through sqlx. The SQL is kept portable (SQLite today, PostgreSQL later).

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

mod apps;
mod executions;
mod nodes;
mod sessions;
mod versions;

pub use apps::*;
pub use executions::*;
pub use nodes::*;
pub use sessions::*;
pub use versions::*;

pub type Db = SqlitePool;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn open(data_dir: &Path) -> anyhow::Result<Db> {
    let path = data_dir.join("ignite.db");
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // WAL with synchronous=NORMAL: commits are atomic and survive a process crash; only an
        // OS crash can lose the last few, and no commit waits for an fsync.
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await?;
    migrator().run(&pool).await?;
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
    (10, "nodes", include_str!("../../migrations/0010_nodes.sql")),
];

fn migrator() -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    std::borrow::Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    )
}

/// A transaction that writes: on SQLite it takes the write lock up front (`BEGIN IMMEDIATE`), so
/// that it waits for another writer (busy timeout) instead of failing when a read inside it would
/// have to be upgraded to a write under concurrent writes.
async fn begin_write(db: &Db) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
    db.begin_with("BEGIN IMMEDIATE").await
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

fn app_of(row: &sqlx::sqlite::SqliteRow) -> App {
    App {
        org: row.get("org"),
        name: row.get("name"),
        runtime: row.get("runtime"),
        description: row.get("description"),
        env: env_of(row.get::<&str, _>("env")),
        active_version: row.get("active_version"),
        scaling: serde_json::from_str(row.get::<&str, _>("scaling")).unwrap_or_default(),
        network: serde_json::from_str(row.get::<&str, _>("network")).unwrap_or_default(),
        created_at: row.get("created_at"),
    }
}

fn version_of(row: &sqlx::sqlite::SqliteRow) -> Version {
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
        env: env_of(row.get::<&str, _>("env")).into_iter().collect(),
        created_at: row.get("created_at"),
    }
}

fn execution_of(row: &sqlx::sqlite::SqliteRow) -> Execution {
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
        logs: serde_json::from_str(row.get::<&str, _>("logs")).unwrap_or_default(),
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

pub async fn create_org(db: &Db, org: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO orgs (name, created_at) VALUES ($1, $2)")
        .bind(org)
        .bind(now_ms())
        .execute(db)
        .await?;
    Ok(())
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
    .bind(name)
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
    .bind(host)
    .bind(username)
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
