//! Pending logins of the authorization code flow, keyed by their single-use `state`, and
//! device authorization grants in progress, keyed by the device that started them.

use std::net::IpAddr;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{PENDING_LOGINS, Store, StoreError, StoreWrite, decode, encode};

/// Device authorization grants in progress, keyed by `PendingDeviceGrant::key`. The table is
/// only opened in write transactions, which create it in a store written before it existed.
const PENDING_DEVICE_GRANTS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("pending_device_grants");

/// A device authorization grant (RFC 8628) that the portal polls for, kept so that polling
/// resumes after a restart. The IdP's response contains the device code, which is a secret:
/// never log it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingDeviceGrant {
    /// `device:<id>`, or `address:<ip>` for an unenrolled device.
    pub key: String,
    pub device_id: Option<u32>,
    pub source_address: IpAddr,
    /// The IdP's device authorization response: device code, user code, verification URIs,
    /// `expires_in` and `interval`.
    pub response: serde_json::Value,
    pub requested_unix_ms: u64,
    pub expires_unix_ms: u64,
    pub mfa: bool,
}

impl std::fmt::Debug for PendingDeviceGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDeviceGrant")
            .field("key", &self.key)
            .field("expires_unix_ms", &self.expires_unix_ms)
            .finish_non_exhaustive()
    }
}

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
    /// Source address of the request that started the login. A login of an unenrolled
    /// address, which may enroll on its first sign-in, is bound to it.
    #[serde(default)]
    pub source_address: Option<IpAddr>,
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
            .field("source_address", &self.source_address)
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

impl Store {
    /// Stores a device authorization grant in progress, replacing the one with the same key.
    pub fn put_device_grant(&self, grant: &PendingDeviceGrant) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        txn.txn
            .open_table(PENDING_DEVICE_GRANTS)?
            .insert(grant.key.as_str(), encode(grant).as_slice())?;
        txn.commit()
    }

    /// Removes the device authorization grant with `key`, if any.
    pub fn remove_device_grant(&self, key: &str) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        txn.txn.open_table(PENDING_DEVICE_GRANTS)?.remove(key)?;
        txn.commit()
    }

    /// Returns every stored device authorization grant, expired ones included.
    pub fn device_grants(&self) -> Result<Vec<PendingDeviceGrant>, StoreError> {
        let txn = self.begin_write()?;
        let mut grants = Vec::new();
        {
            let table = txn.txn.open_table(PENDING_DEVICE_GRANTS)?;
            for entry in table.iter()? {
                let (key, value) = entry?;
                grants.push(decode("pending_device_grants", key.value(), value.value())?);
            }
        }
        txn.commit()?;
        Ok(grants)
    }
}

impl StoreWrite {
    pub fn put_pending_login(&mut self, login: &PendingLogin) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(PENDING_LOGINS)?;
        table.insert(login.state.as_str(), encode(login).as_slice())?;
        Ok(())
    }

    /// Returns the pending login of `state` without removing it.
    pub fn pending_login(&mut self, state: &str) -> Result<Option<PendingLogin>, StoreError> {
        let table = self.txn.open_table(PENDING_LOGINS)?;
        table
            .get(state)?
            .map(|value| decode("pending_logins", "", value.value()))
            .transpose()
    }

    /// Returns every pending login, expired ones included.
    pub fn pending_logins(&mut self) -> Result<Vec<PendingLogin>, StoreError> {
        let table = self.txn.open_table(PENDING_LOGINS)?;
        let mut logins = Vec::new();
        for entry in table.iter()? {
            let (_, value) = entry?;
            logins.push(decode("pending_logins", "", value.value())?);
        }
        Ok(logins)
    }

    pub fn take_pending_login(&mut self, state: &str) -> Result<Option<PendingLogin>, StoreError> {
        let mut table = self.txn.open_table(PENDING_LOGINS)?;
        let removed = table.remove(state)?;
        removed
            .map(|value| decode("pending_logins", "", value.value()))
            .transpose()
    }
}
