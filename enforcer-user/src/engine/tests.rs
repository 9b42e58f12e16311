use std::{sync::Arc, time::Duration};

use common::SessionKey;

use super::*;
use crate::dataplane::DataplaneError;
use crate::{
    clock::{Instant, ManualClock},
    dataplane::maps::MemoryMaps,
    policy::parse,
    store::{GrantSource, SessionRecord, UserKey, UserRecord},
};

const POLICY: &str = r#"
[[resource]]
name = "payroll"
destinations = [{ prefix = "198.51.100.0/24", protocol = "tcp", ports = 443 }]
session = "1h"
users = ["alice@example.com"]
step_up = true

[[resource]]
name = "wiki"
destinations = [{ prefix = "203.0.113.0/24" }]
session = "8h"
groups = ["staff"]

[[device]]
name = "alice-laptop"
owner = "alice@example.com"
addresses = ["192.0.2.10"]
"#;

pub(super) fn start() -> Instant {
    Instant {
        wall_unix_ns: 1_700_000_000 * 1_000_000_000,
        boot_ns: 100 * 1_000_000_000,
        boot_id: "boot-a".to_owned(),
    }
}

pub(super) struct Fixture {
    pub _dir: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
    pub engine: Engine<MemoryMaps>,
}

pub(super) fn fixture(policy: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state.redb")).unwrap());
    let clock = Arc::new(ManualClock::new(start()));
    let policy = parse("policy.toml", policy).unwrap();
    let engine = Engine::new(
        store,
        MemoryMaps::default(),
        clock.clone(),
        policy,
        "policy.toml",
        LinkKind::Ethernet,
    )
    .unwrap();
    Fixture {
        _dir: dir,
        clock,
        engine,
    }
}

fn alice() -> UserKey {
    UserKey {
        issuer: "http://127.0.0.1:3000".to_owned(),
        subject: "alice".to_owned(),
    }
}

#[test]
fn reconcile_writes_devices_and_prefixes() {
    let mut fixture = fixture(POLICY);
    let report = fixture.engine.reconcile().unwrap();
    assert_eq!(report.devices_written, 1);
    assert_eq!(report.prefixes_written, 2);
    let maps = fixture.engine.maps();
    assert_eq!(maps.devices.len(), 1);
    assert_eq!(maps.prefixes.len(), 2);
}

#[test]
fn reconcile_removes_uncommitted_sessions() {
    let mut fixture = fixture(POLICY);
    let stray = SessionKey {
        device_id: 1,
        resource_id: 2,
    };
    fixture.engine.maps_mut().sessions.insert(
        stray,
        common::SessionValue {
            expires_at_boot_ns: u64::MAX,
        },
    );
    let report = fixture.engine.reconcile().unwrap();
    assert_eq!(report.sessions_removed, 1);
    assert!(fixture.engine.maps().sessions.is_empty());
}

#[test]
fn reconcile_restores_committed_sessions() {
    let mut fixture = fixture(POLICY);
    fixture.engine.reconcile().unwrap();
    let store = fixture.engine.store().clone();
    let mut txn = store.begin_write().unwrap();
    txn.put_user(&UserRecord {
        key: alice(),
        email: Some("alice@example.com".to_owned()),
        name: None,
        groups: vec!["staff".to_owned()],
        first_seen_unix_ms: 0,
        last_seen_unix_ms: 0,
    })
    .unwrap();
    let wiki = fixture.engine.resource_ids()["wiki"];
    txn.put_session(&SessionRecord {
        device_id: 1,
        resource_id: wiki,
        start: start(),
        source: GrantSource::SignIn,
        user: Some(alice()),
        amr: vec!["pwd".to_owned()],
        acr: None,
    })
    .unwrap();
    txn.commit().unwrap();
    fixture.clock.advance(Duration::from_secs(60));

    let report = fixture.engine.reconcile().unwrap();
    assert_eq!(report.sessions_written, 1);
    let key = SessionKey {
        device_id: 1,
        resource_id: wiki,
    };
    let value = fixture.engine.maps().sessions[&key];
    assert_eq!(
        value.expires_at_boot_ns,
        start().boot_ns + 8 * 3600 * 1_000_000_000
    );
}

