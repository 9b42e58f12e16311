//! One function per admin request. Each runs on a blocking thread, because store commits
//! wait for fsync.

use std::{sync::atomic::Ordering, time::Duration};

use serde_json::{Value, json};

use super::{DeviceRef, ErrorCode, GrantPair, Request, Response, RevokeRequest};
use crate::{
    daemon::DaemonState,
    dataplane::maps::KernelMaps,
    engine::{EngineError, GrantTarget, MAX_GRANT_BATCH, RevokeSelector},
    explain::{Packet, explain},
    policy::PolicyLoadError,
    store::{AuditEntry, AuditKind, DeviceRecord, EnrollmentSource, NewDevice, StoreError},
};

type HandlerResult = Result<Value, (ErrorCode, String)>;

/// Runs `request` for `actor` and returns the response to send.
pub fn handle(state: &DaemonState, request: Request, actor: &str) -> Response {
    let result = match request {
        Request::Status => status(state),
        Request::DeviceEnroll {
            name,
            owner,
            addresses,
            mac,
        } => device_enroll(state, name, owner, addresses, mac, actor),
        Request::DeviceList => device_list(state),
        Request::DeviceShow { device } => device_show(state, &device),
        Request::DeviceRemove { device } => device_remove(state, &device, actor),
        Request::SessionList { device } => session_list(state, device.as_ref()),
        Request::SessionGrant {
            device,
            resource,
            duration_secs,
        } => session_grant(state, &device, &resource, duration_secs, actor),
        Request::SessionGrantBatch {
            grants,
            duration_secs,
        } => session_grant_batch(state, &grants, duration_secs, actor),
        Request::SessionRevoke { selector } => session_revoke(state, selector, actor),
        Request::ResourceList => resource_list(state),
        Request::Explain {
            source,
            destination,
            protocol,
            port,
        } => explain_packet(state, source, destination, protocol, port),
        Request::Stats => stats(state),
        Request::Audit { limit } => state
            .store
            .audit_tail(limit)
            .map(|records| json!(records))
            .map_err(store_error),
        Request::Reload => reload(state, actor),
    };
    match result {
        Ok(result) => Response::Ok { result },
        Err((code, message)) => {
            tracing::warn!(actor, ?code, error = %message, "admin request failed");
            Response::Error { code, message }
        }
    }
}

fn status(state: &DaemonState) -> HandlerResult {
    let engine = state.lock_engine();
    let counters = crate::daemon::counters_json(engine.maps());
    let sessions = engine.maps().sessions().map_err(dataplane_error)?;
    let now = engine.now();
    let live = sessions
        .iter()
        .filter(|(_, value)| now.boot_ns < value.expires_at_boot_ns)
        .count();
    let idp = state.idp_health();
    Ok(json!({
        "interface": state.config.interface,
        "xdp_mode": state.attachment.mode_name(),
        "xdp_mode_requested": state.config.xdp_mode.as_str(),
        "link_kind": state.config.link_kind,
        "program": engine.maps().program_name(),
        "program_id": state.attachment.program_id,
        "link_id": state.attachment.link_id,
        "adopted": state.attachment.adopted,
        "pin_folder": state.attachment.pin_folder,
        "store": state.store.path(),
        "policy": state.config.policy,
        "resources": engine.policy().resources.len(),
        "sessions_live": live,
        "sessions_expired": sessions.len() - live,
        "counters": counters,
        "idp": idp,
    }))
}

fn find_device(
    state: &DaemonState,
    device: &DeviceRef,
) -> Result<DeviceRecord, (ErrorCode, String)> {
    let found = match device {
        DeviceRef::Id(id) => state.store.device(*id),
        DeviceRef::Name(name) => state.store.device_by_name(name),
    }
    .map_err(store_error)?;
    found.ok_or_else(|| {
        (
            ErrorCode::NotFound,
            format!("device {device} not found; see `enforcer device list`"),
        )
    })
}

fn device_enroll(
    state: &DaemonState,
    name: String,
    owner: Option<String>,
    addresses: Vec<std::net::IpAddr>,
    mac: Option<String>,
    actor: &str,
) -> HandlerResult {
    let mac = match mac {
        Some(text) => Some(crate::policy::parse_mac(&text).ok_or_else(|| {
            (
                ErrorCode::Invalid,
                format!("mac {text:?} is invalid: use six hex bytes such as 02:00:5e:00:53:01"),
            )
        })?),
        None => None,
    };
    crate::policy::check_device_name(&name).map_err(|message| (ErrorCode::Invalid, message))?;
    if addresses.is_empty() {
        return Err((
            ErrorCode::Invalid,
            format!("device {name:?} has no addresses; pass at least one --address"),
        ));
    }
    let mut engine = state.lock_engine();
    let mut txn = state.store.begin_write().map_err(store_error)?;
    let record = txn
        .enroll_device(NewDevice {
            name,
            owner,
            addresses,
            mac,
            source: EnrollmentSource::Admin,
        })
        .map_err(store_error)?;
    txn.audit(AuditEntry {
        kind: AuditKind::Enrollment,
        actor: actor.to_owned(),
        device_id: Some(record.id),
        resource_id: None,
        detail: format!(
            "enrolled device {} with {:?}",
            record.name, record.addresses
        ),
    })
    .map_err(store_error)?;
    txn.commit().map_err(store_error)?;
    engine.reconcile().map_err(engine_error)?;
    tracing::info!(device_id = record.id, name = %record.name, actor, "enrolled device");
    Ok(json!(record))
}

