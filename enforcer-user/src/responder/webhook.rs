//! Webhook delivery of sign-in prompts: a JSON POST per notification, signed with
//! HMAC-SHA256, retried with exponential backoff on network errors, 429 and 5xx, and
//! rate-limited overall.
//!
//! Each attempt carries `X-Enforcer-Timestamp` (Unix seconds) and `X-Enforcer-Signature:
//! sha256=<hex>`, the HMAC-SHA256 under the shared secret of the timestamp, a `.` and the
//! exact body bytes. A receiver recomputes it, compares in constant time, and rejects
//! timestamps outside a few minutes of its clock, so a recorded delivery cannot be replayed
//! later.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac as _};
use serde::Deserialize;
use sha2::Sha256;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::PromptEvent;

/// Header with the Unix time in seconds at which the attempt was signed.
pub const TIMESTAMP_HEADER: &str = "x-enforcer-timestamp";
/// Header with `sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>`.
pub const SIGNATURE_HEADER: &str = "x-enforcer-signature";
/// Shortest secret accepted, in bytes: 32 bytes is the HMAC-SHA256 output size.
pub const MIN_SECRET_LEN: usize = 32;

/// The `[responder.webhook]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// File whose content (without a trailing newline) is the signing secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Environment variable that contains the signing secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Delivery attempts per notification, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds; it doubles after each attempt.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Maximum notifications sent per minute, across all devices.
    #[serde(default = "default_max_per_minute")]
    pub max_per_minute: u32,
    /// Timeout of one attempt, in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Notifications waiting for delivery; newer ones are dropped (and counted) when full.
    #[serde(default = "default_queue_length")]
    pub queue_length: usize,
}

/// Errors of the webhook configuration.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "[responder.webhook] has no signing secret: set `secret_file` or `secret_env` to a random value of at least {MIN_SECRET_LEN} bytes shared with the receiver"
    )]
    MissingSecret,
    #[error("[responder.webhook] sets both `secret_file` and `secret_env`; keep one")]
    TwoSecrets,
    #[error(
        "failed to read the webhook secret from {path}: {reason}; create the file or set `secret_env`"
    )]
    SecretFile {
        path: String,
        reason: std::io::Error,
    },
    #[error(
        "the webhook secret file {path} has mode {mode:o}, so other users can read or change it; run `chmod 600 {path}` and give the receiver a new secret"
    )]
    SecretFileMode { path: String, mode: u32 },
    #[error(
        "the webhook secret environment variable {name} is not set or empty; export it before starting the daemon"
    )]
    SecretEnv { name: String },
    #[error(
        "the webhook secret from {source_name} has {length} bytes; use at least {MIN_SECRET_LEN}, for example `openssl rand -hex 32`"
    )]
    ShortSecret { source_name: String, length: usize },
}

/// The shared secret of webhook signatures. Its `Debug` output hides the value.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(secret.into())
    }

    /// Returns the `X-Enforcer-Signature` value of `body` sent at `timestamp_secs`.
    pub fn sign(&self, timestamp_secs: u64, body: &[u8]) -> String {
        format!("sha256={}", hex::encode(self.mac(timestamp_secs, body)))
    }

    /// Checks a delivery's signature in constant time, and that its timestamp is within
    /// `tolerance` of `now`.
    pub fn verify(
        &self,
        timestamp_header: &str,
        signature_header: &str,
        body: &[u8],
        now: SystemTime,
        tolerance: Duration,
    ) -> Result<(), SignatureError> {
        let timestamp_secs: u64 = timestamp_header
            .trim()
            .parse()
            .map_err(|_| SignatureError::InvalidTimestamp)?;
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        if now_secs.abs_diff(timestamp_secs) > tolerance.as_secs() {
            return Err(SignatureError::Stale);
        }
        let expected = signature_header
            .trim()
            .strip_prefix("sha256=")
            .and_then(|hex_mac| hex::decode(hex_mac).ok())
            .ok_or(SignatureError::Malformed)?;
        let mut mac = self.hmac();
        mac.update(timestamp_secs.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&expected)
            .map_err(|_| SignatureError::Mismatch)
    }

    fn hmac(&self) -> Hmac<Sha256> {
        // The hmac crate hashes or pads a key of any length and never returns its error here.
        <Hmac<Sha256> as hmac::Mac>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    fn mac(&self, timestamp_secs: u64, body: &[u8]) -> Vec<u8> {
        let mut mac = self.hmac();
        mac.update(timestamp_secs.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }
}

/// Reason a webhook signature failed verification.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the timestamp header is not a number of seconds")]
    InvalidTimestamp,
    #[error("the timestamp is outside the accepted window; the delivery is old or replayed")]
    Stale,
    #[error("the signature header is not `sha256=` followed by hex")]
    Malformed,
    #[error("the signature does not match the body and timestamp")]
    Mismatch,
}

