//! ID token validation: signature with the IdP's asymmetric keys, exact issuer, audience,
//! expiry and issue time with a small leeway, nonce, `auth_time` no older than the request,
//! and multi-factor evidence for step-up sign-ins.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use openidconnect::{
    AdditionalClaims, ClaimsVerificationError, ClientId, IdTokenVerifier, IssuerUrl, Nonce,
    NonceVerifier, SignatureVerificationError,
    core::{
        CoreGenderClaim, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    },
};
use serde::{Deserialize, Serialize};

use super::{Authentication, IdpConfig, IdpError};

/// Claims outside the standard set, so the configured groups claim can be read by name.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraClaims {
    #[serde(flatten)]
    pub other: HashMap<String, serde_json::Value>,
}

impl AdditionalClaims for ExtraClaims {}

pub type IdToken = openidconnect::IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// Values a token must match beyond the IdP's configuration.
pub struct TokenCheck<'a> {
    /// The nonce sent with the authorization request; `None` for the device grant, which has
    /// no nonce.
    pub nonce: Option<&'a Nonce>,
    pub requested_at_unix_s: u64,
    pub mfa: bool,
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: Option<String>,
    kid: Option<String>,
}

/// Reads the unverified JOSE header, only to name the algorithm and key in errors and to
/// decide whether a key refetch may help.
fn jose_header(id_token: &IdToken) -> JoseHeader {
    let text = id_token.to_string();
    let header = text.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(JoseHeader {
            alg: None,
            kid: None,
        })
}

