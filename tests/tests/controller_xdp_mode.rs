//! `xdp_mode = "auto"` attaches in native mode where the driver accepts it and falls back to
//! generic mode where it does not. Status and the start log report the mode the kernel shows.

mod controller_support;

use controller_support::{Gateway, POLICY, text};

/// Starts the daemon with `xdp_mode = "auto"` after `prepare` has changed the lab.
fn auto_lab(prepare: impl FnOnce(&Gateway)) -> Gateway {
    let mut lab = Gateway::new(POLICY);
    lab.xdp_mode = "auto".into();
    prepare(&lab);
    lab.start();
    lab
}

fn kernel_link(lab: &Gateway) -> String {
    let output = lab
        .gateway
        .exec(&["ip", "-d", "link", "show", "g0"])
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn auto_mode_attaches_native_on_veth() {
    let lab = auto_lab(|_| {});

    let link = kernel_link(&lab);
    assert!(link.contains(" xdp "), "ip -d link shows: {link}");

    let status = lab.cli_json(&["status"]);
    assert_eq!(status["xdp_mode"], "native", "{status}");
    assert_eq!(status["xdp_mode_requested"], "auto", "{status}");

    let human = lab.cli(&["status"]);
    assert!(
        text(&human).contains("(native mode,"),
        "status prints: {}",
        text(&human)
    );
    let log = lab.log();
    assert!(log.contains("mode=\"native\""), "start log: {log}");
    assert!(!log.contains("falling back"), "start log: {log}");
}

#[test]
fn auto_mode_falls_back_to_generic() {
    // veth rejects native XDP when the peer's MTU exceeds what fits in one page, unless the
    // program supports fragments, which this one does not.
    let lab = auto_lab(|lab| {
        lab.client
            .exec(&["ip", "link", "set", "c0", "mtu", "9000"])
            .unwrap();
    });

    let link = kernel_link(&lab);
    assert!(link.contains(" xdpgeneric "), "ip -d link shows: {link}");

    let status = lab.cli_json(&["status"]);
    assert_eq!(status["xdp_mode"], "generic", "{status}");

    let human = lab.cli(&["status"]);
    assert!(
        text(&human).contains("(generic mode,"),
        "status prints: {}",
        text(&human)
    );
    let log = lab.log();
    assert!(
        log.contains("native XDP attach failed, so falling back to generic (SKB) mode"),
        "start log: {log}"
    );
    assert!(log.contains("mode=\"generic\""), "start log: {log}");
}

#[test]
fn skb_mode_reports_generic() {
    let mut lab = Gateway::new(POLICY);
    lab.start();

    let status = lab.cli_json(&["status"]);
    assert_eq!(status["xdp_mode"], "generic", "{status}");
    assert_eq!(status["xdp_mode_requested"], "skb", "{status}");
}
