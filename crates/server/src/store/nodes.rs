//! The fleet's node registrations (`nodes`), written by heartbeats, read by every control
//! replica's view of the fleet.

use sqlx::Row;

use super::Db;

/// A node as its last heartbeat registered it.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub id: String,
    pub address: String,
    pub incarnation: String,
    pub capacity: i64,
    pub running: i64,
    /// Its pools, as JSON (`fleet::wire::PoolReport`s).
    pub pools: String,
    pub last_seen: i64,
}

/// Registers or renews a node.
pub async fn upsert_node(db: &Db, node: &NodeRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO nodes (id, address, incarnation, capacity, running, pools, first_seen, \
         last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
         ON CONFLICT (id) DO UPDATE SET address = excluded.address, \
         incarnation = excluded.incarnation, capacity = excluded.capacity, \
         running = excluded.running, pools = excluded.pools, last_seen = excluded.last_seen",
    )
    .bind(&node.id)
    .bind(&node.address)
    .bind(&node.incarnation)
    .bind(node.capacity)
    .bind(node.running)
    .bind(&node.pools)
    .bind(node.last_seen)
    .execute(db)
    .await?;
    Ok(())
}

/// Every registered node, live or not.
pub async fn nodes(db: &Db) -> sqlx::Result<Vec<NodeRow>> {
    let rows = sqlx::query(
        "SELECT id, address, incarnation, capacity, running, pools, last_seen FROM nodes \
         ORDER BY id",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| NodeRow {
            id: r.get("id"),
            address: r.get("address"),
            incarnation: r.get("incarnation"),
            capacity: r.get("capacity"),
            running: r.get("running"),
            pools: r.get("pools"),
            last_seen: r.get("last_seen"),
        })
        .collect())
}

/// The apps with a published version that keep instances warm (`reserved_capacity` > 0).
pub async fn reserved_apps(db: &Db) -> sqlx::Result<Vec<(String, String)>> {
    let rows = sqlx::query("SELECT org, name, scaling FROM apps WHERE active_version IS NOT NULL")
        .fetch_all(db)
        .await?;
    Ok(rows
        .iter()
        .filter(|r| {
            serde_json::from_str::<ignite_api::ScalingConfig>(r.get::<&str, _>("scaling"))
                .is_ok_and(|s| s.reserved_capacity > 0)
        })
        .map(|r| (r.get("org"), r.get("name")))
        .collect())
}