fn device_list(state: &DaemonState) -> HandlerResult {
    state
        .store
        .devices()
        .map(|devices| json!(devices))
        .map_err(store_error)
}

fn device_show(state: &DaemonState, device: &DeviceRef) -> HandlerResult {
    let record = find_device(state, device)?;
    let auth = state.store.authentication(record.id).map_err(store_error)?;
    let sessions = session_rows(state, Some(record.id))?;
    Ok(json!({ "device": record, "last_authentication": auth, "sessions": sessions }))
}

fn device_remove(state: &DaemonState, device: &DeviceRef, actor: &str) -> HandlerResult {
    let record = find_device(state, device)?;
    if record.source == EnrollmentSource::Policy {
        return Err((
            ErrorCode::Conflict,
            format!(
                "device {} is listed in the policy file; remove it there and run `enforcer reload`",
                record.name
            ),
        ));
    }
    let mut engine = state.lock_engine();
    let revoked = engine
        .revoke(
            &RevokeSelector::Device {
                device_id: record.id,
            },
            actor,
        )
        .map_err(engine_error)?;
    let mut txn = state.store.begin_write().map_err(store_error)?;
    txn.remove_device(record.id).map_err(store_error)?;
    txn.audit(AuditEntry {
        kind: AuditKind::Removal,
        actor: actor.to_owned(),
        device_id: Some(record.id),
        resource_id: None,
        detail: format!("removed device {}", record.name),
    })
    .map_err(store_error)?;
    txn.commit().map_err(store_error)?;
    engine.reconcile().map_err(engine_error)?;
    tracing::info!(device_id = record.id, actor, "removed device");
    Ok(json!({ "device": record, "sessions_removed": revoked.sessions }))
}

fn session_rows(
    state: &DaemonState,
    device_id: Option<u32>,
) -> Result<Vec<Value>, (ErrorCode, String)> {
    let engine = state.lock_engine();
    let now = engine.now();
    let kernel: std::collections::HashMap<_, _> = engine
        .maps()
        .sessions()
        .map_err(dataplane_error)?
        .into_iter()
        .collect();
    let device_names: std::collections::HashMap<u32, String> = state
        .store
        .devices()
        .map_err(store_error)?
        .into_iter()
        .map(|device| (device.id, device.name))
        .collect();
    let mut rows = Vec::new();
    for session in state.store.sessions().map_err(store_error)? {
        if device_id.is_some_and(|id| id != session.device_id) {
            continue;
        }
        let key = common::SessionKey {
            device_id: session.device_id,
            resource_id: session.resource_id,
        };
        let expires = kernel.get(&key).map(|value| value.expires_at_boot_ns);
        let resource = engine
            .resource_by_id(session.resource_id)
            .map(|resource| resource.name.clone());
        rows.push(json!({
            "device_id": session.device_id,
            "device": device_names.get(&session.device_id),
            "resource_id": session.resource_id,
            "resource": resource,
            "source": session.source,
            "user": session.user,
            "amr": session.amr,
            "started_unix_ns": session.start.wall_unix_ns,
            "expires_unix_ns": expires.map(|boot| crate::clock::expiry_wall_ns(boot, &now)),
            "live": expires.is_some_and(|boot| now.boot_ns < boot),
            "in_kernel": expires.is_some(),
        }));
    }
    Ok(rows)
}

fn session_list(state: &DaemonState, device: Option<&DeviceRef>) -> HandlerResult {
    let device_id = match device {
        Some(device) => Some(find_device(state, device)?.id),
        None => None,
    };
    Ok(json!(session_rows(state, device_id)?))
}

fn session_revoke(state: &DaemonState, request: RevokeRequest, actor: &str) -> HandlerResult {
    let selector = match request {
        RevokeRequest::Device { device } => RevokeSelector::Device {
            device_id: find_device(state, &device)?.id,
        },
        RevokeRequest::Session { device, resource } => RevokeSelector::Session {
            device_id: find_device(state, &device)?.id,
            resource,
        },
        RevokeRequest::User { issuer, subject } => RevokeSelector::User { issuer, subject },
        RevokeRequest::Resource { resource } => RevokeSelector::Resource { resource },
    };
    let mut engine = state.lock_engine();
    engine
        .revoke(&selector, actor)
        .map_err(engine_error)
        .map(|report| json!(report))
}

fn session_grant(
    state: &DaemonState,
    device: &DeviceRef,
    resource: &str,
    duration_secs: u64,
    actor: &str,
) -> HandlerResult {
    let record = find_device(state, device)?;
    check_grant_duration(duration_secs)?;
    let mut engine = state.lock_engine();
    engine
        .grant(
            record.id,
            resource,
            Duration::from_secs(duration_secs),
            actor,
        )
        .map(|granted| json!(granted))
        .map_err(engine_error)
}

