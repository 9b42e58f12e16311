use std::net::IpAddr;

use super::devices::NewDevice;
use super::*;
use crate::clock::Instant;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.redb")).unwrap();
    (dir, store)
}

fn laptop() -> NewDevice {
    NewDevice {
        name: "laptop".to_owned(),
        owner: Some("alice@example.com".to_owned()),
        addresses: vec![
            "192.0.2.10".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
        ],
        mac: None,
        source: EnrollmentSource::Admin,
    }
}

#[test]
fn second_open_is_already_running() {
    let (dir, _store) = open();
    let err = Store::open(&dir.path().join("state.redb")).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyRunning { .. }), "{err}");
    assert!(err.to_string().contains("already running"), "{err}");
}

#[test]
fn newer_schema_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(META_SCHEMA, SCHEMA_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, .. } if found == SCHEMA_VERSION + 1),
        "{err}"
    );
}

#[test]
fn foreign_redb_file_is_rejected_not_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let other: TableDefinition<&str, u64> = TableDefinition::new("something_else");
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(other).unwrap().insert("key", 7).unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
    let db = Database::create(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let value = txn
        .open_table(other)
        .unwrap()
        .get("key")
        .unwrap()
        .unwrap()
        .value();
    assert_eq!(value, 7, "the foreign file must be left as it was");
}

#[test]
fn device_ids_start_at_one_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = Store::open(&path).unwrap();
        let mut txn = store.begin_write().unwrap();
        let device = txn.enroll_device(laptop()).unwrap();
        txn.commit().unwrap();
        assert_eq!(device.id, 1);
    }
    let store = Store::open(&path).unwrap();
    let address: IpAddr = "2001:db8::10".parse().unwrap();
    assert_eq!(store.device_by_address(address).unwrap(), Some(1));
    assert_eq!(store.device_by_name("laptop").unwrap().unwrap().id, 1);
}

#[test]
fn taken_address_is_a_conflict() {
    let (_dir, store) = open();
    let mut txn = store.begin_write().unwrap();
    txn.enroll_device(laptop()).unwrap();
    let mut second = laptop();
    second.name = "desktop".to_owned();
    let err = txn.enroll_device(second).unwrap_err();
    assert!(err.to_string().contains("192.0.2.10"), "{err}");
}

#[test]
fn resource_ids_are_stable() {
    let (_dir, store) = open();
    let mut txn = store.begin_write().unwrap();
    let payroll = txn.resource_id("payroll").unwrap();
    let wiki = txn.resource_id("wiki").unwrap();
    let again = txn.resource_id("payroll").unwrap();
    txn.commit().unwrap();
    assert_eq!(payroll, 1);
    assert_eq!(wiki, 2);
    assert_eq!(again, payroll);
    assert_eq!(store.resource_id("wiki").unwrap(), Some(2));
}

#[test]
fn aborted_write_leaves_nothing() {
    let (_dir, store) = open();
    let mut txn = store.begin_write().unwrap();
    txn.enroll_device(laptop()).unwrap();
    txn.audit(AuditEntry {
        kind: AuditKind::Enrollment,
        actor: "admin:uid=0".to_owned(),
        device_id: Some(1),
        resource_id: None,
        detail: "enrolled laptop".to_owned(),
    })
    .unwrap();
    txn.abort().unwrap();
    assert!(store.devices().unwrap().is_empty());
    assert!(store.audit_tail(10).unwrap().is_empty());
}

#[test]
fn audit_positions_increase() {
    let (_dir, store) = open();
    for index in 0..3 {
        let mut txn = store.begin_write().unwrap();
        txn.audit(AuditEntry {
            kind: AuditKind::Grant,
            actor: "daemon".to_owned(),
            device_id: Some(index),
            resource_id: Some(1),
            detail: String::new(),
        })
        .unwrap();
        txn.commit().unwrap();
    }
    let seqs: Vec<u64> = store.audit(0, 10).unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    let tail: Vec<u64> = store.audit_tail(2).unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(tail, vec![2, 3]);
}

