//! Sign-in rejections: each hostile or replayed input must fail with its own error and
//! return no authentication, so no session can be granted. Tokens come from the real
//! `oidc-provider` test IdP, or from the hostile signer in `tests/idp/hostile.mjs` for tokens
//! a correct provider never issues.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use enforcer::idp::{
    Authentication, CallbackParams, IdentityProvider, IdpConfig, IdpError, LoginOptions,
    LoginOrigin, PendingLogins,
};
use enforcer::store::Store;
use enforcer_tests::oidc::{self, NodeServer, TempDir};

/// Whether an error is the one a hostile token must cause.
type ErrorCheck = fn(&IdpError) -> bool;

const DEVICE: LoginOrigin = LoginOrigin {
    device_id: Some(1),
    address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
};
const OTHER_DEVICE: LoginOrigin = LoginOrigin {
    device_id: Some(2),
    address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
};
const REDIRECT: &str = "http://127.0.0.1:9/callback";

struct Env {
    _server: NodeServer,
    _dir: TempDir,
    idp: IdentityProvider,
    pending: PendingLogins,
    http: reqwest::Client,
}

/// Returns a name for an environment variable that carries one test's client secret.
fn unique_env_name() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("ENFORCER_TEST_SECRET_{}_{n}", std::process::id())
}

fn config(issuer: &str, secret_env: &str, extra: &str) -> IdpConfig {
    let text = format!(
        "issuer = {issuer:?}\nclient_id = {:?}\nclient_secret_env = {secret_env:?}\nredirect_url = {REDIRECT:?}\nscopes = [\"openid\", \"email\", \"groups\"]\nmfa_acr_values = [{:?}]\n{extra}",
        oidc::CLIENT_ID,
        oidc::ACR_MFA,
    );
    toml::from_str(&text).expect("test IdP configuration parses")
}

async fn env(server: NodeServer, secret: &str) -> Env {
    env_with(server, secret, "").await
}

/// Builds the environment with `extra` lines at the end of the `[idp]` section.
async fn env_with(server: NodeServer, secret: &str, extra: &str) -> Env {
    let dir = TempDir::new("pending").expect("create a scratch folder");
    let store = Store::open(&dir.path().join("store.redb")).expect("open the store");
    let pending = PendingLogins::new(Arc::new(store));
    let env_name = unique_env_name();
    // SAFETY: each call sets its own variable name, which no other thread reads or writes.
    unsafe { std::env::set_var(&env_name, secret) };
    let config = config(&server.issuer, &env_name, extra);
    let secret = config.load_client_secret().expect("read the client secret");
    let idp = IdentityProvider::discover(config, secret)
        .await
        .expect("discover the test IdP");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .expect("build the HTTP client");
    Env {
        _server: server,
        _dir: dir,
        idp,
        pending,
        http,
    }
}

async fn hostile_env() -> Env {
    let server = oidc::start_hostile().expect("start the hostile signer");
    env(server, oidc::HOSTILE_CLIENT_SECRET).await
}

async fn provider_env() -> Env {
    let server = oidc::start_provider(&[REDIRECT.to_owned()]).expect("start the test IdP");
    env(server, oidc::CLIENT_SECRET).await
}

fn callback_params(location: &str) -> CallbackParams {
    let url = url::Url::parse(location).expect("the redirect is a URL");
    let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
    CallbackParams {
        state: query.get("state").cloned(),
        code: query.get("code").cloned(),
        iss: query.get("iss").cloned(),
        error: query.get("error").cloned(),
        error_description: query.get("error_description").cloned(),
    }
}

/// Signs `login` in at the IdP and returns the parameters of the redirect to the callback.
async fn authorize(env: &Env, authorization_url: &str, login: &str) -> CallbackParams {
    let url = oidc::authorize(&env.http, authorization_url, REDIRECT, login)
        .await
        .expect("sign in at the IdP");
    callback_params(&url)
}