fn check_grant_duration(duration_secs: u64) -> Result<(), (ErrorCode, String)> {
    if duration_secs == 0 || duration_secs > crate::policy::MAX_SESSION.as_secs() {
        return Err((
            ErrorCode::Invalid,
            format!("duration {duration_secs}s is out of range: use 1s to 366d"),
        ));
    }
    Ok(())
}

fn session_grant_batch(
    state: &DaemonState,
    grants: &[GrantPair],
    duration_secs: u64,
    actor: &str,
) -> HandlerResult {
    // Checked before any device is resolved, so an oversized request costs no store reads.
    if grants.len() > MAX_GRANT_BATCH {
        return Err(engine_error(EngineError::BatchTooLarge {
            count: grants.len(),
            max: MAX_GRANT_BATCH,
        }));
    }
    check_grant_duration(duration_secs)?;
    let mut device_ids = std::collections::HashMap::new();
    let mut targets = Vec::with_capacity(grants.len());
    for pair in grants {
        let device_id = match device_ids.get(&pair.device) {
            Some(id) => *id,
            None => {
                let id = find_device(state, &pair.device)?.id;
                device_ids.insert(pair.device.clone(), id);
                id
            }
        };
        targets.push(GrantTarget {
            device_id,
            resource: pair.resource.clone(),
        });
    }
    let mut engine = state.lock_engine();
    engine
        .grant_batch(&targets, Duration::from_secs(duration_secs), actor)
        .map(|granted| json!(granted))
        .map_err(engine_error)
}

fn resource_list(state: &DaemonState) -> HandlerResult {
    let engine = state.lock_engine();
    let resources: Vec<Value> = engine
        .policy()
        .resources
        .iter()
        .map(|resource| {
            json!({
                "id": engine.resource_ids().get(&resource.name),
                "resource": resource,
            })
        })
        .collect();
    Ok(json!(resources))
}

fn explain_packet(
    state: &DaemonState,
    source: std::net::IpAddr,
    destination: std::net::IpAddr,
    protocol: u8,
    port: Option<u16>,
) -> HandlerResult {
    let engine = state.lock_engine();
    let packet = Packet {
        source,
        destination,
        protocol,
        port,
    };
    let explanation = explain(engine.maps(), &packet, &engine.now()).map_err(dataplane_error)?;
    let device = match explanation.device_id {
        Some(id) => state.store.device(id).map_err(store_error)?,
        None => None,
    };
    let resource = explanation
        .rule
        .as_ref()
        .and_then(|rule| engine.resource_by_id(rule.resource_id))
        .map(|resource| resource.name.clone());
    Ok(json!({
        "device": device.map(|device| device.name),
        "resource": resource,
        "explanation": explanation,
    }))
}

fn stats(state: &DaemonState) -> HandlerResult {
    let engine = state.lock_engine();
    let metrics = engine.metrics();
    Ok(json!({
        "counters": crate::daemon::counters_json(engine.maps()),
        "sign_ins": metrics.sign_ins.load(Ordering::Relaxed),
        "grants": metrics.grants.load(Ordering::Relaxed),
        "revocations": metrics.revocations.load(Ordering::Relaxed),
        "reloads": metrics.reloads.load(Ordering::Relaxed),
        "map_full_errors": metrics.map_full.load(Ordering::Relaxed),
        "sessions_in_kernel": engine.maps().sessions().map_err(dataplane_error)?.len(),
        "session_capacity": engine.maps().session_capacity(),
    }))
}

fn reload(state: &DaemonState, actor: &str) -> HandlerResult {
    let report = state.reload(actor).map_err(|err| match err {
        crate::daemon::ReloadError::Load(PolicyLoadError::Invalid(_))
        | crate::daemon::ReloadError::Engine(EngineError::Policy(_)) => (
            ErrorCode::Invalid,
            format!("{err}; the previous policy stays in force"),
        ),
        other => (ErrorCode::Internal, other.to_string()),
    })?;
    Ok(json!(report))
}

fn store_error(err: StoreError) -> (ErrorCode, String) {
    let code = match &err {
        StoreError::NotFound { .. } => ErrorCode::NotFound,
        StoreError::Conflict(_) => ErrorCode::Conflict,
        _ => ErrorCode::Internal,
    };
    (code, err.to_string())
}

fn dataplane_error(err: crate::dataplane::DataplaneError) -> (ErrorCode, String) {
    (ErrorCode::Internal, err.to_string())
}

fn engine_error(err: EngineError) -> (ErrorCode, String) {
    let code = match &err {
        EngineError::NotFound { .. } => ErrorCode::NotFound,
        EngineError::Denied(_) => ErrorCode::Denied,
        EngineError::Policy(_)
        | EngineError::EmptyBatch
        | EngineError::BatchTooLarge { .. }
        | EngineError::DuplicatePair { .. } => ErrorCode::Invalid,
        EngineError::Store(StoreError::Conflict(_)) => ErrorCode::Conflict,
        _ => ErrorCode::Internal,
    };
    (code, err.to_string())
}
