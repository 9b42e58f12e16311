//! Committed (device, resource) sessions.

use redb::ReadableTable;

use super::{
    SESSIONS, SessionRecord, Store, StoreError, StoreWrite,
    encoding::{SessionView, encode_session},
};

impl Store {
    /// Calls `visit` with every committed session, ordered by (device id, resource id), in
    /// one read transaction. The views borrow the stored bytes, so reading a row allocates
    /// nothing.
    pub fn for_each_session<E: From<StoreError>>(
        &self,
        mut visit: impl FnMut(SessionView<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let txn = self.begin_read()?;
        let table = txn.open_table(SESSIONS).map_err(StoreError::from)?;
        for entry in table.iter().map_err(StoreError::from)? {
            let (key, value) = entry.map_err(StoreError::from)?;
            let (device_id, resource_id) = key.value();
            visit(SessionView::decode(device_id, resource_id, value.value())?)?;
        }
        Ok(())
    }

    /// Returns every committed session, ordered by (device id, resource id).
    pub fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let mut sessions = Vec::new();
        self.for_each_session(|session| {
            sessions.push(session.to_record());
            Ok::<(), StoreError>(())
        })?;
        Ok(sessions)
    }

    /// Returns the committed sessions of device `device_id` for which `select` returns true,
    /// in key order. Only that device's rows are read.
    pub fn device_sessions_where(
        &self,
        device_id: u32,
        select: impl Fn(&SessionView<'_>) -> bool,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(SESSIONS)?;
        let mut sessions = Vec::new();
        for entry in table.range((device_id, 0)..=(device_id, u32::MAX))? {
            let (key, value) = entry?;
            let (device_id, resource_id) = key.value();
            let session = SessionView::decode(device_id, resource_id, value.value())?;
            if select(&session) {
                sessions.push(session.to_record());
            }
        }
        Ok(sessions)
    }

    /// Returns the committed sessions for which `select` returns true, in key order. Rows
    /// are judged on their encoded form, so only the selected ones are copied.
    pub fn sessions_where(
        &self,
        select: impl Fn(&SessionView<'_>) -> bool,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut sessions = Vec::new();
        self.for_each_session(|session| {
            if select(&session) {
                sessions.push(session.to_record());
            }
            Ok::<(), StoreError>(())
        })?;
        Ok(sessions)
    }

    pub fn session(
        &self,
        device_id: u32,
        resource_id: u32,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(SESSIONS)?;
        let Some(value) = table.get((device_id, resource_id))? else {
            return Ok(None);
        };
        let view = SessionView::decode(device_id, resource_id, value.value())?;
        Ok(Some(view.to_record()))
    }
}

impl StoreWrite {
    /// Inserts or replaces a session.
    pub fn put_session(&mut self, session: &SessionRecord) -> Result<(), StoreError> {
        self.put_sessions(std::slice::from_ref(session))
    }

    /// Inserts or replaces every session of `sessions`, opening the table once.
    pub fn put_sessions(&mut self, sessions: &[SessionRecord]) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(SESSIONS)?;
        for session in sessions {
            let bytes = encode_session(session)?;
            table.insert((session.device_id, session.resource_id), bytes.as_slice())?;
        }
        Ok(())
    }

    /// Removes every session of device `device_id` and returns them.
    pub fn remove_device_sessions(
        &mut self,
        device_id: u32,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut table = self.txn.open_table(SESSIONS)?;
        let mut removed = Vec::new();
        for entry in table.range((device_id, 0)..=(device_id, u32::MAX))? {
            let (key, value) = entry?;
            let (device_id, resource_id) = key.value();
            removed.push(SessionView::decode(device_id, resource_id, value.value())?.to_record());
        }
        for session in &removed {
            table.remove((session.device_id, session.resource_id))?;
        }
        Ok(removed)
    }

    /// Removes the sessions of the (device id, resource id) pairs `keys` and returns how many
    /// existed.
    pub fn remove_session_keys(&mut self, keys: &[(u32, u32)]) -> Result<usize, StoreError> {
        let mut table = self.txn.open_table(SESSIONS)?;
        let mut removed = 0;
        for key in keys {
            if table.remove(*key)?.is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}
