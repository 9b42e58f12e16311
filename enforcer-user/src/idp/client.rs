//! Client of one OpenID Connect provider: discovery, the authorization code flow with PKCE,
//! the device authorization grant, and signing key refetch.

use std::{
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use openidconnect::{
    AdditionalProviderMetadata, AuthenticationContextClass, AuthenticationFlow, AuthorizationCode,
    Client, ClientId, ClientSecret, CsrfToken, DeviceAuthorizationUrl, EmptyExtraTokenFields,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, JsonWebKeySetUrl, Nonce,
    OAuth2TokenResponse as _, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl,
    RequestTokenError, Scope, StandardErrorResponse, StandardTokenResponse, TokenResponse as _,
    core::{
        CoreAuthDisplay, CoreAuthPrompt, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
        CoreDeviceAuthorizationResponse, CoreErrorResponseType, CoreGenderClaim, CoreGrantType,
        CoreJsonWebKey, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm,
        CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType,
        CoreRevocableToken, CoreRevocationErrorResponse, CoreSubjectIdentifierType,
        CoreTokenIntrospectionResponse, CoreTokenType,
    },
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::store::PendingLogin;

use super::{
    Authentication, IdpConfig, IdpError,
    pending::{LoginOrigin, PendingLogins, unix_ms},
    verify::{ExtraClaims, IdToken, TokenCheck, verify_id_token},
};

/// Provider metadata fields beyond OpenID Connect Discovery that the gateway uses.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraProviderMetadata {
    /// RFC 8628 device authorization endpoint.
    #[serde(default)]
    pub device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
    /// RFC 9207: the IdP adds `iss` to every authorization response.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: Option<bool>,
}

impl AdditionalProviderMetadata for ExtraProviderMetadata {}

pub type Metadata = ProviderMetadata<
    ExtraProviderMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type TokenFields = IdTokenFields<
    ExtraClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

type TokenResponse = StandardTokenResponse<TokenFields, CoreTokenType>;

type OidcClient<HasDeviceAuthUrl = EndpointNotSet> = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    HasDeviceAuthUrl,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Options of one sign-in.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoginOptions {
    /// Ask the IdP for multi-factor authentication and accept only a multi-factor result.
    pub mfa: bool,
}

/// An authorization request ready for the browser.
#[derive(Debug)]
pub struct AuthorizationRequest {
    /// URL of the IdP's authorization endpoint with every parameter, for the browser.
    pub url: url::Url,
    /// The `state` parameter, which keys the pending sign-in.
    pub state: String,
}

/// Query parameters of the redirect back to the portal.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    pub iss: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// A started device authorization grant.
pub struct DeviceAuthorization {
    pub response: CoreDeviceAuthorizationResponse,
    pub requested_at: SystemTime,
    pub mfa: bool,
}

impl DeviceAuthorization {
    pub fn user_code(&self) -> &str {
        self.response.user_code().secret()
    }

    pub fn verification_uri(&self) -> &str {
        self.response.verification_uri().as_str()
    }

    pub fn verification_uri_complete(&self) -> Option<&str> {
        self.response
            .verification_uri_complete()
            .map(|uri| uri.secret().as_str())
    }

    pub fn expires_in(&self) -> Duration {
        self.response.expires_in()
    }

    /// Returns when the device code expires.
    pub fn expires_at(&self) -> SystemTime {
        self.requested_at + self.response.expires_in()
    }

    /// Returns the IdP's response as JSON, to store it and resume polling after a restart.
    /// It contains the device code, which is a secret.
    pub fn response_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.response).unwrap_or_default()
    }

    /// Rebuilds a started grant from `response_json` of a stored one.
    pub fn resume(
        response: serde_json::Value,
        requested_at: SystemTime,
        mfa: bool,
    ) -> Result<Self, IdpError> {
        let response = serde_json::from_value(response).map_err(|err| {
            IdpError::Store(format!(
                "the stored device authorization response is unreadable: {err}"
            ))
        })?;
        Ok(Self {
            response,
            requested_at,
            mfa,
        })
    }
}