impl WebhookConfig {
    /// Reads the signing secret from `secret_file` or `secret_env`.
    pub fn load_secret(&self) -> Result<WebhookSecret, WebhookError> {
        let (secret, source_name) = match (&self.secret_file, &self.secret_env) {
            (Some(_), Some(_)) => return Err(WebhookError::TwoSecrets),
            (None, None) => return Err(WebhookError::MissingSecret),
            (Some(path), None) => {
                let text = read_private_file(path)?;
                (
                    text.trim_end_matches(['\r', '\n']).to_owned(),
                    path.display().to_string(),
                )
            }
            (None, Some(name)) => match std::env::var(name) {
                Ok(secret) if !secret.is_empty() => (secret, format!("${name}")),
                _ => return Err(WebhookError::SecretEnv { name: name.clone() }),
            },
        };
        if secret.len() < MIN_SECRET_LEN {
            return Err(WebhookError::ShortSecret {
                source_name,
                length: secret.len(),
            });
        }
        Ok(WebhookSecret::new(secret))
    }
}

/// Reads the webhook secret file at `path`.
fn read_private_file(path: &std::path::Path) -> Result<String, WebhookError> {
    crate::secret_file::read(path).map_err(|err| match err {
        crate::secret_file::SecretFileError::Read(reason) => WebhookError::SecretFile {
            path: path.display().to_string(),
            reason,
        },
        crate::secret_file::SecretFileError::Mode(mode) => WebhookError::SecretFileMode {
            path: path.display().to_string(),
            mode,
        },
    })
}

fn default_max_attempts() -> u32 {
    4
}

fn default_initial_backoff_ms() -> u64 {
    500
}

fn default_max_per_minute() -> u32 {
    60
}

fn default_timeout_secs() -> u64 {
    5
}

fn default_queue_length() -> usize {
    256
}

/// Result of delivering one notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered {
        attempts: u32,
    },
    /// The receiver rejected the notification with a status that retrying cannot fix.
    Rejected {
        status: u16,
    },
    Failed {
        attempts: u32,
        last_error: String,
    },
}

/// Background task that delivers notifications from its queue.
pub struct WebhookWorker {
    config: WebhookConfig,
    secret: WebhookSecret,
    queue: mpsc::Receiver<PromptEvent>,
    http: reqwest::Client,
}

impl WebhookWorker {
    pub(super) fn new(
        config: WebhookConfig,
    ) -> Result<(mpsc::Sender<PromptEvent>, Self), WebhookError> {
        let secret = config.load_secret()?;
        let (sender, queue) = mpsc::channel(config.queue_length.max(1));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Ok((
            sender,
            Self {
                config,
                secret,
                queue,
                http,
            },
        ))
    }

    /// Delivers queued notifications until every sender is dropped. Calls `on_delivery`
    /// with each outcome, so tests and metrics can observe them.
    pub async fn run(mut self, mut on_delivery: impl FnMut(&PromptEvent, &Delivery) + Send) {
        let per_minute = self.config.max_per_minute.max(1);
        let spacing = Duration::from_secs(60) / per_minute;
        let mut limiter = tokio::time::interval(spacing);
        limiter.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while let Some(event) = self.queue.recv().await {
            limiter.tick().await;
            let outcome = self.deliver(&event).await;
            match &outcome {
                Delivery::Delivered { attempts } => {
                    debug!(device_id = event.device_id, attempts, "webhook delivered");
                }
                Delivery::Rejected { status } => warn!(
                    device_id = event.device_id,
                    status,
                    url = %self.config.url,
                    "webhook receiver rejected the notification; check its configuration"
                ),
                Delivery::Failed {
                    attempts,
                    last_error,
                } => warn!(
                    device_id = event.device_id,
                    attempts,
                    error = %last_error,
                    url = %self.config.url,
                    "webhook delivery failed; check that the receiver is reachable"
                ),
            }
            on_delivery(&event, &outcome);
        }
    }

