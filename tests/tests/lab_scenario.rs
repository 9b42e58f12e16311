//! The lab scenario, headless: a real browser signs alice in through the portal, real TCP and
//! UDP flows reach two resources with different session durations, the short one expires
//! under an open connection, the responder raises one prompt, a second sign-in restores
//! access, and a revocation cuts everything. Every step is checked on packets seen by the
//! client and, through the echo services' logs, by the resource.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::sleep,
    time::{Duration, Instant},
};

use enforcer_tests::{
    Netns,
    lab::{self, ECHO_PORT, Lab, LabOptions, RESOURCE_HOSTS, browser_sign_in, echo_log},
    require_root,
};

/// Session of the short resource: long enough for the checks after a sign-in, short enough
/// to wait for.
const WIKI_SESSION_SECS: u64 = 20;
const WEBHOOK_PORT: u16 = 9555;

const POLICY: &str = r#"
[settings]
mfa_amr = ["otp"]
punt_interval = "200ms"

[[resource]]
name = "wiki"
destinations = [{ prefix = "198.51.100.10/32" }]
session = "20s"
groups = ["eng"]
on_expiry = "reject"

[[resource]]
name = "files"
destinations = [{ prefix = "198.51.100.20/32" }]
session = "1h"
users = ["alice@example.com"]
on_expiry = "reject"

[[resource]]
name = "admin"
destinations = [{ prefix = "198.51.100.30/32" }]
session = "15m"
groups = ["eng"]
step_up = true
on_expiry = "drop"

[[device]]
name = "alice-laptop"
owner = "alice@example.com"
addresses = ["192.0.2.10"]
"#;

fn wiki() -> SocketAddr {
    SocketAddr::new(RESOURCE_HOSTS[0].v4.parse().unwrap(), ECHO_PORT)
}

fn files() -> SocketAddr {
    SocketAddr::new(RESOURCE_HOSTS[1].v4.parse().unwrap(), ECHO_PORT)
}

/// Notifications received by the webhook receiver, as JSON bodies.
type Notifications = Arc<Mutex<Vec<serde_json::Value>>>;

/// Serves the responder's webhook on 127.0.0.1 inside the gateway namespace until `stop`.
fn start_webhook_receiver(gateway: &Netns, stop: Arc<AtomicBool>) -> Notifications {
    let received: Notifications = Arc::default();
    let listener = {
        let _inside = gateway.enter().unwrap();
        TcpListener::bind(("127.0.0.1", WEBHOOK_PORT)).unwrap()
    };
    listener.set_nonblocking(true).unwrap();
    let sink = received.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((stream, _)) = listener.accept() else {
                sleep(Duration::from_millis(20));
                continue;
            };
            if let Some(body) = read_http_body(stream) {
                sink.lock().unwrap().push(body);
            }
        }
    });
    received
}

/// Reads one HTTP request, replies 204 and returns its JSON body.
fn read_http_body(stream: TcpStream) -> Option<serde_json::Value> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    let _ = stream
        .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    serde_json::from_slice(&body).ok()
}

/// Opens a TCP connection from inside the client namespace; the socket stays there.
fn connect(client: &Netns, target: SocketAddr) -> std::io::Result<TcpStream> {
    let _inside = client.enter().unwrap();
    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(stream)
}

/// Sends `message` on `stream` and returns what came back, or the error.
fn echo_tcp(stream: &mut TcpStream, message: &str) -> std::io::Result<String> {
    stream.write_all(message.as_bytes())?;
    let mut buffer = vec![0u8; message.len()];
    stream.read_exact(&mut buffer)?;
    Ok(String::from_utf8_lossy(&buffer).into_owned())
}

/// Creates a UDP socket in the client namespace, connected to `target`.
fn udp_flow(client: &Netns, target: SocketAddr) -> UdpSocket {
    let _inside = client.enter().unwrap();
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.connect(target).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    socket
}

