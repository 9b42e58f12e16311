//! Sign-in through the portal against the real `oidc-provider` test IdP on loopback. The
//! tests cover a browser sign-in in headless chromium, a reauth that the IdP's SSO cookie must
//! not satisfy, a step-up sign-in with a one-time code, and a device-code sign-in started with
//! curl.
//!
//! The portal's `Gateway` here maps 127.0.0.1 to device 1 and 127.0.0.2 to device 2 and
//! records every grant; the daemon's implementation is the store and session engine.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use enforcer::{
    idp::{Authentication, IdentityProvider, IdpConfig, LoginOrigin, PendingLogins},
    portal::{self, DeviceStatus, Gateway, GrantRejected, Granted, Portal, SessionView},
    store::Store,
};
use enforcer_tests::oidc::{self, Browser, NodeServer, TempDir};

const RESOURCE: &str = "wiki";

#[derive(Default)]
struct RecordingGateway {
    grants: Mutex<Vec<(u32, Authentication)>>,
    requires_mfa: Mutex<bool>,
}

impl RecordingGateway {
    fn grants(&self) -> Vec<(u32, Authentication)> {
        self.grants.lock().expect("grants lock").clone()
    }
}

impl Gateway for RecordingGateway {
    fn device_for_address(&self, address: IpAddr) -> Option<u32> {
        match address {
            IpAddr::V4(v4) if v4 == Ipv4Addr::new(127, 0, 0, 1) => Some(1),
            IpAddr::V4(v4) if v4 == Ipv4Addr::new(127, 0, 0, 2) => Some(2),
            _ => None,
        }
    }

    fn device_status(&self, device_id: u32) -> DeviceStatus {
        DeviceStatus {
            device_id,
            name: format!("laptop-{device_id}"),
            sessions: Vec::new(),
            pending: vec![RESOURCE.to_owned()],
            pending_requires_mfa: *self.requires_mfa.lock().expect("mfa lock"),
        }
    }

    fn grant(
        &self,
        origin: LoginOrigin,
        authentication: &Authentication,
    ) -> Result<Granted, GrantRejected> {
        let device_id = origin.device_id.ok_or_else(|| GrantRejected {
            reason: "this test gateway enrolls no devices".into(),
        })?;
        self.grants
            .lock()
            .expect("grants lock")
            .push((device_id, authentication.clone()));
        Ok(Granted {
            sessions: vec![SessionView {
                resource: RESOURCE.to_owned(),
                expires_at: SystemTime::now() + Duration::from_secs(3600),
            }],
            enrolled_device: None,
        })
    }
}

struct Lab {
    idp_server: NodeServer,
    portal_url: String,
    gateway: Arc<RecordingGateway>,
    _dir: TempDir,
    _server: tokio::task::JoinHandle<()>,
}

async fn lab() -> Lab {
    lab_with("").await
}

/// Starts the IdP and a portal whose `[idp]` section ends with `extra_idp_config`.
async fn lab_with(extra_idp_config: &str) -> Lab {
    lab_listening("127.0.0.1:0", extra_idp_config).await
}

/// Starts the IdP and a portal listening on `listen`, reached at 127.0.0.1.
async fn lab_listening(listen: &str, extra_idp_config: &str) -> Lab {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .expect("bind the portal");
    let port = listener.local_addr().expect("portal address").port();
    let portal_url = format!("http://127.0.0.1:{port}");
    let redirect = format!("{portal_url}/callback");
    let idp_server =
        oidc::start_provider(std::slice::from_ref(&redirect)).expect("start the test IdP");

    let dir = TempDir::new("portal").expect("create a scratch folder");
    let secret_path = dir.path().join("client-secret");
    enforcer_tests::write_secret(&secret_path, &format!("{}\n", oidc::CLIENT_SECRET))
        .expect("write the secret");
    let text = format!(
        "issuer = {:?}\nclient_id = {:?}\nclient_secret_file = {:?}\nredirect_url = {redirect:?}\nscopes = [\"openid\", \"email\", \"groups\"]\nmfa_acr_values = [{:?}]\n{extra_idp_config}",
        idp_server.issuer,
        oidc::CLIENT_ID,
        secret_path.display().to_string(),
        oidc::ACR_MFA,
    );
    let config: IdpConfig = toml::from_str(&text).expect("IdP configuration parses");
    let limits = config.pending_limits();
    let secret = config.load_client_secret().expect("read the client secret");
    let idp = IdentityProvider::discover(config, secret)
        .await
        .expect("discover the test IdP");
    let store = Store::open(&dir.path().join("store.redb")).expect("open the store");
    let pending = PendingLogins::with_limits(Arc::new(store), limits);
    let gateway = Arc::new(RecordingGateway::default());
    let state = Portal::new(Arc::new(idp), pending, gateway.clone());
    let server = tokio::spawn(async move {
        let _ = portal::serve(listener, state, std::future::pending()).await;
    });
    Lab {
        idp_server,
        portal_url,
        gateway,
        _dir: dir,
        _server: server,
    }
}

