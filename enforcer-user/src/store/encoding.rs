//! Binary encoding of `SessionRecord` values (schema version 2), read without allocating.
//!
//! The store has one row per (device, resource) pair, so a million rows are common, and
//! reconcile reads every row at each start. Unlike the JSON of version 1, this layout is
//! decoded in place: a fixed 27-byte header followed by length-prefixed UTF-8 strings, all
//! integers little-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 1 | format tag, `FORMAT_V2` |
//! | 1 | 1 | flags: `FLAG_ADMIN`, `FLAG_USER`, `FLAG_ACR` |
//! | 2 | 8 | `start.wall_unix_ns` |
//! | 10 | 8 | `start.boot_ns` |
//! | 18 | 8 | admin grant duration in seconds, 0 for a sign-in |
//! | 26 | 1 | number of `amr` values |
//!
//! Then, each as a u16 length and its bytes: `start.boot_id`, the admin actor (with
//! `FLAG_ADMIN`), the user's issuer and subject (with `FLAG_USER`), every `amr` value, and
//! `acr` (with `FLAG_ACR`).

use super::{GrantSource, SessionRecord, StoreError, UserKey};
use crate::clock::Instant;

/// First byte of a version-2 session value.
const FORMAT_V2: u8 = 2;
const FLAG_ADMIN: u8 = 1;
const FLAG_USER: u8 = 1 << 1;
const FLAG_ACR: u8 = 1 << 2;
const HEADER_LEN: usize = 27;

/// A decoded session value whose strings borrow the stored bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView<'a> {
    pub device_id: u32,
    pub resource_id: u32,
    pub start_wall_unix_ns: u64,
    pub start_boot_ns: u64,
    pub start_boot_id: &'a str,
    /// Actor and duration of an admin grant; `None` for a sign-in.
    pub admin: Option<(&'a str, u64)>,
    /// Issuer and subject of the user whose sign-in or device created the session.
    pub user: Option<(&'a str, &'a str)>,
    /// The encoded `amr` values, read by `amr`.
    amr_bytes: &'a [u8],
    amr_count: usize,
    pub acr: Option<&'a str>,
}

impl<'a> SessionView<'a> {
    /// Decodes the value `bytes` of the row (`device_id`, `resource_id`).
    pub fn decode(device_id: u32, resource_id: u32, bytes: &'a [u8]) -> Result<Self, StoreError> {
        let malformed = |detail: &str| StoreError::Malformed {
            table: "sessions",
            key: format!("({device_id}, {resource_id})"),
            detail: detail.to_owned(),
        };
        if bytes.len() < HEADER_LEN {
            return Err(malformed("shorter than the 27-byte header"));
        }
        if bytes[0] != FORMAT_V2 {
            return Err(malformed(&format!("unknown format tag {}", bytes[0])));
        }

        let flags = bytes[1];
        let word = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(raw)
        };
        let amr_count = usize::from(bytes[26]);
        let mut reader = Reader {
            bytes,
            at: HEADER_LEN,
        };
        let start_boot_id = reader
            .text()
            .ok_or_else(|| malformed("truncated boot id"))?;
        let admin = if flags & FLAG_ADMIN != 0 {
            let actor = reader.text().ok_or_else(|| malformed("truncated actor"))?;
            Some((actor, word(18)))
        } else {
            None
        };
        let user = if flags & FLAG_USER != 0 {
            let issuer = reader.text().ok_or_else(|| malformed("truncated issuer"))?;
            let subject = reader
                .text()
                .ok_or_else(|| malformed("truncated subject"))?;
            Some((issuer, subject))
        } else {
            None
        };

        let amr_start = reader.at;
        for _ in 0..amr_count {
            reader.text().ok_or_else(|| malformed("truncated amr"))?;
        }
        let amr_bytes = &bytes[amr_start..reader.at];

        let acr = if flags & FLAG_ACR != 0 {
            Some(reader.text().ok_or_else(|| malformed("truncated acr"))?)
        } else {
            None
        };
        if reader.at != bytes.len() {
            return Err(malformed("trailing bytes after the last field"));
        }
        Ok(Self {
            device_id,
            resource_id,
            start_wall_unix_ns: word(2),
            start_boot_ns: word(10),
            start_boot_id,
            admin,
            user,
            amr_bytes,
            amr_count,
            acr,
        })
    }

    /// Returns the `amr` values in stored order.
    pub fn amr(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        let mut reader = Reader {
            bytes: self.amr_bytes,
            at: 0,
        };
        // `decode` checked these values, so every read succeeds.
        (0..self.amr_count).map_while(move |_| reader.text())
    }

    /// Copies the view into an owned record.
    pub fn to_record(&self) -> SessionRecord {
        SessionRecord {
            device_id: self.device_id,
            resource_id: self.resource_id,
            start: Instant {
                wall_unix_ns: self.start_wall_unix_ns,
                boot_ns: self.start_boot_ns,
                boot_id: self.start_boot_id.to_owned(),
            },
            source: match self.admin {
                Some((actor, duration_secs)) => GrantSource::Admin {
                    actor: actor.to_owned(),
                    duration_secs,
                },
                None => GrantSource::SignIn,
            },
            user: self.user.map(|(issuer, subject)| UserKey {
                issuer: issuer.to_owned(),
                subject: subject.to_owned(),
            }),
            amr: self.amr().map(str::to_owned).collect(),
            acr: self.acr.map(str::to_owned),
        }
    }
}

