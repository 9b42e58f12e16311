//! End to end through the real daemon, with its redb store and the XDP program's maps. The
//! XDP program denies and punts a ping to a protected resource. The user signs in at the
//! portal against the real `oidc-provider`, with headless chromium, curl, or an HTTP client
//! that fills the IdP's login form. The next ping passes, because the sign-in opened a
//! session in the kernel map. The tests cover a browser sign-in, a step-up sign-in with a
//! one-time code, a device-code sign-in, one that survives a daemon restart, and enrollment
//! of an unknown address by its first sign-in.
//!
//! The IdP and the portal listen on the gateway's address 192.0.2.1, inside the gateway
//! namespace. Clients run in the client namespace, so the portal sees the device's own
//! address: 192.0.2.2 is the enrolled laptop.

mod controller_support;

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use controller_support::{CLIENT, Gateway, POLICY, text};
use enforcer_tests::{
    address,
    oidc::{self, Browser, NodeServer},
};

const PORTAL: &str = "192.0.2.1:8080";

/// Starts the test IdP in the gateway namespace and the daemon with an `[idp]` section for
/// it. The daemon discovers the IdP in the background.
fn start_with_idp(gateway: &mut Gateway) -> NodeServer {
    let redirect = format!("http://{PORTAL}/callback");
    let idp = {
        // Processes spawned while this thread is in the namespace stay in it.
        let _inside = gateway
            .gateway
            .enter()
            .expect("enter the gateway namespace");
        oidc::start_provider_on("192.0.2.1", 0, std::slice::from_ref(&redirect))
            .expect("start the test IdP")
    };
    let secret_path = gateway.dir.path().join("client-secret");
    enforcer_tests::write_secret(&secret_path, oidc::CLIENT_SECRET)
        .expect("write the client secret");
    gateway.extra_config = format!(
        "[idp]\nissuer = {:?}\nclient_id = {:?}\nclient_secret_file = {:?}\nredirect_url = {redirect:?}\nscopes = [\"openid\", \"email\", \"groups\"]\nmfa_acr_values = [{:?}]\n",
        idp.issuer,
        oidc::CLIENT_ID,
        secret_path.display().to_string(),
        oidc::ACR_MFA,
    );
    gateway.portal_listen = PORTAL.into();
    gateway.start();
    idp
}

