//! Pending sign-ins: the state, nonce and PKCE verifier of each authorization request, kept
//! in the store until the callback takes them once or they expire.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::IdpError;
use crate::store::{PendingLogin, Store};

/// Single-use pending sign-ins on top of the store's `pending_logins` table.
#[derive(Clone)]
pub struct PendingLogins {
    store: Arc<Store>,
}

impl PendingLogins {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// Stores a pending sign-in under its state.
    pub fn create(&self, login: &PendingLogin) -> Result<(), IdpError> {
        self.store.put_pending_login(login).map_err(IdpError::store)
    }

    /// Removes and returns the pending sign-in for `state`. A second call with the same state
    /// fails with `UnknownState`, and an expired one with `ExpiredState`.
    pub fn take(&self, state: &str, now: SystemTime) -> Result<PendingLogin, IdpError> {
        let mut txn = self.store.begin_write().map_err(IdpError::store)?;
        let login = txn.take_pending_login(state).map_err(IdpError::store)?;
        txn.commit().map_err(IdpError::store)?;

        let login = login.ok_or(IdpError::UnknownState)?;
        let now_ms = unix_ms(now);
        if now_ms >= login.expires_unix_ms {
            return Err(IdpError::ExpiredState {
                expired_for: Duration::from_millis(now_ms - login.expires_unix_ms),
            });
        }
        Ok(login)
    }

    /// Deletes every pending sign-in that expired before `now` and returns how many.
    pub fn expire(&self, now: SystemTime) -> Result<usize, IdpError> {
        self.store
            .purge_pending_logins(unix_ms(now))
            .map_err(IdpError::store)
    }
}

/// Milliseconds since the Unix epoch, or 0 for a clock set before it.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> (PendingLogins, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("create a scratch folder");
        let store = Store::open(&dir.path().join("store.redb")).expect("open the store");
        (PendingLogins::new(Arc::new(store)), dir)
    }

    fn login(state: &str, expires_unix_ms: u64) -> PendingLogin {
        PendingLogin {
            state: state.into(),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
            device_id: Some(7),
            return_to: None,
            created_unix_ms: 100_000,
            expires_unix_ms,
            mfa: false,
        }
    }

    fn at_ms(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn take_returns_once() {
        let (pending, _dir) = pending();
        pending.create(&login("s1", 200_000)).expect("create");
        let first = pending.take("s1", at_ms(150_000));
        let second = pending.take("s1", at_ms(150_000));
        assert_eq!(first.ok(), Some(login("s1", 200_000)));
        assert!(matches!(second, Err(IdpError::UnknownState)));
    }

    #[test]
    fn take_rejects_expired() {
        let (pending, _dir) = pending();
        pending.create(&login("s1", 200_000)).expect("create");
        let result = pending.take("s1", at_ms(230_000));
        assert!(matches!(
            result,
            Err(IdpError::ExpiredState { expired_for }) if expired_for == Duration::from_secs(30)
        ));
        let again = pending.take("s1", at_ms(150_000));
        assert!(
            matches!(again, Err(IdpError::UnknownState)),
            "an expired state is spent"
        );
    }

    #[test]
    fn expire_removes_only_expired() {
        let (pending, _dir) = pending();
        pending.create(&login("old", 200_000)).expect("create");
        pending.create(&login("new", 400_000)).expect("create");
        let removed = pending.expire(at_ms(300_000));
        assert_eq!(removed.ok(), Some(1));
        assert!(pending.take("new", at_ms(300_000)).is_ok());
    }
}
