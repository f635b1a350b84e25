//! Persistent state, through sqlx. The SQL is kept portable (SQLite today, PostgreSQL later).

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

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
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// A transaction that writes: on SQLite it takes the write lock up front (`BEGIN IMMEDIATE`), so
/// that it waits for another writer (busy timeout) instead of failing when a read inside it would
/// have to be upgraded to a write under concurrent writes.
async fn begin_write(db: &Db) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
    db.begin_with("BEGIN IMMEDIATE").await
}

#[derive(Debug, Clone, Serialize)]
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
    pub duration_ms: Option<f64>,
    pub billed_duration_ms: Option<i64>,
    pub response_status: Option<i64>,
    pub error: Option<String>,
    pub logs: Vec<String>,
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

// ---- apps ----

/// The label of an app's public hostname: `<app>-<org>` (`<label>.ignite.<domain>`).
pub fn hostname_label(org: &str, name: &str) -> String {
    format!("{name}-{org}")
}

/// Why an app could not be created.
#[derive(Debug, PartialEq, Eq)]
pub enum CreateApp {
    Created,
    /// The org already has an app of that name.
    Exists,
    /// Another app (of any org) already has that public hostname.
    HostnameTaken,
}

pub async fn create_app(
    db: &Db,
    org: &str,
    name: &str,
    runtime: &str,
    description: &str,
) -> sqlx::Result<CreateApp> {
    let mut tx = begin_write(db).await?;
    let exists = sqlx::query("SELECT 1 FROM apps WHERE org = $1 AND name = $2")
        .bind(org)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
    if exists {
        return Ok(CreateApp::Exists);
    }
    let hostname = hostname_label(org, name);
    let taken = sqlx::query("SELECT 1 FROM apps WHERE hostname = $1")
        .bind(&hostname)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
    if taken {
        return Ok(CreateApp::HostnameTaken);
    }
    sqlx::query(
        "INSERT INTO apps (org, name, runtime, description, env, created_at, hostname) \
         VALUES ($1, $2, $3, $4, '[]', $5, $6)",
    )
    .bind(org)
    .bind(name)
    .bind(runtime)
    .bind(description)
    .bind(now_ms())
    .bind(&hostname)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(CreateApp::Created)
}

/// `(org, name)` of the app whose public hostname label is `label`.
pub async fn app_by_hostname(db: &Db, label: &str) -> sqlx::Result<Option<(String, String)>> {
    let row = sqlx::query("SELECT org, name FROM apps WHERE hostname = $1")
        .bind(label)
        .fetch_optional(db)
        .await?;
    Ok(row.map(|r| (r.get("org"), r.get("name"))))
}

pub async fn get_app(db: &Db, org: &str, name: &str) -> sqlx::Result<Option<App>> {
    let row = sqlx::query("SELECT * FROM apps WHERE org = $1 AND name = $2")
        .bind(org)
        .bind(name)
        .fetch_optional(db)
        .await?;
    Ok(row.as_ref().map(app_of))
}

pub async fn list_apps(db: &Db, org: &str) -> sqlx::Result<Vec<App>> {
    let rows = sqlx::query("SELECT * FROM apps WHERE org = $1 ORDER BY name")
        .bind(org)
        .fetch_all(db)
        .await?;
    Ok(rows.iter().map(app_of).collect())
}

