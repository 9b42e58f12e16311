//! Changes that touch the kernel and the store together: sign-in, admin grant, revocation,
//! policy reload and the sweep of long-expired sessions.

use std::{sync::atomic::Ordering, time::Duration};

use common::{SessionKey, SessionValue};

use super::{Engine, EngineError, ReconcileReport, assign_resource_ids};
use crate::{
    clock::{Instant, expiry_wall_ns},
    dataplane::{DataplaneError, maps::KernelMaps},
    policy::{Policy, Principal, Resource, compile_prefixes},
    store::{
        AuditEntry, AuditKind, AuthRecord, DeviceRecord, GrantSource, SessionRecord, SessionView,
        StoreError, StoreWrite, UserKey, UserRecord,
    },
};

/// A session written by a sign-in or a grant.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GrantedSession {
    pub resource: String,
    pub resource_id: u32,
    pub expires_at_boot_ns: u64,
    pub expires_unix_ns: u64,
}

/// A resource a sign-in did not renew, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SkippedResource {
    pub resource: String,
    pub reason: String,
}

/// Outcome of a sign-in.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SignInReport {
    pub device_id: u32,
    pub granted: Vec<GrantedSession>,
    pub skipped: Vec<SkippedResource>,
}

/// Selection of the sessions a revocation removes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum RevokeSelector {
    Device { device_id: u32 },
    User { issuer: String, subject: String },
    Resource { resource: String },
    Session { device_id: u32, resource: String },
}

/// Outcome of a revocation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RevokeReport {
    /// Sessions removed from the store.
    pub sessions: usize,
    /// Entries removed from the kernel map (an expired entry may already be gone).
    pub kernel_entries: usize,
}

/// Outcome of a policy reload.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    pub resources: usize,
    pub devices: usize,
    pub maps: ReconcileReport,
}

/// The sessions and audit record of a sign-in, planned before anything is written.
pub(super) struct SignInPlan {
    pub report: SignInReport,
    /// Session records with their kernel expiry.
    pub sessions: Vec<(SessionRecord, u64)>,
    /// `SignIn`, or `SignInRejected` for a user whom no resource allows.
    pub kind: AuditKind,
}

/// Returns the audit entry of a sign-in on `device` that renewed `renewed` resources.
pub(super) fn sign_in_audit(
    kind: AuditKind,
    actor: &str,
    device: &DeviceRecord,
    auth: &AuthRecord,
    renewed: usize,
) -> AuditEntry {
    AuditEntry {
        kind,
        actor: actor.to_owned(),
        device_id: Some(device.id),
        resource_id: None,
        detail: format!(
            "signed in on device {} (amr {}, acr {}); renewed {renewed} resource(s)",
            device.name,
            if auth.amr.is_empty() {
                "none".to_owned()
            } else {
                auth.amr.join(",")
            },
            auth.acr.as_deref().unwrap_or("none"),
        ),
    }
}

/// Previous kernel values of entries about to be written, to restore them on failure.
pub(super) type Undo = Vec<(SessionKey, Option<SessionValue>)>;

