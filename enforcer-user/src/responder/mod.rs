//! Reauth responder: turns punts from the XDP program into one pending prompt per device and
//! shows the user where to sign in, through the portal page, a webhook and a server-sent event
//! stream per device. Repeated punts are coalesced, so a busy client produces at most one
//! notification per device per `notify_interval_secs` and no per-packet logs above debug.

mod webhook;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use common::UNKNOWN_DEVICE_ID;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};

pub use webhook::{
    Delivery, SIGNATURE_HEADER, SignatureError, TIMESTAMP_HEADER, WebhookConfig, WebhookError,
    WebhookSecret, WebhookWorker,
};

use crate::{dataplane::punts::Punt, store::unix_ms_now};

/// The `[responder]` section of the daemon's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponderConfig {
    /// Minimum time between two notifications for one device, in seconds.
    #[serde(default = "default_notify_interval_secs")]
    pub notify_interval_secs: u64,
    /// A prompt with no punt for this long is dropped, in seconds.
    #[serde(default = "default_prompt_ttl_secs")]
    pub prompt_ttl_secs: u64,
    /// Maximum snooze a user may choose, in seconds.
    #[serde(default = "default_max_snooze_secs")]
    pub max_snooze_secs: u64,
    /// Portal URL sent in notifications, for example `http://gateway.example:8080/`.
    pub portal_url: String,
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
}

fn default_notify_interval_secs() -> u64 {
    60
}

fn default_prompt_ttl_secs() -> u64 {
    900
}

fn default_max_snooze_secs() -> u64 {
    8 * 3600
}

/// A notification: the device should sign in at the portal to reach these resources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptEvent {
    pub device_id: u32,
    pub resource_ids: Vec<u32>,
    /// When the first punt of this prompt arrived, in milliseconds since the Unix epoch.
    pub first_punt_unix_ms: u64,
    pub portal_url: String,
}

/// A resource waiting for a sign-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitingResource {
    pub resource_id: u32,
    pub punts: u64,
    /// Deny reason of the latest punt, such as `expired` or `no_session`.
    pub last_reason: Option<&'static str>,
}

/// The pending prompt of one device, as the portal shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptView {
    pub device_id: u32,
    pub resources: Vec<WaitingResource>,
    pub first_punt_at: SystemTime,
    /// Notifications are held back until this time, chosen by the user.
    pub snoozed_until: Option<SystemTime>,
}

/// Outcome of `record_punt` for one punt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PuntOutcome {
    /// The device was notified.
    Notified,
    /// Added to the device's prompt, without a notification because one was sent less than
    /// `notify_interval_secs` ago.
    Coalesced,
    /// Added to the prompt; the user snoozed notifications.
    Snoozed,
    /// Ignored: the source address is no enrolled device, so no user can be prompted.
    UnknownDevice,
    /// Ignored: the resource is in monitor mode and the packet passed.
    Monitor,
}

struct Prompt {
    resources: BTreeMap<u32, WaitingResource>,
    first_punt_at: SystemTime,
    first_punt_unix_ms: u64,
    last_punt: Instant,
    last_notified: Option<Instant>,
    snoozed_until: Option<(Instant, SystemTime)>,
}

#[derive(Default)]
struct State {
    prompts: HashMap<u32, Prompt>,
    /// Snoozes of devices without a pending prompt, applied when the next prompt opens.
    snoozes: HashMap<u32, (Instant, SystemTime)>,
    ignored_unknown_device: u64,
    ignored_monitor: u64,
    coalesced: u64,
}

/// Counters of the responder, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponderStats {
    pub prompts: usize,
    pub coalesced: u64,
    pub ignored_unknown_device: u64,
    pub ignored_monitor: u64,
    pub webhook_dropped: u64,
}

/// Keeper of the pending prompts.
pub struct Responder {
    config: ResponderConfig,
    state: Mutex<State>,
    events: broadcast::Sender<PromptEvent>,
    webhook: Option<mpsc::Sender<PromptEvent>>,
    webhook_dropped: std::sync::atomic::AtomicU64,
}