fn to_datetime(unix_s: u64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(unix_s as i64, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Verifies `id_token` against `keys` and returns the authentication it proves.
pub fn verify_id_token(
    config: &IdpConfig,
    algorithms: &[CoreJwsSigningAlgorithm],
    keys: &CoreJsonWebKeySet,
    id_token: &IdToken,
    check: &TokenCheck<'_>,
) -> Result<Authentication, IdpError> {
    let leeway = chrono::Duration::seconds(config.leeway_secs as i64);
    let now = Utc::now();
    let requested_at = to_datetime(check.requested_at_unix_s);
    let issuer = IssuerUrl::new(config.issuer.clone())
        .map_err(|err| IdpError::Config(format!("invalid issuer {:?}: {err}", config.issuer)))?;

    // A public-client verifier has no client secret, so no HMAC key exists to verify with.
    let verifier = IdTokenVerifier::new_public_client(
        ClientId::new(config.client_id.clone()),
        issuer,
        keys.clone(),
    )
    .set_allowed_algs(algorithms.iter().cloned())
    .require_issuer_match(true)
    .require_audience_match(true)
    // openidconnect rejects `now >= exp`; moving "now" back by the leeway tolerates skew.
    .set_time_fn(move || now - leeway)
    .set_issue_time_verifier_fn(move |iat| {
        if iat > now + leeway {
            Err(format!("issued at {iat}, in the future (now {now})"))
        } else {
            Ok(())
        }
    })
    .set_auth_time_verifier_fn(move |auth_time| match auth_time {
        None => Err("the token has no auth_time claim".into()),
        Some(auth_time) if auth_time + leeway < requested_at => Err(format!(
            "auth_time {auth_time} is older than the sign-in request at {requested_at}"
        )),
        Some(_) => Ok(()),
    });

    let claims = match check.nonce {
        Some(nonce) => id_token.claims(&verifier, nonce),
        None => id_token.claims(&verifier, AnyNonce),
    }
    .map_err(|err| claims_error(err, id_token, config))?;

    let amr: Vec<String> = claims
        .auth_method_refs()
        .map(|refs| refs.iter().map(|r| r.to_string()).collect())
        .unwrap_or_default();
    let acr = claims.auth_context_ref().map(|acr| acr.to_string());
    let multi_factor = is_multi_factor(config, &amr, acr.as_deref());
    if check.mfa && !multi_factor {
        return Err(IdpError::MfaRequired { amr, acr });
    }

    let auth_time = claims
        .auth_time()
        .map(|time| UNIX_EPOCH + Duration::from_secs(time.timestamp().max(0) as u64))
        .unwrap_or_else(SystemTime::now);
    let groups = match claims.additional_claims().other.get(&config.groups_claim) {
        Some(serde_json::Value::Array(values)) => values
            .iter()
            .filter_map(|value| value.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(value)) => vec![value.clone()],
        _ => Vec::new(),
    };
    Ok(Authentication {
        issuer: claims.issuer().to_string(),
        subject: claims.subject().to_string(),
        email: verified_email(config, claims.email(), claims.email_verified()),
        groups,
        auth_time,
        amr,
        acr,
        multi_factor,
    })
}

/// Returns the `email` claim when the IdP verified it, or when it sent no `email_verified`
/// and `email_verified_required` is off.
fn verified_email(
    config: &IdpConfig,
    email: Option<&openidconnect::EndUserEmail>,
    email_verified: Option<bool>,
) -> Option<String> {
    let trusted = match email_verified {
        Some(verified) => verified,
        None => !config.email_verified_required,
    };
    if !trusted && email.is_some() {
        tracing::warn!(
            ?email_verified,
            "ignored the email claim of an ID token because the IdP did not verify it; set email_verified_required = false for an IdP that never sends email_verified"
        );
    }
    email.filter(|_| trusted).map(|email| email.to_string())
}

/// Nonce check for the device grant: the request carries no nonce, so the token may carry
/// none either.
struct AnyNonce;

impl NonceVerifier for AnyNonce {
    fn verify(self, _nonce: Option<&Nonce>) -> Result<(), String> {
        Ok(())
    }
}

/// Returns whether an authentication is multi-factor: true when `amr` contains `mfa`, when it lists two distinct
/// methods of which one is a second factor from `mfa_amr_values`, or when `acr` is one of
/// `mfa_acr_values`.
pub fn is_multi_factor(config: &IdpConfig, amr: &[String], acr: Option<&str>) -> bool {
    if let Some(acr) = acr {
        if config.mfa_acr_values.iter().any(|value| value == acr) {
            return true;
        }
    }
    if amr.iter().any(|method| method == "mfa") {
        return true;
    }
    let mut distinct: Vec<&String> = amr.iter().collect();
    distinct.sort();
    distinct.dedup();
    let has_second_factor = distinct
        .iter()
        .any(|method| config.mfa_amr_values.contains(method));
    distinct.len() >= 2 && has_second_factor
}

fn claims_error(err: ClaimsVerificationError, id_token: &IdToken, config: &IdpConfig) -> IdpError {
    let header = jose_header(id_token);
    match err {
        ClaimsVerificationError::SignatureVerification(sig) => match sig {
            SignatureVerificationError::DisallowedAlg(_)
            | SignatureVerificationError::NoSignature
            | SignatureVerificationError::UnsupportedAlg(_) => IdpError::DisallowedAlgorithm {
                alg: header.alg.unwrap_or_else(|| "missing".into()),
                accepted: config.algorithms.clone(),
            },
            SignatureVerificationError::NoMatchingKey => IdpError::UnknownSigningKey {
                kid: header.kid.unwrap_or_default(),
                refetched_ago: Duration::ZERO,
                min_interval: config.key_refetch_min_interval(),
            },
            other => IdpError::InvalidSignature(other.to_string()),
        },
        ClaimsVerificationError::InvalidIssuer(reason) => IdpError::WrongIssuer(reason),
        ClaimsVerificationError::InvalidAudience(reason) => IdpError::WrongAudience(reason),
        ClaimsVerificationError::Expired(reason) => IdpError::Expired(reason),
        ClaimsVerificationError::InvalidNonce(reason) => IdpError::Nonce(reason),
        ClaimsVerificationError::InvalidAuthTime(reason) => IdpError::StaleAuthentication(reason),
        other => IdpError::InvalidToken(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> IdpConfig {
        let mut config: IdpConfig = toml::from_str(
            "issuer = \"http://127.0.0.1:1\"\nclient_id = \"c\"\nredirect_url = \"http://127.0.0.1:2/cb\"\n",
        )
        .expect("test configuration parses");
        config.mfa_acr_values = vec!["urn:mfa".into()];
        config
    }

    fn methods(values: &[&str]) -> Vec<String> {
        values.iter().map(|value| value.to_string()).collect()
    }

    #[test]
    fn multi_factor_from_amr_pair() {
        assert!(is_multi_factor(&config(), &methods(&["pwd", "otp"]), None));
    }

    #[test]
    fn multi_factor_rejects_password_only() {
        assert!(!is_multi_factor(&config(), &methods(&["pwd"]), None));
    }

    #[test]
    fn multi_factor_rejects_repeated_method() {
        assert!(!is_multi_factor(&config(), &methods(&["otp", "otp"]), None));
    }

    #[test]
    fn multi_factor_rejects_two_knowledge_factors() {
        assert!(!is_multi_factor(&config(), &methods(&["pwd", "kba"]), None));
    }

    #[test]
    fn multi_factor_from_mfa_value() {
        assert!(is_multi_factor(&config(), &methods(&["mfa"]), None));
    }

    #[test]
    fn multi_factor_from_acr() {
        assert!(is_multi_factor(&config(), &[], Some("urn:mfa")));
    }
}
