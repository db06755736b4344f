//! Persistence in `[storage].state_dir` (SQLite, bundled): the evaluation state — alert states
//! with their active-since times, scaling cooldowns and stabilization history, replacement state,
//! simulated capacities — saved after every evaluation, and the decision history appended as it
//! is made. After `kill -9` and a restart, a firing alert is still firing with its original start
//! time and no cooldown is forgotten.
//!
//! The snapshot is one JSON document in one row, replaced in a transaction: the state is small
//! (one entry per active alert and policy), and a single atomic write keeps it consistent.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection};
use serde_json::{json, Value as Json};
use vigil_rules::evaluator::State;
use vigil_wire::Labels;

/// The version of the snapshot document written now. 1: the state mirrored field by field,
/// alert rules keyed by their labels' `Debug` output (no `schema` key); 2: the state types'
/// own serde form (the same JSON shape), alert rules keyed by their labels as written.
pub const SCHEMA: u64 = 2;

/// The saved evaluation state, the simulated capacity of each group, and the schema it was
/// written with: a schema-1 state's alert keys still need [`vigil_rules::evaluator::migrate_v1_keys`]
/// with the rules loaded now.
#[derive(Debug)]
pub struct Snapshot {
    pub state: State,
    pub capacity: BTreeMap<String, u32>,
    pub schema: u64,
}

pub struct Db {
    conn: Connection,
}

/// The database as the components share it: one connection behind a mutex (SQLite writes one
/// at a time anyway), used synchronously by the engine's commit and from async tasks through
/// [`Shared::run`], which takes the work off the async workers.
#[derive(Clone)]
pub struct Shared(std::sync::Arc<std::sync::Mutex<Db>>);

impl Shared {
    pub fn new(db: Db) -> Shared {
        Shared(std::sync::Arc::new(std::sync::Mutex::new(db)))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Db> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs database work on the blocking pool.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me.lock()))
            .await
            .map_err(|e| StateError::Json(format!("database task: {e}")))?
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state snapshot: {0}")]
    Json(String),
}

impl Db {
    pub fn open(dir: &Path) -> Result<Db, StateError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StateError::Json(format!("{}: {e}", dir.display())))?;
        let conn = Connection::open(dir.join("vigil.db"))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS snapshot (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL, state TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS decisions (at INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS decisions_at ON decisions (at);
             CREATE TABLE IF NOT EXISTS notifier (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, created INTEGER NOT NULL,
                 target TEXT NOT NULL, delivery TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                 next_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, last_error TEXT);
             CREATE INDEX IF NOT EXISTS outbox_target ON outbox (target, id);
             CREATE INDEX IF NOT EXISTS outbox_next ON outbox (next_at);",
        )?;
        Ok(Db { conn })
    }

    pub fn load(&self) -> Result<Option<Snapshot>, StateError> {
        let Some(doc) = self.json_row("SELECT state FROM snapshot WHERE id = 1")? else {
            return Ok(None);
        };
        let schema = doc.get("schema").map_or(Some(1), Json::as_u64);
        let schema = match schema {
            Some(n @ 1..=SCHEMA) => n,
            _ => {
                return Err(StateError::Json(format!(
                "snapshot schema {} is newer than this release reads ({SCHEMA}): downgrade refused",
                doc["schema"]
            )))
            }
        };
        let state: State = serde_json::from_value(doc["state"].clone())
            .map_err(|e| StateError::Json(format!("unreadable state (schema {schema}): {e}")))?;
        let capacity = doc["capacity"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_u64().map(|n| (k.clone(), n as u32)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(Snapshot {
            state,
            capacity,
            schema,
        }))
    }

    /// Appends decisions and trims the history to `keep_ms` back from `now`.
    pub fn record(
        &self,
        now: i64,
        items: &[(i64, &str, Json)],
        keep_ms: i64,
    ) -> Result<(), StateError> {
        for (at, kind, body) in items {
            self.conn.execute(
                "INSERT INTO decisions (at, kind, body) VALUES (?1, ?2, ?3)",
                params![at, kind, body.to_string()],
            )?;
        }
        self.conn.execute(
            "DELETE FROM decisions WHERE at < ?1",
            params![now - keep_ms],
        )?;
        Ok(())
    }

    /// The most recent decisions, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<(i64, String, Json)>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT at, kind, body FROM decisions ORDER BY at DESC, rowid DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (at, kind, body) = r?;
            out.push((at, kind, serde_json::from_str(&body).unwrap_or(Json::Null)));
        }
        Ok(out)
    }
}

