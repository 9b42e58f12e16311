//! Pending sign-ins: the state, nonce and PKCE verifier of each authorization request, kept
//! in the store until the callback from the device that started it takes them once, or they
//! expire. The number in progress is limited per device and in total, because each one is a
//! durable store write that any client of the portal can cause.

use std::{
    fmt,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::IdpError;
use crate::store::{PendingLogin, Store};

/// Origin of a sign-in: the enrolled device of the request's source address, if any, and
/// the address itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginOrigin {
    pub device_id: Option<u32>,
    pub address: IpAddr,
}

impl LoginOrigin {
    /// Returns whether `login` was started from this origin. A login of an enrolled device
    /// matches that device from any of its addresses. A login of an unenrolled address
    /// matches only that address, also after a parallel first sign-in enrolled it.
    fn started(&self, login: &PendingLogin) -> bool {
        match login.device_id {
            Some(device_id) => self.device_id == Some(device_id),
            None => login.source_address == Some(self.address),
        }
    }

    /// Returns whether `login` counts against this origin's limit.
    fn counts(&self, login: &PendingLogin) -> bool {
        match self.device_id {
            Some(device_id) => login.device_id == Some(device_id),
            None => login.device_id.is_none() && login.source_address == Some(self.address),
        }
    }
}

impl fmt::Display for LoginOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.device_id {
            Some(device_id) => write!(f, "device {device_id}"),
            None => write!(f, "unenrolled address {}", self.address),
        }
    }
}

/// Limits on the sign-ins in progress, from the `[idp]` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingLimits {
    /// Sign-ins in progress per device, or per address for an unenrolled one.
    pub per_device: usize,
    /// Sign-ins in progress on the gateway.
    pub total: usize,
}

impl Default for PendingLimits {
    fn default() -> Self {
        Self {
            per_device: DEFAULT_MAX_PENDING_PER_DEVICE,
            total: DEFAULT_MAX_PENDING,
        }
    }
}

impl PendingLimits {
    /// Returns the sign-ins in progress that unenrolled addresses may hold together: half of
    /// `total`, rounded up. Anyone in `enroll_from` can start those, from as many addresses as
    /// the prefix has, so they must not take the share of enrolled devices.
    pub fn unenrolled(&self) -> usize {
        self.total.div_ceil(2)
    }
}

/// The limit that a new sign-in would exceed.
enum Limit {
    Origin(LoginOrigin, usize),
    Unenrolled(usize),
    Total(usize),
}

/// Default of `max_pending_logins_per_device`: enough for a user who opens the sign-in in a
/// few tabs.
pub const DEFAULT_MAX_PENDING_PER_DEVICE: usize = 5;
/// Default of `max_pending_logins`.
pub const DEFAULT_MAX_PENDING: usize = 1000;

/// Single-use pending sign-ins on top of the store's `pending_logins` table.
#[derive(Clone)]
pub struct PendingLogins {
    store: Arc<Store>,
    limits: PendingLimits,
}

impl PendingLogins {
    /// Creates the pending sign-ins with the default limits.
    pub fn new(store: Arc<Store>) -> Self {
        Self::with_limits(store, PendingLimits::default())
    }

