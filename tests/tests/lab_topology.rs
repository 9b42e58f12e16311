//! The lab's namespaces forward real traffic between client and resources before any
//! enforcement is attached, so that later denials are the enforcer's doing.

use std::{path::PathBuf, thread::sleep, time::Duration};

use enforcer_tests::{
    lab::{ECHO_PORT, RESOURCE_HOSTS, Topology},
    require_root,
};

fn lab_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_enforcer-lab"))
}

/// Retries `attempt` for up to two seconds, for services that are still binding.
fn eventually(mut attempt: impl FnMut() -> bool) -> bool {
    for _ in 0..20 {
        if attempt() {
            return true;
        }
        sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn lab_topology_forwards_http_tcp_and_udp() {
    require_root();
    let prefix = format!("enft-lab{}-", std::process::id());
    let mut lab = Topology::build(&prefix).unwrap();
    let state_dir = std::env::temp_dir().join(format!("{prefix}state"));
    lab.start_services(&lab_binary(), &state_dir).unwrap();

    for host in &RESOURCE_HOSTS {
        for address in [host.v4.to_owned(), format!("[{}]", host.v6)] {
            let url = format!("http://{address}/");
            let fetched = eventually(|| {
                let output = lab
                    .client
                    .try_exec(&["curl", "-sS", "--max-time", "2", &url])
                    .unwrap();
                String::from_utf8_lossy(&output.stdout).contains(host.name)
            });
            assert!(fetched, "HTTP to {url} must reach resource {}", host.name);
        }

        let port = ECHO_PORT.to_string();
        let tcp = lab
            .client
            .try_exec(&[
                "sh",
                "-c",
                &format!("echo tcp-ping | nc -N -w 2 {} {port}", host.v4),
            ])
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&tcp.stdout).trim(),
            "tcp-ping",
            "TCP echo from {}",
            host.v4
        );

        let udp = lab
            .client
            .try_exec(&[
                "sh",
                "-c",
                &format!("echo udp-ping | nc -u -w 1 {} {port}", host.v4),
            ])
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&udp.stdout).trim(),
            "udp-ping",
            "UDP echo from {}",
            host.v4
        );
    }
    let _ = std::fs::remove_dir_all(state_dir);
}