async fn sign_in_with_mode(
    env: &Env,
    server_mode: &str,
    options: LoginOptions,
) -> Result<Authentication, IdpError> {
    let server = &env._server;
    oidc::set_hostile_mode(server, server_mode)
        .await
        .expect("set the hostile mode");
    let request = env
        .idp
        .begin_login(&env.pending, DEVICE, options)
        .expect("begin the sign-in");
    let params = authorize(env, request.url.as_str(), "mallory").await;
    env.idp.complete_login(&env.pending, DEVICE, &params).await
}

#[tokio::test]
async fn hostile_valid_token_accepted() {
    let env = hostile_env().await;
    let result = sign_in_with_mode(&env, "valid", LoginOptions::default()).await;
    let authentication = result.expect("a correct token is accepted");
    assert_eq!(authentication.subject, "mallory");
    assert_eq!(authentication.groups, vec!["eng".to_owned()]);
    assert_eq!(authentication.email.as_deref(), Some("mallory@example.com"));
}

#[tokio::test]
async fn hostile_unverified_email_ignored() {
    // Policies and device owners name users by email, so an email the IdP has not verified
    // would let its account act as that user.
    let env = hostile_env().await;
    for mode in ["unverified_email", "email_verified_missing"] {
        let authentication = sign_in_with_mode(&env, mode, LoginOptions::default())
            .await
            .unwrap_or_else(|err| panic!("{mode}: the token is valid: {err}"));
        assert_eq!(authentication.subject, "mallory", "{mode}");
        assert_eq!(authentication.email, None, "{mode}: the email is not used");
    }

    // An IdP that never sends email_verified can be trusted for its emails, but an explicit
    // false still counts.
    let server = oidc::start_hostile().expect("start the hostile signer");
    let lenient = env_with(
        server,
        oidc::HOSTILE_CLIENT_SECRET,
        "email_verified_required = false\n",
    )
    .await;
    let missing = sign_in_with_mode(&lenient, "email_verified_missing", LoginOptions::default())
        .await
        .expect("the token is valid");
    assert_eq!(missing.email.as_deref(), Some("alice@example.com"));
    let unverified = sign_in_with_mode(&lenient, "unverified_email", LoginOptions::default())
        .await
        .expect("the token is valid");
    assert_eq!(unverified.email, None);
}

#[tokio::test]
async fn hostile_tokens_rejected() {
    let env = hostile_env().await;
    let cases: [(&str, ErrorCheck); 8] = [
        (
            "alg_none",
            |e| matches!(e, IdpError::DisallowedAlgorithm { alg, .. } if alg == "none"),
        ),
        (
            "hs256_public_key",
            |e| matches!(e, IdpError::DisallowedAlgorithm { alg, .. } if alg == "HS256"),
        ),
        ("wrong_audience", |e| {
            matches!(e, IdpError::WrongAudience(_))
        }),
        ("issuer_trailing_slash", |e| {
            matches!(e, IdpError::WrongIssuer(_))
        }),
        ("expired", |e| matches!(e, IdpError::Expired(_))),
        ("old_auth_time", |e| {
            matches!(e, IdpError::StaleAuthentication(_))
        }),
        (
            "missing_nonce",
            |e| matches!(e, IdpError::Nonce(reason) if reason.contains("missing")),
        ),
        (
            "wrong_nonce",
            |e| matches!(e, IdpError::Nonce(reason) if reason.contains("mismatch")),
        ),
    ];
    for (mode, expected) in cases {
        let result = sign_in_with_mode(&env, mode, LoginOptions::default()).await;
        match result {
            Ok(authentication) => panic!("{mode}: accepted as {authentication:?}"),
            Err(err) => assert!(expected(&err), "{mode}: wrong error: {err}"),
        }
    }
}

#[tokio::test]
async fn hostile_unknown_key_refetched_once() {
    let env = hostile_env().await;
    let rotated = sign_in_with_mode(&env, "unknown_key", LoginOptions::default()).await;
    assert!(
        rotated.is_ok(),
        "a rotated key is fetched: {:?}",
        rotated.err()
    );

    let unpublished = sign_in_with_mode(&env, "unpublished_key", LoginOptions::default()).await;
    assert!(
        matches!(&unpublished, Err(IdpError::UnknownSigningKey { kid, .. }) if kid == "never-published"),
        "the second refetch within the interval is rate-limited: {unpublished:?}"
    );
}

