//! Apps and their settings.

use sqlx::Row;

use super::{App, Db, app_of, begin_write, now_ms};

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
    .bind(super::storable(description).as_ref())
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
        .filter(|r| !(r.get::<String, _>("org") == org && r.get::<String, _>("name") == name))
        .map(|r| {
            serde_json::from_str::<ignite_api::ScalingConfig>(&r.get::<String, _>("scaling"))
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
