//! Execution records.

use super::{Db, Execution, begin_write, execution_of, now_ms};

/// Writes executions (new or updated), begun by `replica`: one multi-row statement per chunk,
/// in one transaction.
pub async fn upsert_executions(db: &Db, replica: &str, batch: &[Execution]) -> sqlx::Result<()> {
    // 22 bound values a row; SQLite allows 32 766 in one statement, PostgreSQL 65 535.
    const ROWS: usize = 500;
    const COLUMNS: usize = 22;
    let mut tx = begin_write(db).await?;
    for chunk in batch.chunks(ROWS) {
        // The placeholders are written here, `$n` (which both stores read), rather than by
        // sqlx's `QueryBuilder`, whose `Any` flavour writes `?`, which PostgreSQL refuses.
        let mut sql = String::from(
            "INSERT INTO executions (id, org, app, version, status, trigger, started_at, \
             finished_at, cold_start_ms, init_ms, duration_ms, billed_duration_ms, \
             response_status, error, logs, queue_ms, fetch_ms, spawn_ms, template_ms, \
             start_kind, unpack_ms, replica) VALUES ",
        );
        for row in 0..chunk.len() {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for column in 0..COLUMNS {
                if column > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", row * COLUMNS + column + 1));
            }
            sql.push(')');
        }
        sql.push_str(
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
             finished_at = excluded.finished_at, cold_start_ms = excluded.cold_start_ms, \
             init_ms = excluded.init_ms, duration_ms = excluded.duration_ms, \
             billed_duration_ms = excluded.billed_duration_ms, \
             response_status = excluded.response_status, error = excluded.error, \
             logs = excluded.logs, queue_ms = excluded.queue_ms, fetch_ms = excluded.fetch_ms, \
             spawn_ms = excluded.spawn_ms, template_ms = excluded.template_ms, \
             start_kind = excluded.start_kind, unpack_ms = excluded.unpack_ms",
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for e in chunk {
            q = q
                .bind(e.id.clone())
                .bind(e.org.clone())
                .bind(e.app.clone())
                .bind(e.version)
                .bind(e.status.clone())
                .bind(e.trigger.clone())
                .bind(e.started_at)
                .bind(e.finished_at)
                .bind(e.cold_start_ms)
                .bind(e.init_ms)
                .bind(e.duration_ms)
                .bind(e.billed_duration_ms)
                .bind(e.response_status)
                .bind(e.error.as_deref().map(|e| super::storable(e).into_owned()))
                .bind(serde_json::to_string(&e.logs).unwrap_or_else(|_| "[]".into()))
                .bind(e.queue_ms)
                .bind(e.fetch_ms)
                .bind(e.spawn_ms)
                .bind(e.template_ms)
                .bind(e.start_kind.clone())
                .bind(e.unpack_ms)
                .bind(replica.to_string());
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Executions this replica left `running` when it stopped are marked as such — only its own:
/// another replica on the same store may be running its own right now. (Records from before
/// executions carried their replica have none, and are this store's single server's.)
pub async fn fail_interrupted_executions(db: &Db, replica: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE executions SET status = 'failed', error = 'the server stopped during the execution', \
         finished_at = $1 WHERE status = 'running' AND (replica = $2 OR replica IS NULL)",
    )
    .bind(now_ms())
    .bind(replica)
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