#[tokio::test]
async fn hostile_step_up_requires_mfa() {
    let env = hostile_env().await;
    let result = sign_in_with_mode(&env, "valid", LoginOptions { mfa: true }).await;
    assert!(
        matches!(&result, Err(IdpError::MfaRequired { amr, .. }) if amr == &vec!["pwd".to_owned()]),
        "a password-only sign-in does not satisfy step-up: {result:?}"
    );
}

#[tokio::test]
async fn state_wrong_rejected() {
    let env = hostile_env().await;
    let request = env
        .idp
        .begin_login(&env.pending, DEVICE, LoginOptions::default())
        .expect("begin");
    let mut params = authorize(&env, request.url.as_str(), "mallory").await;
    params.state = Some("forged-state".into());
    let result = env.idp.complete_login(&env.pending, DEVICE, &params).await;
    assert!(matches!(result, Err(IdpError::UnknownState)), "{result:?}");
}

#[tokio::test]
async fn state_missing_rejected() {
    let env = hostile_env().await;
    let request = env
        .idp
        .begin_login(&env.pending, DEVICE, LoginOptions::default())
        .expect("begin");
    let mut params = authorize(&env, request.url.as_str(), "mallory").await;
    params.state = None;
    let result = env.idp.complete_login(&env.pending, DEVICE, &params).await;
    assert!(matches!(result, Err(IdpError::UnknownState)), "{result:?}");
}

#[tokio::test]
async fn state_replayed_rejected() {
    let env = hostile_env().await;
    let request = env
        .idp
        .begin_login(&env.pending, DEVICE, LoginOptions::default())
        .expect("begin");
    let params = authorize(&env, request.url.as_str(), "mallory").await;
    let first = env.idp.complete_login(&env.pending, DEVICE, &params).await;
    assert!(
        first.is_ok(),
        "the first callback succeeds: {:?}",
        first.err()
    );
    let replay = env.idp.complete_login(&env.pending, DEVICE, &params).await;
    assert!(matches!(replay, Err(IdpError::UnknownState)), "{replay:?}");
}

#[tokio::test]
async fn callback_other_device_rejected() {
    let env = hostile_env().await;
    let request = env
        .idp
        .begin_login(&env.pending, DEVICE, LoginOptions::default())
        .expect("begin");
    let params = authorize(&env, request.url.as_str(), "mallory").await;
    let stolen = env
        .idp
        .complete_login(&env.pending, OTHER_DEVICE, &params)
        .await;
    assert!(
        matches!(
            &stolen,
            Err(IdpError::DeviceMismatch {
                expected: Some(1),
                actual,
                ..
            }) if *actual == OTHER_DEVICE
        ),
        "{stolen:?}"
    );
    // The rejected callback left the state in place, so the rightful sign-in completes.
    let owner = env.idp.complete_login(&env.pending, DEVICE, &params).await;
    let authentication = owner.expect("the device that started the sign-in completes it");
    assert_eq!(authentication.subject, "mallory");
    let replay = env.idp.complete_login(&env.pending, DEVICE, &params).await;
    assert!(matches!(replay, Err(IdpError::UnknownState)), "{replay:?}");
}

#[tokio::test]
async fn provider_code_replay_rejected() {
    let env = provider_env().await;
    let first = env
        .idp
        .begin_login(&env.pending, DEVICE, LoginOptions::default())
        .expect("begin");
    let first_params = authorize(&env, first.url.as_str(), "alice").await;
    let accepted = env
        .idp
        .complete_login(&env.pending, DEVICE, &first_params)
        .await;
    assert!(
        accepted.is_ok(),
        "the first sign-in succeeds: {:?}",
        accepted.err()
    );

    // A fresh state with the spent code: the IdP must refuse to redeem the code again.
    let second = env
        .idp
        .begin_login(&env.pending, DEVICE, LoginOptions::default())
        .expect("begin");
    let replay = CallbackParams {
        state: Some(second.state.clone()),
        ..first_params
    };
    let result = env.idp.complete_login(&env.pending, DEVICE, &replay).await;
    assert!(
        matches!(&result, Err(IdpError::TokenRejected { error, .. }) if error == "invalid_grant"),
        "{result:?}"
    );
}