/// Runs curl in the client namespace from `source` and returns its output. `args` follow
/// the fixed options.
fn curl_from(gateway: &Gateway, source: &str, args: &[&str]) -> String {
    let mut command = vec!["curl", "-sS", "--max-time", "10", "--interface", source];
    command.extend_from_slice(args);
    let output = gateway
        .client
        .try_exec(&command)
        .expect("run curl in the client namespace");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Fetches the portal's page from `source` until it lists `resource` as waiting, at most
/// 50 tries of 200 ms, because the daemon discovers the IdP and reads punts in the
/// background. Returns the last page.
fn wait_for_prompt(gateway: &Gateway, source: &str, resource: &str) -> String {
    let mut page = String::new();
    for _ in 0..50 {
        page = curl_from(gateway, source, &[&format!("http://{PORTAL}/")]);
        if page.contains(&format!("waiting for sign-in: {resource}")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    page
}

/// Returns the kernel session entries of `device_id`.
fn kernel_sessions_of(gateway: &Gateway, device_id: u32) -> usize {
    gateway
        .kernel_sessions()
        .iter()
        .filter(|(key, _)| key.device_id == device_id)
        .count()
}

/// Returns the id of the enrolled device named `name`.
fn device_id(gateway: &Gateway, name: &str) -> u32 {
    let devices = gateway.cli_json(&["device", "list"]);
    let device = devices
        .as_array()
        .expect("a device list")
        .iter()
        .find(|device| device["name"] == name)
        .unwrap_or_else(|| panic!("no device {name} in {devices}"));
    device["id"].as_u64().expect("a device id") as u32
}

#[tokio::test]
async fn sign_in_opens_protected_resource() {
    let mut gateway = Gateway::new(POLICY);
    let idp = start_with_idp(&mut gateway);

    assert!(
        !gateway.ping_from(CLIENT),
        "no session yet, so the ping is denied"
    );

    let inside = gateway.client.enter().expect("enter the client namespace");
    let browser = Browser::start().await.expect("start chromium");
    // The daemon discovers the IdP in the background; wait for the portal's sign-in to work,
    // at most 50 tries of 200 ms.
    let mut page = String::new();
    for _ in 0..50 {
        browser
            .goto(&format!("http://{PORTAL}/"))
            .await
            .expect("open the portal");
        page = browser.body_text().await.expect("read the portal");
        if page.contains("gateway-icmp") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        page.contains("laptop"),
        "the portal names the device: {page}"
    );
    assert!(
        page.contains("gateway-icmp"),
        "the punted resource waits for a sign-in: {page}"
    );

    browser.click("#sign-in").await.expect("click sign in");
    browser
        .wait_for_url(&format!("{}/interaction/", idp.issuer))
        .await
        .expect("the browser reaches the IdP");
    browser
        .sign_in("alice", None)
        .await
        .expect("submit the login form");
    browser
        .wait_for_url(&format!("http://{PORTAL}/callback"))
        .await
        .expect("the IdP redirects back to the portal");
    let granted = browser.body_text().await.expect("read the page");
    drop(browser);
    drop(inside);

    assert!(
        granted.contains("Access restored"),
        "{granted}\n{}",
        gateway.log()
    );
    assert!(granted.contains("gateway-icmp"), "{granted}");
    assert!(gateway.ping_from(CLIENT), "the session lets the ping pass");
    assert_eq!(gateway.kernel_sessions().len(), 1);
}

/// Policy whose only resource requires step-up MFA.
const STEP_UP_POLICY: &str = r#"
[[resource]]
name = "gateway-icmp"
destinations = [{ prefix = "192.0.2.1/32", protocol = "icmp" }]
session = "1h"
users = ["alice@example.com"]
step_up = true
on_expiry = "drop"

[[device]]
name = "laptop"
owner = "alice@example.com"
addresses = ["192.0.2.2"]
"#;

#[tokio::test]
async fn step_up_sign_in_opens_kernel_session() {
    let mut gateway = Gateway::new(STEP_UP_POLICY);
    let idp = start_with_idp(&mut gateway);
    assert!(!gateway.ping_from(CLIENT), "no session yet");
    let page = wait_for_prompt(&gateway, CLIENT, "gateway-icmp");
    assert!(
        page.contains("a waiting resource requires multi-factor sign-in"),
        "{page}\n{}",
        gateway.log()
    );

    let inside = gateway.client.enter().expect("enter the client namespace");
    let browser = Browser::start().await.expect("start chromium");
    browser
        .goto(&format!("http://{PORTAL}/"))
        .await
        .expect("open the portal");
    browser.click("#sign-in").await.expect("click sign in");
    browser
        .wait_for_url(&format!("{}/interaction/", idp.issuer))
        .await
        .expect("the browser reaches the IdP");
    assert!(
        browser.exists("#otp").await,
        "the IdP asks for a one-time code, because the portal requested step-up"
    );
    browser
        .sign_in("alice", Some(oidc::OTP))
        .await
        .expect("submit the login form");
    browser
        .wait_for_url(&format!("http://{PORTAL}/callback"))
        .await
        .expect("the IdP redirects back to the portal");
    let granted = browser.body_text().await.expect("read the page");
    drop(browser);
    drop(inside);

    assert!(
        granted.contains("Access restored"),
        "{granted}\n{}",
        gateway.log()
    );
    assert!(granted.contains("gateway-icmp"), "{granted}");
    let laptop = device_id(&gateway, "laptop");
    assert_eq!(kernel_sessions_of(&gateway, laptop), 1);
    assert!(
        gateway.ping_from(CLIENT),
        "the step-up session lets the ping pass"
    );
    let last = gateway.cli_json(&["device", "show", "laptop"]);
    let amr = &last["last_authentication"]["amr"];
    assert!(
        amr.as_array()
            .is_some_and(|amr| amr.iter().any(|method| method == "otp")),
        "the store records the second factor: {last}"
    );
}

/// Starts a device-code sign-in with curl from the laptop and returns the verification URL
/// with the user code.
fn start_device_sign_in(gateway: &Gateway, idp: &NodeServer) -> String {
    // The daemon discovers the IdP in the background; retry while the portal returns 503,
    // at most 50 tries of 200 ms.
    let mut text = String::new();
    for _ in 0..50 {
        text = curl_from(
            gateway,
            CLIENT,
            &["-X", "POST", &format!("http://{PORTAL}/device")],
        );
        if text.contains("device sign-in: open") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let complete = text
        .lines()
        .find_map(|line| line.strip_prefix("or open "))
        .unwrap_or_else(|| panic!("no complete verification URL in {text}\n{}", gateway.log()))
        .to_owned();
    assert!(complete.starts_with(&idp.issuer), "{complete}");
    complete
}

/// Approves the device code at `verification_url` as alice, with chromium in the client
/// namespace.
async fn approve_device_code(gateway: &Gateway, idp: &NodeServer, verification_url: &str) {
    let _inside = gateway.client.enter().expect("enter the client namespace");
    let browser = Browser::start().await.expect("start chromium");
    browser
        .approve_device_code(verification_url, &idp.issuer, "alice", None)
        .await
        .expect("approve the device code");
}

/// Polls `GET /device` from the laptop until the sign-in is no longer waiting, at most 60 s
/// (the portal polls the IdP at its interval, 5 s by default), and returns the last text.
fn wait_for_device_result(gateway: &Gateway) -> String {
    let started = Instant::now();
    loop {
        let text = curl_from(gateway, CLIENT, &[&format!("http://{PORTAL}/device")]);
        if !text.contains("enter the code") || started.elapsed() > Duration::from_secs(60) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test]
async fn device_code_opens_kernel_session() {
    let mut gateway = Gateway::new(POLICY);
    let idp = start_with_idp(&mut gateway);
    assert!(!gateway.ping_from(CLIENT), "no session yet");

    let verification_url = start_device_sign_in(&gateway, &idp);
    approve_device_code(&gateway, &idp, &verification_url).await;
    let result = wait_for_device_result(&gateway);

    assert!(
        result.contains("device sign-in: complete"),
        "{result}\n{}",
        gateway.log()
    );
    assert!(result.contains("gateway-icmp"), "{result}");
    let laptop = device_id(&gateway, "laptop");
    assert_eq!(kernel_sessions_of(&gateway, laptop), 1);
    assert!(gateway.ping_from(CLIENT), "the session lets the ping pass");
}

#[tokio::test]
async fn device_code_survives_daemon_restart() {
    let mut gateway = Gateway::new(POLICY);
    let idp = start_with_idp(&mut gateway);
    let verification_url = start_device_sign_in(&gateway, &idp);

    // The daemon restarts before the user approves the code.
    gateway.stop("TERM");
    gateway.start();
    let waiting = {
        // The new daemon resumes the grant once it has discovered the IdP; wait at most 50
        // tries of 200 ms.
        let mut text = String::new();
        for _ in 0..50 {
            text = curl_from(&gateway, CLIENT, &[&format!("http://{PORTAL}/device")]);
            if text.contains("enter the code") {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        text
    };
    assert!(
        waiting.contains("enter the code"),
        "the restarted portal still shows the grant: {waiting}\n{}",
        gateway.log()
    );
    assert!(
        gateway
            .log()
            .contains("resumed a device authorization grant after a restart"),
        "{}",
        gateway.log()
    );

    approve_device_code(&gateway, &idp, &verification_url).await;
    let result = wait_for_device_result(&gateway);
    assert!(
        result.contains("device sign-in: complete"),
        "{result}\n{}",
        gateway.log()
    );
    let laptop = device_id(&gateway, "laptop");
    assert_eq!(kernel_sessions_of(&gateway, laptop), 1);
    assert!(gateway.ping_from(CLIENT), "the session lets the ping pass");
}

/// Address of the client namespace with no enrolled device, inside `enroll_from`.
const NEW_CLIENT: &str = "192.0.2.4";
/// Address of the client namespace outside `enroll_from`.
const OUTSIDE_CLIENT: &str = "192.0.2.5";

/// Policy that lets 192.0.2.4 alone enroll on a first sign-in.
const ENROLL_POLICY: &str = r#"
[settings]
enroll_on_first_sign_in = true
enroll_from = ["192.0.2.4/32"]

[[resource]]
name = "gateway-icmp"
destinations = [{ prefix = "192.0.2.1/32", protocol = "icmp" }]
session = "1h"
users = ["alice@example.com"]
on_expiry = "drop"

[[device]]
name = "laptop"
owner = "alice@example.com"
addresses = ["192.0.2.2"]
"#;

/// Builds an HTTP client that follows no redirects and keeps cookies, with source `source`.
/// Use it while the thread is in the client namespace.
fn client_from(source: &str) -> reqwest::Client {
    let source: Ipv4Addr = source.parse().expect("an IPv4 source");
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .local_address(IpAddr::V4(source))
        .build()
        .expect("HTTP client")
}

/// Signs `login` in from `client` through the portal's `/login`, the IdP's login form and
/// the callback, and returns the callback's status and text.
async fn sign_in_from(client: &reqwest::Client, login: &str) -> (reqwest::StatusCode, String) {
    let callback = start_sign_in_from(client, login).await;
    let response = client.get(&callback).send().await.expect("the callback");
    let status = response.status();
    (status, response.text().await.expect("the result page"))
}

/// Starts a sign-in of `login` from `client` through the portal's `/login` and the IdP's
/// login form, and returns the callback URL without requesting it. Until the daemon has
/// discovered the IdP, `/login` returns 503, so it retries at most 50 times 200 ms apart.
async fn start_sign_in_from(client: &reqwest::Client, login: &str) -> String {
    let mut response = None;
    for _ in 0..50 {
        let attempt = client
            .post(format!("http://{PORTAL}/login"))
            .send()
            .await
            .expect("POST /login");
        if attempt.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE {
            response = Some(attempt);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let response = response.expect("the portal starts sign-ins within 10 s");
    assert_eq!(
        response.status(),
        reqwest::StatusCode::SEE_OTHER,
        "the portal starts the sign-in"
    );
    let authorization = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .expect("the portal redirects to the IdP")
        .to_owned();
    oidc::authorize(
        client,
        &authorization,
        &format!("http://{PORTAL}/callback"),
        login,
    )
    .await
    .expect("sign in at the IdP")
}

/// Waits until the portal responds to `client`, at most 50 tries of 200 ms.
async fn wait_for_portal(client: &reqwest::Client) {
    for _ in 0..50 {
        if client.get(format!("http://{PORTAL}/")).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the portal did not answer within 10 s");
}

/// Requests `callback` from `client` and returns its status and text.
async fn get_text(client: &reqwest::Client, callback: &str) -> (reqwest::StatusCode, String) {
    let response = client.get(callback).send().await.expect("the callback");
    let status = response.status();
    (status, response.text().await.expect("the result page"))
}

#[tokio::test]
async fn first_sign_in_enrolls_device() {
    let mut gateway = Gateway::new(ENROLL_POLICY);
    address(&gateway.client, "c0", "192.0.2.4/24").expect("add the new client's address");
    address(&gateway.client, "c0", "192.0.2.5/24").expect("add the outside client's address");
    let _idp = start_with_idp(&mut gateway);
    assert!(
        !gateway.ping_from(NEW_CLIENT),
        "an unenrolled address has no session"
    );

    let inside = gateway.client.enter().expect("enter the client namespace");
    let new_client = client_from(NEW_CLIENT);
    // The portal starts with the daemon; wait until it responds, at most 50 tries of 200 ms.
    let mut page = String::new();
    for _ in 0..50 {
        if let Ok(response) = new_client.get(format!("http://{PORTAL}/")).send().await {
            page = response.text().await.unwrap_or_default();
            if page.contains("not enrolled yet") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        page.contains("not enrolled yet (192.0.2.4); signing in enrolls this device to you"),
        "{page}"
    );

    // An address outside enroll_from may not start a sign-in.
    let outside = client_from(OUTSIDE_CLIENT)
        .post(format!("http://{PORTAL}/login"))
        .send()
        .await
        .expect("POST /login from outside enroll_from");
    assert_eq!(outside.status(), reqwest::StatusCode::FORBIDDEN);
    let outside_text = outside.text().await.expect("error page");
    assert!(
        outside_text.contains("outside `enroll_from` (192.0.2.4/32)"),
        "{outside_text}"
    );

    let (status, text) = sign_in_from(&new_client, "alice").await;
    drop(inside);
    assert_eq!(status, reqwest::StatusCode::OK, "{text}\n{}", gateway.log());
    assert!(
        text.contains("enrolled this device as alice-192.0.2.4, owned by you"),
        "{text}"
    );
    assert!(text.contains("gateway-icmp"), "{text}");

    let devices = gateway.cli_json(&["device", "list"]);
    let enrolled = devices
        .as_array()
        .expect("a device list")
        .iter()
        .find(|device| device["name"] == "alice-192.0.2.4")
        .unwrap_or_else(|| panic!("no enrolled device in {devices}"))
        .clone();
    assert_eq!(enrolled["owner"], "alice@example.com");
    assert_eq!(enrolled["source"], "sign_in");
    assert_eq!(enrolled["addresses"], serde_json::json!(["192.0.2.4"]));
    let enrolled_id = enrolled["id"].as_u64().expect("a device id") as u32;
    assert_eq!(kernel_sessions_of(&gateway, enrolled_id), 1);
    assert!(
        gateway.ping_from(NEW_CLIENT),
        "the enrolled device's session lets the ping pass"
    );

    let audit = gateway.cli_json(&["audit", "-n", "2"]);
    assert_eq!(audit[0]["kind"], "enrollment", "{audit}");
    assert_eq!(audit[0]["device_id"], enrolled_id);
    assert!(
        audit[0]["actor"]
            .as_str()
            .is_some_and(|actor| actor.starts_with("user:") && actor.ends_with("#alice")),
        "{audit}"
    );
    assert_eq!(audit[1]["kind"], "sign_in", "{audit}");
    assert_eq!(audit[1]["device_id"], enrolled_id);
    let metrics = gateway.metrics();
    assert!(
        metrics.contains("enforcer_enrollments_total 1\n"),
        "{metrics}"
    );

    // The device is in the store, so it survives a restart with its session.
    gateway.stop("TERM");
    gateway.start();
    let after = gateway.cli_json(&["device", "show", "alice-192.0.2.4"]);
    assert_eq!(after["device"]["id"], enrolled_id, "{after}");
    assert_eq!(after["device"]["source"], "sign_in");
    assert!(
        gateway.ping_from(NEW_CLIENT),
        "the session is reconciled after the restart"
    );

    // The owner's next sign-in from the enrolled device is an ordinary sign-in.
    let inside = gateway.client.enter().expect("enter the client namespace");
    let second = sign_in_from(&client_from(NEW_CLIENT), "alice").await;
    drop(inside);
    assert_eq!(second.0, reqwest::StatusCode::OK, "{}", second.1);
    assert!(
        !second.1.contains("enrolled this device"),
        "no second enrollment: {}",
        second.1
    );
    let audit = gateway.cli_json(&["audit", "-n", "1"]);
    assert_eq!(audit[0]["kind"], "sign_in", "{audit}");
    assert_eq!(audit[0]["device_id"], enrolled_id);
    let devices = gateway.cli_json(&["device", "list"]);
    assert_eq!(
        devices.as_array().map(Vec::len),
        Some(2),
        "the laptop and the enrolled device: {devices}"
    );
}

#[tokio::test]
async fn unenrolled_address_gets_403_when_off() {
    let mut gateway = Gateway::new(POLICY);
    address(&gateway.client, "c0", "192.0.2.4/24").expect("add the new client's address");
    let _idp = start_with_idp(&mut gateway);

    let text = curl_from(
        &gateway,
        NEW_CLIENT,
        &["-i", "-X", "POST", &format!("http://{PORTAL}/login")],
    );
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(
        text.contains("set `enroll_on_first_sign_in = true`"),
        "the message names the fix: {text}"
    );
    let devices = gateway.cli_json(&["device", "list"]);
    assert_eq!(devices.as_array().map(Vec::len), Some(2), "{devices}");
}

#[tokio::test]
async fn reload_off_before_callback_enrolls_nothing() {
    let mut gateway = Gateway::new(ENROLL_POLICY);
    address(&gateway.client, "c0", "192.0.2.4/24").expect("add the new client's address");
    let _idp = start_with_idp(&mut gateway);

    let inside = gateway.client.enter().expect("enter the client namespace");
    let new_client = client_from(NEW_CLIENT);
    wait_for_portal(&new_client).await;
    let callback = start_sign_in_from(&new_client, "alice").await;
    drop(inside);

    let off = ENROLL_POLICY
        .replace("enroll_on_first_sign_in = true\n", "")
        .replace("enroll_from = [\"192.0.2.4/32\"]\n", "");
    gateway.write_policy(&off);
    let reload = gateway.cli(&["reload"]);
    assert!(reload.status.success(), "{}", text(&reload));

    let inside = gateway.client.enter().expect("enter the client namespace");
    let (status, page) = get_text(&new_client, &callback).await;
    drop(inside);
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "{page}");
    assert!(page.contains("enroll_on_first_sign_in = true"), "{page}");
    let devices = gateway.cli_json(&["device", "list"]);
    assert_eq!(devices.as_array().map(Vec::len), Some(1), "{devices}");
    assert!(
        gateway.kernel_sessions().is_empty(),
        "no session was opened"
    );
    assert!(!gateway.ping_from(NEW_CLIENT));

    // The rejected callback left the sign-in in place, so it completes once enrollment is
    // allowed again.
    gateway.write_policy(ENROLL_POLICY);
    let reload = gateway.cli(&["reload"]);
    assert!(reload.status.success(), "{}", text(&reload));
    let inside = gateway.client.enter().expect("enter the client namespace");
    let (status, page) = get_text(&new_client, &callback).await;
    drop(inside);
    assert_eq!(status, reqwest::StatusCode::OK, "{page}\n{}", gateway.log());
    assert!(
        page.contains("enrolled this device as alice-192.0.2.4"),
        "{page}"
    );
    assert!(gateway.ping_from(NEW_CLIENT));
}

#[tokio::test]
async fn admin_enroll_before_callback_rejects_other_user() {
    let mut gateway = Gateway::new(ENROLL_POLICY);
    address(&gateway.client, "c0", "192.0.2.4/24").expect("add the new client's address");
    let _idp = start_with_idp(&mut gateway);

    let inside = gateway.client.enter().expect("enter the client namespace");
    let new_client = client_from(NEW_CLIENT);
    wait_for_portal(&new_client).await;
    let callback = start_sign_in_from(&new_client, "alice").await;
    drop(inside);

    let enroll = gateway.cli(&[
        "device",
        "enroll",
        "bobs-desktop",
        "--address",
        NEW_CLIENT,
        "--owner",
        "bob@example.com",
    ]);
    assert!(enroll.status.success(), "{}", text(&enroll));
    let bobs = device_id(&gateway, "bobs-desktop");

    let inside = gateway.client.enter().expect("enter the client namespace");
    let (status, page) = get_text(&new_client, &callback).await;
    drop(inside);
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "{page}");
    assert!(page.contains("belongs to bob@example.com"), "{page}");
    let devices = gateway.cli_json(&["device", "list"]);
    assert_eq!(devices.as_array().map(Vec::len), Some(2), "{devices}");
    assert_eq!(kernel_sessions_of(&gateway, bobs), 0);
    assert!(
        gateway.kernel_sessions().is_empty(),
        "no session was opened"
    );
    let audit = gateway.cli_json(&["audit", "-n", "1"]);
    assert_eq!(audit[0]["kind"], "sign_in_rejected", "{audit}");
    assert_eq!(audit[0]["device_id"], bobs, "{audit}");
}