impl Responder {
    /// Creates the responder and, when a webhook is configured, the worker that delivers it;
    /// spawn `WebhookWorker::run` on the runtime.
    /// Fails when the webhook's signing secret cannot be read.
    pub fn new(
        config: ResponderConfig,
    ) -> Result<(Arc<Self>, Option<WebhookWorker>), WebhookError> {
        let (events, _) = broadcast::channel(64);
        let (webhook, worker) = match &config.webhook {
            Some(webhook) => {
                let (sender, worker) = WebhookWorker::new(webhook.clone())?;
                (Some(sender), Some(worker))
            }
            None => (None, None),
        };
        let responder = Arc::new(Self {
            config,
            state: Mutex::new(State::default()),
            events,
            webhook,
            webhook_dropped: std::sync::atomic::AtomicU64::new(0),
        });
        Ok((responder, worker))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify_interval(&self) -> Duration {
        Duration::from_secs(self.config.notify_interval_secs)
    }

    /// Adds a punt to its device's prompt and notifies the device when it is due.
    pub fn record_punt(&self, event: &Punt, now: Instant) -> PuntOutcome {
        let mut state = self.state();
        if event.device_id == UNKNOWN_DEVICE_ID {
            state.ignored_unknown_device += 1;
            return PuntOutcome::UnknownDevice;
        }
        if event.monitor {
            state.ignored_monitor += 1;
            return PuntOutcome::Monitor;
        }

        let pending_snooze = state.snoozes.remove(&event.device_id);
        let created = !state.prompts.contains_key(&event.device_id);
        let prompt = state
            .prompts
            .entry(event.device_id)
            .or_insert_with(|| Prompt {
                resources: BTreeMap::new(),
                first_punt_at: SystemTime::now(),
                first_punt_unix_ms: unix_ms_now(),
                last_punt: now,
                last_notified: None,
                snoozed_until: pending_snooze,
            });
        prompt.last_punt = now;
        let waiting = prompt
            .resources
            .entry(event.resource_id)
            .or_insert(WaitingResource {
                resource_id: event.resource_id,
                punts: 0,
                last_reason: None,
            });
        waiting.punts += 1;
        waiting.last_reason = event.reason;

        if let Some((until, _)) = prompt.snoozed_until {
            if now < until {
                return PuntOutcome::Snoozed;
            }
            prompt.snoozed_until = None;
        }
        let due = prompt
            .last_notified
            .is_none_or(|last| now.duration_since(last) >= self.notify_interval());
        if !due {
            state.coalesced += 1;
            return PuntOutcome::Coalesced;
        }
        prompt.last_notified = Some(now);
        let notification = PromptEvent {
            device_id: event.device_id,
            resource_ids: prompt.resources.keys().copied().collect(),
            first_punt_unix_ms: prompt.first_punt_unix_ms,
            portal_url: self.config.portal_url.clone(),
        };
        drop(state);

        if created {
            info!(
                device_id = event.device_id,
                resource_id = event.resource_id,
                "opened a sign-in prompt"
            );
        } else {
            debug!(
                device_id = event.device_id,
                "reminded the device to sign in"
            );
        }
        self.send(notification);
        PuntOutcome::Notified
    }

    fn send(&self, notification: PromptEvent) {
        // No subscriber is no error: the event stream is optional.
        let _ = self.events.send(notification.clone());
        if let Some(webhook) = &self.webhook {
            if webhook.try_send(notification).is_err() {
                let dropped = self
                    .webhook_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Log the first drop and then every 100th, so a stuck receiver cannot flood
                // the log.
                if dropped.is_multiple_of(100) {
                    warn!(
                        dropped = dropped + 1,
                        "webhook queue full, notification dropped; check the webhook receiver"
                    );
                }
            }
        }
    }

    /// Returns the device's pending prompt.
    pub fn prompt(&self, device_id: u32) -> Option<PromptView> {
        let state = self.state();
        let prompt = state.prompts.get(&device_id)?;
        Some(PromptView {
            device_id,
            resources: prompt.resources.values().cloned().collect(),
            first_punt_at: prompt.first_punt_at,
            snoozed_until: prompt.snoozed_until.map(|(_, wall)| wall),
        })
    }

    /// Removes resources from the device's prompt after a sign-in opened them, and the prompt
    /// itself once it is empty.
    pub fn resolve(&self, device_id: u32, resource_ids: &[u32]) {
        let mut state = self.state();
        let Some(prompt) = state.prompts.get_mut(&device_id) else {
            return;
        };
        for id in resource_ids {
            prompt.resources.remove(id);
        }
        if prompt.resources.is_empty() {
            state.prompts.remove(&device_id);
            info!(device_id, "closed the sign-in prompt");
        }
    }

    /// Holds back notifications for the device for `duration`, capped at
    /// `max_snooze_secs`, and returns when the snooze ends.
    pub fn snooze(&self, device_id: u32, duration: Duration, now: Instant) -> SystemTime {
        let duration = duration.min(Duration::from_secs(self.config.max_snooze_secs));
        let until = (now + duration, SystemTime::now() + duration);
        let mut state = self.state();
        match state.prompts.get_mut(&device_id) {
            Some(prompt) => prompt.snoozed_until = Some(until),
            None => {
                state.snoozes.insert(device_id, until);
            }
        }
        info!(
            device_id,
            seconds = duration.as_secs(),
            "snoozed sign-in prompts"
        );
        until.1
    }

    /// Drops prompts that saw no punt for `prompt_ttl_secs` and snoozes that ended; returns
    /// how many prompts were dropped.
    pub fn expire(&self, now: Instant) -> usize {
        let ttl = Duration::from_secs(self.config.prompt_ttl_secs);
        let mut state = self.state();
        let before = state.prompts.len();
        state
            .prompts
            .retain(|_, prompt| now.duration_since(prompt.last_punt) < ttl);
        state.snoozes.retain(|_, (until, _)| now < *until);
        before - state.prompts.len()
    }

    /// Subscribes to every notification; filter by `device_id`.
    pub fn subscribe(&self) -> broadcast::Receiver<PromptEvent> {
        self.events.subscribe()
    }

    pub fn stats(&self) -> ResponderStats {
        let state = self.state();
        ResponderStats {
            prompts: state.prompts.len(),
            coalesced: state.coalesced,
            ignored_unknown_device: state.ignored_unknown_device,
            ignored_monitor: state.ignored_monitor,
            webhook_dropped: self
                .webhook_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub fn portal_url(&self) -> &str {
        &self.config.portal_url
    }
}

#[cfg(test)]
mod tests;
