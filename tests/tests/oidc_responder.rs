//! Reauth responder delivery over real loopback HTTP: webhook retries against a receiver
//! that fails first, the portal's server-sent event stream read with curl, and a snooze
//! chosen from the portal. Punts are built by hand here; the kernel's punt path is covered
//! by the data-path tests.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, TcpListener},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use enforcer::{
    dataplane::punts::Punt,
    idp::{Authentication, PendingLogins},
    portal::{self, DeviceStatus, Gateway, GrantRejected, Portal, SessionView},
    responder::{PuntOutcome, Responder, ResponderConfig, WebhookConfig},
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

/// Serves HTTP on 127.0.0.1, responding 503 to the first `failures` requests and 204 after,
/// and returns the request bodies it received. It stops after `max_requests` requests.
fn webhook_receiver(failures: usize, max_requests: usize) -> (String, Arc<Mutex<Vec<String>>>) {
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
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            received
                .lock()
                .expect("bodies lock")
                .push(String::from_utf8_lossy(&body).into_owned());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_retries_until_delivered() {
    let (url, bodies) = webhook_receiver(2, 10);
    let webhook = WebhookConfig {
        url,
        max_attempts: 4,
        initial_backoff_ms: 10,
        max_per_minute: 600,
        timeout_secs: 5,
        queue_length: 8,
    };
    let (responder, worker) = Responder::new(config(Some(webhook)));
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

    let bodies = bodies.lock().expect("bodies lock").clone();
    assert_eq!(bodies.len(), 3, "two failures and one success");
    let json: serde_json::Value = serde_json::from_str(&bodies[2]).expect("the body is JSON");
    assert_eq!(json["device_id"], 3);
    assert_eq!(json["resource_ids"], serde_json::json!([10]));
    assert!(
        delivered.try_recv().is_err(),
        "one notification for 50 punts"
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

    fn grant(&self, _: u32, _: &Authentication) -> Result<Vec<SessionView>, GrantRejected> {
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
    let (responder, _) = Responder::new(config(None));
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
