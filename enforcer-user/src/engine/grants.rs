//! Batched admin grants: many (device, resource) sessions in one engine operation, so a script
//! that opens access for a team pays one store commit instead of one per pair.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use super::{Engine, EngineError, ops::not_found};
use crate::{
    clock::{expiry_boot_ns, expiry_wall_ns},
    dataplane::maps::KernelMaps,
    engine::GrantedSession,
    store::{AuditEntry, AuditKind, AuthRecord, DeviceRecord, GrantSource, SessionRecord},
};

/// Maximum pairs in one batch grant. The engine lock is held for the whole batch, and each
/// pair costs two map syscalls and one audit row, so the limit keeps one batch from stalling
/// sign-ins and other admin requests for long. `cargo xtask bench` measured 0.03 s for a
/// batch of 1000 pairs beside 1M stored sessions.
pub const MAX_GRANT_BATCH: usize = 4096;

/// One (device, resource) pair of a batch grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantTarget {
    pub device_id: u32,
    pub resource: String,
}

/// A session written by a batch grant, with its device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BatchGranted {
    pub device_id: u32,
    #[serde(flatten)]
    pub session: GrantedSession,
}

impl<M: KernelMaps> Engine<M> {
    /// Grants every pair of `targets` a session for `duration` from now, all or nothing. Every
    /// pair is checked first, as `grant` checks one. Then the kernel entries are written and
    /// one store transaction commits the sessions with an audit entry each. If a check or a
    /// write fails, no session is granted and the kernel entries are restored.
    pub fn grant_batch(
        &mut self,
        targets: &[GrantTarget],
        duration: Duration,
        actor: &str,
    ) -> Result<Vec<BatchGranted>, EngineError> {
        if targets.is_empty() {
            return Err(EngineError::EmptyBatch);
        }
        if targets.len() > MAX_GRANT_BATCH {
            return Err(EngineError::BatchTooLarge {
                count: targets.len(),
                max: MAX_GRANT_BATCH,
            });
        }

        let mut devices: HashMap<u32, (DeviceRecord, Option<AuthRecord>)> = HashMap::new();
        let mut seen = HashSet::with_capacity(targets.len());
        for target in targets {
            if !seen.insert((target.device_id, target.resource.as_str())) {
                return Err(EngineError::DuplicatePair {
                    device_id: target.device_id,
                    resource: target.resource.clone(),
                });
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = devices.entry(target.device_id)
            {
                let device = self.store.device(target.device_id)?.ok_or_else(|| {
                    not_found(
                        format!("device {}", target.device_id),
                        "see `enforcer device list`",
                    )
                })?;
                let auth = self.store.authentication(target.device_id)?;
                slot.insert((device, auth));
            }
            let (device, _) = &devices[&target.device_id];
            let resource = self.policy.resource(&target.resource).ok_or_else(|| {
                not_found(
                    format!("resource {:?}", target.resource),
                    "see `enforcer resource list`",
                )
            })?;
            if !self.device_allowed(device, resource)? {
                return Err(EngineError::Denied(format!(
                    "the policy does not allow device {} ({}) to reach {}: add its user or owner to the resource's users or groups; nothing in the batch was granted",
                    device.name, device.id, target.resource
                )));
            }
        }

        let now = self.clock.now();
        let expires_at_boot_ns = expiry_boot_ns(&now, duration, &now);
        let sessions: Vec<(SessionRecord, u64)> = targets
            .iter()
            .map(|target| {
                let (_, auth) = &devices[&target.device_id];
                let record = SessionRecord {
                    device_id: target.device_id,
                    resource_id: self.resource_ids[&target.resource],
                    start: now.clone(),
                    source: GrantSource::Admin {
                        actor: actor.to_owned(),
                        duration_secs: duration.as_secs(),
                    },
                    user: auth.as_ref().map(|auth| auth.user.clone()),
                    amr: Vec::new(),
                    acr: None,
                };
                (record, expires_at_boot_ns)
            })
            .collect();
        let human_duration = humantime::format_duration(duration).to_string();
        self.commit_sessions(&sessions, |txn| {
            for (target, (record, _)) in targets.iter().zip(&sessions) {
                let (device, _) = &devices[&target.device_id];
                txn.audit(AuditEntry {
                    kind: AuditKind::Grant,
                    actor: actor.to_owned(),
                    device_id: Some(record.device_id),
                    resource_id: Some(record.resource_id),
                    detail: format!(
                        "granted device {} access to {} for {human_duration} (batch of {})",
                        device.name,
                        target.resource,
                        targets.len()
                    ),
                })?;
            }
            Ok(())
        })?;
        tracing::info!(sessions = targets.len(), actor, "batch grant");

        let expires_unix_ns = expiry_wall_ns(expires_at_boot_ns, &now);
        Ok(targets
            .iter()
            .zip(&sessions)
            .map(|(target, (record, _))| BatchGranted {
                device_id: record.device_id,
                session: GrantedSession {
                    resource: target.resource.clone(),
                    resource_id: record.resource_id,
                    expires_at_boot_ns,
                    expires_unix_ns,
                },
            })
            .collect())
    }
}
