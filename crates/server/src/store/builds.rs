//! Builds as jobs (`builds`): claimed by one replica at a time under a lease it renews; a
//! lease that runs out (its replica stopped) lets another replica claim the build again; the
//! claim's `attempt` fences every later write, so a build is finished once, by its last claim.

use sqlx::Row;

use super::{Backend, Built, Db, Version, backend, begin_write, now_ms, storable};

/// How long a claim holds without a renewal. The runner renews it every
/// [`LEASE_RENEW_MS`]; a replica that stops (even `kill -9`) leaves it to run out.
pub const LEASE_MS: i64 = 5_000;
pub const LEASE_RENEW_MS: u64 = 500;
/// A build whose replica stopped under it this many times is failed instead of claimed again:
/// a build that takes its server down with it must not take every replica down in turn.
pub const MAX_ATTEMPTS: i64 = 3;

/// A build this replica holds: what to build and the claim that fences its writes.
#[derive(Debug, Clone)]
pub struct BuildClaim {
    pub id: String,
    pub org: String,
    pub app: String,
    pub draft: Version,
    pub attempt: i64,
}

/// A new build of `draft`, claimed at once by `replica` (the one that accepted the compile
/// starts it without waiting for a poll), and the draft marked as compiling under it; one
/// transaction, so that no replica sees one without the other.
pub async fn insert_build(
    db: &Db,
    id: &str,
    org: &str,
    app: &str,
    draft: &Version,
    replica: &str,
) -> sqlx::Result<BuildClaim> {
    let now = now_ms();
    let draft_json = serde_json::to_string(draft).unwrap_or_default();
    let mut tx = begin_write(db).await?;
    sqlx::query(
        "INSERT INTO builds (id, org, app, status, log, started_at, claimed_by, lease_until, \
         attempt, draft) VALUES ($1, $2, $3, 'running', '', $4, $5, $6, 1, $7)",
    )
    .bind(id)
    .bind(org)
    .bind(app)
    .bind(now)
    .bind(replica)
    .bind(now + LEASE_MS)
    .bind(&draft_json)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE versions SET compile_status = 'compiling', compile_error = NULL, build_id = $1 \
         WHERE org = $2 AND app = $3 AND version = 0",
    )
    .bind(id)
    .bind(org)
    .bind(app)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(BuildClaim {
        id: id.into(),
        org: org.into(),
        app: app.into(),
        draft: draft.clone(),
        attempt: 1,
    })
}

/// Claims one running build whose lease ran out, for `replica` (its log starts anew, as the
/// build does): on PostgreSQL the row is locked
/// with `FOR UPDATE SKIP LOCKED`, so two replicas polling together take different builds; on
/// SQLite the write transaction serializes them. A build already claimed [`MAX_ATTEMPTS`] times
/// is failed instead (and `None` is returned for it).
pub async fn claim_orphan_build(db: &Db, replica: &str) -> sqlx::Result<Option<BuildClaim>> {
    let now = now_ms();
    // Nearly always there is none: a read says so without taking SQLite's write lock every
    // second.
    let any = sqlx::query(
        "SELECT 1 AS n FROM builds WHERE status = 'running' AND lease_until < $1 LIMIT 1",
    )
    .bind(now)
    .fetch_optional(db)
    .await?;
    if any.is_none() {
        return Ok(None);
    }
    let mut tx = begin_write(db).await?;
    let select = match backend(db) {
        Backend::Postgres => {
            "SELECT id, org, app, draft, attempt FROM builds WHERE status = 'running' \
             AND draft IS NOT NULL AND lease_until < $1 ORDER BY started_at LIMIT 1 \
             FOR UPDATE SKIP LOCKED"
        }
        Backend::Sqlite => {
            "SELECT id, org, app, draft, attempt FROM builds WHERE status = 'running' \
             AND draft IS NOT NULL AND lease_until < $1 ORDER BY started_at LIMIT 1"
        }
    };
    let Some(row) = sqlx::query(select)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(None);
    };
    let id: String = row.get("id");
    let org: String = row.get("org");
    let app: String = row.get("app");
    let attempt: i64 = row.get("attempt");
    let draft = serde_json::from_str::<Version>(&row.get::<String, _>("draft"));
    let give_up = match (&draft, attempt >= MAX_ATTEMPTS) {
        (Err(_), _) => Some(
            "this build's record is unreadable (its draft could not be parsed); run draft \
             compile again"
                .to_string(),
        ),
        (Ok(_), true) => Some(format!(
            "the server running this build stopped during it {attempt} times, so it was not \
             tried again; look for what stops the server (its memory?), then run draft compile \
             again"
        )),
        (Ok(_), false) => None,
    };
    if let Some(error) = give_up {
        sqlx::query(
            "UPDATE builds SET status = 'failed', error = $1, finished_at = $2, \
             claimed_by = NULL, lease_until = NULL WHERE id = $3",
        )
        .bind(&error)
        .bind(now)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE versions SET compile_status = 'failed', compile_error = $1 \
             WHERE org = $2 AND app = $3 AND version = 0 AND build_id = $4",
        )
        .bind(&error)
        .bind(&org)
        .bind(&app)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(None);
    }
    let claimed = sqlx::query(
        "UPDATE builds SET claimed_by = $1, lease_until = $2, attempt = attempt + 1, \
         log = '' WHERE id = $3 AND attempt = $4 AND status = 'running'",
    )
    .bind(replica)
    .bind(now + LEASE_MS)
    .bind(&id)
    .bind(attempt)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    match (claimed.rows_affected(), draft) {
        (1, Ok(draft)) => Ok(Some(BuildClaim {
            id,
            org,
            app,
            draft,
            attempt: attempt + 1,
        })),
        _ => Ok(None),
    }
}