pub async fn delete_app(db: &Db, org: &str, name: &str) -> sqlx::Result<bool> {
    let mut tx = begin_write(db).await?;
    sqlx::query("DELETE FROM versions WHERE org = $1 AND app = $2")
        .bind(org)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let done = sqlx::query("DELETE FROM apps WHERE org = $1 AND name = $2")
        .bind(org)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_scaling(
    db: &Db,
    org: &str,
    name: &str,
    scaling: &ignite_api::ScalingConfig,
) -> sqlx::Result<()> {
    let scaling = serde_json::to_string(scaling).unwrap_or_else(|_| "{}".into());
    sqlx::query("UPDATE apps SET scaling = $1 WHERE org = $2 AND name = $3")
        .bind(&scaling)
        .bind(org)
        .bind(name)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn set_network(
    db: &Db,
    org: &str,
    name: &str,
    network: &ignite_api::NetworkConfig,
) -> sqlx::Result<()> {
    let network = serde_json::to_string(network).unwrap_or_else(|_| "{}".into());
    sqlx::query("UPDATE apps SET network = $1 WHERE org = $2 AND name = $3")
        .bind(&network)
        .bind(org)
        .bind(name)
        .execute(db)
        .await?;
    Ok(())
}

/// The instances every app but `org:name` keeps warm (`reserved_capacity`), all orgs together.
pub async fn reserved_elsewhere(db: &Db, org: &str, name: &str) -> sqlx::Result<u64> {
    let rows = sqlx::query("SELECT org, name, scaling FROM apps")
        .fetch_all(db)
        .await?;
    Ok(rows
        .iter()
        .filter(|r| !(r.get::<&str, _>("org") == org && r.get::<&str, _>("name") == name))
        .map(|r| {
            serde_json::from_str::<ignite_api::ScalingConfig>(r.get::<&str, _>("scaling"))
                .map_or(0, |s| u64::from(s.reserved_capacity))
        })
        .sum())
}

/// `(org, name)` of every app that has a published version.
pub async fn live_apps(db: &Db) -> sqlx::Result<Vec<(String, String)>> {
    let rows = sqlx::query("SELECT org, name FROM apps WHERE active_version IS NOT NULL")
        .fetch_all(db)
        .await?;
    Ok(rows.iter().map(|r| (r.get("org"), r.get("name"))).collect())
}

pub async fn set_env(db: &Db, org: &str, name: &str, env: &[(String, String)]) -> sqlx::Result<()> {
    let env = serde_json::to_string(env).unwrap_or_else(|_| "[]".into());
    sqlx::query("UPDATE apps SET env = $1 WHERE org = $2 AND name = $3")
        .bind(&env)
        .bind(org)
        .bind(name)
        .execute(db)
        .await?;
    Ok(())
}

// ---- versions ----

pub struct DraftSource<'a> {
    pub runtime: &'a str,
    pub rust_target: &'a str,
    pub toolchain: Option<&'a str>,
    pub source_digest: &'a str,
    pub source_kind: &'a str,
}

/// Overwrites the draft slot (version 0) with new source; it is not compiled until compiled.
pub async fn save_draft(db: &Db, org: &str, app: &str, src: DraftSource<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO versions (org, app, version, runtime, rust_target, toolchain, source_digest, \
         source_kind, compile_status, env, created_at) VALUES ($1, $2, 0, $3, $4, $5, $6, $7, 'not_compiled', '[]', $8) \
         ON CONFLICT (org, app, version) DO UPDATE SET runtime = excluded.runtime, \
         rust_target = excluded.rust_target, toolchain = excluded.toolchain, \
         source_digest = excluded.source_digest, source_kind = excluded.source_kind, \
         compile_status = 'not_compiled', compile_error = NULL, build_id = NULL, \
         artifact_digest = NULL, artifact_size = NULL, artifact_target = NULL, \
         created_at = excluded.created_at",
    )
    .bind(org)
    .bind(app)
    .bind(src.runtime)
    .bind(src.rust_target)
    .bind(src.toolchain)
    .bind(src.source_digest)
    .bind(src.source_kind)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(())
}

pub async fn get_version(
    db: &Db,
    org: &str,
    app: &str,
    version: i64,
) -> sqlx::Result<Option<Version>> {
    let row = sqlx::query("SELECT * FROM versions WHERE org = $1 AND app = $2 AND version = $3")
        .bind(org)
        .bind(app)
        .bind(version)
        .fetch_optional(db)
        .await?;
    Ok(row.as_ref().map(version_of))
}

pub async fn list_versions(db: &Db, org: &str, app: &str) -> sqlx::Result<Vec<Version>> {
    let rows = sqlx::query("SELECT * FROM versions WHERE org = $1 AND app = $2 ORDER BY version")
        .bind(org)
        .bind(app)
        .fetch_all(db)
        .await?;
    Ok(rows.iter().map(version_of).collect())
}

/// Marks the draft's compile as started, if its source is still `source_digest`.
pub async fn draft_compile_started(
    db: &Db,
    org: &str,
    app: &str,
    build_id: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE versions SET compile_status = 'compiling', compile_error = NULL, build_id = $1 \
         WHERE org = $2 AND app = $3 AND version = 0",
    )
    .bind(build_id)
    .bind(org)
    .bind(app)
    .execute(db)
    .await?;
    Ok(())
}

