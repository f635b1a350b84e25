//! Changes to an app, told to every replica: the node's caches (an app and its active version,
//! a hostname's app) must agree across the replicas sharing one store, so a change that
//! invalidates them here is also sent as a PostgreSQL `NOTIFY` on [`APP_CHANNEL`] (payload
//! `org/app`), and every replica listens. On SQLite there is one server and nothing to tell.

use std::time::Duration;

use sqlx::postgres::PgListener;

use super::{Backend, Db, backend};

pub const APP_CHANNEL: &str = "ignite_apps";

/// Tells the other replicas that `org/app` changed (after the change committed: a replica
/// that reads the store on hearing it must see the change).
pub async fn notify_app_changed(db: &Db, org: &str, app: &str) -> sqlx::Result<()> {
    if backend(db) != Backend::Postgres {
        return Ok(());
    }
    // `pg_notify` returns `void`, a type the `Any` driver cannot read back; the outer
    // select answers an integer instead.
    sqlx::query("SELECT 1 AS n FROM (SELECT pg_notify($1, $2)) AS sent")
        .bind(APP_CHANNEL)
        .bind(format!("{org}/{app}"))
        .execute(db)
        .await?;
    Ok(())
}

/// What a replica heard.
#[derive(Debug, PartialEq, Eq)]
pub enum AppChange {
    /// `org/app` changed.
    App(String, String),
    /// The listener lost its connection (and is connected again): notifications sent
    /// meanwhile are lost, so everything cached may be stale.
    Lost,
}

/// A replica's subscription to [`APP_CHANNEL`].
pub struct AppChanges {
    listener: PgListener,
}

impl AppChanges {
    /// Subscribes; `None` for a store that is not PostgreSQL.
    pub async fn listen(db: &Db) -> sqlx::Result<Option<AppChanges>> {
        if backend(db) != Backend::Postgres {
            return Ok(None);
        }
        let url = db.connect_options().database_url.to_string();
        let mut listener = PgListener::connect(&url).await?;
        listener.listen(APP_CHANNEL).await?;
        Ok(Some(AppChanges { listener }))
    }

    /// The next change; it waits as long as none comes, and through a lost connection
    /// (retrying every second until the database answers again).
    pub async fn next(&mut self) -> AppChange {
        match self.listener.try_recv().await {
            Ok(Some(n)) => match n.payload().split_once('/') {
                Some((org, app)) => AppChange::App(org.to_string(), app.to_string()),
                // Not ours (someone else's NOTIFY on the channel): forgetting everything is
                // always correct.
                None => AppChange::Lost,
            },
            Ok(None) => AppChange::Lost,
            Err(e) => {
                tracing::warn!("listening for app changes on PostgreSQL: {e}; retrying every 1 s");
                // `Lost` only once listening again: a change made before that would be missed
                // by a cache filled after the forgetting.
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    // Any statement through the listener connects it again, and `LISTEN`s.
                    match sqlx::query("SELECT 1").execute(&mut self.listener).await {
                        Ok(_) => return AppChange::Lost,
                        Err(e) => tracing::warn!("listening for app changes on PostgreSQL: {e}"),
                    }
                }
            }
        }
    }
}
