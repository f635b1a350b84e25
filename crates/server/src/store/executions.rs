//! Execution records.

use super::{Db, Execution, begin_write, execution_of, now_ms};

/// Writes executions (new or updated): one multi-row statement per chunk, in one transaction.
pub async fn upsert_executions(db: &Db, batch: &[Execution]) -> sqlx::Result<()> {
    // 20 bound values a row; SQLite allows 32 766 in one statement.
    const ROWS: usize = 500;
    let mut tx = begin_write(db).await?;
    for chunk in batch.chunks(ROWS) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO executions (id, org, app, version, status, trigger, started_at, \
             finished_at, cold_start_ms, init_ms, duration_ms, billed_duration_ms, \
             response_status, error, logs, queue_ms, fetch_ms, spawn_ms, template_ms, start_kind, unpack_ms) ",
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
                .push_bind(e.spawn_ms)
                .push_bind(e.template_ms)
                .push_bind(&e.start_kind)
                .push_bind(e.unpack_ms);
        });
        q.push(
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
             finished_at = excluded.finished_at, cold_start_ms = excluded.cold_start_ms, \
             init_ms = excluded.init_ms, duration_ms = excluded.duration_ms, \
             billed_duration_ms = excluded.billed_duration_ms, \
             response_status = excluded.response_status, error = excluded.error, \
             logs = excluded.logs, queue_ms = excluded.queue_ms, fetch_ms = excluded.fetch_ms, \
             spawn_ms = excluded.spawn_ms, template_ms = excluded.template_ms, \
             start_kind = excluded.start_kind, unpack_ms = excluded.unpack_ms",
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