pub struct Built<'a> {
    pub digest: &'a str,
    pub size: i64,
    pub target: &'a str,
}

/// Records a finished compile on the draft, unless the draft was saved again meanwhile.
pub async fn draft_compile_finished(
    db: &Db,
    org: &str,
    app: &str,
    build_id: &str,
    result: Result<Built<'_>, (&str, &str)>,
) -> sqlx::Result<()> {
    let q = match result {
        Ok(b) => sqlx::query(
            "UPDATE versions SET compile_status = 'compiled', artifact_digest = $1, artifact_size = $2, \
             artifact_target = $3 WHERE org = $4 AND app = $5 AND version = 0 AND build_id = $6",
        )
        .bind(b.digest.to_string())
        .bind(b.size)
        .bind(b.target.to_string()),
        Err((status, error)) => sqlx::query(
            "UPDATE versions SET compile_status = $1, compile_error = $2 \
             WHERE org = $3 AND app = $4 AND version = 0 AND build_id = $5",
        )
        .bind(status.to_string())
        .bind(error.to_string()),
    };
    q.bind(org).bind(app).bind(build_id).execute(db).await?;
    Ok(())
}

/// Copies the compiled draft into version `max + 1` and makes it active. Returns the new number.
pub async fn publish(db: &Db, org: &str, app: &str, env: &[(String, String)]) -> sqlx::Result<i64> {
    let mut tx = begin_write(db).await?;
    let next: i64 = sqlx::query(
        "SELECT COALESCE(MAX(version), 0) + 1 AS n FROM versions WHERE org = $1 AND app = $2",
    )
    .bind(org)
    .bind(app)
    .fetch_one(&mut *tx)
    .await?
    .get("n");
    let env = serde_json::to_string(env).unwrap_or_else(|_| "[]".into());
    sqlx::query(
        "INSERT INTO versions (org, app, version, runtime, rust_target, toolchain, source_digest, \
         source_kind, compile_status, compile_error, build_id, artifact_digest, artifact_size, \
         artifact_target, env, created_at) \
         SELECT org, app, $1, runtime, rust_target, toolchain, source_digest, source_kind, \
         compile_status, compile_error, build_id, artifact_digest, artifact_size, artifact_target, $2, $3 \
         FROM versions WHERE org = $4 AND app = $5 AND version = 0",
    )
    .bind(next)
    .bind(&env)
    .bind(now_ms())
    .bind(org)
    .bind(app)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE apps SET active_version = $1 WHERE org = $2 AND name = $3")
        .bind(next)
        .bind(org)
        .bind(app)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(next)
}

pub async fn set_active(db: &Db, org: &str, app: &str, version: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE apps SET active_version = $1 WHERE org = $2 AND name = $3")
        .bind(version)
        .bind(org)
        .bind(app)
        .execute(db)
        .await?;
    Ok(())
}

// ---- builds ----

pub async fn insert_build(db: &Db, id: &str, org: &str, app: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO builds (id, org, app, status, log, started_at) VALUES ($1, $2, $3, 'running', '', $4)",
    )
    .bind(id)
    .bind(org)
    .bind(app)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(())
}

pub async fn finish_build(
    db: &Db,
    id: &str,
    status: &str,
    error: Option<&str>,
    log: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE builds SET status = $1, error = $2, log = $3, finished_at = $4 WHERE id = $5",
    )
    .bind(status)
    .bind(error)
    .bind(log)
    .bind(now_ms())
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// `(status, error, log)` of a build.
pub async fn get_build(
    db: &Db,
    id: &str,
) -> sqlx::Result<Option<(String, Option<String>, String)>> {
    let row = sqlx::query("SELECT status, error, log FROM builds WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(|r| (r.get("status"), r.get("error"), r.get("log"))))
}

/// Builds that were running when the server stopped did not finish.
pub async fn fail_interrupted_builds(db: &Db) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE builds SET status = 'failed', error = 'the server stopped during the compile; run draft compile again', \
         finished_at = $1 WHERE status = 'running'",
    )
    .bind(now_ms())
    .execute(db)
    .await?;
    sqlx::query(
        "UPDATE versions SET compile_status = 'failed', \
         compile_error = 'the server stopped during the compile; run draft compile again' \
         WHERE compile_status = 'compiling'",
    )
    .execute(db)
    .await?;
    Ok(())
}