/// Encodes `session` in the version-2 layout. Fails when a string is longer than 65535 bytes
/// or there are more than 255 `amr` values.
pub fn encode_session(session: &SessionRecord) -> Result<Vec<u8>, StoreError> {
    let too_large = |what: &str| StoreError::Malformed {
        table: "sessions",
        key: format!("({}, {})", session.device_id, session.resource_id),
        detail: format!("{what} is too large to store"),
    };
    let amr_count = u8::try_from(session.amr.len()).map_err(|_| too_large("the amr list"))?;
    let mut flags = 0;
    let mut duration_secs = 0;
    if let GrantSource::Admin {
        duration_secs: secs,
        ..
    } = &session.source
    {
        flags |= FLAG_ADMIN;
        duration_secs = *secs;
    }
    if session.user.is_some() {
        flags |= FLAG_USER;
    }
    if session.acr.is_some() {
        flags |= FLAG_ACR;
    }

    let mut bytes = Vec::with_capacity(HEADER_LEN + 64);
    bytes.push(FORMAT_V2);
    bytes.push(flags);
    bytes.extend_from_slice(&session.start.wall_unix_ns.to_le_bytes());
    bytes.extend_from_slice(&session.start.boot_ns.to_le_bytes());
    bytes.extend_from_slice(&duration_secs.to_le_bytes());
    bytes.push(amr_count);
    let mut text = |value: &str, what: &str| -> Result<(), StoreError> {
        let length = u16::try_from(value.len()).map_err(|_| too_large(what))?;
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(value.as_bytes());
        Ok(())
    };
    text(&session.start.boot_id, "the boot id")?;
    if let GrantSource::Admin { actor, .. } = &session.source {
        text(actor, "the actor")?;
    }
    if let Some(user) = &session.user {
        text(&user.issuer, "the issuer")?;
        text(&user.subject, "the subject")?;
    }
    for method in &session.amr {
        text(method, "an amr value")?;
    }
    if let Some(acr) = &session.acr {
        text(acr, "the acr")?;
    }
    Ok(bytes)
}

/// Cursor over length-prefixed strings.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Reads one u16-length-prefixed UTF-8 string; `None` when truncated or not UTF-8.
    fn text(&mut self) -> Option<&'a str> {
        let prefix = self.bytes.get(self.at..self.at + 2)?;
        let length = usize::from(u16::from_le_bytes([prefix[0], prefix[1]]));
        let start = self.at + 2;
        let value = self.bytes.get(start..start + length)?;
        self.at = start + length;
        std::str::from_utf8(value).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign_in(amr: usize) -> SessionRecord {
        SessionRecord {
            device_id: 7,
            resource_id: 3,
            start: Instant {
                wall_unix_ns: 1_764_800_000_000_000_000,
                boot_ns: 42,
                boot_id: "6f1c2a9e-4b7d-4e55-9a0c-3d2b1e8f7a64".to_owned(),
            },
            source: GrantSource::SignIn,
            user: Some(UserKey {
                issuer: "https://idp.example.com".to_owned(),
                subject: "alice".to_owned(),
            }),
            amr: (0..amr).map(|index| format!("m{index}")).collect(),
            acr: Some("urn:example:mfa".to_owned()),
        }
    }

    fn round_trip(record: &SessionRecord) -> SessionRecord {
        let bytes = encode_session(record).unwrap();
        SessionView::decode(record.device_id, record.resource_id, &bytes)
            .unwrap()
            .to_record()
    }

    #[test]
    fn sign_in_round_trips() {
        let record = sign_in(2);
        assert_eq!(round_trip(&record), record);
    }

    #[test]
    fn many_amr_values_round_trip() {
        let record = sign_in(9);
        assert_eq!(round_trip(&record), record);
    }

    #[test]
    fn admin_grant_without_user_round_trips() {
        let record = SessionRecord {
            source: GrantSource::Admin {
                actor: "admin:uid=0".to_owned(),
                duration_secs: 3600,
            },
            user: None,
            amr: Vec::new(),
            acr: None,
            ..sign_in(0)
        };
        assert_eq!(round_trip(&record), record);
    }

    #[test]
    fn every_truncation_is_malformed() {
        let bytes = encode_session(&sign_in(5)).unwrap();
        for length in 0..bytes.len() {
            let err = SessionView::decode(7, 3, &bytes[..length]).unwrap_err();
            assert!(
                matches!(err, StoreError::Malformed { .. }),
                "length {length}: {err}"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut bytes = encode_session(&sign_in(1)).unwrap();
        bytes.push(0);
        let err = SessionView::decode(7, 3, &bytes).unwrap_err();
        assert!(err.to_string().contains("trailing bytes"), "{err}");
    }

    #[test]
    fn json_value_is_malformed() {
        let json = serde_json::to_vec(&sign_in(1)).unwrap();
        let err = SessionView::decode(7, 3, &json).unwrap_err();
        assert!(err.to_string().contains("format tag"), "{err}");
    }

    #[test]
    fn oversized_amr_list_is_rejected() {
        let err = encode_session(&sign_in(256)).unwrap_err();
        assert!(err.to_string().contains("amr list"), "{err}");
    }
}
