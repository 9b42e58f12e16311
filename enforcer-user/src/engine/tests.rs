use std::{sync::Arc, time::Duration};

use common::SessionKey;

use super::*;
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
