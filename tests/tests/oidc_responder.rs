//! Reauth responder delivery over real loopback HTTP: webhook retries against a receiver
//! that fails first, each delivery's HMAC signature checked by an independent verifier
//! (Python's `hmac` module), the portal's server-sent event stream read with curl, and a
//! snooze chosen from the portal. Punts are built by hand here; the kernel's punt path is covered
//! by the data-path tests.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, TcpListener},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use enforcer::{
    dataplane::punts::Punt,
    idp::{Authentication, LoginOrigin, PendingLogins},
    portal::{self, DeviceStatus, Gateway, GrantRejected, Granted, Portal},
    responder::{
        PuntOutcome, Responder, ResponderConfig, SignatureError, WebhookConfig, WebhookSecret,
    },
    store::Store,
};
use enforcer_tests::oidc::TempDir;
use tokio::io::AsyncBufReadExt as _;

fn punt(device_id: u32, resource_id: u32) -> Punt {
    Punt {
        timestamp_boot_ns: 0,
        device_id,
        resource_id,
        source: IpAddr::V4(Ipv4Addr::LOCALHOST),
        destination: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        source_port: 40000,
        destination_port: 443,
        protocol: 6,
        reason: Some("expired"),
        monitor: false,
    }
}

fn config(webhook: Option<WebhookConfig>) -> ResponderConfig {
    ResponderConfig {
        notify_interval_secs: 60,
        prompt_ttl_secs: 900,
        max_snooze_secs: 3600,
        portal_url: "http://127.0.0.1:1/".into(),
        webhook,
    }
}

/// A request the webhook receiver got: its lowercase header names with values, and body.
#[derive(Clone, Debug)]
struct Received {
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
}