#[test]
fn removing_device_removes_its_sessions() {
    let (_dir, store) = open();
    let mut txn = store.begin_write().unwrap();
    let device = txn.enroll_device(laptop()).unwrap();
    let start = Instant {
        wall_unix_ns: 1,
        boot_ns: 1,
        boot_id: "a".to_owned(),
    };
    for resource_id in [1, 2] {
        txn.put_session(&SessionRecord {
            device_id: device.id,
            resource_id,
            start: start.clone(),
            source: GrantSource::SignIn,
            user: None,
            amr: Vec::new(),
            acr: None,
        })
        .unwrap();
    }
    let (_, removed) = txn.remove_device(device.id).unwrap();
    txn.commit().unwrap();
    assert_eq!(removed.len(), 2);
    assert!(store.sessions().unwrap().is_empty());
    assert_eq!(
        store
            .device_by_address("192.0.2.10".parse().unwrap())
            .unwrap(),
        None
    );
}

#[test]
fn pending_login_is_single_use() {
    let (_dir, store) = open();
    let login = PendingLogin {
        state: "s1".to_owned(),
        nonce: "n1".to_owned(),
        pkce_verifier: "v1".to_owned(),
        device_id: Some(1),
        source_address: None,
        return_to: None,
        created_unix_ms: 1_000,
        expires_unix_ms: 2_000,
        mfa: false,
    };
    store.put_pending_login(&login).unwrap();
    assert_eq!(store.take_pending_login("s1", 1_500).unwrap(), Some(login));
    assert_eq!(store.take_pending_login("s1", 1_500).unwrap(), None);
}

#[test]
fn expired_pending_login_is_rejected() {
    let (_dir, store) = open();
    let login = PendingLogin {
        state: "s2".to_owned(),
        nonce: "n".to_owned(),
        pkce_verifier: "v".to_owned(),
        device_id: None,
        source_address: None,
        return_to: None,
        created_unix_ms: 1_000,
        expires_unix_ms: 2_000,
        mfa: false,
    };
    store.put_pending_login(&login).unwrap();
    assert_eq!(store.take_pending_login("s2", 2_000).unwrap(), None);
}

#[test]
fn empty_file_is_rejected_not_formatted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    std::fs::write(&path, b"").unwrap();

    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "the empty file was written"
    );
}

#[test]
fn truncated_file_is_reported_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.redb");
    {
        let (_dir, store) = open();
        std::fs::copy(store.path(), &good).unwrap();
    }
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.redb");
    std::fs::write(&truncated, &bytes[..bytes.len().min(4096)]).unwrap();

    let err = Store::open(&truncated).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, StoreError::Damaged { .. } | StoreError::Open { .. }),
        "{message}"
    );
    assert!(message.contains("truncated.redb"), "{message}");
}

/// Unpacks `testdata/schema-v1.redb.gz`, a store written by the schema-version-1 code (JSON
/// session values), into `dir`. It contains the devices laptop and kiosk, the user alice with an
/// authentication on laptop, the resources wiki and db, three sessions and one audit record.
fn schema_v1_store(dir: &std::path::Path) -> std::path::PathBuf {
    let packed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/store/testdata/schema-v1.redb.gz");
    let output = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(&packed)
        .output()
        .expect("gzip runs");
    assert!(
        output.status.success(),
        "gzip -dc {} failed",
        packed.display()
    );
    let path = dir.join("state.redb");
    std::fs::write(&path, output.stdout).unwrap();
    path
}

fn schema_version(path: &std::path::Path) -> u64 {
    let db = Database::create(path).unwrap();
    let txn = db.begin_read().unwrap();
    txn.open_table(META)
        .unwrap()
        .get(META_SCHEMA)
        .unwrap()
        .unwrap()
        .value()
}

