//! IdP configuration: the `[idp]` section of the daemon's configuration file.

use std::{path::PathBuf, time::Duration};

use openidconnect::{ClientSecret, core::CoreJwsSigningAlgorithm};
use serde::Deserialize;

use super::IdpError;

/// Connection to one OpenID Connect provider. The client secret is read from a file or an
/// environment variable, never from the command line, so it does not show in `ps`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdpConfig {
    /// Issuer identifier, compared exactly (including any trailing slash) with the discovery
    /// document and every ID token.
    pub issuer: String,
    pub client_id: String,
    /// File whose content (without a trailing newline) is the client secret.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Environment variable that contains the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// Callback URL of the portal, registered at the IdP.
    pub redirect_url: String,
    /// Scopes requested; `openid` is always requested.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// ID token claim that carries the user's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Use the `email` claim only with `email_verified: true`. When false, an email without
    /// `email_verified` is used too, for IdPs that never send the claim; `false` is never
    /// trusted. Policies and device owners name users by email, so an unverified address
    /// would let any account that claims it act as that user.
    #[serde(default = "default_email_verified_required")]
    pub email_verified_required: bool,
    /// Accepted ID token signature algorithms; only asymmetric ones are allowed.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp`, `iat` and `auth_time`, in seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// `max_age` sent with every sign-in, in seconds. With `prompt=login` it makes the IdP
    /// authenticate the user again instead of reusing its SSO session.
    #[serde(default)]
    pub max_age_secs: u64,
    /// How long a started sign-in (state, nonce, PKCE verifier) stays valid, in seconds.
    #[serde(default = "default_login_ttl_secs")]
    pub login_ttl_secs: u64,
    /// Sign-ins in progress allowed per device (per address for an unenrolled one); a
    /// further `/login` gets 429 until one completes or expires.
    #[serde(default = "default_max_pending_logins_per_device")]
    pub max_pending_logins_per_device: usize,
    /// Sign-ins in progress allowed on the gateway, across all devices. Unenrolled addresses
    /// together hold at most half of them (`PendingLimits::unenrolled`).
    #[serde(default = "default_max_pending_logins")]
    pub max_pending_logins: usize,
    /// Minimum time between two key set refetches caused by an unknown key id, in seconds.
    #[serde(default = "default_key_refetch_secs")]
    pub key_refetch_min_interval_secs: u64,
    /// `acr` values requested for a step-up sign-in and accepted as multi-factor.
    #[serde(default)]
    pub mfa_acr_values: Vec<String>,
    /// `amr` values (RFC 8176) that count as a second factor; two distinct values from this
    /// list, or `mfa` itself, make an authentication multi-factor.
    #[serde(default = "default_mfa_amr_values")]
    pub mfa_amr_values: Vec<String>,
    /// HTTP timeout for every request to the IdP, in seconds.
    #[serde(default = "default_http_timeout_secs")]
    pub http_timeout_secs: u64,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into()]
}