/// Serves HTTP on 127.0.0.1, responding 503 to the first `failures` requests and 204 after,
/// and returns the requests it received. It stops after `max_requests` requests.
fn webhook_receiver(failures: usize, max_requests: usize) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
    let url = format!(
        "http://{}/hook",
        listener.local_addr().expect("receiver address")
    );
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let received = bodies.clone();
    std::thread::spawn(move || {
        for (index, stream) in listener.incoming().take(max_requests).enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
            let mut length = 0;
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            received.lock().expect("requests lock").push(Received {
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            let status = if index < failures {
                "503 Service Unavailable"
            } else {
                "204 No Content"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, bodies)
}

/// Signing secret of the webhook tests, passed through a file as the daemon reads it.
const WEBHOOK_SECRET: &str = "webhook-test-secret-0123456789abcdef";

/// Verifies a webhook signature the way a receiver written in Python would, with the
/// standard `hmac` module, and returns whether it matches.
fn python_verifies(secret: &str, timestamp: &str, signature: &str, body: &str) -> bool {
    let script = "import hmac, hashlib, sys\n\
secret, timestamp, signature = sys.argv[1:4]\n\
body = sys.stdin.buffer.read()\n\
mac = hmac.new(secret.encode(), timestamp.encode() + b'.' + body, hashlib.sha256)\n\
sys.exit(0 if hmac.compare_digest('sha256=' + mac.hexdigest(), signature) else 1)\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, secret, timestamp, signature])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .expect("python3 stdin")
        .write_all(body.as_bytes())
        .expect("write the body to python3");
    child.wait().expect("wait for python3").success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_retries_until_delivered() {
    let (url, bodies) = webhook_receiver(2, 10);
    let dir = TempDir::new("webhook").expect("create a scratch folder");
    let secret_path = dir.path().join("webhook-secret");
    enforcer_tests::write_secret(&secret_path, &format!("{WEBHOOK_SECRET}\n"))
        .expect("write the secret");
    let webhook = WebhookConfig {
        secret_file: Some(secret_path),
        secret_env: None,
        url,
        max_attempts: 4,
        initial_backoff_ms: 10,
        max_per_minute: 600,
        timeout_secs: 5,
        queue_length: 8,
    };
    let (responder, worker) = Responder::new(config(Some(webhook))).expect("create the responder");
    let (deliveries, mut delivered) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(
        worker
            .expect("a webhook worker")
            .run(move |event, outcome| {
                let _ = deliveries.send((event.clone(), outcome.clone()));
            }),
    );

    let now = Instant::now();
    assert_eq!(
        responder.record_punt(&punt(3, 10), now),
        PuntOutcome::Notified
    );
    for i in 1..50u64 {
        // Repeated punts within the interval add no webhook calls.
        responder.record_punt(&punt(3, 10), now + Duration::from_millis(i));
    }
    let (event, outcome) = tokio::time::timeout(Duration::from_secs(20), delivered.recv())
        .await
        .expect("a delivery within 20 s")
        .expect("the worker reports the delivery");
    assert_eq!(event.device_id, 3);
    assert_eq!(
        outcome,
        enforcer::responder::Delivery::Delivered { attempts: 3 }
    );

    let requests = bodies.lock().expect("requests lock").clone();
    assert_eq!(requests.len(), 3, "two failures and one success");
    let json: serde_json::Value =
        serde_json::from_str(&requests[2].body).expect("the body is JSON");
    assert_eq!(json["device_id"], 3);
    assert_eq!(json["resource_ids"], serde_json::json!([10]));
    assert!(
        delivered.try_recv().is_err(),
        "one notification for 50 punts"
    );

    // Every attempt is signed, and an independent HMAC implementation verifies it.
    for (attempt, request) in requests.iter().enumerate() {
        let timestamp = request.header("x-enforcer-timestamp");
        let signature = request.header("x-enforcer-signature");
        assert!(
            signature.starts_with("sha256="),
            "attempt {attempt}: {signature}"
        );
        assert!(
            python_verifies(WEBHOOK_SECRET, timestamp, signature, &request.body),
            "attempt {attempt}: the receiver verifies the signature"
        );
    }
    let delivered = &requests[2];
    let timestamp = delivered.header("x-enforcer-timestamp");
    let signature = delivered.header("x-enforcer-signature");
    let tampered = delivered.body.replace("\"device_id\":3", "\"device_id\":4");
    assert_ne!(tampered, delivered.body, "the test changed the body");
    assert!(
        !python_verifies(WEBHOOK_SECRET, timestamp, signature, &tampered),
        "a tampered body fails verification"
    );
    let later = (timestamp.parse::<u64>().expect("a numeric timestamp") + 1).to_string();
    assert!(
        !python_verifies(WEBHOOK_SECRET, &later, signature, &delivered.body),
        "a changed timestamp fails verification, because the MAC covers it"
    );
    assert!(
        !python_verifies(
            "another-secret-0123456789abcdef0123",
            timestamp,
            signature,
            &delivered.body
        ),
        "another secret fails verification"
    );

    // The library's own verifier, for receivers written in Rust, agrees.
    let secret = WebhookSecret::new(WEBHOOK_SECRET);
    let now = std::time::SystemTime::now();
    let window = Duration::from_secs(300);
    assert_eq!(
        secret.verify(timestamp, signature, delivered.body.as_bytes(), now, window),
        Ok(())
    );
    assert_eq!(
        secret.verify(timestamp, signature, tampered.as_bytes(), now, window),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn webhook_without_secret_fails_start() {
    let webhook = WebhookConfig {
        url: "http://127.0.0.1:9/hook".into(),
        secret_file: None,
        secret_env: None,
        max_attempts: 1,
        initial_backoff_ms: 10,
        max_per_minute: 60,
        timeout_secs: 1,
        queue_length: 1,
    };
    let err = Responder::new(config(Some(webhook)))
        .err()
        .expect("a webhook without a secret is rejected");
    assert!(
        err.to_string()
            .contains("set `secret_file` or `secret_env`"),
        "{err}"
    );
}

#[derive(Default)]
struct LoopbackGateway;

impl Gateway for LoopbackGateway {
    fn device_for_address(&self, address: IpAddr) -> Option<u32> {
        (address == IpAddr::V4(Ipv4Addr::LOCALHOST)).then_some(1)
    }

    fn device_status(&self, device_id: u32) -> DeviceStatus {
        DeviceStatus {
            device_id,
            name: "laptop-1".into(),
            ..DeviceStatus::default()
        }
    }

    fn grant(&self, _: LoginOrigin, _: &Authentication) -> Result<Granted, GrantRejected> {
        Err(GrantRejected {
            reason: "no sign-in in this test".into(),
        })
    }
}

struct PortalServer {
    url: String,
    responder: Arc<Responder>,
    _dir: TempDir,
}

async fn portal_server() -> PortalServer {
    let dir = TempDir::new("responder").expect("create a scratch folder");
    let store = Store::open(&dir.path().join("store.redb")).expect("open the store");
    let portal = Portal::without_idp(
        PendingLogins::new(Arc::new(store)),
        Arc::new(LoopbackGateway),
    );
    let (responder, _) = Responder::new(config(None)).expect("create the responder");
    portal.set_responder(responder.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the portal");
    let url = format!("http://{}", listener.local_addr().expect("portal address"));
    tokio::spawn(portal::serve(listener, portal, std::future::pending()));
    PortalServer {
        url,
        responder,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_delivers_prompt() {
    let server = portal_server().await;
    let mut curl = tokio::process::Command::new("curl")
        .args(["-sN", "--max-time", "20"])
        .arg(format!("{}/events", server.url))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start curl");
    let stdout = curl.stdout.take().expect("curl's stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();

    // curl needs a moment to connect; punt every 200 ms for at most 10 s. A punt for another
    // device must never reach this stream.
    let punts = {
        let responder = server.responder.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            for i in 0..50u64 {
                responder.record_punt(&punt(2, 99), start + Duration::from_secs(61 * i));
                responder.record_punt(&punt(1, 10), start + Duration::from_secs(61 * i));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut event = None;
    let mut data = None;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(15), lines.next_line()).await
    {
        if let Some(name) = line.strip_prefix("event: ") {
            event = Some(name.to_owned());
        }
        if let Some(json) = line.strip_prefix("data: ") {
            data = Some(json.to_owned());
            break;
        }
    }
    punts.abort();
    assert_eq!(event.as_deref(), Some("prompt"));
    let json: serde_json::Value =
        serde_json::from_str(data.as_deref().expect("one data line")).expect("the data is JSON");
    assert_eq!(json["device_id"], 1);
    assert_eq!(json["resource_ids"], serde_json::json!([10]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_snooze_holds_prompts() {
    let server = portal_server().await;
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-X", "POST"])
        .arg(format!("{}/snooze?minutes=30", server.url))
        .output()
        .await
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.starts_with("sign-in notifications snoozed until"),
        "{text}"
    );

    let outcome = server.responder.record_punt(&punt(1, 10), Instant::now());
    assert_eq!(outcome, PuntOutcome::Snoozed);
    let prompt = server
        .responder
        .prompt(1)
        .expect("the punt is still recorded");
    assert!(prompt.snoozed_until.is_some());
}

/// Returns the Python receiver code of the sign-in guide, the `verify` function of its
/// "Webhook signatures" section, exactly as documented.
fn documented_python_verify() -> String {
    let guide = include_str!("../../docs/sign-in.md");
    let section = guide
        .split("### Webhook signatures")
        .nth(1)
        .expect("the guide has a webhook signatures section");
    let code = section
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section has a Python code block");
    code.to_owned()
}

/// Starts a webhook receiver in Python on 127.0.0.1 that checks each delivery with the
/// guide's `verify` and responds 204 when it passes and 401 when it fails. It serves at most
/// `max_requests` requests, each within 30 s, then exits. Returns the process and its URL.
fn start_documented_receiver(secret: &str, max_requests: usize) -> (std::process::Child, String) {
    let receiver = r#"
import http.server, sys

secret = sys.argv[1].encode()

class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204 if verify(secret, self.headers, body) else 401)
        self.end_headers()

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
server.timeout = 30
print(server.server_address[1], flush=True)
for _ in range(int(sys.argv[2])):
    server.handle_request()
"#;
    let script = format!("{}{receiver}", documented_python_verify());
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script, secret, &max_requests.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    let mut port = String::new();
    BufReader::new(child.stdout.take().expect("python3 stdout"))
        .read_line(&mut port)
        .expect("read the receiver's port");
    let url = format!("http://127.0.0.1:{}/hook", port.trim());
    (child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_python_recipe_verifies() {
    let (mut receiver, url) = start_documented_receiver(WEBHOOK_SECRET, 2);
    let dir = TempDir::new("webhook").expect("create a scratch folder");
    let secret_path = dir.path().join("webhook-secret");
    // An editor's trailing newline is not part of the secret.
    enforcer_tests::write_secret(&secret_path, &format!("{WEBHOOK_SECRET}\n"))
        .expect("write the secret");
    let webhook = WebhookConfig {
        secret_file: Some(secret_path.clone()),
        secret_env: None,
        url,
        max_attempts: 1,
        initial_backoff_ms: 10,
        max_per_minute: 600,
        timeout_secs: 5,
        queue_length: 8,
    };
    let (responder, worker) =
        Responder::new(config(Some(webhook.clone()))).expect("create the responder");
    let (deliveries, mut delivered) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(worker.expect("a webhook worker").run(move |_, outcome| {
        let _ = deliveries.send(outcome.clone());
    }));
    responder.record_punt(&punt(3, 10), Instant::now());
    let outcome = tokio::time::timeout(Duration::from_secs(20), delivered.recv())
        .await
        .expect("a delivery within 20 s")
        .expect("the worker reports the delivery");
    assert_eq!(
        outcome,
        enforcer::responder::Delivery::Delivered { attempts: 1 },
        "the guide's verify accepts the delivery"
    );

    // The same receiver rejects a delivery signed with another secret.
    std::fs::write(&secret_path, "another-secret-0123456789abcdef0123").expect("write");
    let (other, worker) = Responder::new(config(Some(webhook))).expect("create the responder");
    let (deliveries, mut delivered) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(worker.expect("a webhook worker").run(move |_, outcome| {
        let _ = deliveries.send(outcome.clone());
    }));
    other.record_punt(&punt(3, 10), Instant::now());
    let outcome = tokio::time::timeout(Duration::from_secs(20), delivered.recv())
        .await
        .expect("a delivery within 20 s")
        .expect("the worker reports the delivery");
    assert_eq!(
        outcome,
        enforcer::responder::Delivery::Rejected { status: 401 },
        "the guide's verify rejects a wrong signature"
    );
    receiver
        .wait()
        .expect("the receiver exits after two requests");
}
