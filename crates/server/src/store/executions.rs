//! Execution records.

use super::{Backend, Db, Execution, backend, begin_write, execution_of, now_ms};

/// Writes executions (new or updated), begun by `replica`: one multi-row statement per chunk,
/// in one transaction.
pub async fn upsert_executions(db: &Db, replica: &str, batch: &[Execution]) -> sqlx::Result<()> {
    // 22 bound values a row; SQLite allows 32 766 in one statement, PostgreSQL 65 535.
    const ROWS: usize = 256;
    const COLUMNS: usize = 22;
    // SQLite gets anonymous `?` placeholders: for every numbered one (`$n`) sqlx asks SQLite
    // its name, which SQLite finds by walking the statement's list of names — binding a batch
    // was quadratic in its size. Under load the writer spent seconds on one batch, holding
    // SQLite's write lock from every other writer (`app scale` failed with "database is
    // locked"). PostgreSQL reads only `$n`.
    let numbered = backend(db) == Backend::Postgres;
    let mut tx = begin_write(db).await?;
    // Chunks of a power of two rows: a batch of any size is a few statements of at most nine
    // shapes, each prepared once and then taken from the connection's statement cache.
    let mut rest = batch;
    while !rest.is_empty() {
        let rows = ROWS.min(1 << rest.len().ilog2());
        let (chunk, after) = rest.split_at(rows);
        rest = after;
        let mut sql = String::with_capacity(1024 + rows * COLUMNS * 6);
        sql.push_str(
            "INSERT INTO executions (id, org, app, version, status, trigger, started_at, \
             finished_at, cold_start_ms, init_ms, duration_ms, billed_duration_ms, \
             response_status, error, logs, queue_ms, fetch_ms, spawn_ms, template_ms, \
             start_kind, unpack_ms, replica) VALUES ",
        );
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for column in 0..COLUMNS {
                if column > 0 {
                    sql.push_str(", ");
                }
                if numbered {
                    use std::fmt::Write;
                    let _ = write!(sql, "${}", row * COLUMNS + column + 1);
                } else {
                    sql.push('?');
                }
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
        // On PostgreSQL each chunk is prepared afresh, not taken from the connection's cache:
        // sqlx 0.9's `Any` driver sends a NULL `f64` typed as `real` (float4), and PostgreSQL
        // keeps the types a statement was first prepared with, so a cached shape first written
        // with a measurement missing (a record just begun) refused the next record that had it
        // ("incorrect binary data format in bind parameter 10"). The statement is one of a
        // batch of up to 256 rows; preparing it is a small part of writing it.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(!numbered);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches of every size in the chunking's range, written twice (the second time as
    /// updates): each record is there once, with its latest status.
    #[tokio::test]
    async fn batches_of_any_size_are_written_whole_and_updated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path(), None).await.unwrap();
        crate::store::create_org(&db, "acme-corp").await.unwrap();
        let mut written = 0;
        for size in [1usize, 2, 3, 7, 100, 513, 1100] {
            let mut batch: Vec<Execution> = (0..size)
                .map(|i| Execution::begun(format!("{size}-{i}"), "acme-corp", "tiny", 1, "http"))
                .collect();
            upsert_executions(&db, "r1", &batch).await.unwrap();
            for e in &mut batch {
                e.status = "succeeded".into();
            }
            upsert_executions(&db, "r1", &batch).await.unwrap();
            written += size;
            let (all, succeeded): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*), SUM(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END) FROM executions",
            )
            .fetch_one(&db)
            .await
            .unwrap();
            assert_eq!(
                (all, succeeded),
                (written as i64, written as i64),
                "size {size}"
            );
        }
    }
}