const MULTI: &str = r#"
[[resource]]
name = "payroll"
destinations = [{ prefix = "198.51.100.0/24", protocol = "tcp", ports = 443 }]
session = "1h"
users = ["alice@example.com"]
step_up = true

[[resource]]
name = "wiki"
destinations = [{ prefix = "203.0.113.0/24" }]
session = "8h"
groups = ["staff"]

[[resource]]
name = "git"
destinations = [{ prefix = "203.0.113.9/32", protocol = "tcp", ports = 22 }]
session = "30m"
groups = ["staff"]

[[resource]]
name = "hr"
destinations = [{ prefix = "2001:db8:20::/48" }]
session = "1h"
groups = ["hr"]

[[device]]
name = "alice-laptop"
owner = "alice@example.com"
addresses = ["192.0.2.10"]

[[device]]
name = "kiosk"
addresses = ["192.0.2.20"]
"#;

const HOUR_NS: u64 = 3600 * 1_000_000_000;

fn alice_record() -> UserRecord {
    UserRecord {
        key: alice(),
        email: Some("alice@example.com".to_owned()),
        name: Some("Alice".to_owned()),
        groups: vec!["staff".to_owned()],
        first_seen_unix_ms: 0,
        last_seen_unix_ms: 0,
    }
}

fn auth(amr: &[&str], at: Instant) -> crate::store::AuthRecord {
    crate::store::AuthRecord {
        user: alice(),
        at,
        amr: amr.iter().map(|value| value.to_string()).collect(),
        acr: None,
    }
}

fn ready(policy: &str) -> Fixture {
    let mut fixture = fixture(policy);
    fixture.engine.reconcile().unwrap();
    fixture
}

fn kernel_expiry(fixture: &Fixture, resource: &str) -> Option<u64> {
    let resource_id = fixture.engine.resource_ids()[resource];
    let key = SessionKey {
        device_id: 1,
        resource_id,
    };
    fixture
        .engine
        .maps()
        .sessions
        .get(&key)
        .map(|value| value.expires_at_boot_ns)
}

#[test]
fn sign_in_renews_every_allowed_resource() {
    let mut fixture = ready(MULTI);
    let report = fixture
        .engine
        .sign_in(1, alice_record(), auth(&["pwd", "mfa"], start()))
        .unwrap();
    let mut granted: Vec<&str> = report.granted.iter().map(|g| g.resource.as_str()).collect();
    granted.sort();
    assert_eq!(granted, vec!["git", "payroll", "wiki"]);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].resource, "hr");
    assert_eq!(fixture.engine.store().sessions().unwrap().len(), 3);
}

#[test]
fn session_duration_is_per_resource() {
    let mut fixture = ready(MULTI);
    fixture
        .engine
        .sign_in(1, alice_record(), auth(&["mfa"], start()))
        .unwrap();
    let boot = start().boot_ns;
    assert_eq!(kernel_expiry(&fixture, "payroll"), Some(boot + HOUR_NS));
    assert_eq!(kernel_expiry(&fixture, "wiki"), Some(boot + 8 * HOUR_NS));
    assert_eq!(kernel_expiry(&fixture, "git"), Some(boot + HOUR_NS / 2));
    assert_eq!(kernel_expiry(&fixture, "hr"), None);
}

#[test]
fn step_up_requires_multi_factor() {
    let mut fixture = ready(MULTI);
    let report = fixture
        .engine
        .sign_in(1, alice_record(), auth(&["pwd"], start()))
        .unwrap();
    let skipped = report
        .skipped
        .iter()
        .find(|skipped| skipped.resource == "payroll")
        .unwrap();
    assert!(skipped.reason.contains("step-up"), "{}", skipped.reason);
    assert_eq!(kernel_expiry(&fixture, "payroll"), None);
    assert!(kernel_expiry(&fixture, "wiki").is_some());
}

#[test]
fn password_sign_in_keeps_earlier_step_up_session() {
    let mut fixture = ready(MULTI);
    fixture
        .engine
        .sign_in(1, alice_record(), auth(&["mfa"], start()))
        .unwrap();
    let first = kernel_expiry(&fixture, "payroll");
    fixture.clock.advance(Duration::from_secs(600));
    fixture
        .engine
        .sign_in(1, alice_record(), auth(&["pwd"], fixture.clock.now()))
        .unwrap();
    assert_eq!(kernel_expiry(&fixture, "payroll"), first);
    assert_eq!(
        kernel_expiry(&fixture, "wiki"),
        Some(start().boot_ns + 600 * 1_000_000_000 + 8 * HOUR_NS)
    );
}