/// Sends `message` on the UDP flow and returns the echo, or `None` when nothing came back
/// (a timeout, or the ICMP error of a reject surfacing as a socket error).
fn echo_udp(socket: &UdpSocket, message: &str) -> Option<String> {
    // An ICMP error from an earlier datagram is reported once; clear it before sending.
    let _ = socket.take_error();
    socket.send(message.as_bytes()).ok()?;
    let mut buffer = [0u8; 512];
    let length = socket.recv(&mut buffer).ok()?;
    Some(String::from_utf8_lossy(&buffer[..length]).into_owned())
}

/// Number of lines in the echo log of `host_v4` that contain `needle`.
fn resource_saw(state_dir: &Path, host_v4: &str, needle: &str) -> usize {
    std::fs::read_to_string(echo_log(state_dir, host_v4))
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(needle))
        .count()
}

fn lab_options(prefix: &str) -> LabOptions {
    let state_dir = std::env::temp_dir().join(format!("{prefix}state"));
    std::fs::create_dir_all(std::env::temp_dir()).unwrap();
    let policy = std::env::temp_dir().join(format!("{prefix}policy.toml"));
    std::fs::write(&policy, POLICY).unwrap();
    LabOptions {
        prefix: prefix.to_owned(),
        state_dir,
        pin_root: PathBuf::from(format!("/sys/fs/bpf/{prefix}pins")),
        policy,
        enforcer: PathBuf::from(env!("CARGO_BIN_EXE_enforcer-under-test")),
        lab_binary: PathBuf::from(env!("CARGO_BIN_EXE_enforcer-lab")),
        webhook_url: Some(format!("http://127.0.0.1:{WEBHOOK_PORT}/hook")),
        notify_interval_secs: Some(5),
    }
}

