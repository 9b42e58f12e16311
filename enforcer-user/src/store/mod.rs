//! The state store: one redb file with users, devices and their addresses, each device's last
//! authentication, committed sessions, pending logins, resource ids and an append-only audit
//! log. The kernel maps are always derivable from this store plus the policy file.
//!
//! Reads go through `Store`. Every change goes through a `StoreWrite` transaction, which
//! commits all of its changes and its audit entries at once, or none of them.

pub mod devices;
mod encoding;
mod logins;
pub mod records;
mod sessions;

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use redb::{Database, ReadableTable, TableDefinition, TableHandle};

pub use devices::NewDevice;
pub use encoding::SessionView;
pub use logins::{PendingDeviceGrant, PendingLogin};
pub use records::*;

/// Version of the table layout. Bump it, and add a migration in `migrate`, when a table's key
/// or value type or a value's encoding changes. Version 1 stored sessions as JSON; version 2
/// stores them in the binary layout of `encoding`.
pub const SCHEMA_VERSION: u64 = 2;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const USERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("users");
const DEVICES: TableDefinition<u32, &[u8]> = TableDefinition::new("devices");
const DEVICE_NAMES: TableDefinition<&str, u32> = TableDefinition::new("device_names");
/// Device address (4 or 16 bytes) to device id.
const ADDRESSES: TableDefinition<&[u8], u32> = TableDefinition::new("addresses");
const AUTHENTICATIONS: TableDefinition<u32, &[u8]> = TableDefinition::new("authentications");
/// (device id, resource id) to `SessionRecord`, encoded by `encoding::encode_session`.
const SESSIONS: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("sessions");
const RESOURCE_IDS: TableDefinition<&str, u32> = TableDefinition::new("resource_ids");
/// Login `state` parameter to `PendingLogin`.
const PENDING_LOGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("pending_logins");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

const META_SCHEMA: &str = "schema_version";
const META_NEXT_DEVICE: &str = "next_device_id";
const META_NEXT_RESOURCE: &str = "next_resource_id";
const META_NEXT_AUDIT: &str = "next_audit_seq";

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "store {path} is already open: another enforcer daemon is already running on it; stop it or set a different [store] path"
    )]
    AlreadyRunning { path: PathBuf },
    #[error("failed to open store {path}: {source}; check that the file is a redb store")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error(
        "store {path} has schema version {found}, but this enforcer supports up to {SCHEMA_VERSION}; run a newer enforcer"
    )]
    SchemaTooNew { path: PathBuf, found: u64 },
    #[error(
        "store {path} has no schema version, so it was not created by enforcer; move it away or set a different [store] path"
    )]
    NotAStore { path: PathBuf },
    #[error(
        "store {path} is damaged ({detail}); restore it from a backup, or move it away to start with an empty store"
    )]
    Damaged { path: PathBuf, detail: String },
    #[error("store operation failed: {0}")]
    Redb(Box<redb::Error>),
    #[error("store record {table}/{key} is unreadable: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("store record {table}/{key} is unreadable: {detail}; restore the store from a backup")]
    Malformed {
        table: &'static str,
        key: String,
        detail: String,
    },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    Conflict(String),
    #[error("id space of {what} is exhausted")]
    IdsExhausted { what: &'static str },
}

macro_rules! redb_error {
    ($($kind:ty),*) => {
        $(impl From<$kind> for StoreError {
            fn from(err: $kind) -> Self {
                StoreError::Redb(Box::new(err.into()))
            }
        })*
    };
}
redb_error!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// An open store. redb holds an exclusive file lock, so a second daemon fails to open it.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the store at `path`, creating it when missing. An existing file of another schema
    /// version is migrated or rejected, never recreated.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let existed = path.exists();
        // redb would format an empty file as a new store, silently dropping every session the
        // pinned maps still hold at the next reconcile.
        if existed && std::fs::metadata(path).is_ok_and(|metadata| metadata.len() == 0) {
            return Err(StoreError::Damaged {
                path: path.to_path_buf(),
                detail: "the file is empty".into(),
            });
        }
        // redb 2 panics instead of returning an error on some truncated files.
        let opened = std::panic::catch_unwind(|| Database::create(path)).map_err(|panic| {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "redb panicked while opening it".into());
            StoreError::Damaged {
                path: path.to_path_buf(),
                detail,
            }
        })?;
        let db = opened.map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyRunning {
                path: path.to_path_buf(),
            },
            source => StoreError::Open {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let store = Self {
            db,
            path: path.to_path_buf(),
        };
        store.check_schema(existed)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_schema(&self, existed: bool) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        let found = {
            let meta = txn.open_table(META)?;
            meta.get(META_SCHEMA)?.map(|value| value.value())
        };
        match found {
            Some(SCHEMA_VERSION) => {}
            Some(found) if found > SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooNew {
                    path: self.path.clone(),
                    found,
                });
            }
            Some(found) => {
                let sessions = migrate(&txn, found)?;
                tracing::info!(
                    store = %self.path.display(),
                    from = found,
                    to = SCHEMA_VERSION,
                    sessions,
                    "migrated the store to the current schema version"
                );
            }
            None if existed && has_tables(&txn)? => {
                return Err(StoreError::NotAStore {
                    path: self.path.clone(),
                });
            }
            None => {
                let mut meta = txn.open_table(META)?;
                meta.insert(META_SCHEMA, SCHEMA_VERSION)?;
                drop(meta);
                create_tables(&txn)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Starts a write transaction; nothing is visible to readers until `commit`.
    pub fn begin_write(&self) -> Result<StoreWrite, StoreError> {
        Ok(StoreWrite {
            txn: self.db.begin_write()?,
        })
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        Ok(self.db.begin_read()?)
    }

    /// Returns the id of resource `name`, if it ever had one.
    pub fn resource_id(&self, name: &str) -> Result<Option<u32>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(RESOURCE_IDS)?;
        Ok(table.get(name)?.map(|id| id.value()))
    }

    /// Returns up to `limit` audit records with a position after `after`, oldest first.
    pub fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut records = Vec::new();
        for entry in table.range(after.saturating_add(1)..)?.take(limit) {
            let (seq, value) = entry?;
            records.push(decode("audit", seq.value(), value.value())?);
        }
        Ok(records)
    }

    /// Returns the last `count` audit records, oldest first.
    pub fn audit_tail(&self, count: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut records = Vec::new();
        for entry in table.iter()?.rev().take(count) {
            let (seq, value) = entry?;
            records.push(decode("audit", seq.value(), value.value())?);
        }
        records.reverse();
        Ok(records)
    }
}

