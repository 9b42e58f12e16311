//! The real XDP program attached to a veth in a namespace decides whether real pings pass.

use std::net::{IpAddr, Ipv4Addr};

use common::{
    DeviceEntry, PROTOCOL_ANY, PrefixRules, RULE_FLAG_ANY_PORT, ResourceRule, SessionKey,
    SessionValue, counters,
};
use enforcer::dataplane::Dataplane;
use enforcer_tests::{Netns, address, require_root, veth};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const DEVICE_ID: u32 = 7;
const RESOURCE_ID: u32 = 3;

fn ping(client: &Netns) -> bool {
    client
        .try_exec(&["ping", "-c", "1", "-W", "1", &GATEWAY.to_string()])
        .expect("ping runs")
        .status
        .success()
}

fn boot_ns_now() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to write.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) },
        0
    );
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[test]
fn ping_passes_only_with_live_session() {
    require_root();
    let client = Netns::new("client").unwrap();
    let gateway = Netns::new("gw").unwrap();
    veth(&client, "c0", &gateway, "g0").unwrap();
    address(&client, "c0", "192.0.2.2/24").unwrap();
    address(&gateway, "g0", "192.0.2.1/24").unwrap();
    assert!(
        ping(&client),
        "ping must pass before the program is attached"
    );

    let mut dataplane = Dataplane::load().unwrap();
    {
        let _inside = gateway.enter().unwrap();
        dataplane.attach("g0", aya::programs::XdpMode::Skb).unwrap();
    }
    let mut rules = PrefixRules {
        count: 1,
        ..Default::default()
    };
    rules.rules[0] = ResourceRule {
        resource_id: RESOURCE_ID,
        protocol: PROTOCOL_ANY,
        flags: RULE_FLAG_ANY_PORT,
        ..Default::default()
    };
    dataplane
        .set_prefix(IpAddr::V4(GATEWAY), 32, rules)
        .unwrap();
    let device = DeviceEntry {
        device_id: DEVICE_ID,
        ..Default::default()
    };
    dataplane.set_device(IpAddr::V4(CLIENT), device).unwrap();
    assert!(!ping(&client), "ping must be dropped without a session");
    let denied = dataplane.counters().unwrap()[counters::DENY_NO_SESSION as usize];
    assert!(denied >= 1, "deny_no_session counter is {denied}");

    let key = SessionKey {
        device_id: DEVICE_ID,
        resource_id: RESOURCE_ID,
    };
    let live = SessionValue {
        expires_at_boot_ns: boot_ns_now() + 60_000_000_000,
    };
    dataplane.set_session(key, live).unwrap();
    assert!(ping(&client), "ping must pass with a live session");

    let expired = SessionValue {
        expires_at_boot_ns: boot_ns_now() - 1,
    };
    dataplane.set_session(key, expired).unwrap();
    assert!(
        !ping(&client),
        "ping must be dropped once the session expired"
    );
    let expired_count = dataplane.counters().unwrap()[counters::DENY_EXPIRED as usize];
    assert!(
        expired_count >= 1,
        "deny_expired counter is {expired_count}"
    );
}
