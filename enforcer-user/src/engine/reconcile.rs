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
    clock::{Instant, expiry_boot_ns_of},
    config::LinkKind,
    dataplane::maps::KernelMaps,
    policy::{Policy, Principal, Resource, compile_prefixes},
    store::{
        AuditEntry, AuditKind, DeviceRecord, EnrollmentSource, NewDevice, SessionView, Store,
        StoreError, UserRecord,
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

/// Kernel session entries to write, sorted by key, and the (device, resource) pairs to purge
/// from the store.
pub(crate) type DesiredSessions = (Vec<(SessionKey, SessionValue)>, Vec<(u32, u32)>);

impl<M: KernelMaps> Engine<M> {
    /// Writes the kernel maps from the store and the policy, and removes every entry that
    /// neither of them accounts for.
    pub fn reconcile(&mut self) -> Result<ReconcileReport, EngineError> {
        let started = std::time::Instant::now();
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
        let read_store = started.elapsed();

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
        let read_kernel = started.elapsed();

        for (address, entry) in &desired_devices {
            if current_devices.get(address) != Some(entry) {
                self.maps.set_device(*address, *entry)?;
                report.devices_written += 1;
            }
        }
        let mut current_desired = 0;
        let mut changed_sessions = Vec::new();
        for (key, value) in &desired_sessions {
            match current_sessions.get(key) {
                Some(current) if current == value => current_desired += 1,
                Some(_) => {
                    current_desired += 1;
                    changed_sessions.push((*key, *value));
                }
                None => changed_sessions.push((*key, *value)),
            }
        }
        self.maps.set_sessions(&changed_sessions)?;
        report.sessions_written = changed_sessions.len();
        for (prefix, rules) in &desired_prefixes {
            if current_prefixes.get(prefix) != Some(rules) {
                self.maps.set_prefix(*prefix, *rules)?;
                report.prefixes_written += 1;
            }
        }
        let wrote_kernel = started.elapsed();

        for prefix in current_prefixes.keys() {
            if !desired_prefixes.contains_key(prefix) {
                self.maps.remove_prefix(*prefix)?;
                report.prefixes_removed += 1;
            }
        }
        // When every kernel entry is also desired, which is the usual restart, nothing is
        // stale and the search is skipped.
        if current_desired < current_sessions.len() {
            for key in current_sessions.keys() {
                let desired = desired_sessions
                    .binary_search_by_key(key, |(desired, _)| *desired)
                    .is_ok();
                if !desired {
                    self.maps.remove_session(*key)?;
                    report.sessions_removed += 1;
                }
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
            report.sessions_purged = txn.remove_session_keys(&purge)?;
            txn.commit()?;
        }
        tracing::debug!(
            read_store_ms = read_store.as_millis() as u64,
            read_kernel_ms = (read_kernel - read_store).as_millis() as u64,
            write_kernel_ms = (wrote_kernel - read_kernel).as_millis() as u64,
            remove_and_purge_ms = (started.elapsed() - wrote_kernel).as_millis() as u64,
            "reconcile phases"
        );
        tracing::info!(
            devices_written = report.devices_written,
            devices_removed = report.devices_removed,
            prefixes_written = report.prefixes_written,
            prefixes_removed = report.prefixes_removed,
            sessions_written = report.sessions_written,
            sessions_removed = report.sessions_removed,
            sessions_purged = report.sessions_purged,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "reconciled kernel maps"
        );
        Ok(report)
    }

    /// Computes the kernel entry of every committed session the policy still allows, and the
    /// sessions that expired more than `EXPIRED_RETENTION` ago, in one pass over the store.
    pub(crate) fn desired_sessions(&self, now: &Instant) -> Result<DesiredSessions, EngineError> {
        let lookups = PolicyLookups::load(self)?;
        let mut desired = Vec::new();
        let mut purge = Vec::new();
        let retention_ns = EXPIRED_RETENTION.as_nanos() as u64;
        self.store.for_each_session(|session| {
            let Some(expires_at_boot_ns) = lookups.session_expiry(&session, now) else {
                return Ok::<(), EngineError>(());
            };
            if expires_at_boot_ns.saturating_add(retention_ns) <= now.boot_ns {
                purge.push((session.device_id, session.resource_id));
                return Ok(());
            }
            let key = SessionKey {
                device_id: session.device_id,
                resource_id: session.resource_id,
            };
            desired.push((key, SessionValue { expires_at_boot_ns }));
            Ok(())
        })?;
        // The store iterates in (device id, resource id) order, the order of `SessionKey`.
        if !desired.is_sorted_by_key(|(key, _)| *key) {
            desired.sort_unstable_by_key(|(key, _)| *key);
        }
        Ok((desired, purge))
    }
}

/// The store and policy data that decides whether a stored session is still allowed, read
/// once per reconcile instead of once per session.
struct PolicyLookups<'a> {
    policy: &'a Policy,
    resources: HashMap<u32, &'a Resource>,
    /// Device id to the principal that `Engine::device_allowed` judges: the device's last
    /// signed-in user, or its owner before any sign-in, or `None` for neither.
    device_principals: HashMap<u32, Option<OwnedPrincipal>>,
    /// Issuer, then subject, to the user record.
    users: HashMap<String, HashMap<String, UserRecord>>,
}

struct OwnedPrincipal {
    subject: String,
    email: Option<String>,
    groups: Vec<String>,
}

impl OwnedPrincipal {
    fn borrow(&self) -> Principal<'_> {
        Principal {
            subject: &self.subject,
            email: self.email.as_deref(),
            groups: &self.groups,
        }
    }
}

