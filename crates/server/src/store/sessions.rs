//! The console's sign-in sessions (`console_sessions`): looked up by the hash of the cookie's
//! id, valid only while unexpired and while the token they were opened with is live.

use sqlx::Row;

use super::{Db, now_ms};

/// A live session: whose it is and the CSRF token its forms carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub org: String,
    pub csrf: String,
}

pub async fn insert_session(
    db: &Db,
    id_hash: &str,
    org: &str,
    token_id: &str,
    csrf: &str,
    expires_at: i64,
) -> sqlx::Result<()> {
    let now = now_ms();
    // Expired sessions go as new ones come.
    sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
        .bind(now)
        .execute(db)
        .await?;
    sqlx::query(
        "INSERT INTO console_sessions (id_hash, org, token_id, csrf, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id_hash)
    .bind(org)
    .bind(token_id)
    .bind(csrf)
    .bind(now)
    .bind(expires_at)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn session(db: &Db, id_hash: &str) -> sqlx::Result<Option<Session>> {
    let row = sqlx::query(
        "SELECT s.org, s.csrf FROM console_sessions s JOIN tokens t ON t.id = s.token_id \
         WHERE s.id_hash = $1 AND s.expires_at > $2 AND t.revoked_at IS NULL",
    )
    .bind(id_hash)
    .bind(now_ms())
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Session {
        org: r.get("org"),
        csrf: r.get("csrf"),
    }))
}

pub async fn delete_session(db: &Db, id_hash: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(db)
        .await?;
    Ok(())
}
