//! Pending logins of the authorization code flow, keyed by their single-use `state`.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::{PENDING_LOGINS, Store, StoreError, StoreWrite, decode, encode};

/// A login started at the portal and not yet completed. The record contains the PKCE verifier
/// and the nonce, which are secrets: never log it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    /// The `state` parameter sent to the identity provider.
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    /// Device the login was started from, when its source address is enrolled.
    pub device_id: Option<u32>,
    /// Portal page to return to after the login.
    pub return_to: Option<String>,
    pub created_unix_ms: u64,
    /// The login is rejected after this time.
    pub expires_unix_ms: u64,
    /// The login is a step-up: the IdP was asked for multi-factor authentication and only a
    /// multi-factor result is accepted.
    #[serde(default)]
    pub mfa: bool,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("device_id", &self.device_id)
            .field("expires_unix_ms", &self.expires_unix_ms)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Stores a new pending login in its own transaction.
    pub fn put_pending_login(&self, login: &PendingLogin) -> Result<(), StoreError> {
        let mut txn = self.begin_write()?;
        txn.put_pending_login(login)?;
        txn.commit()
    }

    /// Removes and returns the pending login of `state` in one transaction, so each state is
    /// used at most once. Returns `None` when it is unknown, already used or expired at
    /// `now_unix_ms`.
    pub fn take_pending_login(
        &self,
        state: &str,
        now_unix_ms: u64,
    ) -> Result<Option<PendingLogin>, StoreError> {
        let mut txn = self.begin_write()?;
        let login = txn.take_pending_login(state)?;
        txn.commit()?;
        Ok(login.filter(|login| now_unix_ms < login.expires_unix_ms))
    }

    /// Removes every pending login that expired before `now_unix_ms`; returns how many.
    pub fn purge_pending_logins(&self, now_unix_ms: u64) -> Result<usize, StoreError> {
        let txn = self.begin_write()?;
        let mut expired = Vec::new();
        {
            let mut table = txn.txn.open_table(PENDING_LOGINS)?;
            for entry in table.iter()? {
                let (state, value) = entry?;
                let login: PendingLogin = decode("pending_logins", "", value.value())?;
                if login.expires_unix_ms <= now_unix_ms {
                    expired.push(state.value().to_owned());
                }
            }
            for state in &expired {
                table.remove(state.as_str())?;
            }
        }
        txn.commit()?;
        Ok(expired.len())
    }
}

impl StoreWrite {
    pub fn put_pending_login(&mut self, login: &PendingLogin) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(PENDING_LOGINS)?;
        table.insert(login.state.as_str(), encode(login).as_slice())?;
        Ok(())
    }

    pub fn take_pending_login(&mut self, state: &str) -> Result<Option<PendingLogin>, StoreError> {
        let mut table = self.txn.open_table(PENDING_LOGINS)?;
        let removed = table.remove(state)?;
        removed
            .map(|value| decode("pending_logins", "", value.value()))
            .transpose()
    }
}