impl<'a> PolicyLookups<'a> {
    fn load<M: KernelMaps>(engine: &'a Engine<M>) -> Result<Self, EngineError> {
        let resources = engine
            .resource_ids
            .iter()
            .filter_map(|(name, id)| Some((*id, engine.policy.resource(name)?)))
            .collect();
        let mut users: HashMap<String, HashMap<String, UserRecord>> = HashMap::new();
        for user in engine.store.users()? {
            users
                .entry(user.key.issuer.clone())
                .or_default()
                .insert(user.key.subject.clone(), user);
        }
        let authentications: HashMap<u32, _> =
            engine.store.authentications()?.into_iter().collect();
        let mut device_principals = HashMap::new();
        for device in engine.store.devices()? {
            let user = authentications.get(&device.id).and_then(|auth| {
                users
                    .get(&auth.user.issuer)
                    .and_then(|subjects| subjects.get(&auth.user.subject))
            });
            let principal = match (user, &device.owner) {
                (Some(user), _) => Some(OwnedPrincipal {
                    subject: user.key.subject.clone(),
                    email: user.email.clone(),
                    groups: user.groups.clone(),
                }),
                (None, Some(owner)) => Some(OwnedPrincipal {
                    subject: owner.clone(),
                    email: Some(owner.clone()),
                    groups: Vec::new(),
                }),
                (None, None) => None,
            };
            device_principals.insert(device.id, principal);
        }
        Ok(Self {
            policy: &engine.policy,
            resources,
            device_principals,
            users,
        })
    }

    /// Returns the boot-time expiry of `session` under the current policy, or `None` when the
    /// policy no longer allows the pair.
    fn session_expiry(&self, session: &SessionView<'_>, now: &Instant) -> Option<u64> {
        let resource = *self.resources.get(&session.resource_id)?;
        let duration = match session.admin {
            Some((_, duration_secs)) => {
                let principal = self.device_principals.get(&session.device_id)?.as_ref()?;
                if !resource.allows(&principal.borrow()) {
                    return None;
                }
                std::time::Duration::from_secs(duration_secs)
            }
            None => {
                let (issuer, subject) = session.user?;
                let user = self.users.get(issuer)?.get(subject)?;
                let principal = Principal {
                    subject: &user.key.subject,
                    email: user.email.as_deref(),
                    groups: &user.groups,
                };
                if !resource.allows(&principal) {
                    return None;
                }
                if resource.step_up && !self.is_multi_factor(session) {
                    return None;
                }
                resource.session
            }
        };
        Some(expiry_boot_ns_of(
            session.start_wall_unix_ns,
            session.start_boot_ns,
            session.start_boot_id,
            duration,
            now,
        ))
    }

    fn is_multi_factor(&self, session: &SessionView<'_>) -> bool {
        let amr: Vec<String> = session.amr().map(str::to_owned).collect();
        self.policy.is_multi_factor(&amr, session.acr)
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