#[test]
fn owner_mismatch_is_denied() {
    let mut fixture = ready(MULTI);
    let mut bob = alice_record();
    bob.key.subject = "bob".to_owned();
    bob.email = Some("bob@example.com".to_owned());
    let err = fixture
        .engine
        .sign_in(1, bob, auth(&["mfa"], start()))
        .unwrap_err();
    assert!(matches!(err, EngineError::Denied(_)), "{err}");
    assert!(fixture.engine.maps().sessions.is_empty());
}

#[test]
fn wall_clock_step_does_not_extend_session() {
    let mut fixture = ready(MULTI);
    fixture
        .engine
        .sign_in(1, alice_record(), auth(&["mfa"], start()))
        .unwrap();
    let before = kernel_expiry(&fixture, "wiki");
    fixture.clock.step_wall(48 * 3600 * 1_000_000_000);
    fixture.engine.reconcile().unwrap();
    fixture.clock.step_wall(-96 * 3600 * 1_000_000_000);
    fixture.engine.reconcile().unwrap();
    assert_eq!(kernel_expiry(&fixture, "wiki"), before);
}

#[test]
fn revoke_by_device_reports_count() {
    let mut fixture = ready(MULTI);
    fixture
        .engine
        .sign_in(1, alice_record(), auth(&["mfa"], start()))
        .unwrap();
    let report = fixture
        .engine
        .revoke(&RevokeSelector::Device { device_id: 1 }, "admin:uid=0")
        .unwrap();
    assert_eq!(report.sessions, 3);
    assert_eq!(report.kernel_entries, 3);
    assert!(fixture.engine.maps().sessions.is_empty());
    assert!(fixture.engine.store().sessions().unwrap().is_empty());
}

#[test]
fn revoke_by_device_keeps_other_devices() {
    let mut fixture = ready(MULTI);
    for device_id in [1, 2] {
        fixture
            .engine
            .sign_in(device_id, alice_record(), auth(&["mfa"], start()))
            .unwrap();
    }
    let report = fixture
        .engine
        .revoke(&RevokeSelector::Device { device_id: 1 }, "admin:uid=0")
        .unwrap();
    assert_eq!(report.sessions, 3);
    let report = fixture
        .engine
        .revoke(
            &RevokeSelector::Session {
                device_id: 2,
                resource: "wiki".to_owned(),
            },
            "admin:uid=0",
        )
        .unwrap();
    assert_eq!(report.sessions, 1);
    let wiki = fixture.engine.resource_ids()["wiki"];
    let left: Vec<(u32, u32)> = fixture
        .engine
        .store()
        .sessions()
        .unwrap()
        .iter()
        .map(|session| (session.device_id, session.resource_id))
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter()
            .all(|(device, resource)| *device == 2 && *resource != wiki),
        "{left:?}"
    );
    assert_eq!(fixture.engine.maps().sessions.len(), 2);
}

#[test]
fn revoke_by_resource_keeps_others() {
    let mut fixture = ready(MULTI);
    fixture
        .engine
        .sign_in(1, alice_record(), auth(&["mfa"], start()))
        .unwrap();
    let report = fixture
        .engine
        .revoke(
            &RevokeSelector::Resource {
                resource: "wiki".to_owned(),
            },
            "admin:uid=0",
        )
        .unwrap();
    assert_eq!(report.sessions, 1);
    assert_eq!(kernel_expiry(&fixture, "wiki"), None);
    assert!(kernel_expiry(&fixture, "git").is_some());
}