    pub fn with_limits(store: Arc<Store>, limits: PendingLimits) -> Self {
        Self { store, limits }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn limits(&self) -> PendingLimits {
        self.limits
    }

    /// Stores a pending sign-in under its state, in one transaction that first deletes the
    /// expired ones. Fails with `TooManyPendingLogins` when `origin` or the gateway already
    /// has its maximum in progress.
    pub fn create(
        &self,
        login: &PendingLogin,
        origin: LoginOrigin,
        now: SystemTime,
    ) -> Result<(), IdpError> {
        let now_ms = unix_ms(now);
        let mut txn = self.store.begin_write().map_err(IdpError::store)?;
        let mut live = Vec::new();
        let mut purged = 0;
        for existing in txn.pending_logins().map_err(IdpError::store)? {
            if existing.expires_unix_ms <= now_ms {
                txn.take_pending_login(&existing.state)
                    .map_err(IdpError::store)?;
                purged += 1;
            } else {
                live.push(existing);
            }
        }

        let own: Vec<&PendingLogin> = live.iter().filter(|other| origin.counts(other)).collect();
        let unenrolled: Vec<&PendingLogin> = live
            .iter()
            .filter(|other| other.device_id.is_none())
            .collect();
        let unenrolled_limit = self.limits.unenrolled();
        let over = if own.len() >= self.limits.per_device {
            Some((own, Limit::Origin(origin, self.limits.per_device)))
        } else if origin.device_id.is_none() && unenrolled.len() >= unenrolled_limit {
            Some((unenrolled, Limit::Unenrolled(unenrolled_limit)))
        } else if live.len() >= self.limits.total {
            Some((live.iter().collect(), Limit::Total(self.limits.total)))
        } else {
            None
        };
        if let Some((in_progress, limit)) = over {
            // The purge of expired sign-ins is still worth keeping, but a rejection that
            // purged nothing commits nothing, so a flood of them costs no disk writes.
            if purged > 0 {
                txn.commit().map_err(IdpError::store)?;
            } else {
                txn.abort().map_err(IdpError::store)?;
            }
            let first_expiry_ms = in_progress
                .iter()
                .map(|other| other.expires_unix_ms)
                .min()
                .unwrap_or(now_ms);
            let retry_after = Duration::from_millis(first_expiry_ms - now_ms);
            let retry_after = Duration::from_secs(retry_after.as_secs() + 1);
            return Err(match limit {
                Limit::Origin(origin, limit) => IdpError::TooManyPendingLogins {
                    origin: Some(origin),
                    limit,
                    retry_after,
                },
                Limit::Unenrolled(limit) => {
                    IdpError::TooManyUnenrolledLogins { limit, retry_after }
                }
                Limit::Total(limit) => IdpError::TooManyPendingLogins {
                    origin: None,
                    limit,
                    retry_after,
                },
            });
        }

        txn.put_pending_login(login).map_err(IdpError::store)?;
        txn.commit().map_err(IdpError::store)
    }

    /// Removes and returns the pending sign-in for `state` when `origin` started it. A
    /// callback from another origin fails with `DeviceMismatch` and leaves the sign-in in
    /// place, so it cannot destroy the rightful user's sign-in. A second call with the same
    /// state fails with `UnknownState`, and an expired one with `ExpiredState`.
    pub fn take(
        &self,
        state: &str,
        origin: LoginOrigin,
        now: SystemTime,
    ) -> Result<PendingLogin, IdpError> {
        let mut txn = self.store.begin_write().map_err(IdpError::store)?;
        let login = txn.pending_login(state).map_err(IdpError::store)?;
        let Some(login) = login else {
            txn.abort().map_err(IdpError::store)?;
            return Err(IdpError::UnknownState);
        };
        if !origin.started(&login) {
            txn.abort().map_err(IdpError::store)?;
            return Err(IdpError::DeviceMismatch {
                expected: login.device_id,
                expected_address: login.source_address,
                actual: origin,
            });
        }
        txn.take_pending_login(state).map_err(IdpError::store)?;
        txn.commit().map_err(IdpError::store)?;

        let now_ms = unix_ms(now);
        if now_ms >= login.expires_unix_ms {
            return Err(IdpError::ExpiredState {
                expired_for: Duration::from_millis(now_ms - login.expires_unix_ms),
            });
        }
        Ok(login)
    }

    /// Deletes every pending sign-in that expired before `now` and returns how many.
    pub fn expire(&self, now: SystemTime) -> Result<usize, IdpError> {
        self.store
            .purge_pending_logins(unix_ms(now))
            .map_err(IdpError::store)
    }
}

/// Milliseconds since the Unix epoch, or 0 for a clock set before it.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const DEVICE: LoginOrigin = LoginOrigin {
        device_id: Some(7),
        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
    };
    const OTHER: LoginOrigin = LoginOrigin {
        device_id: Some(8),
        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8)),
    };
    const UNENROLLED: LoginOrigin = LoginOrigin {
        device_id: None,
        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)),
    };

    fn pending(limits: PendingLimits) -> (PendingLogins, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("create a scratch folder");
        let store = Store::open(&dir.path().join("store.redb")).expect("open the store");
        (PendingLogins::with_limits(Arc::new(store), limits), dir)
    }

    fn login_from(origin: LoginOrigin, state: &str, expires_unix_ms: u64) -> PendingLogin {
        PendingLogin {
            state: state.into(),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
            device_id: origin.device_id,
            source_address: Some(origin.address),
            return_to: None,
            created_unix_ms: 100_000,
            expires_unix_ms,
            mfa: false,
        }
    }

    fn login(state: &str, expires_unix_ms: u64) -> PendingLogin {
        login_from(DEVICE, state, expires_unix_ms)
    }

    fn at_ms(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn create(pending: &PendingLogins, login: &PendingLogin, origin: LoginOrigin, ms: u64) {
        pending
            .create(login, origin, at_ms(ms))
            .expect("create the pending sign-in");
    }

    #[test]
    fn take_returns_once() {
        let (pending, _dir) = pending(PendingLimits::default());
        create(&pending, &login("s1", 200_000), DEVICE, 100_000);
        let first = pending.take("s1", DEVICE, at_ms(150_000));
        let second = pending.take("s1", DEVICE, at_ms(150_000));
        assert_eq!(first.ok(), Some(login("s1", 200_000)));
        assert!(matches!(second, Err(IdpError::UnknownState)));
    }

    #[test]
    fn take_rejects_expired() {
        let (pending, _dir) = pending(PendingLimits::default());
        create(&pending, &login("s1", 200_000), DEVICE, 100_000);
        let result = pending.take("s1", DEVICE, at_ms(230_000));
        assert!(matches!(
            result,
            Err(IdpError::ExpiredState { expired_for }) if expired_for == Duration::from_secs(30)
        ));
        let again = pending.take("s1", DEVICE, at_ms(150_000));
        assert!(
            matches!(again, Err(IdpError::UnknownState)),
            "an expired state is spent"
        );
    }

    #[test]
    fn take_from_other_device_keeps_login() {
        let (pending, _dir) = pending(PendingLimits::default());
        create(&pending, &login("s1", 200_000), DEVICE, 100_000);
        let stolen = pending.take("s1", OTHER, at_ms(150_000));
        assert!(
            matches!(
                stolen,
                Err(IdpError::DeviceMismatch {
                    expected: Some(7),
                    ..
                })
            ),
            "{stolen:?}"
        );
        let owner = pending.take("s1", DEVICE, at_ms(150_000));
        assert_eq!(owner.ok(), Some(login("s1", 200_000)));
    }

    #[test]
    fn take_unenrolled_binds_address() {
        let (pending, _dir) = pending(PendingLimits::default());
        let unenrolled = login_from(UNENROLLED, "s1", 200_000);
        create(&pending, &unenrolled, UNENROLLED, 100_000);
        let elsewhere = LoginOrigin {
            device_id: None,
            address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        };
        let stolen = pending.take("s1", elsewhere, at_ms(150_000));
        assert!(
            matches!(stolen, Err(IdpError::DeviceMismatch { expected: None, .. })),
            "{stolen:?}"
        );
        let enrolled_device = pending.take("s1", OTHER, at_ms(150_000));
        assert!(
            matches!(enrolled_device, Err(IdpError::DeviceMismatch { .. })),
            "an enrolled device at another address: {enrolled_device:?}"
        );
        let owner = pending.take("s1", UNENROLLED, at_ms(150_000));
        assert_eq!(owner.ok(), Some(unenrolled));
    }

    #[test]
    fn create_limits_per_device() {
        let limits = PendingLimits {
            per_device: 3,
            total: 100,
        };
        let (pending, _dir) = pending(limits);
        for n in 0..3 {
            let expires = 200_000 + n * 1000;
            create(&pending, &login(&format!("s{n}"), expires), DEVICE, 100_000);
        }
        let over = pending.create(&login("s3", 300_000), DEVICE, at_ms(150_000));
        assert!(
            matches!(
                over,
                Err(IdpError::TooManyPendingLogins { origin: Some(DEVICE), limit: 3, retry_after })
                    if retry_after == Duration::from_secs(51)
            ),
            "{over:?}"
        );
        let other = pending.create(&login_from(OTHER, "o1", 300_000), OTHER, at_ms(150_000));
        assert!(other.is_ok(), "another device has its own limit: {other:?}");
    }

    #[test]
    fn create_limits_total() {
        let limits = PendingLimits {
            per_device: 10,
            total: 2,
        };
        let (pending, _dir) = pending(limits);
        create(&pending, &login("s1", 200_000), DEVICE, 100_000);
        create(&pending, &login_from(OTHER, "o1", 250_000), OTHER, 100_000);
        let over = pending.create(
            &login_from(UNENROLLED, "u1", 300_000),
            UNENROLLED,
            at_ms(150_000),
        );
        assert!(
            matches!(
                over,
                Err(IdpError::TooManyPendingLogins {
                    origin: None,
                    limit: 2,
                    ..
                })
            ),
            "{over:?}"
        );
    }

    #[test]
    fn unenrolled_take_half_of_total() {
        let limits = PendingLimits {
            per_device: 5,
            total: 4,
        };
        let (pending, _dir) = pending(limits);
        let unenrolled = |host: u8| LoginOrigin {
            device_id: None,
            address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100 + host)),
        };
        for host in 0..2 {
            let origin = unenrolled(host);
            create(
                &pending,
                &login_from(origin, &format!("u{host}"), 200_000),
                origin,
                100_000,
            );
        }
        let flood = unenrolled(2);
        let over = pending.create(&login_from(flood, "u2", 300_000), flood, at_ms(150_000));
        assert!(
            matches!(
                over,
                Err(IdpError::TooManyUnenrolledLogins { limit: 2, retry_after })
                    if retry_after == Duration::from_secs(51)
            ),
            "{over:?}"
        );
        assert!(
            over.unwrap_err()
                .to_string()
                .contains("unenrolled addresses"),
            "the message names who is over the limit"
        );

        // Enrolled devices still have the other half.
        create(&pending, &login("d1", 300_000), DEVICE, 150_000);
        create(&pending, &login_from(OTHER, "o1", 300_000), OTHER, 150_000);
        let full = pending.create(&login("d2", 300_000), DEVICE, at_ms(150_000));
        assert!(
            matches!(
                full,
                Err(IdpError::TooManyPendingLogins {
                    origin: None,
                    limit: 4,
                    ..
                })
            ),
            "{full:?}"
        );
    }

    #[test]
    fn rejected_create_writes_nothing() {
        let limits = PendingLimits {
            per_device: 1,
            total: 10,
        };
        let dir = tempfile::tempdir().expect("create a scratch folder");
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).expect("open the store");
        let pending = PendingLogins::with_limits(Arc::new(store), limits);
        create(&pending, &login("s1", 200_000), DEVICE, 100_000);
        let written = std::fs::metadata(&path).and_then(|meta| meta.modified());

        // A flood of rejected sign-ins must not cost a durable commit each.
        std::thread::sleep(Duration::from_millis(20));
        for n in 0..20 {
            let over = pending.create(&login(&format!("x{n}"), 300_000), DEVICE, at_ms(150_000));
            assert!(matches!(over, Err(IdpError::TooManyPendingLogins { .. })));
        }
        let after = std::fs::metadata(&path).and_then(|meta| meta.modified());
        assert_eq!(after.ok(), written.ok(), "the store file was written");
    }

    #[test]
    fn create_purges_expired_first() {
        let limits = PendingLimits {
            per_device: 1,
            total: 1,
        };
        let (pending, _dir) = pending(limits);
        create(&pending, &login("old", 200_000), DEVICE, 100_000);
        let after_expiry = pending.create(&login("new", 400_000), DEVICE, at_ms(250_000));
        assert!(after_expiry.is_ok(), "{after_expiry:?}");
        let old = pending.take("old", DEVICE, at_ms(250_000));
        assert!(matches!(old, Err(IdpError::UnknownState)), "{old:?}");
    }

    #[test]
    fn expire_removes_only_expired() {
        let (pending, _dir) = pending(PendingLimits::default());
        create(&pending, &login("old", 200_000), DEVICE, 100_000);
        create(&pending, &login("new", 400_000), DEVICE, 100_000);
        let removed = pending.expire(at_ms(300_000));
        assert_eq!(removed.ok(), Some(1));
        assert!(pending.take("new", DEVICE, at_ms(300_000)).is_ok());
    }
}