/// Result of `enforcer idp check`.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub configured_issuer: String,
    pub discovered_issuer: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub device_authorization_endpoint: Option<String>,
    pub signing_algorithms: Vec<String>,
    pub keys: usize,
    pub problems: Vec<String>,
}

struct KeyState {
    keys: CoreJsonWebKeySet,
    last_refetch: Option<Instant>,
}

/// A discovered identity provider.
pub struct IdentityProvider {
    config: IdpConfig,
    secret: ClientSecret,
    http: reqwest::Client,
    metadata: Metadata,
    algorithms: Vec<CoreJwsSigningAlgorithm>,
    keys: Mutex<KeyState>,
}

fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Builds the HTTP client for IdP requests. Redirects are not followed, so a compromised
/// discovery document cannot point the gateway at other hosts through them.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, IdpError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .map_err(|err| IdpError::Config(format!("failed to build the HTTP client: {err}")))
}

async fn fetch_metadata(http: &reqwest::Client, issuer: &str) -> Result<Metadata, IdpError> {
    let url = discovery_url(issuer);
    let unreachable = |err: reqwest::Error| IdpError::Unreachable {
        url: url.clone(),
        reason: err.to_string(),
    };
    let response = http.get(&url).send().await.map_err(unreachable)?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
        return Err(IdpError::NoDiscovery {
            url,
            status: status.as_u16(),
            issuer: issuer.to_owned(),
        });
    }
    if !status.is_success() {
        return Err(IdpError::Unreachable {
            url,
            reason: format!("HTTP status {status}"),
        });
    }
    let body = response.bytes().await.map_err(unreachable)?;
    serde_json::from_slice(&body).map_err(|err| IdpError::InvalidDocument {
        url,
        reason: err.to_string(),
    })
}

async fn fetch_keys(
    http: &reqwest::Client,
    jwks_uri: &JsonWebKeySetUrl,
) -> Result<CoreJsonWebKeySet, IdpError> {
    CoreJsonWebKeySet::fetch_async(jwks_uri, http)
        .await
        .map_err(|err| IdpError::Unreachable {
            url: jwks_uri.to_string(),
            reason: format!("{err}"),
        })
}

impl IdentityProvider {
    /// Validates the configuration, fetches the discovery document and the signing keys.
    pub async fn discover(config: IdpConfig, secret: ClientSecret) -> Result<Self, IdpError> {
        config.validate()?;
        let algorithms = config.signing_algorithms()?;
        let http = http_client(config.http_timeout())?;
        let metadata = fetch_metadata(&http, &config.issuer).await?;

        let discovered = metadata.issuer().as_str();
        if discovered != config.issuer {
            return Err(IdpError::IssuerMismatch {
                configured: config.issuer.clone(),
                discovered: discovered.to_owned(),
            });
        }
        let offered = metadata.id_token_signing_alg_values_supported();
        if !offered.iter().any(|alg| algorithms.contains(alg)) {
            return Err(IdpError::NoCommonAlgorithm {
                accepted: config.algorithms.clone(),
                offered: offered.iter().map(algorithm_name).collect(),
            });
        }

        let keys = fetch_keys(&http, metadata.jwks_uri()).await?;
        info!(
            issuer = %config.issuer,
            keys = keys.keys().len(),
            device_flow = metadata.additional_metadata().device_authorization_endpoint.is_some(),
            "discovered the identity provider"
        );
        Ok(Self {
            config,
            secret,
            http,
            metadata,
            algorithms,
            keys: Mutex::new(KeyState {
                keys,
                last_refetch: None,
            }),
        })
    }

