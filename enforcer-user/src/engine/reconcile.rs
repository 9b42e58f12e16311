//! Brings the kernel maps in line with the store and the policy: at start, after a crash, and
//! after a policy reload. New and changed entries are written before stale ones are removed,
//! so a live session is never missing from the maps while they change.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use common::{DEVICE_FLAG_MAC_BOUND, DeviceEntry, SessionKey, SessionValue};
use ipnet::IpNet;

use super::{EXPIRED_RETENTION, Engine, EngineError};
use crate::{
    clock::{Instant, expiry_boot_ns},
    config::LinkKind,
    dataplane::maps::KernelMaps,
    policy::{Policy, Principal, compile_prefixes},
    store::{
        AuditEntry, AuditKind, DeviceRecord, EnrollmentSource, GrantSource, NewDevice,
        SessionRecord, Store, StoreError,
    },
};

/// Counts of the kernel map entries a reconciliation wrote and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileReport {
    pub devices_written: usize,
    pub devices_removed: usize,
    pub prefixes_written: usize,
    pub prefixes_removed: usize,
    pub sessions_written: usize,
    pub sessions_removed: usize,
    /// Sessions removed from the store because they expired long ago.
    pub sessions_purged: usize,
}

/// Kernel session entries to write, and the (device, resource) pairs to purge from the store.
pub(crate) type DesiredSessions = (BTreeMap<SessionKey, SessionValue>, Vec<(u32, u32)>);

impl<M: KernelMaps> Engine<M> {
    /// Writes the kernel maps from the store and the policy, and removes every entry that
    /// neither of them accounts for.
    pub fn reconcile(&mut self) -> Result<ReconcileReport, EngineError> {
        sync_policy_devices(&self.store, &self.policy)?;
        let mut report = ReconcileReport::default();

        let prefixes = compile_prefixes(&self.policy_file, &self.policy, &self.resource_ids)
            .map_err(EngineError::Policy)?;
        let desired_prefixes: BTreeMap<IpNet, common::PrefixRules> = prefixes
            .into_iter()
            .map(|entry| (entry.prefix, entry.rules))
            .collect();
        let desired_devices = device_entries(&self.store.devices()?, self.link_kind);
        let now = self.clock.now();
        let (desired_sessions, purge) = self.desired_sessions(&now)?;

        self.maps.set_config(common::Config {
            punt_interval_ns: self.policy.punt_interval.as_nanos() as u64,
            flags: 0,
        })?;
        let current_devices: HashMap<IpAddr, DeviceEntry> =
            self.maps.devices()?.into_iter().collect();
        let current_sessions: HashMap<SessionKey, SessionValue> =
            self.maps.sessions()?.into_iter().collect();
        let current_prefixes: HashMap<IpNet, common::PrefixRules> =
            self.maps.prefixes()?.into_iter().collect();

        for (address, entry) in &desired_devices {
            if current_devices.get(address) != Some(entry) {
                self.maps.set_device(*address, *entry)?;
                report.devices_written += 1;
            }
        }
        for (key, value) in &desired_sessions {
            if current_sessions.get(key) != Some(value) {
                self.maps.set_session(*key, *value)?;
                report.sessions_written += 1;
            }
        }
        for (prefix, rules) in &desired_prefixes {
            if current_prefixes.get(prefix) != Some(rules) {
                self.maps.set_prefix(*prefix, *rules)?;
                report.prefixes_written += 1;
            }
        }

        for prefix in current_prefixes.keys() {
            if !desired_prefixes.contains_key(prefix) {
                self.maps.remove_prefix(*prefix)?;
                report.prefixes_removed += 1;
            }
        }
        for key in current_sessions.keys() {
            if !desired_sessions.contains_key(key) {
                self.maps.remove_session(*key)?;
                report.sessions_removed += 1;
            }
        }
        for address in current_devices.keys() {
            if !desired_devices.contains_key(address) {
                self.maps.remove_device(*address)?;
                report.devices_removed += 1;
            }
        }

        if !purge.is_empty() {
            let mut txn = self.store.begin_write()?;
            let removed = txn.remove_sessions(|session| {
                purge.contains(&(session.device_id, session.resource_id))
            })?;
            txn.commit()?;
            report.sessions_purged = removed.len();
        }
        tracing::info!(
            devices_written = report.devices_written,
            devices_removed = report.devices_removed,
            prefixes_written = report.prefixes_written,
            prefixes_removed = report.prefixes_removed,
            sessions_written = report.sessions_written,
            sessions_removed = report.sessions_removed,
            sessions_purged = report.sessions_purged,
            "reconciled kernel maps"
        );
        Ok(report)
    }

