//! Enrollment by a first sign-in: a sign-in from an address with no enrolled device enrolls a
//! device owned by the signed-in user and renews its sessions, in one operation.

use std::{net::IpAddr, sync::atomic::Ordering};

use super::{
    Engine, EngineError,
    ops::{SignInPlan, SignInReport, sign_in_audit},
    reconcile::device_entries,
};
use crate::{
    dataplane::maps::KernelMaps,
    store::{
        AuditEntry, AuditKind, AuthRecord, DeviceRecord, EnrollmentSource, NewDevice, UserRecord,
    },
};

/// Outcome of a sign-in from an address that had no enrolled device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EnrollReport {
    pub device: DeviceRecord,
    /// False when a parallel first sign-in from the same address enrolled the device
    /// first, so this one only signed in on it.
    pub enrolled: bool,
    pub sign_in: SignInReport,
}

/// Maximum length of a device name.
const MAX_NAME_LEN: usize = 64;

impl<M: KernelMaps> Engine<M> {
    /// Enrolls a device with `address`, owned by `user`, and renews its sessions as
    /// `sign_in` does. The kernel device entry and sessions are written first, then one store
    /// transaction commits the device, the user, the authentication, the sessions and two
    /// audit entries (`enrollment` and `sign_in`). On any failure the kernel entries are
    /// removed again and nothing is committed. The policy must allow enrollment from
    /// `address` (`enroll_on_first_sign_in`, `enroll_from`), and the user must have fewer
    /// than `enroll_max_devices_per_user` devices enrolled by sign-in.
    pub fn enroll_and_sign_in(
        &mut self,
        address: IpAddr,
        user: UserRecord,
        auth: AuthRecord,
    ) -> Result<EnrollReport, EngineError> {
        if let Some(device_id) = self.store.device_by_address(address)? {
            let sign_in = self.sign_in(device_id, user, auth)?;
            let device = self
                .store
                .device(device_id)?
                .ok_or_else(|| EngineError::NotFound {
                    what: format!("device {device_id}"),
                    hint: "; it was removed during the sign-in, so sign in again".into(),
                })?;
            return Ok(EnrollReport {
                device,
                enrolled: false,
                sign_in,
            });
        }

        let actor = format!("user:{}#{}", user.key.issuer, user.key.subject);
        if let Err(reason) = self.policy.check_enrollment(address) {
            self.audit_rejected_enrollment(&actor, address, &reason);
            return Err(EngineError::Denied(reason));
        }

        let owner = user
            .email
            .clone()
            .unwrap_or_else(|| user.key.subject.clone());
        let limit = self.policy.enrollment.max_devices_per_user;
        let enrolled = self
            .store
            .devices()?
            .iter()
            .filter(|device| {
                device.source == EnrollmentSource::SignIn
                    && device.owner.as_deref() == Some(owner.as_str())
            })
            .count();
        if enrolled >= limit {
            let reason = format!(
                "{owner} already enrolled {enrolled} devices by signing in, the limit of `enroll_max_devices_per_user` ({limit}); ask an administrator to remove unused ones (`enforcer device remove`) or to enroll this one"
            );
            self.audit_rejected_enrollment(&actor, address, &reason);
            return Err(EngineError::Denied(reason));
        }
        let mut txn = self.store.begin_write()?;
        let name = free_device_name(&self.store, &owner, address)?;
        let device = txn.enroll_device(NewDevice {
            name,
            owner: Some(owner),
            addresses: vec![address],
            // NOTE: no MAC binding, because the portal gets only a TCP connection, and the
            // neighbor table has the client's MAC only when it is on a link of the gateway.
            mac: None,
            source: EnrollmentSource::SignIn,
        })?;
        let SignInPlan {
            report,
            sessions,
            kind,
        } = self.plan_sign_in(device.id, &user, &auth);

        // Kernel first: the device entry, then its sessions.
        let entries = device_entries(std::slice::from_ref(&device), self.link_kind);
        for (entry_address, entry) in &entries {
            if let Err(err) = self.maps.set_device(*entry_address, *entry) {
                tracing::error!(%address, error = %err, "failed to write the enrolled device to the kernel; nothing was committed");
                self.remove_device_entries(&device);
                return Err(err.into());
            }
        }
        let undo = match self.write_sessions(&sessions) {
            Ok(undo) => undo,
            Err(err) => {
                self.remove_device_entries(&device);
                return Err(err);
            }
        };

        let result = (|| {
            for (record, _) in &sessions {
                txn.put_session(record)?;
            }
            txn.put_user(&user)?;
            txn.put_authentication(device.id, &auth)?;
            txn.audit(AuditEntry {
                kind: AuditKind::Enrollment,
                actor: actor.clone(),
                device_id: Some(device.id),
                resource_id: None,
                detail: format!(
                    "enrolled device {} with address {address} on the first sign-in of its owner {}",
                    device.name,
                    device.owner.as_deref().unwrap_or_default()
                ),
            })?;
            txn.audit(sign_in_audit(kind, &actor, &device, &auth, sessions.len()))?;
            txn.commit()?;
            Ok::<(), EngineError>(())
        })();
        if let Err(err) = result {
            tracing::error!(%address, error = %err, "failed to commit the enrollment; removed its kernel entries");
            self.restore(&undo);
            self.remove_device_entries(&device);
            return Err(err);
        }

        self.metrics.sign_ins.fetch_add(1, Ordering::Relaxed);
        self.metrics.enrollments.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .grants
            .fetch_add(sessions.len() as u64, Ordering::Relaxed);
        tracing::info!(
            device_id = device.id,
            device = %device.name,
            %address,
            user = %user.key.subject,
            granted = report.granted.len(),
            "enrolled a device on its first sign-in"
        );
        Ok(EnrollReport {
            device,
            enrolled: true,
            sign_in: report,
        })
    }

