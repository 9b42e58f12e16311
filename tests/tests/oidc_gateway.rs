//! End to end through the real daemon. A ping to a protected resource is denied and punted
//! by the XDP program, and the portal lists the waiting resource. The user then signs in with
//! headless chromium against the real `oidc-provider`, and the next ping passes.
//!
//! The IdP and the portal listen on the gateway's address 192.0.2.1, inside the gateway
//! namespace, and chromium runs in the client namespace, so the portal sees the device's
//! own address 192.0.2.2.

mod controller_support;

use controller_support::{CLIENT, Gateway, POLICY};
use enforcer_tests::oidc::{self, Browser};

const PORTAL: &str = "192.0.2.1:8080";

#[tokio::test]
async fn sign_in_opens_protected_resource() {
    let mut gateway = Gateway::new(POLICY);
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
    std::fs::write(&secret_path, oidc::CLIENT_SECRET).expect("write the client secret");
    gateway.extra_config = format!(
        "[idp]\nissuer = {:?}\nclient_id = {:?}\nclient_secret_file = {:?}\nredirect_url = {redirect:?}\nscopes = [\"openid\", \"email\", \"groups\"]\n",
        idp.issuer,
        oidc::CLIENT_ID,
        secret_path.display().to_string(),
    );
    gateway.portal_listen = PORTAL.into();
    gateway.start();

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
