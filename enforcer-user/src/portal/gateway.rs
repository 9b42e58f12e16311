//! The daemon's `Gateway`: devices and sessions from the store, sign-ins through the session
//! engine (which checks device ownership, policy, durations and step-up, and audits), and
//! pending prompts from the reauth responder.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tracing::warn;

use super::{DeviceStatus, Gateway, GrantRejected, Granted, SessionView};
use crate::{
    clock::{expiry_boot_ns, expiry_wall_ns, instant_at_wall},
    daemon::DaemonState,
    idp::{Authentication, LoginOrigin},
    responder::Responder,
    store::{AuthRecord, GrantSource, UserKey, UserRecord, unix_ms_now},
};

/// `Gateway` backed by the running daemon.
pub struct DaemonGateway {
    pub state: DaemonState,
    pub responder: Arc<Responder>,
}

fn unix_ns(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

fn wall_time(unix_ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(unix_ns)
}

impl Gateway for DaemonGateway {
    fn device_for_address(&self, address: IpAddr) -> Option<u32> {
        match self.state.store.device_by_address(address) {
            Ok(device) => device,
            Err(err) => {
                warn!(%address, error = %err, "failed to look up the device of an address");
                None
            }
        }
    }

    fn check_enrollment(&self, address: IpAddr) -> Result<(), String> {
        self.state.lock_engine().policy().check_enrollment(address)
    }

    fn device_status(&self, device_id: u32) -> DeviceStatus {
        let name = match self.state.store.device(device_id) {
            Ok(Some(device)) => device.name,
            Ok(None) => format!("device {device_id}"),
            Err(err) => {
                warn!(device_id, error = %err, "failed to read the device");
                format!("device {device_id}")
            }
        };
        let sessions = self.state.store.sessions().unwrap_or_else(|err| {
            warn!(device_id, error = %err, "failed to read the sessions");
            Vec::new()
        });

        let engine = self.state.lock_engine();
        let now = engine.clock().now();
        let mut views = Vec::new();
        for session in sessions.iter().filter(|s| s.device_id == device_id) {
            let Some(resource) = engine.resource_by_id(session.resource_id) else {
                continue;
            };
            let duration = match &session.source {
                GrantSource::SignIn => resource.session,
                GrantSource::Admin { duration_secs, .. } => Duration::from_secs(*duration_secs),
            };
            let expires_boot_ns = expiry_boot_ns(&session.start, duration, &now);
            if expires_boot_ns <= now.boot_ns {
                continue;
            }
            views.push(SessionView {
                resource: resource.name.clone(),
                expires_at: wall_time(expiry_wall_ns(expires_boot_ns, &now)),
            });
        }

        let mut pending = Vec::new();
        let mut pending_requires_mfa = false;
        if let Some(prompt) = self.responder.prompt(device_id) {
            for waiting in &prompt.resources {
                if let Some(resource) = engine.resource_by_id(waiting.resource_id) {
                    pending.push(resource.name.clone());
                    pending_requires_mfa |= resource.step_up;
                }
            }
        }
        DeviceStatus {
            device_id,
            name,
            sessions: views,
            pending,
            pending_requires_mfa,
        }
    }

    fn grant(
        &self,
        origin: LoginOrigin,
        authentication: &Authentication,
    ) -> Result<Granted, GrantRejected> {
        let key = UserKey {
            issuer: authentication.issuer.clone(),
            subject: authentication.subject.clone(),
        };
        let now_ms = unix_ms_now();
        let first_seen_unix_ms = match self.state.store.user(&key) {
            Ok(Some(user)) => user.first_seen_unix_ms,
            _ => now_ms,
        };
        let user = UserRecord {
            key: key.clone(),
            email: authentication.email.clone(),
            name: None,
            groups: authentication.groups.clone(),
            first_seen_unix_ms,
            last_seen_unix_ms: now_ms,
        };

        // NOTE: the engine runs on the portal's async worker while it holds the engine lock;
        // a sign-in commits one store transaction and a few map writes, so it is short.
        let (report, enrolled_device) = {
            let mut engine = self.state.lock_engine();
            let now = engine.clock().now();
            let auth = AuthRecord {
                user: key,
                at: instant_at_wall(&now, unix_ns(authentication.auth_time)),
                amr: authentication.amr.clone(),
                acr: authentication.acr.clone(),
            };
            let result = match origin.device_id {
                Some(device_id) => engine
                    .sign_in(device_id, user, auth)
                    .map(|report| (report, None)),
                None => engine
                    .enroll_and_sign_in(origin.address, user, auth)
                    .map(|enrolled| {
                        let name = enrolled.enrolled.then_some(enrolled.device.name);
                        (enrolled.sign_in, name)
                    }),
            };
            result.map_err(|err| GrantRejected {
                reason: err.to_string(),
            })?
        };

        let granted_ids: Vec<u32> = report.granted.iter().map(|s| s.resource_id).collect();
        self.responder.resolve(report.device_id, &granted_ids);
        Ok(Granted {
            sessions: report
                .granted
                .iter()
                .map(|session| SessionView {
                    resource: session.resource.clone(),
                    expires_at: wall_time(session.expires_unix_ns),
                })
                .collect(),
            enrolled_device,
        })
    }
}