    /// Removes the kernel device entries of `device`, which the store does not record.
    fn remove_device_entries(&mut self, device: &DeviceRecord) {
        for address in &device.addresses {
            if let Err(err) = self.maps.remove_device(*address) {
                tracing::error!(%address, error = %err, "failed to remove an uncommitted device entry; the next reconcile removes it");
            }
        }
    }

    /// Writes a `sign_in_rejected` audit entry for a first sign-in that may not enroll.
    fn audit_rejected_enrollment(&self, actor: &str, address: IpAddr, reason: &str) {
        tracing::warn!(%address, actor, reason, "rejected enrollment on first sign-in");
        let write = || -> Result<(), crate::store::StoreError> {
            let mut txn = self.store.begin_write()?;
            txn.audit(AuditEntry {
                kind: AuditKind::SignInRejected,
                actor: actor.to_owned(),
                device_id: None,
                resource_id: None,
                detail: format!("rejected enrollment of address {address}: {reason}"),
            })?;
            txn.commit()
        };
        if let Err(err) = write() {
            tracing::error!(%address, actor, error = %err, "failed to write the audit entry of a rejected enrollment");
        }
    }
}

/// Returns a device name from the owner's name and the address, such as
/// `alice-192.0.2.7`, with a numeric suffix when that name is taken.
fn free_device_name(
    store: &crate::store::Store,
    owner: &str,
    address: IpAddr,
) -> Result<String, EngineError> {
    let user: String = owner
        .split('@')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let address = address.to_string().replace(':', "-");
    let keep = MAX_NAME_LEN.saturating_sub(address.len() + 4).max(1);
    let user: String = user.chars().take(keep).collect();
    let base = format!("{user}-{address}");
    for suffix in 1..=100u32 {
        let name = if suffix == 1 {
            base.clone()
        } else {
            format!("{base}-{suffix}")
        };
        if store.device_by_name(&name)?.is_none() {
            return Ok(name);
        }
    }
    Err(EngineError::Denied(format!(
        "100 devices are already named like {base}; remove some with `enforcer device remove`"
    )))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::super::tests::{Fixture, fixture, start};
    use crate::{
        dataplane::DataplaneError,
        engine::EngineError,
        store::{AuditKind, AuthRecord, EnrollmentSource, UserKey, UserRecord},
    };

    const POLICY: &str = r#"
[settings]
enroll_on_first_sign_in = true
enroll_from = ["192.0.2.0/25"]

[[resource]]
name = "payroll"
destinations = [{ prefix = "198.51.100.0/24", protocol = "tcp", ports = 443 }]
session = "1h"
users = ["alice@example.com"]

[[resource]]
name = "wiki"
destinations = [{ prefix = "203.0.113.0/24" }]
session = "8h"
groups = ["staff"]
"#;

    fn address(text: &str) -> IpAddr {
        text.parse().expect("a valid address")
    }

    fn alice() -> UserRecord {
        UserRecord {
            key: UserKey {
                issuer: "http://127.0.0.1:3000".to_owned(),
                subject: "alice".to_owned(),
            },
            email: Some("alice@example.com".to_owned()),
            name: None,
            groups: vec!["staff".to_owned()],
            first_seen_unix_ms: 0,
            last_seen_unix_ms: 0,
        }
    }

    fn auth() -> AuthRecord {
        AuthRecord {
            user: alice().key,
            at: start(),
            amr: vec!["pwd".to_owned()],
            acr: None,
        }
    }

    fn ready() -> Fixture {
        let mut fixture = fixture(POLICY);
        fixture.engine.reconcile().expect("reconcile");
        fixture
    }

    #[test]
    fn enroll_creates_owned_device_and_sessions() {
        let mut fixture = ready();
        let report = fixture
            .engine
            .enroll_and_sign_in(address("192.0.2.50"), alice(), auth())
            .expect("enroll");
        assert!(report.enrolled);
        assert_eq!(report.device.name, "alice-192.0.2.50");
        assert_eq!(report.device.owner.as_deref(), Some("alice@example.com"));
        assert_eq!(report.device.source, EnrollmentSource::SignIn);
        assert_eq!(report.device.mac, None);
        assert_eq!(report.sign_in.granted.len(), 2);

        let device_id = report.device.id;
        let kernel_device = fixture.engine.maps().devices.get(&address("192.0.2.50"));
        assert_eq!(kernel_device.map(|entry| entry.device_id), Some(device_id));
        let kernel_sessions = fixture
            .engine
            .maps()
            .sessions
            .keys()
            .filter(|key| key.device_id == device_id)
            .count();
        assert_eq!(kernel_sessions, 2);
        let store = fixture.engine.store();
        assert_eq!(
            store
                .device_by_address(address("192.0.2.50"))
                .expect("read"),
            Some(device_id)
        );
        assert_eq!(store.sessions().expect("read").len(), 2);
        assert!(store.authentication(device_id).expect("read").is_some());

        let audit = store.audit_tail(2).expect("read the audit log");
        let kinds: Vec<AuditKind> = audit.iter().map(|record| record.kind).collect();
        assert_eq!(kinds, vec![AuditKind::Enrollment, AuditKind::SignIn]);
        assert!(
            audit
                .iter()
                .all(|record| record.device_id == Some(device_id))
        );
        assert_eq!(audit[0].actor, "user:http://127.0.0.1:3000#alice");
        let enrollments = fixture
            .engine
            .metrics()
            .enrollments
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(enrollments, 1);
    }

    #[test]
    fn enroll_survives_reconcile() {
        let mut fixture = ready();
        let report = fixture
            .engine
            .enroll_and_sign_in(address("192.0.2.50"), alice(), auth())
            .expect("enroll");
        let reconciled = fixture.engine.reconcile().expect("reconcile");
        assert_eq!(reconciled.devices_removed, 0);
        assert_eq!(reconciled.sessions_removed, 0);
        let devices = fixture.engine.store().devices().expect("read");
        assert_eq!(devices, vec![report.device]);
    }

    #[test]
    fn enroll_outside_prefix_is_rejected() {
        let mut fixture = ready();
        let err = fixture
            .engine
            .enroll_and_sign_in(address("192.0.2.200"), alice(), auth())
            .expect_err("192.0.2.200 is outside enroll_from");
        assert!(matches!(err, EngineError::Denied(_)), "{err}");
        assert!(err.to_string().contains("enroll_from"), "{err}");
        assert!(fixture.engine.maps().devices.is_empty());
        assert!(fixture.engine.store().devices().expect("read").is_empty());
        let audit = fixture.engine.store().audit_tail(1).expect("read");
        assert_eq!(audit[0].kind, AuditKind::SignInRejected);
        assert!(
            audit[0].detail.contains("192.0.2.200"),
            "{}",
            audit[0].detail
        );
    }

    #[test]
    fn enroll_with_full_map_commits_nothing() {
        let mut fixture = ready();
        fixture.engine.maps_mut().session_capacity = 1;
        let audit_before = fixture.engine.store().audit_tail(100).expect("read").len();
        let err = fixture
            .engine
            .enroll_and_sign_in(address("192.0.2.50"), alice(), auth())
            .expect_err("the second session does not fit");
        assert!(
            matches!(err, EngineError::Dataplane(DataplaneError::MapFull { .. })),
            "{err}"
        );
        assert!(
            fixture.engine.maps().devices.is_empty(),
            "the device entry is removed again"
        );
        assert!(fixture.engine.maps().sessions.is_empty());
        let store = fixture.engine.store();
        assert!(store.devices().expect("read").is_empty());
        assert!(store.sessions().expect("read").is_empty());
        assert!(store.users().expect("read").is_empty());
        assert_eq!(store.audit_tail(100).expect("read").len(), audit_before);
    }

    #[test]
    fn enroll_over_user_device_limit_is_rejected() {
        let policy = POLICY.replace(
            "enroll_from = [\"192.0.2.0/25\"]",
            "enroll_from = [\"192.0.2.0/25\"]\nenroll_max_devices_per_user = 2",
        );
        let mut fixture = fixture(&policy);
        fixture.engine.reconcile().expect("reconcile");
        for host in ["192.0.2.10", "192.0.2.11"] {
            let report = fixture
                .engine
                .enroll_and_sign_in(address(host), alice(), auth())
                .expect("enroll within the limit");
            assert!(report.enrolled, "{host}");
        }
        let audit_before = fixture.engine.store().audit_tail(100).expect("read").len();

        let err = fixture
            .engine
            .enroll_and_sign_in(address("192.0.2.12"), alice(), auth())
            .expect_err("a third device is over the limit of 2");
        assert!(matches!(err, EngineError::Denied(_)), "{err}");
        assert!(
            err.to_string().contains("enroll_max_devices_per_user"),
            "{err}"
        );
        assert!(err.to_string().contains("enforcer device remove"), "{err}");
        assert_eq!(fixture.engine.maps().devices.len(), 2);
        assert_eq!(fixture.engine.store().devices().expect("read").len(), 2);
        let audit = fixture.engine.store().audit_tail(100).expect("read");
        assert_eq!(audit.len(), audit_before + 1);
        assert_eq!(audit.last().unwrap().kind, AuditKind::SignInRejected);

        // An address that the user already enrolled still signs in.
        let again = fixture
            .engine
            .enroll_and_sign_in(address("192.0.2.10"), alice(), auth())
            .expect("sign in on an enrolled device");
        assert!(!again.enrolled);
    }

    #[test]
    fn enroll_interrupted_before_commit_is_undone() {
        // The kernel entries of an enrollment whose daemon died before the store commit: the
        // maps of a completed enrollment beside a store that never saw it.
        let mut completed = ready();
        completed
            .engine
            .enroll_and_sign_in(address("192.0.2.50"), alice(), auth())
            .expect("enroll");
        let crashed_maps = completed.engine.maps().clone();
        let mut restarted = ready();
        *restarted.engine.maps_mut() = crashed_maps;

        let report = restarted.engine.reconcile().expect("reconcile at start");
        assert_eq!(report.devices_removed, 1);
        assert_eq!(report.sessions_removed, 2);
        assert!(restarted.engine.maps().devices.is_empty());
        assert!(restarted.engine.maps().sessions.is_empty());

        // The next enrollment takes the same device id, and the kernel matches the store.
        let again = restarted
            .engine
            .enroll_and_sign_in(address("192.0.2.50"), alice(), auth())
            .expect("enroll after the restart");
        let store = restarted.engine.store();
        assert_eq!(store.devices().expect("read"), vec![again.device.clone()]);
        let kernel_devices: Vec<u32> = restarted
            .engine
            .maps()
            .devices
            .values()
            .map(|entry| entry.device_id)
            .collect();
        assert_eq!(kernel_devices, vec![again.device.id]);
        assert_eq!(
            restarted.engine.maps().sessions.len(),
            store.sessions().expect("read").len()
        );
    }

    #[test]
    fn enroll_of_enrolled_address_signs_in() {
        let mut fixture = ready();
        let first = fixture
            .engine
            .enroll_and_sign_in(address("192.0.2.50"), alice(), auth())
            .expect("enroll");
        let second = fixture
            .engine
            .enroll_and_sign_in(address("192.0.2.50"), alice(), auth())
            .expect("sign in");
        assert!(!second.enrolled);
        assert_eq!(second.device.id, first.device.id);
        assert_eq!(fixture.engine.store().devices().expect("read").len(), 1);
    }
}
