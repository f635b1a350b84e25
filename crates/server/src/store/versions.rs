//! The draft, published versions, builds and the build cache.

use sqlx::Row;

use super::{Db, Version, begin_write, now_ms, version_of};

pub struct DraftSource<'a> {
    pub runtime: &'a str,
    pub rust_target: Option<&'a str>,
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

pub struct Built<'a> {
    pub digest: &'a str,
    pub size: i64,
    pub target: &'a str,
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

// ---- the build cache ----

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