/// Clicks the portal's sign-in button and waits for the IdP's login form.
async fn open_idp_login(browser: &Browser, lab: &Lab) {
    browser
        .goto(&format!("{}/", lab.portal_url))
        .await
        .expect("open the portal");
    browser.click("#sign-in").await.expect("click sign in");
    browser
        .wait_for_url(&format!("{}/interaction/", lab.idp_server.issuer))
        .await
        .expect("the browser reaches the IdP's login page");
}

async fn finish_at_portal(browser: &Browser, lab: &Lab) -> String {
    browser
        .wait_for_url(&format!("{}/callback", lab.portal_url))
        .await
        .expect("the IdP redirects back to the portal");
    browser.body_text().await.expect("read the page")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sign_in_restores_access() {
    let lab = lab().await;
    let browser = Browser::start().await.expect("start chromium");

    browser
        .goto(&format!("{}/", lab.portal_url))
        .await
        .expect("open the portal");
    let before = browser.body_text().await.expect("read the portal");
    assert!(
        before.contains("laptop-1"),
        "the portal names the device: {before}"
    );
    assert!(
        before.contains(RESOURCE),
        "the portal lists the pending prompt: {before}"
    );

    open_idp_login(&browser, &lab).await;
    browser
        .sign_in("alice", None)
        .await
        .expect("submit the login form");
    let page = finish_at_portal(&browser, &lab).await;
    assert!(page.contains("Access restored"), "{page}");
    assert!(page.contains("alice@example.com"), "{page}");
    assert!(
        page.contains(RESOURCE),
        "the page lists the resource open again: {page}"
    );

    let grants = lab.gateway.grants();
    assert_eq!(grants.len(), 1);
    let (device_id, authentication) = &grants[0];
    assert_eq!(*device_id, 1);
    assert_eq!(authentication.subject, "alice");
    assert_eq!(authentication.groups, vec!["eng".to_owned()]);
    assert_eq!(authentication.amr, vec!["pwd".to_owned()]);
    assert!(!authentication.multi_factor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauth_ignores_idp_sso_cookie() {
    let lab = lab().await;
    let browser = Browser::start().await.expect("start chromium");
    open_idp_login(&browser, &lab).await;
    browser
        .sign_in("alice", None)
        .await
        .expect("submit the login form");
    finish_at_portal(&browser, &lab).await;
    let first = lab.gateway.grants()[0].1.clone();

    // The IdP now has an SSO session for this browser, so a plain authorization request
    // (no prompt=login, no max_age) comes straight back with a code and no login form.
    let silent = format!(
        "{}/auth?client_id={}&response_type=code&scope=openid&redirect_uri={}/callback&state=probe&nonce=probe&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256",
        lab.idp_server.issuer,
        oidc::CLIENT_ID,
        lab.portal_url
    );
    browser
        .goto(&silent)
        .await
        .expect("open the plain authorization request");
    let page = finish_at_portal(&browser, &lab).await;
    assert!(
        page.contains("unknown or already used sign-in state"),
        "{page}"
    );
    assert_eq!(
        lab.gateway.grants().len(),
        1,
        "the probe's callback grants nothing"
    );

    // The portal's request requires a fresh authentication, so the IdP shows its form again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    open_idp_login(&browser, &lab).await;
    assert!(
        browser.exists("#login-form").await,
        "the IdP asks for the password again"
    );
    assert_eq!(
        lab.gateway.grants().len(),
        1,
        "no grant before the user signs in again"
    );

    browser
        .sign_in("alice", None)
        .await
        .expect("submit the login form");
    let page = finish_at_portal(&browser, &lab).await;
    assert!(page.contains("Access restored"), "{page}");
    let grants = lab.gateway.grants();
    assert_eq!(grants.len(), 2);
    assert!(
        grants[1].1.auth_time > first.auth_time,
        "the second sign-in is a new authentication: {:?} then {:?}",
        first.auth_time,
        grants[1].1.auth_time
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_up_asks_for_second_factor() {
    let lab = lab().await;
    *lab.gateway.requires_mfa.lock().expect("mfa lock") = true;
    let browser = Browser::start().await.expect("start chromium");

    open_idp_login(&browser, &lab).await;
    assert!(
        browser.exists("#otp").await,
        "the IdP asks for a one-time code"
    );
    browser
        .sign_in("bob", Some(oidc::OTP))
        .await
        .expect("submit the login form");
    let page = finish_at_portal(&browser, &lab).await;
    assert!(page.contains("Access restored"), "{page}");

    let grants = lab.gateway.grants();
    assert_eq!(grants.len(), 1);
    let authentication = &grants[0].1;
    assert_eq!(authentication.subject, "bob");
    assert!(authentication.multi_factor, "amr {:?}", authentication.amr);
    assert!(authentication.amr.contains(&"otp".to_owned()));
    assert_eq!(authentication.acr.as_deref(), Some(oidc::ACR_MFA));
}

/// Builds an HTTP client that follows no redirects, with source address `source`.
fn client_from(source: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(IpAddr::V4(source))
        .build()
        .expect("HTTP client")
}

/// Sends `POST /login` from `client` and returns the response.
async fn post_login(lab: &Lab, client: &reqwest::Client) -> reqwest::Response {
    client
        .post(format!("{}/login", lab.portal_url))
        .send()
        .await
        .expect("POST /login")
}

fn redirect_location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .expect("the portal redirects to the IdP")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_from_other_device_keeps_sign_in() {
    let lab = lab().await;
    let device_1 = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let device_2 = client_from(Ipv4Addr::new(127, 0, 0, 2));
    let response = post_login(&lab, &device_1).await;
    let authorization = redirect_location(&response);

    // The user of device 1 signs in at the IdP; the redirect back carries device 1's state.
    let idp_browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .expect("HTTP client with cookies");
    let callback = oidc::authorize(
        &idp_browser,
        &authorization,
        &format!("{}/callback", lab.portal_url),
        "alice",
    )
    .await
    .expect("sign in at the IdP");

    // Device 2 (source 127.0.0.2) presents that callback first.
    let stolen = device_2
        .get(&callback)
        .send()
        .await
        .expect("callback from device 2");
    let stolen_status = stolen.status();
    let stolen_body = stolen.text().await.expect("error page");
    assert_eq!(stolen_status, reqwest::StatusCode::FORBIDDEN);
    assert!(stolen_body.contains("device 1 started it"), "{stolen_body}");
    assert!(lab.gateway.grants().is_empty(), "device 2 got no grant");

    // Device 1's own callback still completes, because the rejection did not spend the state.
    let owner = device_1
        .get(&callback)
        .send()
        .await
        .expect("callback from device 1");
    let owner_status = owner.status();
    let owner_body = owner.text().await.expect("result page");
    assert_eq!(owner_status, reqwest::StatusCode::OK, "{owner_body}");
    assert!(
        owner_body.contains("signed in as alice@example.com"),
        "{owner_body}"
    );
    let grants = lab.gateway.grants();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].0, 1, "the grant is for device 1");
    assert_eq!(grants[0].1.subject, "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_over_device_limit_gets_429() {
    let lab = lab_with("max_pending_logins_per_device = 3\n").await;
    let device_1 = client_from(Ipv4Addr::new(127, 0, 0, 1));
    for attempt in 1..=3 {
        let response = post_login(&lab, &device_1).await;
        assert_eq!(
            response.status(),
            reqwest::StatusCode::SEE_OTHER,
            "sign-in {attempt} of 3 starts"
        );
    }

    // Every further attempt, up to a bounded 20, is rejected without a store write.
    for _ in 0..20 {
        let response = post_login(&lab, &device_1).await;
        assert_eq!(response.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .expect("a Retry-After header in seconds");
        assert!(
            (1..=301).contains(&retry_after),
            "retry after the first sign-in expires (login_ttl_secs 300): {retry_after}"
        );
        let body = response.text().await.expect("error page");
        assert!(
            body.contains("device 1 already has 3 sign-ins in progress"),
            "{body}"
        );
    }

    let device_2 = client_from(Ipv4Addr::new(127, 0, 0, 2));
    let other = post_login(&lab, &device_2).await;
    assert_eq!(
        other.status(),
        reqwest::StatusCode::SEE_OTHER,
        "another device has its own limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_over_total_limit_gets_429() {
    let lab = lab_with("max_pending_logins = 2\n").await;
    let device_1 = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let device_2 = client_from(Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(
        post_login(&lab, &device_1).await.status(),
        reqwest::StatusCode::SEE_OTHER
    );
    assert_eq!(
        post_login(&lab, &device_2).await.status(),
        reqwest::StatusCode::SEE_OTHER
    );
    let over = post_login(&lab, &device_2).await;
    assert_eq!(over.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    assert!(over.headers().contains_key(reqwest::header::RETRY_AFTER));
    let body = over.text().await.expect("error page");
    assert!(
        body.contains("the gateway already has 2 sign-ins in progress"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_page_names_portal_url() {
    let lab = lab().await;
    let output = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("{}/", lab.portal_url))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "curl failed: {text}");
    let command = format!("run `curl -X POST {}/device`", lab.portal_url);
    assert!(text.contains(&command), "{text}");
    assert!(!text.contains("<portal>"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_sign_in_with_curl() {
    let lab = lab().await;
    let output = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-X", "POST"])
        .arg(format!("{}/device", lab.portal_url))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("device sign-in: open"), "{text}");
    let poll_command = format!("then run `curl {}/device`", lab.portal_url);
    assert!(text.contains(&poll_command), "{text}");
    let complete = text
        .lines()
        .find_map(|line| line.strip_prefix("or open "))
        .unwrap_or_else(|| panic!("no complete verification URL in {text}"))
        .to_owned();
    assert!(complete.starts_with(&lab.idp_server.issuer), "{complete}");

    // The user approves on another machine's browser.
    let browser = Browser::start().await.expect("start chromium");
    browser
        .goto(&complete)
        .await
        .expect("open the verification URL");
    browser
        .click("button[type=submit]")
        .await
        .expect("confirm the user code");
    browser
        .wait_for_url(&format!("{}/interaction/", lab.idp_server.issuer))
        .await
        .expect("the IdP asks the user to sign in");
    browser
        .sign_in("carol", None)
        .await
        .expect("submit the login form");

    // The portal polls the IdP at the interval it gives (5 s by default); wait at most 60 s.
    let started = Instant::now();
    let result = loop {
        let output = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("{}/device", lab.portal_url))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !text.contains("enter the code") || started.elapsed() > Duration::from_secs(60) {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(result.contains("device sign-in: complete"), "{result}");
    assert!(result.contains(RESOURCE), "{result}");
    let grants = lab.gateway.grants();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].1.subject, "carol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_sign_in_over_total_limit_gets_429() {
    let lab = lab_with("max_pending_logins = 1\n").await;
    let device_1 = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let device_2 = client_from(Ipv4Addr::new(127, 0, 0, 2));
    let first = device_1
        .post(format!("{}/device", lab.portal_url))
        .send()
        .await
        .expect("POST /device from device 1");
    assert_eq!(first.status(), reqwest::StatusCode::OK);

    let again = device_1
        .post(format!("{}/device", lab.portal_url))
        .send()
        .await
        .expect("POST /device again from device 1");
    assert_eq!(
        again.status(),
        reqwest::StatusCode::OK,
        "the device's own grant in progress is shown again"
    );

    let over = device_2
        .post(format!("{}/device", lab.portal_url))
        .send()
        .await
        .expect("POST /device from device 2");
    assert_eq!(over.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    assert!(over.headers().contains_key(reqwest::header::RETRY_AFTER));
    let body = over.text().await.expect("error page");
    assert!(
        body.contains("the gateway already has 1 device sign-ins in progress"),
        "{body}"
    );
}

/// Returns the user code of a device sign-in page in plain text.
fn user_code(body: &str) -> Option<String> {
    let rest = body.split("enter the code ").nth(1)?;
    rest.split_whitespace().next().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_device_sign_ins_respect_limits() {
    let lab = lab_with("max_pending_logins = 1\n").await;
    let mut requests = tokio::task::JoinSet::new();
    for index in 0..8u8 {
        let client = client_from(Ipv4Addr::new(127, 0, 0, 1 + index % 2));
        let url = format!("{}/device", lab.portal_url);
        requests.spawn(async move {
            let response = client.post(url).send().await.expect("POST /device");
            let status = response.status();
            (status, response.text().await.expect("device sign-in page"))
        });
    }
    let mut codes = std::collections::HashSet::new();
    let mut rejected = 0;
    while let Some(result) = requests.join_next().await {
        let (status, body) = result.expect("request task");
        match status {
            reqwest::StatusCode::OK => {
                codes.insert(user_code(&body).expect("the page shows a user code"));
            }
            reqwest::StatusCode::TOO_MANY_REQUESTS => rejected += 1,
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(
        codes.len(),
        1,
        "max_pending_logins = 1 allows one device grant in progress, got {codes:?}"
    );
    assert!(rejected >= 1, "requests from the other device get 429");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_portal_sees_ipv4_device() {
    // On a socket bound to [::], an IPv4 client's address is IPv4-mapped (::ffff:127.0.0.1).
    let lab = lab_listening("[::]:0", "").await;
    let device_1 = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let status = device_1
        .get(format!("{}/", lab.portal_url))
        .send()
        .await
        .expect("GET / from device 1");
    let code = status.status();
    let body = status.text().await.expect("status page");
    assert_eq!(code, reqwest::StatusCode::OK, "{body}");
    assert!(body.contains("laptop-1"), "{body}");

    let login = post_login(&lab, &device_1).await;
    assert_eq!(login.status(), reqwest::StatusCode::SEE_OTHER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_start_nothing() {
    let lab = lab_with("max_pending_logins_per_device = 2\n").await;
    let device_1 = client_from(Ipv4Addr::new(127, 0, 0, 1));
    // These are the requests a browser sends for an image, a form or a script of another
    // site that targets the portal. They come from the victim's address.
    for (method, path) in [
        (reqwest::Method::GET, "/login"),
        (reqwest::Method::POST, "/login"),
        (reqwest::Method::GET, "/login"),
        (reqwest::Method::POST, "/device"),
        (reqwest::Method::POST, "/snooze?minutes=60"),
    ] {
        let response = device_1
            .request(method.clone(), format!("{}{path}", lab.portal_url))
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .expect("a cross-site request");
        let status = response.status();
        let body = response.text().await.expect("error page");
        assert_eq!(
            status,
            reqwest::StatusCode::FORBIDDEN,
            "{method} {path}: {body}"
        );
        assert!(body.contains("another site"), "{method} {path}: {body}");
    }

    // The device's own sign-ins are not used up.
    for sec_fetch_site in ["same-origin", "none"] {
        let response = device_1
            .post(format!("{}/login", lab.portal_url))
            .header("sec-fetch-site", sec_fetch_site)
            .send()
            .await
            .expect("POST /login");
        assert_eq!(
            response.status(),
            reqwest::StatusCode::SEE_OTHER,
            "sec-fetch-site {sec_fetch_site}"
        );
    }
}