#[tokio::test]
async fn provider_pkce_from_other_sign_in_rejected() {
    let env = provider_env().await;
    let a = env
        .idp
        .begin_login(&env.pending, DEVICE, LoginOptions::default())
        .expect("begin");
    let b = env
        .idp
        .begin_login(&env.pending, DEVICE, LoginOptions::default())
        .expect("begin");
    let a_params = authorize(&env, a.url.as_str(), "alice").await;
    // Sign-in b's state contains b's PKCE verifier, which does not match a's code challenge.
    let mixed = CallbackParams {
        state: Some(b.state.clone()),
        ..a_params
    };
    let result = env.idp.complete_login(&env.pending, DEVICE, &mixed).await;
    assert!(
        matches!(&result, Err(IdpError::TokenRejected { error, .. }) if error == "invalid_grant"),
        "{result:?}"
    );
}

#[tokio::test]
async fn provider_issuer_trailing_slash_rejected() {
    let server = oidc::start_provider(&[REDIRECT.to_owned()]).expect("start the test IdP");
    let env_name = unique_env_name();
    // SAFETY: each call sets its own variable name, which no other thread reads or writes.
    unsafe { std::env::set_var(&env_name, oidc::CLIENT_SECRET) };
    let config = config(&format!("{}/", server.issuer), &env_name, "");
    let secret = config.load_client_secret().expect("read the client secret");
    let result = IdentityProvider::discover(config.clone(), secret).await;
    assert!(
        matches!(&result, Err(IdpError::IssuerMismatch { discovered, .. }) if *discovered == server.issuer),
        "{:?}",
        result.err()
    );

    let report = IdentityProvider::check(&config).await;
    assert_eq!(
        report.discovered_issuer.as_deref(),
        Some(server.issuer.as_str())
    );
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
}

#[tokio::test]
async fn issuer_with_wrong_path_names_the_issuer() {
    let server = oidc::start_provider(&[REDIRECT.to_owned()]).expect("start the test IdP");
    let env_name = unique_env_name();
    // SAFETY: each call sets its own variable name, which no other thread reads or writes.
    unsafe { std::env::set_var(&env_name, oidc::CLIENT_SECRET) };
    let config = config(&format!("{}/realms/other", server.issuer), &env_name, "");
    let secret = config.load_client_secret().expect("read the client secret");
    let result = IdentityProvider::discover(config, secret).await;
    let Err(err) = result else {
        panic!("discovery of a wrong issuer path succeeded");
    };
    assert!(
        matches!(err, IdpError::NoDiscovery { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("check `issuer` in [idp]"), "{err}");
}

#[tokio::test]
async fn callback_issuer_mismatch_rejected() {
    let env = hostile_env().await;
    let request = env
        .idp
        .begin_login(&env.pending, DEVICE, LoginOptions::default())
        .expect("begin");
    let mut params = authorize(&env, request.url.as_str(), "mallory").await;
    // RFC 9207: a response naming another issuer came from a mixed-up or hostile IdP.
    params.iss = Some(format!("{}/", env._server.issuer));
    let result = env.idp.complete_login(&env.pending, DEVICE, &params).await;
    assert!(
        matches!(result, Err(IdpError::CallbackIssuerMismatch { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn callback_error_rejected() {
    let env = hostile_env().await;
    let request = env
        .idp
        .begin_login(&env.pending, DEVICE, LoginOptions::default())
        .expect("begin");
    let params = CallbackParams {
        state: Some(request.state.clone()),
        error: Some("access_denied".into()),
        error_description: Some("the user cancelled".into()),
        ..CallbackParams::default()
    };
    let result = env.idp.complete_login(&env.pending, DEVICE, &params).await;
    assert!(
        matches!(&result, Err(IdpError::AuthorizationDenied { error, .. }) if error == "access_denied"),
        "{result:?}"
    );
}