#[test]
fn revoke_user_by_email_or_slash() {
    let mut fixture = ready(MULTI);
    fixture
        .engine
        .sign_in(1, alice_record(), auth(&["mfa"], start()))
        .unwrap();
    let unknown = fixture
        .engine
        .revoke(
            &RevokeSelector::User {
                issuer: alice().issuer,
                subject: "mallory@example.com".to_owned(),
            },
            "admin:uid=0",
        )
        .unwrap_err();
    assert!(matches!(unknown, EngineError::NotFound { .. }), "{unknown}");
    assert!(
        unknown.to_string().contains("alice@example.com"),
        "{unknown}"
    );
    assert_eq!(fixture.engine.maps().sessions.len(), 3);

    let issuer = format!("{}/", alice().issuer.trim_end_matches('/'));
    let report = fixture
        .engine
        .revoke(
            &RevokeSelector::User {
                issuer,
                subject: "alice@example.com".to_owned(),
            },
            "admin:uid=0",
        )
        .unwrap();
    assert_eq!(report.sessions, 3);
    assert!(fixture.engine.maps().sessions.is_empty());
}

/// Signs `user` in on `device_id` with group staff, so it gets wiki and git.
fn sign_in_staff(fixture: &mut Fixture, device_id: u32, subject: &str, email: &str) {
    let key = UserKey {
        issuer: alice().issuer,
        subject: subject.to_owned(),
    };
    let record = UserRecord {
        key: key.clone(),
        email: Some(email.to_owned()),
        ..alice_record()
    };
    let auth = crate::store::AuthRecord {
        user: key,
        ..auth(&["mfa"], start())
    };
    fixture.engine.sign_in(device_id, record, auth).unwrap();
}

fn revoke_user(fixture: &mut Fixture, name: &str) -> Result<RevokeReport, EngineError> {
    fixture.engine.revoke(
        &RevokeSelector::User {
            issuer: alice().issuer,
            subject: name.to_owned(),
        },
        "admin:uid=0",
    )
}

fn sessions_of_device(fixture: &Fixture, device_id: u32) -> usize {
    let sessions = fixture.engine.store().sessions().unwrap();
    sessions
        .iter()
        .filter(|session| session.device_id == device_id)
        .count()
}

#[test]
fn revoke_user_subject_beats_email() {
    let mut fixture = ready(MULTI);
    // Alice's email is the kiosk user's subject, so that string names the kiosk user alone.
    fixture
        .engine
        .sign_in(1, alice_record(), auth(&["mfa"], start()))
        .unwrap();
    sign_in_staff(&mut fixture, 2, "alice@example.com", "kiosk@example.com");
    let alice_sessions = sessions_of_device(&fixture, 1);
    let kiosk_sessions = sessions_of_device(&fixture, 2);
    assert!(alice_sessions > 0);
    assert!(kiosk_sessions > 0);

    let report = revoke_user(&mut fixture, "alice@example.com").unwrap();
    assert_eq!(report.sessions, kiosk_sessions);
    assert_eq!(sessions_of_device(&fixture, 1), alice_sessions);
    assert_eq!(sessions_of_device(&fixture, 2), 0);
}

#[test]
fn revoke_user_shared_email_is_conflict() {
    let mut fixture = ready(MULTI);
    fixture
        .engine
        .sign_in(1, alice_record(), auth(&["mfa"], start()))
        .unwrap();
    sign_in_staff(&mut fixture, 2, "alice-second", "alice@example.com");
    let alice_sessions = sessions_of_device(&fixture, 1);
    let second_sessions = sessions_of_device(&fixture, 2);

    let err = revoke_user(&mut fixture, "alice@example.com").unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Store(crate::store::StoreError::Conflict(_))
        ),
        "{err}"
    );
    assert!(err.to_string().contains("alice-second"), "{err}");
    assert!(
        err.to_string().contains("alice,") || err.to_string().contains("alice "),
        "{err}"
    );
    assert_eq!(sessions_of_device(&fixture, 1), alice_sessions);
    assert_eq!(sessions_of_device(&fixture, 2), second_sessions);

    let report = revoke_user(&mut fixture, "alice-second").unwrap();
    assert_eq!(report.sessions, second_sessions);
    assert_eq!(sessions_of_device(&fixture, 1), alice_sessions);
}

#[test]
fn revoke_user_empty_name_not_found() {
    let mut fixture = ready(MULTI);
    fixture
        .engine
        .sign_in(1, alice_record(), auth(&["mfa"], start()))
        .unwrap();
    let before = sessions_of_device(&fixture, 1);
    let err = revoke_user(&mut fixture, "").unwrap_err();
    assert!(matches!(err, EngineError::NotFound { .. }), "{err}");
    assert_eq!(sessions_of_device(&fixture, 1), before);
}