    /// Runs discovery without failing early and lists every problem found, for
    /// `enforcer idp check`.
    pub async fn check(config: &IdpConfig) -> CheckReport {
        let mut report = CheckReport {
            configured_issuer: config.issuer.clone(),
            discovered_issuer: None,
            authorization_endpoint: None,
            token_endpoint: None,
            device_authorization_endpoint: None,
            signing_algorithms: Vec::new(),
            keys: 0,
            problems: Vec::new(),
        };
        if let Err(err) = config.validate() {
            report.problems.push(err.to_string());
        }
        if let Err(err) = config.load_client_secret() {
            report.problems.push(err.to_string());
        }
        let http = match http_client(config.http_timeout()) {
            Ok(http) => http,
            Err(err) => {
                report.problems.push(err.to_string());
                return report;
            }
        };
        let metadata = match fetch_metadata(&http, &config.issuer).await {
            Ok(metadata) => metadata,
            Err(err) => {
                report.problems.push(err.to_string());
                return report;
            }
        };

        let discovered = metadata.issuer().as_str().to_owned();
        if discovered != config.issuer {
            report.problems.push(
                IdpError::IssuerMismatch {
                    configured: config.issuer.clone(),
                    discovered: discovered.clone(),
                }
                .to_string(),
            );
        }
        report.discovered_issuer = Some(discovered);
        report.authorization_endpoint = Some(metadata.authorization_endpoint().to_string());
        report.token_endpoint = metadata.token_endpoint().map(|url| url.to_string());
        report.device_authorization_endpoint = metadata
            .additional_metadata()
            .device_authorization_endpoint
            .as_ref()
            .map(|url| url.to_string());
        report.signing_algorithms = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .map(algorithm_name)
            .collect();
        if let Ok(accepted) = config.signing_algorithms() {
            let offered = metadata.id_token_signing_alg_values_supported();
            if !offered.iter().any(|alg| accepted.contains(alg)) {
                report.problems.push(
                    IdpError::NoCommonAlgorithm {
                        accepted: config.algorithms.clone(),
                        offered: report.signing_algorithms.clone(),
                    }
                    .to_string(),
                );
            }
        }
        if report.token_endpoint.is_none() {
            report
                .problems
                .push("the discovery document has no token_endpoint".into());
        }
        match fetch_keys(&http, metadata.jwks_uri()).await {
            Ok(keys) => report.keys = keys.keys().len(),
            Err(err) => report.problems.push(err.to_string()),
        }
        report
    }

    pub fn config(&self) -> &IdpConfig {
        &self.config
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    pub fn supports_device_flow(&self) -> bool {
        self.metadata
            .additional_metadata()
            .device_authorization_endpoint
            .is_some()
    }

    fn client(&self) -> Result<OidcClient, IdpError> {
        let redirect = RedirectUrl::new(self.config.redirect_url.clone()).map_err(|err| {
            IdpError::Config(format!(
                "invalid redirect_url {:?}: {err}",
                self.config.redirect_url
            ))
        })?;
        let client = Client::from_provider_metadata(
            self.metadata.clone(),
            ClientId::new(self.config.client_id.clone()),
            Some(self.secret.clone()),
        )
        .set_redirect_uri(redirect);
        Ok(client)
    }

    fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        self.config
            .scopes
            .iter()
            .filter(|scope| scope.as_str() != "openid")
            .map(|scope| Scope::new(scope.clone()))
    }

    /// Builds an authorization request for `origin` and stores its state, nonce and PKCE
    /// verifier. It always requests a fresh authentication (`prompt=login` and `max_age`).
    pub fn begin_login(
        &self,
        pending: &PendingLogins,
        origin: LoginOrigin,
        options: LoginOptions,
    ) -> Result<AuthorizationRequest, IdpError> {
        let client = self.client()?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge)
            .add_scopes(self.scopes())
            .add_prompt(CoreAuthPrompt::Login)
            .set_max_age(Duration::from_secs(self.config.max_age_secs));
        if options.mfa {
            for acr in &self.config.mfa_acr_values {
                request =
                    request.add_auth_context_value(AuthenticationContextClass::new(acr.clone()));
            }
        }
        let (url, state, nonce) = request.url();