#[test]
fn lab_scenario_enforces_reauthentication() {
    require_root();
    let prefix = format!("enft-ls{}-", std::process::id());
    let options = lab_options(&prefix);
    let policy_file = options.policy.clone();
    let lab = Lab::start(options).unwrap_or_else(|err| panic!("the lab failed to start: {err:#}"));
    let state_dir = lab.options.state_dir.clone();
    let client = &lab.topology.client;
    let stop = Arc::new(AtomicBool::new(false));
    let notifications = start_webhook_receiver(&lab.topology.gateway, stop.clone());

    // Before any sign-in both resources reset TCP and never see the data.
    let refused = connect(client, wiki()).map(|_| ()).unwrap_err();
    assert_eq!(
        refused.kind(),
        ErrorKind::ConnectionRefused,
        "wiki before sign-in"
    );
    let refused = connect(client, files()).map(|_| ()).unwrap_err();
    assert_eq!(
        refused.kind(),
        ErrorKind::ConnectionRefused,
        "files before sign-in"
    );
    assert_eq!(
        resource_saw(&state_dir, RESOURCE_HOSTS[0].v4, "connected"),
        0,
        "wiki saw a connection"
    );
    assert_eq!(
        resource_saw(&state_dir, RESOURCE_HOSTS[1].v4, "connected"),
        0,
        "files saw a connection"
    );

    // A real browser in the client namespace signs alice in through the portal.
    let page = browser_sign_in(client.name(), "alice", None).unwrap();
    let signed_in_at = Instant::now();
    assert!(
        page.contains("wiki"),
        "the portal lists wiki as open again: {page}"
    );
    assert!(
        page.contains("files"),
        "the portal lists files as open again: {page}"
    );

    // TCP connections and UDP flows to both resources pass.
    let mut wiki_tcp = connect(client, wiki()).expect("wiki TCP after sign-in");
    let mut files_tcp = connect(client, files()).expect("files TCP after sign-in");
    assert_eq!(echo_tcp(&mut wiki_tcp, "wiki-1").unwrap(), "wiki-1");
    assert_eq!(echo_tcp(&mut files_tcp, "files-1").unwrap(), "files-1");
    let wiki_udp = udp_flow(client, wiki());
    let files_udp = udp_flow(client, files());
    assert_eq!(echo_udp(&wiki_udp, "wiki-u1").as_deref(), Some("wiki-u1"));
    assert_eq!(
        echo_udp(&files_udp, "files-u1").as_deref(),
        Some("files-u1")
    );
    assert_eq!(
        resource_saw(&state_dir, RESOURCE_HOSTS[0].v4, "connected"),
        1,
        "wiki connections"
    );
    assert_eq!(
        resource_saw(&state_dir, RESOURCE_HOSTS[1].v4, "udp "),
        1,
        "files datagrams"
    );

    // The short session expires while the wiki connection is open: its next packet is reset,
    // and the resource never receives it, while files still passes on TCP and UDP.
    let expiry = signed_in_at + Duration::from_secs(WIKI_SESSION_SECS + 1);
    sleep(expiry.saturating_duration_since(Instant::now()));
    let notified_before_expiry = notifications.lock().unwrap().len();
    let wiki_bytes_before = resource_saw(&state_dir, RESOURCE_HOSTS[0].v4, "bytes");
    let reset = echo_tcp(&mut wiki_tcp, "wiki-2").unwrap_err();
    assert_eq!(
        reset.kind(),
        ErrorKind::ConnectionReset,
        "open wiki connection after expiry"
    );
    assert_eq!(
        echo_udp(&wiki_udp, "wiki-u2"),
        None,
        "wiki UDP after expiry"
    );
    assert_eq!(
        resource_saw(&state_dir, RESOURCE_HOSTS[0].v4, "bytes"),
        wiki_bytes_before,
        "wiki received data after its session expired"
    );
    assert_eq!(echo_tcp(&mut files_tcp, "files-2").unwrap(), "files-2");
    assert_eq!(
        echo_udp(&files_udp, "files-u2").as_deref(),
        Some("files-u2")
    );

    // Repeated denied packets raise one prompt: one notification, listing wiki only.
    for _ in 0..10 {
        let _ = connect(client, wiki());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while notifications.lock().unwrap().len() == notified_before_expiry && Instant::now() < deadline
    {
        sleep(Duration::from_millis(100));
    }
    sleep(Duration::from_secs(1));
    let after_expiry: Vec<serde_json::Value> =
        notifications.lock().unwrap()[notified_before_expiry..].to_vec();
    assert_eq!(
        after_expiry.len(),
        1,
        "notifications after expiry: {after_expiry:?}"
    );
    let waiting = after_expiry[0]["resource_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(waiting.len(), 1, "resources in the prompt: {waiting:?}");
    let portal = client
        .exec(&["curl", "-sS", "--max-time", "3", &lab::portal_url("/")])
        .unwrap();
    let portal = String::from_utf8_lossy(&portal.stdout).into_owned();
    assert!(
        portal.contains("wiki"),
        "the portal shows the wiki prompt: {portal}"
    );

    // Signing in again restores wiki at once.
    browser_sign_in(client.name(), "alice", None).unwrap();
    let mut wiki_again = connect(client, wiki()).expect("wiki TCP after the second sign-in");
    assert_eq!(echo_tcp(&mut wiki_again, "wiki-3").unwrap(), "wiki-3");
    assert_eq!(echo_udp(&wiki_udp, "wiki-u3").as_deref(), Some("wiki-u3"));

    // Revoking the user cuts both resources at the next packet, open connections included.
    let revoke = lab
        .enforcer(&[
            "session",
            "revoke",
            "--user",
            "alice",
            "--issuer",
            &lab.idp.issuer,
        ])
        .unwrap();
    assert!(
        revoke.status.success(),
        "revoke: {}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    let files_bytes_before = resource_saw(&state_dir, RESOURCE_HOSTS[1].v4, "bytes");
    let reset = echo_tcp(&mut files_tcp, "files-3").unwrap_err();
    assert_eq!(
        reset.kind(),
        ErrorKind::ConnectionReset,
        "open files connection after revoke"
    );
    let reset = echo_tcp(&mut wiki_again, "wiki-4").unwrap_err();
    assert_eq!(
        reset.kind(),
        ErrorKind::ConnectionReset,
        "open wiki connection after revoke"
    );
    assert_eq!(
        echo_udp(&files_udp, "files-u3"),
        None,
        "files UDP after revoke"
    );
    assert_eq!(
        resource_saw(&state_dir, RESOURCE_HOSTS[1].v4, "bytes"),
        files_bytes_before,
        "files received data after the revocation"
    );

    stop.store(true, Ordering::Relaxed);
    drop(lab);
    let _ = std::fs::remove_file(policy_file);
}