    /// Computes the kernel entry of every committed session the policy still allows, and the
    /// sessions that expired more than `EXPIRED_RETENTION` ago.
    pub(crate) fn desired_sessions(&self, now: &Instant) -> Result<DesiredSessions, EngineError> {
        let mut desired = BTreeMap::new();
        let mut purge = Vec::new();
        let retention_ns = EXPIRED_RETENTION.as_nanos() as u64;
        for session in self.store.sessions()? {
            let Some(expires_at_boot_ns) = self.session_expiry(&session, now)? else {
                continue;
            };
            if expires_at_boot_ns.saturating_add(retention_ns) <= now.boot_ns {
                purge.push((session.device_id, session.resource_id));
                continue;
            }
            let key = SessionKey {
                device_id: session.device_id,
                resource_id: session.resource_id,
            };
            desired.insert(key, SessionValue { expires_at_boot_ns });
        }
        Ok((desired, purge))
    }

    /// Returns the boot-time expiry of `session` under the current policy, or `None` when the
    /// policy no longer allows the pair.
    pub(crate) fn session_expiry(
        &self,
        session: &SessionRecord,
        now: &Instant,
    ) -> Result<Option<u64>, EngineError> {
        let Some(resource) = self.resource_by_id(session.resource_id) else {
            return Ok(None);
        };
        let duration = match &session.source {
            GrantSource::Admin { duration_secs, .. } => {
                let Some(device) = self.store.device(session.device_id)? else {
                    return Ok(None);
                };
                if !self.device_allowed(&device, resource)? {
                    return Ok(None);
                }
                std::time::Duration::from_secs(*duration_secs)
            }
            GrantSource::SignIn => {
                let Some(user_key) = &session.user else {
                    return Ok(None);
                };
                let Some(user) = self.store.user(user_key)? else {
                    return Ok(None);
                };
                let principal = Principal {
                    subject: &user.key.subject,
                    email: user.email.as_deref(),
                    groups: &user.groups,
                };
                if !resource.allows(&principal) {
                    return Ok(None);
                }
                if resource.step_up
                    && !self
                        .policy
                        .is_multi_factor(&session.amr, session.acr.as_deref())
                {
                    return Ok(None);
                }
                resource.session
            }
        };
        Ok(Some(expiry_boot_ns(&session.start, duration, now)))
    }
}

/// Kernel device entries of `devices`, one per address.
pub(crate) fn device_entries(
    devices: &[DeviceRecord],
    link_kind: LinkKind,
) -> BTreeMap<IpAddr, DeviceEntry> {
    let mut entries = BTreeMap::new();
    for device in devices {
        let mut entry = DeviceEntry {
            device_id: device.id,
            ..DeviceEntry::default()
        };
        // A raw-IP interface has no source MAC to check.
        if let (Some(mac), LinkKind::Ethernet) = (device.mac, link_kind) {
            entry.flags |= DEVICE_FLAG_MAC_BOUND;
            entry.mac = mac;
        }
        for address in &device.addresses {
            entries.insert(*address, entry);
        }
    }
    entries
}

/// Enrolls the policy's devices, updates changed ones and removes those the policy no longer
/// lists, in one transaction with an audit entry per change.
fn sync_policy_devices(store: &Store, policy: &Policy) -> Result<(), StoreError> {
    let existing = store.devices()?;
    let mut txn = store.begin_write()?;
    let mut changed = false;
    for device in &existing {
        let listed = policy
            .devices
            .iter()
            .any(|listed| listed.name == device.name);
        if device.source == EnrollmentSource::Policy && !listed {
            let (record, sessions) = txn.remove_device(device.id)?;
            txn.audit(AuditEntry {
                kind: AuditKind::Removal,
                actor: "policy".to_owned(),
                device_id: Some(record.id),
                resource_id: None,
                detail: format!(
                    "removed device {} (no longer in the policy) with {} session(s)",
                    record.name,
                    sessions.len()
                ),
            })?;
            changed = true;
        }
    }
    for listed in &policy.devices {
        match existing.iter().find(|device| device.name == listed.name) {
            Some(device) => {
                if device.owner == listed.owner
                    && device.addresses == listed.addresses
                    && device.mac == listed.mac
                {
                    continue;
                }
                let mut updated = device.clone();
                updated.owner = listed.owner.clone();
                updated.addresses = listed.addresses.clone();
                updated.mac = listed.mac;
                updated.source = EnrollmentSource::Policy;
                txn.update_device(&updated)?;
                txn.audit(AuditEntry {
                    kind: AuditKind::Enrollment,
                    actor: "policy".to_owned(),
                    device_id: Some(device.id),
                    resource_id: None,
                    detail: format!("updated device {} from the policy", device.name),
                })?;
            }
            None => {
                let record = txn.enroll_device(NewDevice {
                    name: listed.name.clone(),
                    owner: listed.owner.clone(),
                    addresses: listed.addresses.clone(),
                    mac: listed.mac,
                    source: EnrollmentSource::Policy,
                })?;
                txn.audit(AuditEntry {
                    kind: AuditKind::Enrollment,
                    actor: "policy".to_owned(),
                    device_id: Some(record.id),
                    resource_id: None,
                    detail: format!("enrolled device {} from the policy", record.name),
                })?;
            }
        }
        changed = true;
    }
    if changed { txn.commit() } else { txn.abort() }
}