impl<M: KernelMaps> Engine<M> {
    /// Records a successful authentication of `user` on `device_id` and renews the session
    /// of every resource the policy allows for that user and authentication.
    pub fn sign_in(
        &mut self,
        device_id: u32,
        user: UserRecord,
        auth: AuthRecord,
    ) -> Result<SignInReport, EngineError> {
        let actor = format!("user:{}#{}", user.key.issuer, user.key.subject);
        let Some(device) = self.store.device(device_id)? else {
            self.audit_rejected_sign_in(
                &actor,
                device_id,
                format!("rejected sign-in: device {device_id} is not enrolled"),
            );
            return Err(not_found(
                format!("device {device_id}"),
                "enroll the device first",
            ));
        };
        if let Some(owner) = &device.owner
            && owner != &user.key.subject
            && user.email.as_deref() != Some(owner.as_str())
        {
            let message = format!(
                "device {} ({device_id}) belongs to {owner}, so {} may not sign in on it",
                device.name, user.key.subject
            );
            self.audit_rejected_sign_in(&actor, device_id, format!("rejected sign-in: {message}"));
            return Err(EngineError::Denied(message));
        }

        let plan = self.plan_sign_in(device_id, &user, &auth);
        let SignInPlan {
            report,
            sessions,
            kind,
        } = plan;
        self.commit_sessions(&sessions, |txn| {
            txn.put_user(&user)?;
            txn.put_authentication(device_id, &auth)?;
            txn.audit(sign_in_audit(kind, &actor, &device, &auth, sessions.len()))?;
            Ok(())
        })?;
        self.metrics.sign_ins.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            device_id,
            user = %user.key.subject,
            granted = report.granted.len(),
            skipped = report.skipped.len(),
            "sign-in"
        );
        Ok(report)
    }

    /// Decides which resources a sign-in of `user` with `auth` on `device_id` renews, and
    /// whether the audit records it as a sign-in or as a rejected one.
    pub(super) fn plan_sign_in(
        &self,
        device_id: u32,
        user: &UserRecord,
        auth: &AuthRecord,
    ) -> SignInPlan {
        let now = self.clock.now();
        let principal = Principal {
            subject: &user.key.subject,
            email: user.email.as_deref(),
            groups: &user.groups,
        };
        let multi_factor = self.policy.is_multi_factor(&auth.amr, auth.acr.as_deref());
        let mut report = SignInReport {
            device_id,
            ..SignInReport::default()
        };
        let mut sessions = Vec::new();
        for resource in &self.policy.resources {
            let reason = if !resource.allows(&principal) {
                Some("the policy does not allow this user")
            } else if resource.step_up && !multi_factor {
                Some("step-up MFA is required and the sign-in used no multi-factor method")
            } else {
                None
            };
            if let Some(reason) = reason {
                report.skipped.push(SkippedResource {
                    resource: resource.name.clone(),
                    reason: reason.to_owned(),
                });
                continue;
            }
            let resource_id = self.resource_ids[&resource.name];
            let record = SessionRecord {
                device_id,
                resource_id,
                start: auth.at.clone(),
                source: GrantSource::SignIn,
                user: Some(user.key.clone()),
                amr: auth.amr.clone(),
                acr: auth.acr.clone(),
            };
            let expires_at_boot_ns = crate::clock::expiry_boot_ns(&auth.at, resource.session, &now);
            report.granted.push(GrantedSession {
                resource: resource.name.clone(),
                resource_id,
                expires_at_boot_ns,
                expires_unix_ns: expiry_wall_ns(expires_at_boot_ns, &now),
            });
            sessions.push((record, expires_at_boot_ns));
        }

        // A user whom no resource allows is recorded as a rejected sign-in, although the
        // user and the authentication are still stored like any other sign-in.
        let allowed_nowhere = self
            .policy
            .resources
            .iter()
            .all(|resource| !resource.allows(&principal));
        let kind = if allowed_nowhere {
            tracing::warn!(device_id, user = %user.key.subject, "sign-in of a user whom no resource allows");
            AuditKind::SignInRejected
        } else {
            AuditKind::SignIn
        };
        SignInPlan {
            report,
            sessions,
            kind,
        }
    }

    /// Grants `device_id` a session to `resource` for `duration`, from now. The policy must
    /// allow the device's last signed-in user, or its owner before any sign-in.
    pub fn grant(
        &mut self,
        device_id: u32,
        resource: &str,
        duration: Duration,
        actor: &str,
    ) -> Result<GrantedSession, EngineError> {
        let device = self.store.device(device_id)?.ok_or_else(|| {
            not_found(format!("device {device_id}"), "see `enforcer device list`")
        })?;
        let policy_resource = self.policy.resource(resource).ok_or_else(|| {
            not_found(
                format!("resource {resource:?}"),
                "see `enforcer resource list`",
            )
        })?;
        let auth = self.store.authentication(device_id)?;
        let allowed = self.device_allowed(&device, policy_resource)?;
        if !allowed {
            return Err(EngineError::Denied(format!(
                "the policy does not allow device {} ({device_id}) to reach {resource}: add its user or owner to the resource's users or groups",
                device.name
            )));
        }

        let now = self.clock.now();
        let resource_id = self.resource_ids[resource];
        let record = SessionRecord {
            device_id,
            resource_id,
            start: now.clone(),
            source: GrantSource::Admin {
                actor: actor.to_owned(),
                duration_secs: duration.as_secs(),
            },
            user: auth.as_ref().map(|auth| auth.user.clone()),
            amr: Vec::new(),
            acr: None,
        };
        let expires_at_boot_ns = crate::clock::expiry_boot_ns(&now, duration, &now);
        self.commit_sessions(&[(record, expires_at_boot_ns)], |txn| {
            txn.audit(AuditEntry {
                kind: AuditKind::Grant,
                actor: actor.to_owned(),
                device_id: Some(device_id),
                resource_id: Some(resource_id),
                detail: format!(
                    "granted device {} access to {resource} for {}",
                    device.name,
                    humantime::format_duration(duration)
                ),
            })?;
            Ok(())
        })?;
        tracing::info!(device_id, resource_id, resource, actor, "grant");
        Ok(GrantedSession {
            resource: resource.to_owned(),
            resource_id,
            expires_at_boot_ns,
            expires_unix_ns: expiry_wall_ns(expires_at_boot_ns, &now),
        })
    }

    /// Returns whether the policy lets `device` reach `resource`, judged by the device's last
    /// signed-in user, or by its owner before any sign-in.
    pub(crate) fn device_allowed(
        &self,
        device: &DeviceRecord,
        resource: &Resource,
    ) -> Result<bool, EngineError> {
        let user = match self.store.authentication(device.id)? {
            Some(auth) => self.store.user(&auth.user)?,
            None => None,
        };
        Ok(match (&user, &device.owner) {
            (Some(user), _) => resource.allows(&Principal {
                subject: &user.key.subject,
                email: user.email.as_deref(),
                groups: &user.groups,
            }),
            (None, Some(owner)) => resource.allows(&Principal {
                subject: owner,
                email: Some(owner),
                groups: &[],
            }),
            (None, None) => false,
        })
    }

    /// Writes `sessions` to the kernel, then commits them with the changes of `extra` in one
    /// store transaction. On any failure the kernel entries are restored and nothing is
    /// committed.
    pub(super) fn commit_sessions(
        &mut self,
        sessions: &[(SessionRecord, u64)],
        extra: impl FnOnce(&mut StoreWrite) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        // NOTE: the kernel is written before the store commits, so a kill -9 in between leaves
        // entries the store lacks. They pass until a restart reconciles them away, which for a
        // batch of 2000 pairs is a window of about 100 ms.
        let undo = self.write_sessions(sessions)?;

        let result = (|| {
            let mut txn = self.store.begin_write()?;
            for (record, _) in sessions {
                txn.put_session(record)?;
            }
            extra(&mut txn)?;
            txn.commit()?;
            Ok::<(), EngineError>(())
        })();
        if let Err(err) = result {
            tracing::error!(error = %err, "failed to commit sessions; restored the kernel map");
            self.restore(&undo);
            return Err(err);
        }
        self.metrics
            .grants
            .fetch_add(sessions.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes `sessions` to the kernel and returns the previous values, so `restore` can
    /// undo them. On failure the entries written so far are restored already.
    pub(super) fn write_sessions(
        &mut self,
        sessions: &[(SessionRecord, u64)],
    ) -> Result<Undo, EngineError> {
        // Each previous value is read on its own: dumping a map of a million sessions per
        // grant would cost seconds.
        let mut undo: Undo = Vec::new();
        for (record, expires_at_boot_ns) in sessions {
            let key = SessionKey {
                device_id: record.device_id,
                resource_id: record.resource_id,
            };
            let previous = self.maps.session(key)?;
            let value = SessionValue {
                expires_at_boot_ns: *expires_at_boot_ns,
            };
            if let Err(err) = self.maps.set_session(key, value) {
                if matches!(err, DataplaneError::MapFull { .. }) {
                    self.metrics.map_full.fetch_add(1, Ordering::Relaxed);
                }
                tracing::error!(
                    device_id = key.device_id,
                    resource_id = key.resource_id,
                    error = %err,
                    "failed to write session to the kernel; nothing was committed"
                );
                self.restore(&undo);
                return Err(err.into());
            }
            undo.push((key, previous));
        }

        Ok(undo)
    }

    /// Puts back the kernel session entries recorded in `undo`, newest first.
    pub(super) fn restore(&mut self, undo: &Undo) {
        for (key, previous) in undo.iter().rev() {
            let result = match previous {
                Some(value) => self.maps.set_session(*key, *value),
                None => self.maps.remove_session(*key),
            };
            if let Err(err) = result {
                tracing::error!(
                    device_id = key.device_id,
                    resource_id = key.resource_id,
                    error = %err,
                    "failed to restore a kernel session entry; the next reconcile removes it"
                );
            }
        }
    }

    /// Removes the sessions `selector` names from the kernel and the store, with one audit
    /// entry, and returns how many it removed.
    pub fn revoke(
        &mut self,
        selector: &RevokeSelector,
        actor: &str,
    ) -> Result<RevokeReport, EngineError> {
        let (select, detail) = self.revocation_filter(selector)?;
        // A device's sessions are one key range, so a revocation naming a device reads only
        // its rows. NOTE: revoking by user or resource still scans every stored session.
        let sessions = match selector {
            RevokeSelector::Device { device_id } | RevokeSelector::Session { device_id, .. } => {
                self.store
                    .device_sessions_where(*device_id, |session| select(session))?
            }
            RevokeSelector::User { .. } | RevokeSelector::Resource { .. } => {
                self.store.sessions_where(|session| select(session))?
            }
        };
        let mut undo: Undo = Vec::new();
        let mut report = RevokeReport {
            sessions: sessions.len(),
            kernel_entries: 0,
        };
        for session in &sessions {
            let key = SessionKey {
                device_id: session.device_id,
                resource_id: session.resource_id,
            };
            if let Some(value) = self.maps.session(key)? {
                self.maps.remove_session(key)?;
                undo.push((key, Some(value)));
                report.kernel_entries += 1;
            }
        }

        let result = (|| {
            let mut txn = self.store.begin_write()?;
            let keys: Vec<(u32, u32)> = sessions
                .iter()
                .map(|session| (session.device_id, session.resource_id))
                .collect();
            txn.remove_session_keys(&keys)?;
            txn.audit(AuditEntry {
                kind: AuditKind::Revocation,
                actor: actor.to_owned(),
                device_id: match selector {
                    RevokeSelector::Device { device_id }
                    | RevokeSelector::Session { device_id, .. } => Some(*device_id),
                    _ => None,
                },
                resource_id: None,
                detail: format!("revoked {} session(s) of {detail}", report.sessions),
            })?;
            txn.commit()?;
            Ok::<(), EngineError>(())
        })();
        if let Err(err) = result {
            tracing::error!(error = %err, "failed to record revocation; restored the kernel map");
            self.restore(&undo);
            return Err(err);
        }
        self.metrics
            .revocations
            .fetch_add(report.sessions as u64, Ordering::Relaxed);
        tracing::info!(
            target_sessions = %detail,
            sessions = report.sessions,
            kernel_entries = report.kernel_entries,
            actor,
            "revoke"
        );
        Ok(report)
    }

    /// Returns the filter of `selector` and a description of what it selects.
    #[expect(
        clippy::type_complexity,
        reason = "a boxed predicate is the plain form here"
    )]
    fn revocation_filter(
        &self,
        selector: &RevokeSelector,
    ) -> Result<(Box<dyn Fn(&SessionView<'_>) -> bool>, String), EngineError> {
        Ok(match selector.clone() {
            RevokeSelector::Device { device_id } => {
                if self.store.device(device_id)?.is_none() {
                    return Err(not_found(
                        format!("device {device_id}"),
                        "see `enforcer device list`",
                    ));
                }
                (
                    Box::new(move |s| s.device_id == device_id),
                    format!("device {device_id}"),
                )
            }
            RevokeSelector::User { issuer, subject } => {
                let keys = self.users_named(&issuer, &subject)?;
                let detail = format!("user {subject} of {issuer}");
                (
                    Box::new(move |s| {
                        keys.iter()
                            .any(|key| s.user == Some((key.issuer.as_str(), key.subject.as_str())))
                    }),
                    detail,
                )
            }
            RevokeSelector::Resource { resource } => {
                let id = self.known_resource_id(&resource)?;
                (
                    Box::new(move |s| s.resource_id == id),
                    format!("resource {resource}"),
                )
            }
            RevokeSelector::Session {
                device_id,
                resource,
            } => {
                let id = self.known_resource_id(&resource)?;
                (
                    Box::new(move |s| s.device_id == device_id && s.resource_id == id),
                    format!("device {device_id} on resource {resource}"),
                )
            }
        })
    }

    /// Returns the keys of the known users that `name` names at `issuer`, with or without a
    /// trailing slash on the issuer. A subject match wins over an email match, because one
    /// user's subject can be another user's email. An email that several subjects signed in
    /// with is a conflict, so a revocation never reaches beyond one person. A revocation that
    /// matches no user is reported as not found rather than as zero sessions revoked.
    fn users_named(&self, issuer: &str, name: &str) -> Result<Vec<UserKey>, EngineError> {
        let users = self.store.users()?;
        let same_issuer = |other: &str| other.trim_end_matches('/') == issuer.trim_end_matches('/');
        let at_issuer: Vec<&UserRecord> = users
            .iter()
            .filter(|user| same_issuer(&user.key.issuer))
            .collect();
        let keys_where = |matches: &dyn Fn(&UserRecord) -> bool| -> Vec<UserKey> {
            at_issuer
                .iter()
                .filter(|user| matches(user))
                .map(|user| user.key.clone())
                .collect()
        };

        let by_subject = keys_where(&|user| user.key.subject == name);
        if !by_subject.is_empty() {
            return Ok(by_subject);
        }

        let by_email = keys_where(&|user| user.email.as_deref() == Some(name));
        let mut subjects: Vec<&str> = by_email.iter().map(|key| key.subject.as_str()).collect();
        subjects.sort_unstable();
        subjects.dedup();
        if subjects.len() > 1 {
            return Err(EngineError::Store(StoreError::Conflict(format!(
                "email {name:?} of issuer {issuer:?} belongs to {} users (subjects {}); pass the subject of the one to revoke",
                subjects.len(),
                subjects.join(", ")
            ))));
        }
        if by_email.is_empty() {
            return Err(not_found(
                format!("user {name:?} of issuer {issuer:?}"),
                &format!(
                    "pass the subject or the email a user signed in with; {}",
                    known_users(&users)
                ),
            ));
        }
        Ok(by_email)
    }

    fn known_resource_id(&self, name: &str) -> Result<u32, EngineError> {
        match self.resource_ids.get(name) {
            Some(id) => Ok(*id),
            None => self.store.resource_id(name)?.ok_or_else(|| {
                not_found(format!("resource {name:?}"), "see `enforcer resource list`")
            }),
        }
    }

    /// Replaces the policy with `policy` and reconciles the maps. New and changed entries are
    /// written before stale ones are removed, so a session the new policy still allows stays
    /// live throughout. An invalid policy leaves the previous one in force.
    pub fn reload(&mut self, policy: Policy, actor: &str) -> Result<ReloadReport, EngineError> {
        let resource_ids = assign_resource_ids(&self.store, &policy)?;
        compile_prefixes(&self.policy_file, &policy, &resource_ids).map_err(EngineError::Policy)?;

        let previous_policy = std::mem::replace(&mut self.policy, std::sync::Arc::new(policy));
        let previous_ids = std::mem::replace(&mut self.resource_ids, resource_ids);
        let maps = match self.reconcile() {
            Ok(maps) => maps,
            Err(err) => {
                tracing::error!(error = %err, "failed to apply the new policy; restoring the previous one");
                self.policy = previous_policy;
                self.resource_ids = previous_ids;
                if let Err(restore) = self.reconcile() {
                    tracing::error!(error = %restore, "failed to restore the previous policy's maps");
                }
                return Err(err);
            }
        };

        let mut txn = self.store.begin_write()?;
        txn.audit(AuditEntry {
            kind: AuditKind::PolicyChange,
            actor: actor.to_owned(),
            device_id: None,
            resource_id: None,
            detail: format!(
                "loaded policy {} with {} resource(s) and {} device(s)",
                self.policy_file,
                self.policy.resources.len(),
                self.policy.devices.len()
            ),
        })?;
        txn.commit()?;
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            policy = %self.policy_file,
            resources = self.policy.resources.len(),
            "reloaded policy"
        );
        Ok(ReloadReport {
            resources: self.policy.resources.len(),
            devices: self.policy.devices.len(),
            maps,
        })
    }

    /// Removes sessions that expired more than `EXPIRED_RETENTION` ago from the kernel and
    /// the store; returns how many.
    pub fn sweep(&mut self) -> Result<usize, EngineError> {
        let now = self.clock.now();
        let (_, purge) = self.desired_sessions(&now)?;
        if purge.is_empty() {
            return Ok(0);
        }
        for (device_id, resource_id) in &purge {
            self.maps.remove_session(SessionKey {
                device_id: *device_id,
                resource_id: *resource_id,
            })?;
        }
        let mut txn = self.store.begin_write()?;
        let removed = txn.remove_session_keys(&purge)?;
        txn.commit()?;
        tracing::info!(sessions = removed, "removed long-expired sessions");
        Ok(removed)
    }

    /// Returns the current time on both clocks.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }
}