#[test]
fn revoked_session_stays_gone_after_reconcile() {
    let mut fixture = ready(MULTI);
    fixture
        .engine
        .sign_in(1, alice_record(), auth(&["mfa"], start()))
        .unwrap();
    fixture
        .engine
        .revoke(
            &RevokeSelector::User {
                issuer: alice().issuer,
                subject: alice().subject,
            },
            "admin:uid=0",
        )
        .unwrap();
    fixture.engine.reconcile().unwrap();
    assert!(fixture.engine.maps().sessions.is_empty());
    let kinds: Vec<_> = fixture
        .engine
        .store()
        .audit_tail(1)
        .unwrap()
        .into_iter()
        .map(|record| record.kind)
        .collect();
    assert_eq!(kinds, vec![crate::store::AuditKind::Revocation]);
}

#[test]
fn full_map_commits_nothing() {
    let mut fixture = ready(MULTI);
    fixture.engine.maps_mut().session_capacity = 2;
    let err = fixture
        .engine
        .sign_in(1, alice_record(), auth(&["mfa"], start()))
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Dataplane(DataplaneError::MapFull { .. })),
        "{err}"
    );
    assert!(fixture.engine.maps().sessions.is_empty());
    assert!(fixture.engine.store().sessions().unwrap().is_empty());
    assert!(fixture.engine.store().authentication(1).unwrap().is_none());
    let full = fixture
        .engine
        .metrics()
        .map_full
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(full, 1);
}

#[test]
fn reload_changes_duration_and_keeps_sessions() {
    let mut fixture = ready(MULTI);
    fixture
        .engine
        .sign_in(1, alice_record(), auth(&["mfa"], start()))
        .unwrap();
    let longer = MULTI.replace("session = \"8h\"", "session = \"12h\"");
    let report = fixture
        .engine
        .reload(parse("policy.toml", &longer).unwrap(), "admin:uid=0")
        .unwrap();
    assert_eq!(report.maps.sessions_removed, 0);
    assert_eq!(
        kernel_expiry(&fixture, "wiki"),
        Some(start().boot_ns + 12 * HOUR_NS)
    );
    assert!(kernel_expiry(&fixture, "payroll").is_some());
}

#[test]
fn reload_removes_disallowed_sessions() {
    let mut fixture = ready(MULTI);
    fixture
        .engine
        .sign_in(1, alice_record(), auth(&["mfa"], start()))
        .unwrap();
    let narrower = MULTI.replace(
        "groups = [\"staff\"]\n\n[[resource]]\nname = \"git\"",
        "groups = [\"ops\"]\n\n[[resource]]\nname = \"git\"",
    );
    assert_ne!(narrower, MULTI);
    fixture
        .engine
        .reload(parse("policy.toml", &narrower).unwrap(), "admin:uid=0")
        .unwrap();
    assert_eq!(kernel_expiry(&fixture, "wiki"), None);
    assert!(kernel_expiry(&fixture, "git").is_some());
}

#[test]
fn reload_with_new_step_up_removes_password_sessions() {
    let mut fixture = ready(MULTI);
    fixture
        .engine
        .sign_in(1, alice_record(), auth(&["pwd"], start()))
        .unwrap();
    let stricter = MULTI.replace(
        "session = \"30m\"\ngroups = [\"staff\"]",
        "session = \"30m\"\ngroups = [\"staff\"]\nstep_up = true",
    );
    assert_ne!(stricter, MULTI);
    fixture
        .engine
        .reload(parse("policy.toml", &stricter).unwrap(), "admin:uid=0")
        .unwrap();
    assert_eq!(kernel_expiry(&fixture, "git"), None);
    assert!(kernel_expiry(&fixture, "wiki").is_some());
}

#[test]
fn reload_with_too_many_rules_keeps_policy() {
    let mut fixture = ready(MULTI);
    let mut crowded = MULTI.to_owned();
    for index in 0..common::MAX_RULES_PER_PREFIX {
        crowded.push_str(&format!(
            "\n[[resource]]\nname = \"extra{index}\"\ndestinations = [{{ prefix = \"203.0.113.0/24\", protocol = \"udp\", ports = {} }}]\nsession = \"1h\"\n",
            2000 + index
        ));
    }
    let err = fixture
        .engine
        .reload(parse("policy.toml", &crowded).unwrap(), "admin:uid=0")
        .unwrap_err();
    assert!(matches!(err, EngineError::Policy(_)), "{err}");
    assert_eq!(fixture.engine.policy().resources.len(), 4);
}