/// Everything one evaluation leaves to remember, committed together.
pub struct Evaluated<'a> {
    pub at: i64,
    pub state: &'a State,
    pub capacity: &'a BTreeMap<String, u32>,
    /// Actions decided and not carried out yet (the action layer's pending work).
    pub actions: &'a Json,
    pub history: &'a [(i64, &'a str, Json)],
    /// The notifier's memory, when it changed.
    pub notifier: Option<&'a Json>,
    /// New notifications: (target, delivery).
    pub deliveries: &'a [(String, Json)],
    pub ttl_ms: i64,
}

/// A notification waiting in the outbox.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    /// The evaluation that decided it.
    pub created: i64,
    pub target: String,
    pub attempts: u32,
    pub expires_at: i64,
    pub delivery: Json,
}

/// What [`Db::export`] reads: the snapshot document and the evaluation it is of, the
/// notifier's memory and the outbox.
pub struct Export {
    pub at: i64,
    pub snapshot: Option<Json>,
    pub notifier: Option<Json>,
    pub outbox: Vec<Queued>,
}

/// A notification in the outbox, whole (for the shared state of an HA cluster).
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub created: i64,
    pub attempts: u32,
    pub next_at: i64,
    pub expires_at: i64,
    pub delivery: Json,
}

impl Db {
    /// An evaluation's outcome in one transaction: state, pending actions, decision history,
    /// the notifier's memory and the notifications it decided — all of it or none.
    pub fn commit_evaluation(&self, e: &Evaluated<'_>) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction()?;
        let doc = json!({"schema": SCHEMA, "state": e.state, "capacity": e.capacity, "actions": e.actions});
        tx.execute(
            "INSERT INTO snapshot (id, at, state) VALUES (1, ?1, ?2) ON CONFLICT(id) DO UPDATE SET at = excluded.at, state = excluded.state",
            params![e.at, doc.to_string()],
        )?;
        self.record(e.at, e.history, 7 * 86_400_000)?;
        if let Some(n) = e.notifier {
            tx.execute(
                "INSERT INTO notifier (id, state) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET state = excluded.state",
                params![n.to_string()],
            )?;
        }
        for (target, d) in e.deliveries {
            tx.execute(
                "INSERT INTO outbox (created, target, delivery, next_at, expires_at) VALUES (?1, ?2, ?3, ?1, ?4)",
                params![e.at, target, d.to_string(), e.at + e.ttl_ms],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The actions a previous run left pending.
    pub fn load_actions(&self) -> Result<Option<Json>, StateError> {
        Ok(self
            .json_row("SELECT state FROM snapshot WHERE id = 1")?
            .map(|d| d["actions"].clone())
            .filter(|a| !a.is_null()))
    }

    /// Saves the rules' evaluation state outside an evaluation (a pause set or lifted). Before
    /// the first evaluation there is no snapshot to put it in: refused (the caller retries).
    pub fn save_rule_state(&self, state: &Json) -> Result<(), StateError> {
        let Some(mut doc) = self.json_row("SELECT state FROM snapshot WHERE id = 1")? else {
            return Err(StateError::Json(
                "nothing evaluated yet; retry after the first evaluation".into(),
            ));
        };
        doc["state"] = state.clone();
        self.conn.execute(
            "UPDATE snapshot SET state = ?1 WHERE id = 1",
            params![doc.to_string()],
        )?;
        Ok(())
    }

    /// Saves the notifier's memory outside an evaluation (a silence changed).
    pub fn save_notifier(&self, n: &Json) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO notifier (id, state) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET state = excluded.state",
            params![n.to_string()],
        )?;
        Ok(())
    }

    pub fn load_notifier(&self) -> Result<Option<Json>, StateError> {
        self.json_row("SELECT state FROM notifier WHERE id = 1")
    }

    /// The JSON document a single-row query returns, if there is a row.
    fn json_row(&self, sql: &str) -> Result<Option<Json>, StateError> {
        let row: Option<String> = self
            .conn
            .query_row(sql, [], |r| r.get(0))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        row.map(|t| serde_json::from_str(&t).map_err(|e| StateError::Json(e.to_string())))
            .transpose()
    }

    /// Notifications whose next attempt is due, oldest first.
    pub fn due(&self, now: i64, limit: usize) -> Result<Vec<Pending>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, target, attempts, expires_at, delivery, created FROM outbox WHERE next_at <= ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now, limit as i64], |r| {
            Ok((
                (r.get::<_, i64>(0)?, r.get::<_, i64>(5)?),
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let ((id, created), target, attempts, expires_at, text) = row?;
            let delivery =
                serde_json::from_str(&text).map_err(|e| StateError::Json(e.to_string()))?;
            out.push(Pending {
                id,
                created,
                target,
                attempts: attempts as u32,
                expires_at,
                delivery,
            });
        }
        Ok(out)
    }

    /// Whether an older notification to `target` is still waiting (later ones must not
    /// overtake it: a resolved notice never arrives before its firing one).
    pub fn waiting_before(&self, target: &str, id: i64) -> Result<bool, StateError> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE target = ?1 AND id < ?2)",
            params![target, id],
            |r| r.get::<_, bool>(0),
        )?)
    }

    /// Removes a delivered (or expired) notification.
    pub fn remove(&self, id: i64) -> Result<(), StateError> {
        self.conn
            .execute("DELETE FROM outbox WHERE id = ?1", params![id])?;
        Ok(())
    }

    pub fn retry_at(&self, id: i64, next_at: i64, error: &str) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_at = ?2, last_error = ?3 WHERE id = ?1",
            params![id, next_at, error],
        )?;
        Ok(())
    }

    /// What a successor in an HA cluster needs, read in one transaction: the snapshot document
    /// (state, capacities, pending actions), the notifier's memory, and the outbox, oldest first.
    pub fn export(&self) -> Result<Export, StateError> {
        let tx = self.conn.unchecked_transaction()?;
        let snapshot = self.json_row("SELECT state FROM snapshot WHERE id = 1")?;
        let at: i64 = self
            .conn
            .query_row("SELECT at FROM snapshot WHERE id = 1", [], |r| r.get(0))
            .unwrap_or(0);
        let notifier = self.load_notifier()?;
        let mut stmt = self.conn.prepare(
            "SELECT created, attempts, next_at, expires_at, delivery FROM outbox ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut outbox = Vec::new();
        for row in rows {
            let (created, attempts, next_at, expires_at, text) = row?;
            outbox.push(Queued {
                created,
                attempts: attempts as u32,
                next_at,
                expires_at,
                delivery: serde_json::from_str(&text)
                    .map_err(|e| StateError::Json(e.to_string()))?,
            });
        }
        drop(stmt);
        tx.commit()?;
        Ok(Export {
            at,
            snapshot,
            notifier,
            outbox,
        })
    }

    /// Takes over a holder's state (HA): the snapshot document, the notifier's memory and the
    /// outbox replace this node's, in one transaction.
    pub fn import(
        &self,
        at: i64,
        snapshot: Option<&Json>,
        notifier: Option<&Json>,
        outbox: &[(String, Queued)],
    ) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction()?;
        if let Some(snapshot) = snapshot {
            tx.execute(
                "INSERT INTO snapshot (id, at, state) VALUES (1, ?1, ?2) ON CONFLICT(id) DO UPDATE SET at = excluded.at, state = excluded.state",
                params![at, snapshot.to_string()],
            )?;
        }
        match notifier {
            Some(n) => tx.execute(
                "INSERT INTO notifier (id, state) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET state = excluded.state",
                params![n.to_string()],
            )?,
            None => tx.execute("DELETE FROM notifier", [])?,
        };
        tx.execute("DELETE FROM outbox", [])?;
        for (target, q) in outbox {
            tx.execute(
                "INSERT INTO outbox (created, target, delivery, attempts, next_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![q.created, target, q.delivery.to_string(), q.attempts, q.next_at, q.expires_at],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn outbox_len(&self) -> Result<usize, StateError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))?
            as usize)
    }
}

pub(crate) fn labels_json(l: &Labels) -> Json {
    Json::Object(
        l.iter()
            .map(|x| (x.name.to_string(), json!(x.value)))
            .collect(),
    )
}

#[cfg(test)]
mod tests;