impl<M: KernelMaps> Engine<M> {
    /// Writes a `sign_in_rejected` audit entry for `device_id`. A failed write is logged and
    /// not returned, so the caller still reports the rejection itself.
    fn audit_rejected_sign_in(&self, actor: &str, device_id: u32, detail: String) {
        tracing::warn!(device_id, actor, detail, "rejected sign-in");
        let write = || -> Result<(), crate::store::StoreError> {
            let mut txn = self.store.begin_write()?;
            txn.audit(AuditEntry {
                kind: AuditKind::SignInRejected,
                actor: actor.to_owned(),
                device_id: Some(device_id),
                resource_id: None,
                detail,
            })?;
            txn.commit()
        };
        if let Err(err) = write() {
            tracing::error!(device_id, actor, error = %err, "failed to write the audit entry of a rejected sign-in");
        }
    }
}

/// Lists up to ten known users with their emails and issuers, for a not-found hint.
fn known_users(users: &[UserRecord]) -> String {
    if users.is_empty() {
        return "no user has signed in yet".to_owned();
    }
    let known: Vec<String> = users
        .iter()
        .take(10)
        .map(|user| match &user.email {
            Some(email) => format!("{} ({email}) of {}", user.key.subject, user.key.issuer),
            None => format!("{} of {}", user.key.subject, user.key.issuer),
        })
        .collect();
    format!("known users: {}", known.join(", "))
}

pub(super) fn not_found(what: String, hint: &str) -> EngineError {
    EngineError::NotFound {
        what,
        hint: format!("; {hint}"),
    }
}