#[test]
fn long_expired_sessions_are_swept() {
    let mut fixture = ready(MULTI);
    fixture
        .engine
        .sign_in(1, alice_record(), auth(&["mfa"], start()))
        .unwrap();
    fixture
        .clock
        .advance(Duration::from_secs(2 * 3600) + EXPIRED_RETENTION);
    let removed = fixture.engine.sweep().unwrap();
    assert_eq!(removed, 2);
    assert_eq!(kernel_expiry(&fixture, "payroll"), None);
    assert!(kernel_expiry(&fixture, "wiki").is_some());
}

#[test]
fn admin_grant_uses_its_own_duration() {
    let mut fixture = ready(MULTI);
    let granted = fixture
        .engine
        .grant(1, "wiki", Duration::from_secs(600), "admin:uid=0")
        .unwrap_err();
    assert!(matches!(granted, EngineError::Denied(_)), "{granted}");
    let session = fixture
        .engine
        .grant(1, "payroll", Duration::from_secs(600), "admin:uid=0")
        .unwrap();
    assert_eq!(
        session.expires_at_boot_ns,
        start().boot_ns + 600 * 1_000_000_000
    );
    assert!(kernel_expiry(&fixture, "payroll").is_some());
}

#[test]
fn sign_in_audit_prints_plain_acr() {
    let mut fixture = ready(MULTI);
    let mut authentication = auth(&["pwd", "otp"], start());
    authentication.acr = Some("urn:example:mfa".to_owned());
    fixture
        .engine
        .sign_in(1, alice_record(), authentication)
        .unwrap();
    let records = fixture.engine.store().audit_tail(1).unwrap();
    let detail = &records[0].detail;
    assert!(detail.contains("acr urn:example:mfa)"), "{detail}");
    assert!(detail.contains("amr pwd,otp,"), "{detail}");
    assert!(!detail.contains("Some("), "{detail}");
}

fn last_audit(fixture: &Fixture) -> crate::store::AuditRecord {
    let mut records = fixture.engine.store().audit_tail(1).unwrap();
    records.pop().expect("an audit record")
}

#[test]
fn owner_mismatch_is_audited() {
    let mut fixture = ready(MULTI);
    let mut bob = alice_record();
    bob.key.subject = "bob".to_owned();
    bob.email = Some("bob@example.com".to_owned());
    let _ = fixture.engine.sign_in(1, bob, auth(&["pwd"], start()));
    let record = last_audit(&fixture);
    assert_eq!(record.kind, crate::store::AuditKind::SignInRejected);
    assert_eq!(record.device_id, Some(1));
    assert!(record.actor.ends_with("#bob"), "{}", record.actor);
    assert!(record.detail.contains("belongs to"), "{}", record.detail);
}

#[test]
fn unknown_device_sign_in_is_audited() {
    let mut fixture = ready(MULTI);
    let err = fixture
        .engine
        .sign_in(99, alice_record(), auth(&["pwd"], start()))
        .unwrap_err();
    assert!(matches!(err, EngineError::NotFound { .. }), "{err}");
    let record = last_audit(&fixture);
    assert_eq!(record.kind, crate::store::AuditKind::SignInRejected);
    assert_eq!(record.device_id, Some(99));
    assert!(record.detail.contains("not enrolled"), "{}", record.detail);
}

#[test]
fn disallowed_user_sign_in_is_audited() {
    let mut fixture = ready(MULTI);
    let mut carol = alice_record();
    carol.key.subject = "carol".to_owned();
    carol.email = Some("carol@example.com".to_owned());
    carol.groups = Vec::new();
    let report = fixture
        .engine
        .sign_in(2, carol, auth(&["pwd"], start()))
        .unwrap();
    assert!(report.granted.is_empty(), "{report:?}");
    let record = last_audit(&fixture);
    assert_eq!(record.kind, crate::store::AuditKind::SignInRejected);
    assert_eq!(record.device_id, Some(2));
    assert!(record.actor.ends_with("#carol"), "{}", record.actor);
}
