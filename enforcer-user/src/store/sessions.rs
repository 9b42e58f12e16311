//! Committed (device, resource) sessions.

use redb::ReadableTable;

use super::{SESSIONS, SessionRecord, Store, StoreError, StoreWrite, decode, encode};

impl Store {
    /// Returns every committed session, ordered by (device id, resource id).
    pub fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(SESSIONS)?;
        let mut sessions = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            sessions.push(decode("sessions", key.value(), value.value())?);
        }
        Ok(sessions)
    }

    pub fn session(
        &self,
        device_id: u32,
        resource_id: u32,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(SESSIONS)?;
        table
            .get((device_id, resource_id))?
            .map(|value| decode("sessions", (device_id, resource_id), value.value()))
            .transpose()
    }
}

impl StoreWrite {
    /// Inserts or replaces a session.
    pub fn put_session(&mut self, session: &SessionRecord) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(SESSIONS)?;
        table.insert(
            (session.device_id, session.resource_id),
            encode(session).as_slice(),
        )?;
        Ok(())
    }

    /// Removes every session for which `select` returns true and returns them.
    pub fn remove_sessions(
        &mut self,
        select: impl Fn(&SessionRecord) -> bool,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut table = self.txn.open_table(SESSIONS)?;
        let mut removed = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let session: SessionRecord = decode("sessions", key.value(), value.value())?;
            if select(&session) {
                removed.push(session);
            }
        }
        for session in &removed {
            table.remove((session.device_id, session.resource_id))?;
        }
        Ok(removed)
    }
}