        let now = SystemTime::now();
        let login = PendingLogin {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            device_id: origin.device_id,
            source_address: Some(origin.address),
            return_to: None,
            created_unix_ms: unix_ms(now),
            expires_unix_ms: unix_ms(now + self.config.login_ttl()),
            mfa: options.mfa,
        };
        pending.create(&login, origin, now)?;
        debug!(device_id = origin.device_id, address = %origin.address, mfa = options.mfa, "started a sign-in");
        Ok(AuthorizationRequest {
            url,
            state: state.secret().clone(),
        })
    }

    /// Completes a sign-in from the redirect back to the portal. A callback from another
    /// origin than the one that started the sign-in is rejected and leaves it in place.
    /// Otherwise the pending sign-in is consumed whatever the outcome, so a state works once.
    pub async fn complete_login(
        &self,
        pending: &PendingLogins,
        origin: LoginOrigin,
        params: &CallbackParams,
    ) -> Result<Authentication, IdpError> {
        let state = params.state.as_deref().ok_or(IdpError::UnknownState)?;
        let login = pending.take(state, origin, SystemTime::now())?;
        let device_id = origin.device_id;
        if let Some(iss) = &params.iss {
            if *iss != self.config.issuer {
                return Err(IdpError::CallbackIssuerMismatch {
                    expected: self.config.issuer.clone(),
                    found: iss.clone(),
                });
            }
        }
        if let Some(error) = &params.error {
            return Err(IdpError::AuthorizationDenied {
                error: error.clone(),
                description: params.error_description.clone(),
            });
        }
        let code = params.code.clone().ok_or(IdpError::MissingCode)?;

        let client = self.client()?;
        let response = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|err| IdpError::Config(format!("the IdP has no token endpoint: {err}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|err| token_error(err, client.token_uri().map(|u| u.to_string())))?;
        let id_token = response.id_token().ok_or(IdpError::MissingIdToken)?;
        debug!(
            device_id,
            address = %origin.address,
            scopes = ?response.scopes(),
            "exchanged the authorization code"
        );

        let nonce = Nonce::new(login.nonce.clone());
        let check = TokenCheck {
            nonce: Some(&nonce),
            requested_at_unix_s: login.created_unix_ms / 1000,
            mfa: login.mfa,
        };
        self.verify(id_token, &check).await
    }

    /// Starts a device authorization grant (RFC 8628).
    pub async fn start_device_authorization(
        &self,
        options: LoginOptions,
    ) -> Result<DeviceAuthorization, IdpError> {
        let endpoint = self
            .metadata
            .additional_metadata()
            .device_authorization_endpoint
            .clone()
            .ok_or(IdpError::DeviceFlowUnsupported)?;
        let client = self.client()?.set_device_authorization_url(endpoint);
        let requested_at = SystemTime::now();
        let mut request = client
            .exchange_device_code()
            .add_scopes(self.scopes())
            .add_extra_param("max_age", self.config.max_age_secs.to_string());
        if options.mfa && !self.config.mfa_acr_values.is_empty() {
            request = request.add_extra_param("acr_values", self.config.mfa_acr_values.join(" "));
        }
        let response: CoreDeviceAuthorizationResponse = request
            .request_async(&self.http)
            .await
            .map_err(|err| token_error(err, None))?;
        Ok(DeviceAuthorization {
            response,
            requested_at,
            mfa: options.mfa,
        })
    }

    /// Polls the token endpoint as RFC 8628 requires (the given interval, 5 s more after each
    /// `slow_down`, until the code expires at `expires_at`) and verifies the resulting ID
    /// token.
    pub async fn finish_device_authorization(
        &self,
        authorization: &DeviceAuthorization,
    ) -> Result<Authentication, IdpError> {
        let endpoint = self
            .metadata
            .additional_metadata()
            .device_authorization_endpoint
            .clone()
            .ok_or(IdpError::DeviceFlowUnsupported)?;
        let client = self.client()?.set_device_authorization_url(endpoint);
        let left = authorization
            .expires_at()
            .duration_since(SystemTime::now())
            .map_err(|_| IdpError::DeviceCodeExpired)?;
        let response = client
            .exchange_device_access_token(&authorization.response)
            .map_err(|err| IdpError::Config(format!("the IdP has no token endpoint: {err}")))?
            .request_async(&self.http, tokio::time::sleep, Some(left))
            .await
            .map_err(device_token_error)?;
        let id_token = response.id_token().ok_or(IdpError::MissingIdToken)?;
        let check = TokenCheck {
            nonce: None,
            requested_at_unix_s: unix_ms(authorization.requested_at) / 1000,
            mfa: authorization.mfa,
        };
        self.verify(id_token, &check).await
    }

    /// Verifies an ID token, refetching the key set once when the token names an unknown
    /// key, at most once per `key_refetch_min_interval_secs`.
    async fn verify(
        &self,
        id_token: &IdToken,
        check: &TokenCheck<'_>,
    ) -> Result<Authentication, IdpError> {
        let keys = self.current_keys();
        match verify_id_token(&self.config, &self.algorithms, &keys, id_token, check) {
            Err(IdpError::UnknownSigningKey { kid, .. }) => {
                self.refetch_keys(&kid).await?;
                let keys = self.current_keys();
                verify_id_token(&self.config, &self.algorithms, &keys, id_token, check)
            }
            result => result,
        }
    }

    fn current_keys(&self) -> CoreJsonWebKeySet {
        match self.keys.lock() {
            Ok(state) => state.keys.clone(),
            Err(poisoned) => poisoned.into_inner().keys.clone(),
        }
    }

    async fn refetch_keys(&self, kid: &str) -> Result<(), IdpError> {
        let min_interval = self.config.key_refetch_min_interval();
        {
            let mut state = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(last) = state.last_refetch {
                let ago = last.elapsed();
                if ago < min_interval {
                    warn!(kid, ?ago, "unknown signing key, refetch rate-limited");
                    return Err(IdpError::UnknownSigningKey {
                        kid: kid.to_owned(),
                        refetched_ago: ago,
                        min_interval,
                    });
                }
            }
            state.last_refetch = Some(Instant::now());
        }
        info!(kid, "unknown signing key, refetching the key set");
        let keys = fetch_keys(&self.http, self.metadata.jwks_uri()).await?;
        let mut state = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        state.keys = keys;
        Ok(())
    }
}

fn algorithm_name(alg: &CoreJwsSigningAlgorithm) -> String {
    serde_json::to_value(alg)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{alg:?}"))
}

fn token_error<RE, T>(
    err: RequestTokenError<RE, StandardErrorResponse<T>>,
    url: Option<String>,
) -> IdpError
where
    RE: std::error::Error + 'static,
    T: openidconnect::ErrorResponseType + std::fmt::Display + 'static,
{
    match err {
        RequestTokenError::ServerResponse(response) => IdpError::TokenRejected {
            error: response.error().to_string(),
            description: response.error_description().cloned(),
        },
        RequestTokenError::Request(err) => IdpError::Unreachable {
            url: url.unwrap_or_else(|| "the token endpoint".into()),
            reason: error_chain(&err),
        },
        RequestTokenError::Parse(err, _) => IdpError::InvalidDocument {
            url: url.unwrap_or_else(|| "the token endpoint".into()),
            reason: err.to_string(),
        },
        RequestTokenError::Other(reason) => IdpError::TokenRejected {
            error: reason,
            description: None,
        },
    }
}

fn device_token_error<RE>(
    err: RequestTokenError<RE, openidconnect::DeviceCodeErrorResponse>,
) -> IdpError
where
    RE: std::error::Error + 'static,
{
    use openidconnect::DeviceCodeErrorResponseType as Kind;
    if let RequestTokenError::ServerResponse(response) = &err {
        match response.error() {
            Kind::ExpiredToken => return IdpError::DeviceCodeExpired,
            Kind::AccessDenied => return IdpError::DeviceAccessDenied,
            _ => {}
        }
    }
    token_error(err, None)
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_url_strips_trailing_slash() {
        assert_eq!(
            discovery_url("https://idp.example/"),
            "https://idp.example/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url("https://idp.example/realm"),
            "https://idp.example/realm/.well-known/openid-configuration"
        );
    }
}
