//! Pending sign-ins: the state, nonce and PKCE verifier of each authorization request, kept
//! in the redb store until the callback takes them once or they expire.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::IdpError;

/// Table of pending sign-ins, keyed by the `state` parameter; values are JSON.
const PENDING_LOGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("pending_logins");

/// A started authorization code sign-in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    /// Device whose request started the sign-in; only it may complete it.
    pub device_id: u32,
    pub nonce: String,
    pub pkce_verifier: String,
    /// When the authorization request was made; the ID token's `auth_time` must not be older.
    pub requested_at_unix_s: u64,
    pub expires_at_unix_s: u64,
    /// The sign-in is a step-up and must show multi-factor authentication.
    pub mfa: bool,
}

/// Single-use store of pending sign-ins.
#[derive(Clone)]
pub struct PendingLogins {
    db: Arc<Database>,
}

impl PendingLogins {
    /// Opens the table in `db`, creating it when missing.
    pub fn new(db: Arc<Database>) -> Result<Self, IdpError> {
        let txn = db.begin_write().map_err(IdpError::store)?;
        txn.open_table(PENDING_LOGINS).map_err(IdpError::store)?;
        txn.commit().map_err(IdpError::store)?;
        Ok(Self { db })
    }

    /// Stores a pending sign-in under `state`; an existing entry with that state is an error,
    /// because states are random and a collision means a broken random source.
    pub fn create(&self, state: &str, login: &PendingLogin) -> Result<(), IdpError> {
        let value = serde_json::to_vec(login).map_err(IdpError::store)?;
        let txn = self.db.begin_write().map_err(IdpError::store)?;
        {
            let mut table = txn.open_table(PENDING_LOGINS).map_err(IdpError::store)?;
            if table.get(state).map_err(IdpError::store)?.is_some() {
                return Err(IdpError::Store("duplicate sign-in state".into()));
            }
            table
                .insert(state, value.as_slice())
                .map_err(IdpError::store)?;
        }
        txn.commit().map_err(IdpError::store)
    }

    /// Removes and returns the pending sign-in for `state`. A second call with the same state
    /// fails with `UnknownState`, and an expired one with `ExpiredState`.
    pub fn take(&self, state: &str, now: SystemTime) -> Result<PendingLogin, IdpError> {
        let txn = self.db.begin_write().map_err(IdpError::store)?;
        let value = {
            let mut table = txn.open_table(PENDING_LOGINS).map_err(IdpError::store)?;
            let removed = table.remove(state).map_err(IdpError::store)?;
            removed.map(|guard| guard.value().to_vec())
        };
        txn.commit().map_err(IdpError::store)?;

        let value = value.ok_or(IdpError::UnknownState)?;
        let login: PendingLogin = serde_json::from_slice(&value).map_err(IdpError::store)?;
        let now_s = unix_seconds(now);
        if now_s >= login.expires_at_unix_s {
            return Err(IdpError::ExpiredState {
                expired_for: Duration::from_secs(now_s - login.expires_at_unix_s),
            });
        }
        Ok(login)
    }

    /// Deletes every pending sign-in that expired before `now` and returns how many.
    pub fn expire(&self, now: SystemTime) -> Result<usize, IdpError> {
        let now_s = unix_seconds(now);
        let txn = self.db.begin_write().map_err(IdpError::store)?;
        let removed = {
            let mut table = txn.open_table(PENDING_LOGINS).map_err(IdpError::store)?;
            let before = table.len().map_err(IdpError::store)?;
            table
                .retain(|_, value| {
                    serde_json::from_slice::<PendingLogin>(value)
                        .map(|login| login.expires_at_unix_s > now_s)
                        .unwrap_or(false)
                })
                .map_err(IdpError::store)?;
            before - table.len().map_err(IdpError::store)?
        };
        txn.commit().map_err(IdpError::store)?;
        Ok(removed as usize)
    }

    /// Number of stored sign-ins, expired or not.
    pub fn len(&self) -> Result<u64, IdpError> {
        let txn = self.db.begin_read().map_err(IdpError::store)?;
        let table = txn.open_table(PENDING_LOGINS).map_err(IdpError::store)?;
        table.len().map_err(IdpError::store)
    }

    pub fn is_empty(&self) -> Result<bool, IdpError> {
        Ok(self.len()? == 0)
    }
}

/// Seconds since the Unix epoch, or 0 for a clock set before it.
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (PendingLogins, std::path::PathBuf) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "enforcer-pending-{}-{}.redb",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let db = Database::create(&path).expect("create the redb file");
        (PendingLogins::new(Arc::new(db)).expect("open the table"), path)
    }

    fn login(expires_at_unix_s: u64) -> PendingLogin {
        PendingLogin {
            device_id: 7,
            nonce: "n".into(),
            pkce_verifier: "v".into(),
            requested_at_unix_s: 100,
            expires_at_unix_s,
            mfa: false,
        }
    }

    #[test]
    fn take_returns_once() {
        let (store, path) = store();
        let now = UNIX_EPOCH + Duration::from_secs(150);
        store.create("s1", &login(200)).expect("create");
        let first = store.take("s1", now);
        let second = store.take("s1", now);
        let _ = std::fs::remove_file(path);
        assert_eq!(first.ok(), Some(login(200)));
        assert!(matches!(second, Err(IdpError::UnknownState)));
    }

    #[test]
    fn take_rejects_expired() {
        let (store, path) = store();
        store.create("s1", &login(200)).expect("create");
        let result = store.take("s1", UNIX_EPOCH + Duration::from_secs(230));
        let _ = std::fs::remove_file(path);
        assert!(matches!(
            result,
            Err(IdpError::ExpiredState { expired_for }) if expired_for == Duration::from_secs(30)
        ));
    }

    #[test]
    fn expire_removes_only_expired() {
        let (store, path) = store();
        store.create("old", &login(200)).expect("create");
        store.create("new", &login(400)).expect("create");
        let removed = store.expire(UNIX_EPOCH + Duration::from_secs(300));
        let remaining = store.len();
        let _ = std::fs::remove_file(path);
        assert_eq!(removed.ok(), Some(1));
        assert_eq!(remaining.ok(), Some(1));
    }

    #[test]
    fn create_rejects_duplicate_state() {
        let (store, path) = store();
        store.create("s1", &login(200)).expect("create");
        let duplicate = store.create("s1", &login(300));
        let _ = std::fs::remove_file(path);
        assert!(matches!(duplicate, Err(IdpError::Store(_))));
    }
}