/// A write transaction. Dropping it without `commit` discards every change.
pub struct StoreWrite {
    txn: redb::WriteTransaction,
}

impl StoreWrite {
    /// Makes every change of the transaction durable at once.
    pub fn commit(self) -> Result<(), StoreError> {
        self.txn.commit()?;
        Ok(())
    }

    /// Discards every change of the transaction.
    pub fn abort(self) -> Result<(), StoreError> {
        self.txn.abort()?;
        Ok(())
    }

    /// Returns the id of resource `name`, assigning the next free one on first use. Ids are
    /// never reused, so a removed and re-added resource keeps no stale sessions.
    pub fn resource_id(&mut self, name: &str) -> Result<u32, StoreError> {
        let existing = {
            let table = self.txn.open_table(RESOURCE_IDS)?;
            table.get(name)?.map(|id| id.value())
        };
        if let Some(id) = existing {
            return Ok(id);
        }
        let id = self.next_id(META_NEXT_RESOURCE, "resources")?;
        self.txn.open_table(RESOURCE_IDS)?.insert(name, id)?;
        Ok(id)
    }

    /// Appends `entry` to the audit log and returns its position.
    pub fn audit(&mut self, entry: AuditEntry) -> Result<u64, StoreError> {
        let seq = {
            let mut meta = self.txn.open_table(META)?;
            let seq = meta.get(META_NEXT_AUDIT)?.map_or(1, |value| value.value());
            meta.insert(META_NEXT_AUDIT, seq + 1)?;
            seq
        };
        let record = AuditRecord {
            seq,
            at_unix_ms: unix_ms_now(),
            kind: entry.kind,
            actor: entry.actor,
            device_id: entry.device_id,
            resource_id: entry.resource_id,
            detail: entry.detail,
        };
        let mut table = self.txn.open_table(AUDIT)?;
        table.insert(seq, encode(&record).as_slice())?;
        Ok(seq)
    }

    /// Returns the next id of the sequence `key`, from 1; id 0 is reserved.
    fn next_id(&mut self, key: &str, what: &'static str) -> Result<u32, StoreError> {
        let mut meta = self.txn.open_table(META)?;
        let id = meta.get(key)?.map_or(1, |value| value.value());
        let id32 = u32::try_from(id).map_err(|_| StoreError::IdsExhausted { what })?;
        meta.insert(key, id + 1)?;
        Ok(id32)
    }
}

fn create_tables(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(USERS)?;
    txn.open_table(DEVICES)?;
    txn.open_table(DEVICE_NAMES)?;
    txn.open_table(ADDRESSES)?;
    txn.open_table(AUTHENTICATIONS)?;
    txn.open_table(SESSIONS)?;
    txn.open_table(RESOURCE_IDS)?;
    txn.open_table(PENDING_LOGINS)?;
    txn.open_table(AUDIT)?;
    Ok(())
}

fn has_tables(txn: &redb::WriteTransaction) -> Result<bool, StoreError> {
    Ok(txn.list_tables()?.any(|table| table.name() != META.name()))
}

/// Upgrades a store of schema version `found` to `SCHEMA_VERSION` inside `txn` and returns
/// the number of sessions it re-encoded. The caller commits `txn` once, so a crash during the
/// migration leaves the store at version `found`.
fn migrate(txn: &redb::WriteTransaction, found: u64) -> Result<u64, StoreError> {
    if found != 1 {
        // Version 1 is the first layout, so any older version is unknown.
        return Err(StoreError::Conflict(format!(
            "store schema version {found} is older than any enforcer release (1 is the first); move the file away to start with an empty store"
        )));
    }
    let mut table = txn.open_table(SESSIONS)?;
    let mut rows = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        let record: SessionRecord = decode("sessions", key.value(), value.value())?;
        rows.push(record);
    }
    for record in &rows {
        let bytes = encoding::encode_session(record)?;
        table.insert((record.device_id, record.resource_id), bytes.as_slice())?;
    }
    drop(table);
    txn.open_table(META)?.insert(META_SCHEMA, SCHEMA_VERSION)?;
    Ok(rows.len() as u64)
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // serde_json fails only on non-string map keys or a failing writer, and the records have
    // neither.
    serde_json::to_vec(value).expect("store records serialize to JSON")
}

fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    key: impl std::fmt::Debug,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        table,
        key: format!("{key:?}"),
        source,
    })
}

/// Returns wall time in Unix milliseconds.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests;