/// Renews the claim's lease and stores the log so far (for `compile-logs` through another
/// replica). `false`: the claim is no longer this replica's (its lease ran out and another
/// replica claimed the build), so the build must stop without writing anything more.
pub async fn renew_build(
    db: &Db,
    claim: &BuildClaim,
    replica: &str,
    log: Option<&str>,
) -> sqlx::Result<bool> {
    let now = now_ms();
    let done =
        match log {
            Some(log) => sqlx::query(
                "UPDATE builds SET lease_until = $1, log = $2 WHERE id = $3 AND claimed_by = $4 \
                 AND attempt = $5 AND status = 'running'",
            )
            .bind(now + LEASE_MS)
            .bind(storable(log).as_ref())
            .bind(&claim.id)
            .bind(replica)
            .bind(claim.attempt)
            .execute(db)
            .await?,
            None => {
                sqlx::query(
                    "UPDATE builds SET lease_until = $1 WHERE id = $2 AND claimed_by = $3 \
                 AND attempt = $4 AND status = 'running'",
                )
                .bind(now + LEASE_MS)
                .bind(&claim.id)
                .bind(replica)
                .bind(claim.attempt)
                .execute(db)
                .await?
            }
        };
    Ok(done.rows_affected() == 1)
}

/// Finishes the claimed build and records its result on the draft (unless the draft was saved
/// again meanwhile), in one transaction, fenced by the claim: `false` when the claim was lost,
/// and then nothing is written.
pub async fn finish_build(
    db: &Db,
    claim: &BuildClaim,
    replica: &str,
    status: &str,
    error: Option<&str>,
    log: &str,
    built: Option<Built<'_>>,
) -> sqlx::Result<bool> {
    let mut tx = begin_write(db).await?;
    let done = sqlx::query(
        "UPDATE builds SET status = $1, error = $2, log = $3, finished_at = $4, \
         lease_until = NULL WHERE id = $5 AND claimed_by = $6 AND attempt = $7 \
         AND status = 'running'",
    )
    .bind(status)
    .bind(error.map(|e| storable(e).into_owned()))
    .bind(storable(log).as_ref())
    .bind(now_ms())
    .bind(&claim.id)
    .bind(replica)
    .bind(claim.attempt)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    let q = match built {
        Some(b) => sqlx::query(
            "UPDATE versions SET compile_status = 'compiled', artifact_digest = $1, \
             artifact_size = $2, artifact_target = $3 \
             WHERE org = $4 AND app = $5 AND version = 0 AND build_id = $6",
        )
        .bind(b.digest.to_string())
        .bind(b.size)
        .bind(b.target.to_string()),
        None => sqlx::query(
            "UPDATE versions SET compile_status = $1, compile_error = $2 \
             WHERE org = $3 AND app = $4 AND version = 0 AND build_id = $5",
        )
        .bind(status.to_string())
        .bind(error.map(|e| storable(e).into_owned()).unwrap_or_default()),
    };
    q.bind(&claim.org)
        .bind(&claim.app)
        .bind(&claim.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// A build as `compile-logs` and `publish` read it.
#[derive(Debug, Clone)]
pub struct BuildRecord {
    pub status: String,
    pub error: Option<String>,
    pub log: String,
    pub claimed_by: Option<String>,
    pub attempt: i64,
}

pub async fn get_build(db: &Db, id: &str) -> sqlx::Result<Option<BuildRecord>> {
    let row =
        sqlx::query("SELECT status, error, log, claimed_by, attempt FROM builds WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|r| BuildRecord {
        status: r.get("status"),
        error: r.get("error"),
        log: r.get("log"),
        claimed_by: r.get("claimed_by"),
        attempt: r.get("attempt"),
    }))
}

/// At start: the builds this replica held when it stopped are failed (as a single server
/// always failed an interrupted compile: a build that took its server down is not rerun behind
/// the user's back), and so are builds from before builds were jobs (no draft recorded). Only
/// this replica's: a build another replica holds is that one's, and a build whose replica
/// never comes back is claimed again by a live one when its lease runs out.
pub async fn fail_interrupted_builds(db: &Db, replica: &str) -> sqlx::Result<()> {
    let stopped = "the server stopped during the compile; run draft compile again";
    let mut tx = begin_write(db).await?;
    let failed = sqlx::query(
        "UPDATE builds SET status = 'failed', error = $1, finished_at = $2, lease_until = NULL \
         WHERE status = 'running' AND (claimed_by = $3 OR draft IS NULL) RETURNING id",
    )
    .bind(stopped)
    .bind(now_ms())
    .bind(replica)
    .fetch_all(&mut *tx)
    .await?;
    for row in failed {
        sqlx::query(
            "UPDATE versions SET compile_status = 'failed', compile_error = $1 \
             WHERE compile_status = 'compiling' AND build_id = $2",
        )
        .bind(stopped)
        .bind(row.get::<String, _>("id"))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}