fn default_email_verified_required() -> bool {
    true
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_algorithms() -> Vec<String> {
    ["RS256", "PS256", "ES256", "EdDSA"]
        .map(String::from)
        .to_vec()
}

fn default_leeway_secs() -> u64 {
    10
}

fn default_login_ttl_secs() -> u64 {
    300
}

fn default_max_pending_logins_per_device() -> usize {
    super::pending::DEFAULT_MAX_PENDING_PER_DEVICE
}

fn default_max_pending_logins() -> usize {
    super::pending::DEFAULT_MAX_PENDING
}

fn default_key_refetch_secs() -> u64 {
    60
}

fn default_http_timeout_secs() -> u64 {
    10
}

fn default_mfa_amr_values() -> Vec<String> {
    // Factors other than a password or knowledge question, from the RFC 8176 registry.
    [
        "mfa", "otp", "hwk", "swk", "sms", "tel", "fpt", "face", "iris", "retina", "vbm", "sc",
        "pop",
    ]
    .map(String::from)
    .to_vec()
}

impl IdpConfig {
    /// Reads the client secret from the configured file or environment variable.
    pub fn load_client_secret(&self) -> Result<ClientSecret, IdpError> {
        match (&self.client_secret_file, &self.client_secret_env) {
            (Some(_), Some(_)) => Err(IdpError::Config(
                "both `client_secret_file` and `client_secret_env` are set; keep one".into(),
            )),
            (None, None) => Err(IdpError::Config(
                "no client secret: set `client_secret_file` or `client_secret_env`".into(),
            )),
            (Some(path), None) => {
                let text = crate::secret_file::read(path).map_err(|err| match err {
                    crate::secret_file::SecretFileError::Read(reason) => IdpError::SecretFile {
                        path: path.display().to_string(),
                        reason,
                    },
                    crate::secret_file::SecretFileError::Mode(mode) => IdpError::SecretFileMode {
                        path: path.display().to_string(),
                        mode,
                    },
                })?;
                let secret = text.trim_end_matches(['\r', '\n']);
                if secret.is_empty() {
                    return Err(IdpError::Config(format!(
                        "the client secret file {} is empty",
                        path.display()
                    )));
                }
                Ok(ClientSecret::new(secret.to_owned()))
            }
            (None, Some(name)) => match std::env::var(name) {
                Ok(secret) if !secret.is_empty() => Ok(ClientSecret::new(secret)),
                _ => Err(IdpError::SecretEnv { name: name.clone() }),
            },
        }
    }

    /// Parses `algorithms`, rejecting `none` and the symmetric HMAC algorithms: an HMAC
    /// token would be verified with a key that is not the IdP's alone.
    pub fn signing_algorithms(&self) -> Result<Vec<CoreJwsSigningAlgorithm>, IdpError> {
        if self.algorithms.is_empty() {
            return Err(IdpError::Config(
                "`algorithms` is empty; accept at least RS256".into(),
            ));
        }
        self.algorithms
            .iter()
            .map(|name| {
                let alg: CoreJwsSigningAlgorithm =
                    serde_json::from_value(serde_json::Value::String(name.clone())).map_err(
                        |_| IdpError::Config(format!("unknown signature algorithm {name:?}")),
                    )?;
                match alg {
                    CoreJwsSigningAlgorithm::HmacSha256
                    | CoreJwsSigningAlgorithm::HmacSha384
                    | CoreJwsSigningAlgorithm::HmacSha512
                    | CoreJwsSigningAlgorithm::None => Err(IdpError::Config(format!(
                        "signature algorithm {name:?} is not asymmetric; use RS256, PS256, ES256 or EdDSA"
                    ))),
                    _ => Ok(alg),
                }
            })
            .collect()
    }

    /// Checks the values that discovery cannot check.
    pub fn validate(&self) -> Result<(), IdpError> {
        if self.client_id.is_empty() {
            return Err(IdpError::Config("`client_id` is empty".into()));
        }
        url::Url::parse(&self.issuer)
            .map_err(|err| IdpError::Config(format!("invalid issuer {:?}: {err}", self.issuer)))?;
        url::Url::parse(&self.redirect_url).map_err(|err| {
            IdpError::Config(format!(
                "invalid redirect_url {:?}: {err}",
                self.redirect_url
            ))
        })?;
        if self.login_ttl_secs == 0 {
            return Err(IdpError::Config("`login_ttl_secs` must be positive".into()));
        }
        if self.max_pending_logins_per_device == 0 || self.max_pending_logins == 0 {
            return Err(IdpError::Config(
                "`max_pending_logins_per_device` and `max_pending_logins` must be positive, or no one can sign in".into(),
            ));
        }
        self.signing_algorithms()?;
        Ok(())
    }

    pub fn pending_limits(&self) -> super::PendingLimits {
        super::PendingLimits {
            per_device: self.max_pending_logins_per_device,
            total: self.max_pending_logins,
        }
    }

    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.leeway_secs)
    }

    pub fn login_ttl(&self) -> Duration {
        Duration::from_secs(self.login_ttl_secs)
    }

    pub fn key_refetch_min_interval(&self) -> Duration {
        Duration::from_secs(self.key_refetch_min_interval_secs)
    }

    pub fn http_timeout(&self) -> Duration {
        Duration::from_secs(self.http_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(algorithms: &[&str]) -> IdpConfig {
        let text = format!(
            "issuer = \"http://127.0.0.1:1\"\nclient_id = \"enforcer\"\nredirect_url = \"http://127.0.0.1:2/callback\"\nalgorithms = {algorithms:?}\n"
        );
        toml::from_str(&text).expect("test configuration parses")
    }

    #[test]
    fn algorithms_reject_hmac_and_none() {
        for name in ["HS256", "HS384", "HS512", "none"] {
            let result = config(&[name]).signing_algorithms();
            assert!(result.is_err(), "{name} must be rejected");
        }
    }

    #[test]
    fn algorithms_accept_asymmetric() {
        let algs = config(&["RS256", "ES256"]).signing_algorithms();
        assert_eq!(
            algs.ok(),
            Some(vec![
                CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                CoreJwsSigningAlgorithm::EcdsaP256Sha256
            ])
        );
    }

    #[test]
    fn secret_requires_exactly_one_source() {
        let mut both = config(&["RS256"]);
        both.client_secret_file = Some("/nonexistent".into());
        both.client_secret_env = Some("X".into());
        assert!(matches!(
            both.load_client_secret(),
            Err(IdpError::Config(_))
        ));

        let neither = config(&["RS256"]);
        assert!(matches!(
            neither.load_client_secret(),
            Err(IdpError::Config(_))
        ));
    }

    #[test]
    fn secret_file_strips_newline() {
        let path = std::env::temp_dir().join(format!("enforcer-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").expect("write the secret file");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("make the secret file private");
        let mut with_file = config(&["RS256"]);
        with_file.client_secret_file = Some(path.clone());
        let secret = with_file.load_client_secret();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            secret.ok().map(|s| s.secret().clone()),
            Some("s3cret".into())
        );
    }

    #[test]
    fn secret_file_readable_by_others() {
        let path =
            std::env::temp_dir().join(format!("enforcer-open-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").expect("write the secret file");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("make the secret file readable");
        let mut with_file = config(&["RS256"]);
        with_file.client_secret_file = Some(path.clone());
        let result = with_file.load_client_secret();
        let _ = std::fs::remove_file(&path);
        let message = result
            .expect_err("a readable secret file is refused")
            .to_string();
        assert!(message.contains("mode 644"), "{message}");
        assert!(
            message.contains(&format!("chmod 600 {}", path.display())),
            "{message}"
        );
    }
}
