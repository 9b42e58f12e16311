use std::time::{Duration, Instant};

use std::net::{IpAddr, Ipv4Addr};

use crate::dataplane::punts::Punt;

use super::*;

fn responder() -> Arc<Responder> {
    let config = ResponderConfig {
        notify_interval_secs: 60,
        prompt_ttl_secs: 900,
        max_snooze_secs: 3600,
        portal_url: "http://192.0.2.1:8080/".into(),
        webhook: None,
    };
    Responder::new(config)
        .expect("a responder without a webhook needs no secret")
        .0
}

fn punt(device_id: u32, resource_id: u32) -> Punt {
    Punt {
        timestamp_boot_ns: 0,
        device_id,
        resource_id,
        source: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        destination: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        source_port: 40000,
        destination_port: 443,
        protocol: 6,
        reason: Some("expired"),
        monitor: false,
    }
}

#[test]
fn first_punt_notifies() {
    let responder = responder();
    let mut events = responder.subscribe();
    let outcome = responder.record_punt(&punt(1, 10), Instant::now());
    assert_eq!(outcome, PuntOutcome::Notified);
    let event = events.try_recv().expect("one notification");
    assert_eq!(event.device_id, 1);
    assert_eq!(event.resource_ids, vec![10]);
}

#[test]
fn repeated_punts_coalesce() {
    let responder = responder();
    let mut events = responder.subscribe();
    let now = Instant::now();
    for i in 0..1000u64 {
        responder.record_punt(
            &punt(1, 10 + (i % 3) as u32),
            now + Duration::from_millis(i),
        );
    }
    assert!(events.try_recv().is_ok(), "the first punt notifies");
    assert!(
        events.try_recv().is_err(),
        "later punts within the interval do not"
    );
    let prompt = responder.prompt(1).expect("one prompt");
    assert_eq!(prompt.resources.len(), 3);
    assert_eq!(prompt.resources.iter().map(|r| r.punts).sum::<u64>(), 1000);
    assert_eq!(responder.stats().coalesced, 999);
}

#[test]
fn reminder_after_interval() {
    let responder = responder();
    let now = Instant::now();
    responder.record_punt(&punt(1, 10), now);
    let outcome = responder.record_punt(&punt(1, 11), now + Duration::from_secs(61));
    assert_eq!(outcome, PuntOutcome::Notified);
}

#[test]
fn snooze_holds_notifications() {
    let responder = responder();
    let now = Instant::now();
    responder.snooze(1, Duration::from_secs(600), now);
    let during = responder.record_punt(&punt(1, 10), now + Duration::from_secs(1));
    let after = responder.record_punt(&punt(1, 10), now + Duration::from_secs(601));
    assert_eq!(during, PuntOutcome::Snoozed);
    assert_eq!(after, PuntOutcome::Notified);
}

#[test]
fn snooze_is_capped() {
    let responder = responder();
    let now = Instant::now();
    responder.record_punt(&punt(1, 10), now);
    responder.snooze(1, Duration::from_secs(100_000), now);
    let outcome = responder.record_punt(&punt(1, 10), now + Duration::from_secs(3601));
    assert_eq!(outcome, PuntOutcome::Notified);
}

#[test]
fn unknown_device_and_monitor_ignored() {
    let responder = responder();
    let now = Instant::now();
    let unknown = responder.record_punt(&punt(common::UNKNOWN_DEVICE_ID, 10), now);
    let monitor = responder.record_punt(
        &Punt {
            monitor: true,
            ..punt(1, 10)
        },
        now,
    );
    assert_eq!(unknown, PuntOutcome::UnknownDevice);
    assert_eq!(monitor, PuntOutcome::Monitor);
    assert!(responder.prompt(1).is_none());
}

#[test]
fn resolve_closes_prompt() {
    let responder = responder();
    let now = Instant::now();
    responder.record_punt(&punt(1, 10), now);
    responder.record_punt(&punt(1, 11), now);
    responder.resolve(1, &[10]);
    assert_eq!(responder.prompt(1).map(|p| p.resources.len()), Some(1));
    responder.resolve(1, &[11]);
    assert!(responder.prompt(1).is_none());
}

#[test]
fn expire_drops_idle_prompts() {
    let responder = responder();
    let now = Instant::now();
    responder.record_punt(&punt(1, 10), now);
    responder.record_punt(&punt(2, 10), now + Duration::from_secs(800));
    assert_eq!(responder.expire(now + Duration::from_secs(901)), 1);
    assert!(responder.prompt(1).is_none());
    assert!(responder.prompt(2).is_some());
}