#[test]
fn schema_v1_store_migrates_every_session() {
    let dir = tempfile::tempdir().unwrap();
    let path = schema_v1_store(dir.path());
    assert_eq!(schema_version(&path), 1, "the fixture is a version-1 store");

    let store = Store::open(&path).unwrap();
    let boot_id = "6f1c2a9e-4b7d-4e55-9a0c-3d2b1e8f7a64";
    let alice = UserKey {
        issuer: "https://idp.example.com".to_owned(),
        subject: "alice".to_owned(),
    };
    let laptop = store.device_by_name("laptop").unwrap().unwrap().id;
    let kiosk = store.device_by_name("kiosk").unwrap().unwrap().id;
    let wiki = store.resource_id("wiki").unwrap().unwrap();
    let db = store.resource_id("db").unwrap().unwrap();
    let start = Instant {
        wall_unix_ns: 1_764_800_100_000_000_000,
        boot_ns: 9_000_000_000_000,
        boot_id: boot_id.to_owned(),
    };
    let mut expected = vec![
        SessionRecord {
            device_id: laptop,
            resource_id: wiki,
            start: start.clone(),
            source: GrantSource::SignIn,
            user: Some(alice.clone()),
            amr: vec!["pwd".to_owned(), "otp".to_owned()],
            acr: Some("urn:example:mfa".to_owned()),
        },
        SessionRecord {
            device_id: laptop,
            resource_id: db,
            start,
            source: GrantSource::Admin {
                actor: "admin:uid=0".to_owned(),
                duration_secs: 3600,
            },
            user: Some(alice),
            amr: Vec::new(),
            acr: None,
        },
        SessionRecord {
            device_id: kiosk,
            resource_id: wiki,
            start: Instant {
                wall_unix_ns: 1_764_800_200_000_000_000,
                boot_ns: 9_100_000_000_000,
                boot_id: boot_id.to_owned(),
            },
            source: GrantSource::Admin {
                actor: "admin:uid=1000".to_owned(),
                duration_secs: 8 * 3600,
            },
            user: None,
            amr: Vec::new(),
            acr: None,
        },
    ];
    expected.sort_by_key(|session| (session.device_id, session.resource_id));
    assert_eq!(store.sessions().unwrap(), expected);
    assert_eq!(store.users().unwrap().len(), 1, "users are kept");
    assert!(
        store.authentication(laptop).unwrap().is_some(),
        "the authentication is kept"
    );
    assert_eq!(
        store.audit(0, 10).unwrap().len(),
        1,
        "the audit log is kept"
    );
    drop(store);
    assert_eq!(schema_version(&path), SCHEMA_VERSION);
}

#[test]
fn migrated_store_opens_again_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = schema_v1_store(dir.path());
    let first = Store::open(&path).unwrap().sessions().unwrap();
    let second = Store::open(&path).unwrap().sessions().unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(first, second);
}

#[test]
fn unreadable_v1_session_fails_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = schema_v1_store(dir.path());
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(SESSIONS)
            .unwrap()
            .insert((99, 1), b"{not json".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_eq!(
        schema_version(&path),
        1,
        "a failed migration leaves the store at version 1"
    );
}

#[test]
fn put_sessions_round_trips_in_key_order() {
    let (_dir, store) = open();
    let start = Instant {
        wall_unix_ns: 5,
        boot_ns: 6,
        boot_id: "b".to_owned(),
    };
    let sessions: Vec<SessionRecord> = [(2, 1), (1, 2), (1, 1)]
        .into_iter()
        .map(|(device_id, resource_id)| SessionRecord {
            device_id,
            resource_id,
            start: start.clone(),
            source: GrantSource::SignIn,
            user: None,
            amr: Vec::new(),
            acr: None,
        })
        .collect();
    let mut txn = store.begin_write().unwrap();
    txn.put_sessions(&sessions).unwrap();
    txn.commit().unwrap();
    let keys: Vec<(u32, u32)> = store
        .sessions()
        .unwrap()
        .iter()
        .map(|session| (session.device_id, session.resource_id))
        .collect();
    assert_eq!(keys, vec![(1, 1), (1, 2), (2, 1)]);

    let mut txn = store.begin_write().unwrap();
    assert_eq!(txn.remove_session_keys(&[(1, 2), (7, 7)]).unwrap(), 1);
    txn.commit().unwrap();
    assert_eq!(store.sessions().unwrap().len(), 2);
}