// ---- executions ----

/// Writes executions (new or updated): one multi-row statement per chunk, in one transaction.
pub async fn upsert_executions(db: &Db, batch: &[Execution]) -> sqlx::Result<()> {
    // 18 bound values a row; SQLite allows 32 766 in one statement.
    const ROWS: usize = 500;
    let mut tx = begin_write(db).await?;
    for chunk in batch.chunks(ROWS) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO executions (id, org, app, version, status, trigger, started_at, \
             finished_at, cold_start_ms, init_ms, duration_ms, billed_duration_ms, \
             response_status, error, logs, queue_ms, fetch_ms, spawn_ms) ",
        );
        q.push_values(chunk, |mut row, e| {
            row.push_bind(&e.id)
                .push_bind(&e.org)
                .push_bind(&e.app)
                .push_bind(e.version)
                .push_bind(&e.status)
                .push_bind(&e.trigger)
                .push_bind(e.started_at)
                .push_bind(e.finished_at)
                .push_bind(e.cold_start_ms)
                .push_bind(e.init_ms)
                .push_bind(e.duration_ms)
                .push_bind(e.billed_duration_ms)
                .push_bind(e.response_status)
                .push_bind(&e.error)
                .push_bind(serde_json::to_string(&e.logs).unwrap_or_else(|_| "[]".into()))
                .push_bind(e.queue_ms)
                .push_bind(e.fetch_ms)
                .push_bind(e.spawn_ms);
        });
        q.push(
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
             finished_at = excluded.finished_at, cold_start_ms = excluded.cold_start_ms, \
             init_ms = excluded.init_ms, duration_ms = excluded.duration_ms, \
             billed_duration_ms = excluded.billed_duration_ms, \
             response_status = excluded.response_status, error = excluded.error, \
             logs = excluded.logs, queue_ms = excluded.queue_ms, fetch_ms = excluded.fetch_ms, \
             spawn_ms = excluded.spawn_ms",
        );
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Executions left `running` by a server that stopped are marked as such.
pub async fn fail_interrupted_executions(db: &Db) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE executions SET status = 'failed', error = 'the server stopped during the execution', \
         finished_at = $1 WHERE status = 'running'",
    )
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(())
}

pub async fn get_execution(db: &Db, org: &str, id: &str) -> sqlx::Result<Option<Execution>> {
    let row = sqlx::query("SELECT * FROM executions WHERE org = $1 AND id = $2")
        .bind(org)
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.as_ref().map(execution_of))
}

/// Which executions `list_executions` returns.
pub struct ExecutionFilter<'a> {
    pub app: Option<&'a str>,
    pub status: Option<&'a str>,
    /// Started at or after (ms since the epoch).
    pub since: Option<i64>,
    pub limit: i64,
}

pub async fn list_executions(
    db: &Db,
    org: &str,
    filter: ExecutionFilter<'_>,
) -> sqlx::Result<Vec<Execution>> {
    let rows = sqlx::query(
        "SELECT * FROM executions WHERE org = $1 AND (CAST($2 AS TEXT) IS NULL OR app = $3) \
         AND (CAST($4 AS TEXT) IS NULL OR status = $5) AND (CAST($6 AS BIGINT) IS NULL OR started_at >= $7) \
         ORDER BY started_at DESC, id DESC LIMIT $8",
    )
    .bind(org)
    .bind(filter.app)
    .bind(filter.app)
    .bind(filter.status)
    .bind(filter.status)
    .bind(filter.since)
    .bind(filter.since)
    .bind(filter.limit)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(execution_of).collect())
}

// ---- build cache ----

pub async fn cached_build(db: &Db, key: &str) -> sqlx::Result<Option<(String, i64, String)>> {
    let row = sqlx::query(
        "SELECT artifact_digest, artifact_size, artifact_target FROM build_cache WHERE key = $1",
    )
    .bind(key)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| {
        (
            r.get("artifact_digest"),
            r.get("artifact_size"),
            r.get("artifact_target"),
        )
    }))
}

pub async fn cache_build(db: &Db, key: &str, built: &Built<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO build_cache (key, artifact_digest, artifact_size, artifact_target, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(built.digest)
    .bind(built.size)
    .bind(built.target)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(())
}