    async fn deliver(&self, event: &PromptEvent) -> Delivery {
        let mut backoff = Duration::from_millis(self.config.initial_backoff_ms);
        let attempts = self.config.max_attempts.max(1);
        let mut last_error = String::new();
        let body = match serde_json::to_vec(event) {
            Ok(body) => body,
            Err(err) => {
                return Delivery::Failed {
                    attempts: 0,
                    last_error: format!("failed to encode the notification: {err}"),
                };
            }
        };
        for attempt in 1..=attempts {
            // Each attempt is signed at its own time, so a retry passes the receiver's
            // timestamp window.
            let timestamp_secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            let request = self
                .http
                .post(&self.config.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(TIMESTAMP_HEADER, timestamp_secs.to_string())
                .header(SIGNATURE_HEADER, self.secret.sign(timestamp_secs, &body))
                .body(body.clone());
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    return Delivery::Delivered { attempts: attempt };
                }
                Ok(response) => {
                    let status = response.status();
                    if status.is_client_error() && status.as_u16() != 429 {
                        return Delivery::Rejected {
                            status: status.as_u16(),
                        };
                    }
                    last_error = format!("HTTP status {status}");
                }
                Err(err) => last_error = err.to_string(),
            }
            if attempt < attempts {
                debug!(device_id = event.device_id, attempt, error = %last_error, "webhook attempt failed, retrying");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        Delivery::Failed {
            attempts,
            last_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn sign_matches_known_vector() {
        // printf '1764806400.{}' | openssl dgst -sha256 -hmac 0123456789abcdef0123456789abcdef
        let signature = WebhookSecret::new(SECRET).sign(1_764_806_400, b"{}");
        assert_eq!(
            signature,
            "sha256=27843e6bab5aac67d74bae4f72acf103b34ad29658c3fcd7b2aea2c772485063"
        );
    }

    #[test]
    fn verify_accepts_own_signature() {
        let secret = WebhookSecret::new(SECRET);
        let signature = secret.sign(1000, b"body");
        let result = secret.verify(
            "1000",
            &signature,
            b"body",
            at(1010),
            Duration::from_secs(300),
        );
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn verify_rejects_tampered_body() {
        let secret = WebhookSecret::new(SECRET);
        let signature = secret.sign(1000, b"body");
        let result = secret.verify(
            "1000",
            &signature,
            b"bodY",
            at(1000),
            Duration::from_secs(300),
        );
        assert_eq!(result, Err(SignatureError::Mismatch));
    }

    #[test]
    fn verify_rejects_changed_timestamp() {
        let secret = WebhookSecret::new(SECRET);
        let signature = secret.sign(1000, b"body");
        let result = secret.verify(
            "1001",
            &signature,
            b"body",
            at(1000),
            Duration::from_secs(300),
        );
        assert_eq!(result, Err(SignatureError::Mismatch));
    }

    #[test]
    fn verify_rejects_stale_timestamp() {
        let secret = WebhookSecret::new(SECRET);
        let signature = secret.sign(1000, b"body");
        let result = secret.verify(
            "1000",
            &signature,
            b"body",
            at(1301),
            Duration::from_secs(300),
        );
        assert_eq!(result, Err(SignatureError::Stale));
    }

    #[test]
    fn verify_rejects_other_secret() {
        let signature = WebhookSecret::new(SECRET).sign(1000, b"body");
        let other = WebhookSecret::new("another secret of at least 32 bytes!");
        let result = other.verify(
            "1000",
            &signature,
            b"body",
            at(1000),
            Duration::from_secs(300),
        );
        assert_eq!(result, Err(SignatureError::Mismatch));
    }

    #[test]
    fn load_secret_rejects_short_and_missing() {
        let mut config: WebhookConfig =
            toml::from_str("url = \"http://127.0.0.1:1/\"\n").expect("webhook config parses");
        assert!(matches!(
            config.load_secret(),
            Err(WebhookError::MissingSecret)
        ));

        let dir = tempfile::tempdir().expect("create a scratch folder");
        let path = dir.path().join("secret");
        std::fs::write(&path, "short\n").expect("write the secret");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("make the secret private");
        config.secret_file = Some(path);
        assert!(matches!(
            config.load_secret(),
            Err(WebhookError::ShortSecret { length: 5, .. })
        ));

        std::fs::write(config.secret_file.as_ref().unwrap(), "").expect("empty the secret");
        assert!(matches!(
            config.load_secret(),
            Err(WebhookError::ShortSecret { length: 0, .. })
        ));
    }

    #[test]
    fn load_secret_rejects_world_readable_file() {
        use std::os::unix::fs::PermissionsExt as _;

        let dir = tempfile::tempdir().expect("create a scratch folder");
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("{SECRET}\n")).expect("write the secret");
        let mut config: WebhookConfig =
            toml::from_str("url = \"http://127.0.0.1:1/\"\n").expect("webhook config parses");
        config.secret_file = Some(path.clone());

        for mode in [0o604, 0o644, 0o602, 0o666] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .expect("change the mode");
            let err = config
                .load_secret()
                .expect_err("other users can access the file");
            assert!(
                matches!(err, WebhookError::SecretFileMode { mode: found, .. } if found == mode),
                "mode {mode:o}: {err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        for mode in [0o600, 0o640, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .expect("change the mode");
            assert!(config.load_secret().is_ok(), "mode {mode:o} is accepted");
        }
    }
}
