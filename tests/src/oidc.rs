//! Support for the sign-in tests: the test OpenID provider and the hostile token signer from
//! `tests/idp` (Node.js, on 127.0.0.1 with random ports), and headless chromium driven
//! through chromedriver's WebDriver API. Every process is killed when its guard drops.

use std::{
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// Client registered at the test provider.
pub const CLIENT_ID: &str = "enforcer";
pub const CLIENT_SECRET: &str = "test-client-secret-with-enough-entropy-0123456789";
/// Client secret the hostile signer accepts.
pub const HOSTILE_CLIENT_SECRET: &str = "hostile-client-secret";
/// Password and one-time code of every test account.
pub const PASSWORD: &str = "correct horse";
pub const OTP: &str = "424242";
/// `acr` value the test provider returns for a sign-in with a one-time code.
pub const ACR_MFA: &str = "urn:enforcer:acr:mfa";

fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("idp")
}

/// A unique scratch folder under the system temp folder, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(role: &str) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "enforcer-{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("failed to create {}", path.display()))?;
        // The test IdP writes its configuration, client secret included, into this folder.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("failed to make {} private", path.display()))?;
        Ok(Self(path))
    }

    /// Removes the folders of `role` that processes which no longer run left behind, for
    /// example after a kill -9.
    pub fn remove_stale(role: &str) {
        let prefix = format!("enforcer-{role}-");
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Node.js server from `tests/idp` that prints `{"issuer": ..., "port": ...}` when ready.
pub struct NodeServer {
    child: Child,
    pub issuer: String,
    _dir: TempDir,
}

impl NodeServer {
    fn start(script: &str, config: Option<&Value>, host: &str, port: u16) -> anyhow::Result<Self> {
        let dir = TempDir::new("idp")?;
        let dir_path = idp_dir();
        if !dir_path.join("node_modules").is_dir() {
            bail!(
                "{} has no node_modules; run scripts/setup.sh (npm ci) first",
                dir_path.display()
            );
        }
        let mut command = Command::new("node");
        command.arg(dir_path.join(script));
        if let Some(config) = config {
            let config_path = dir.path().join("config.json");
            std::fs::write(&config_path, serde_json::to_vec_pretty(config)?)?;
            command.arg(&config_path);
        }
        let mut child = command
            .env("IDP_HOST", host)
            .env("IDP_PORT", port.to_string())
            .current_dir(&dir_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("failed to start node {script}"))?;
        let stdout = child.stdout.take().context("node has no stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .with_context(|| format!("failed to read the ready line of {script}"))?;
        // Keep reading, so the server's later logs never hit a closed pipe (EPIPE ends node).
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::stderr()));
        let ready: Value = serde_json::from_str(&line)
            .with_context(|| format!("{script} printed {line:?} instead of its ready line"))?;
        let issuer = ready["issuer"]
            .as_str()
            .context("the ready line has no issuer")?
            .to_owned();
        Ok(Self {
            child,
            issuer,
            _dir: dir,
        })
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the `oidc-provider` test IdP with one confidential client whose redirect URIs are
/// `redirect_uris`, and the accounts alice (groups eng), bob (groups ops) and carol (no
/// groups), all with `PASSWORD` and `OTP`.
pub fn start_provider(redirect_uris: &[String]) -> anyhow::Result<NodeServer> {
    start_provider_on("127.0.0.1", 0, redirect_uris)
}

/// Starts the test IdP listening on `host`, an address of the calling thread's network
/// namespace, and `port` (0 for a random one).
pub fn start_provider_on(
    host: &str,
    port: u16,
    redirect_uris: &[String],
) -> anyhow::Result<NodeServer> {
    let account = |name: &str, groups: &[&str]| {
        json!({
            "password": PASSWORD,
            "otp": OTP,
            "email": format!("{name}@example.com"),
            "groups": groups,
        })
    };
    let config = json!({
        "clients": [{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": redirect_uris,
            "grant_types": ["authorization_code", "urn:ietf:params:oauth:grant-type:device_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }],
        "accounts": {
            "alice": account("alice", &["eng"]),
            "bob": account("bob", &["ops"]),
            "carol": account("carol", &[]),
        },
    });
    NodeServer::start("provider.mjs", Some(&config), host, port)
}

/// Starts the hostile signer; select its defect with `set_hostile_mode`.
pub fn start_hostile() -> anyhow::Result<NodeServer> {
    NodeServer::start("hostile.mjs", None, "127.0.0.1", 0)
}

pub async fn set_hostile_mode(server: &NodeServer, mode: &str) -> anyhow::Result<()> {
    let response = reqwest::Client::new()
        .post(format!("{}/admin/mode", server.issuer))
        .json(&json!({ "mode": mode }))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!(
            "the hostile signer rejected mode {mode}: {}",
            response.status()
        );
    }
    Ok(())
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Returns the absolute URL of `response`'s `Location` header, resolved against `base`.
fn location(response: &reqwest::Response, base: &str) -> anyhow::Result<String> {
    let value = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .with_context(|| format!("{} without a Location header", response.status()))?;
    Ok(url::Url::parse(base)?.join(value)?.to_string())
}

/// Follows the IdP's redirects from `authorization_url` with `http`, which must keep cookies
/// and follow no redirects. It fills the test provider's login form for `login` when it
/// appears, and returns the URL of the redirect that starts with `redirect_url` without
/// requesting it. It gives up after 10 hops.
pub async fn authorize(
    http: &reqwest::Client,
    authorization_url: &str,
    redirect_url: &str,
    login: &str,
) -> anyhow::Result<String> {
    let mut url = authorization_url.to_owned();
    for _ in 0..10 {
        if url.starts_with(redirect_url) {
            return Ok(url);
        }
        let response = http.get(&url).send().await?;
        if response.status().is_redirection() {
            url = location(&response, &url)?;
            continue;
        }
        let page = response.text().await?;
        if !page.contains("id=\"login-form\"") {
            bail!("unexpected IdP page at {url}: {page}");
        }
        let base = url::Url::parse(&url)?;
        let action = base.join(&format!("{}/login", base.path()))?;
        let response = http
            .post(action.as_str())
            .form(&[("login", login), ("password", PASSWORD)])
            .send()
            .await?;
        if !response.status().is_redirection() {
            bail!("login of {login} failed: {}", response.status());
        }
        url = location(&response, action.as_str())?;
    }
    bail!("no redirect to {redirect_url} after 10 hops, last at {url}")
}

/// Headless chromium with a fresh profile, driven through chromedriver on 127.0.0.1.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: TempDir,
}

impl Browser {
    pub async fn start() -> anyhow::Result<Self> {
        let profile = TempDir::new("chromium")?;
        let port = free_port()?;
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("failed to start /usr/bin/chromedriver; install chromium-driver")?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();

        // chromedriver needs a moment to listen; poll its status endpoint, bounded in time.
        let started = Instant::now();
        loop {
            if let Ok(response) = http.get(format!("{base}/status")).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("chromedriver did not listen on {base} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage",
                        format!("--user-data-dir={}", profile.path().display()),
                    ],
                },
            }},
        });
        let mut browser = Self {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let response = browser.command("POST", "/session", capabilities).await?;
        browser.session = response["sessionId"]
            .as_str()
            .context("chromedriver returned no session id")?
            .to_owned();
        Ok(browser)
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body),
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("WebDriver {method} {path} failed"))?;
        let value: Value = response.json().await?;
        if let Some(error) = value["value"]["error"].as_str() {
            bail!(
                "WebDriver {method} {path} failed: {error}: {}",
                value["value"]["message"]
            );
        }
        Ok(value["value"].clone())
    }

    fn session_path(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.command("POST", &self.session_path("/url"), json!({ "url": url }))
            .await?;
        Ok(())
    }

    pub async fn current_url(&self) -> anyhow::Result<String> {
        let value = self
            .command("GET", &self.session_path("/url"), Value::Null)
            .await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Returns the visible text of the page body.
    pub async fn body_text(&self) -> anyhow::Result<String> {
        let element = self.find("body").await?;
        let value = self
            .command(
                "GET",
                &self.session_path(&format!("/element/{element}/text")),
                Value::Null,
            )
            .await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Returns the WebDriver id of the first element matching `css`.
    pub async fn find(&self, css: &str) -> anyhow::Result<String> {
        let value = self
            .command(
                "POST",
                &self.session_path("/element"),
                json!({ "using": "css selector", "value": css }),
            )
            .await
            .with_context(|| format!("no element matches {css:?}"))?;
        value
            .as_object()
            .and_then(|object| object.values().next())
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("WebDriver returned no element id for {css:?}"))
    }

    pub async fn exists(&self, css: &str) -> bool {
        self.find(css).await.is_ok()
    }

    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = self.find(css).await?;
        self.command(
            "POST",
            &self.session_path(&format!("/element/{element}/value")),
            json!({ "text": text }),
        )
        .await?;
        Ok(())
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self.find(css).await?;
        self.command(
            "POST",
            &self.session_path(&format!("/element/{element}/click")),
            json!({}),
        )
        .await?;
        Ok(())
    }

    /// Fills the test provider's login form and submits it.
    pub async fn sign_in(&self, login: &str, otp: Option<&str>) -> anyhow::Result<()> {
        self.type_into("#login", login).await?;
        self.type_into("#password", PASSWORD).await?;
        if let Some(otp) = otp {
            self.type_into("#otp", otp).await?;
        }
        self.click("#submit").await
    }

    /// Approves a device code at `verification_url` as `login`: confirms the code, signs in
    /// at the provider `issuer` and waits, at most 10 s, until the login form is gone.
    pub async fn approve_device_code(
        &self,
        verification_url: &str,
        issuer: &str,
        login: &str,
        otp: Option<&str>,
    ) -> anyhow::Result<()> {
        self.goto(verification_url).await?;
        self.click("button[type=submit]").await?;
        self.wait_for_url(&format!("{issuer}/interaction/")).await?;
        self.sign_in(login, otp).await?;
        let started = Instant::now();
        while self.exists("#login-form").await && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Waits until the current URL starts with `prefix`, polling for at most 30 s, because a
    /// loaded 2-core machine has been seen taking over 15 s.
    pub async fn wait_for_url(&self, prefix: &str) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            let url = self.current_url().await?;
            if url.starts_with(prefix) {
                return Ok(url);
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the browser is at {url}, not at {prefix}..., after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session ends chromium; killing chromedriver alone could leave it running.
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    let _ = reqwest::Client::new()
                        .delete(url)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                });
            }
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
