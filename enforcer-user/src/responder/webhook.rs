//! Webhook delivery of sign-in prompts: a JSON POST per notification, retried with
//! exponential backoff on network errors, 429 and 5xx, and rate-limited overall.

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::PromptEvent;

/// The `[responder.webhook]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Delivery attempts per notification, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds; it doubles after each attempt.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Maximum notifications sent per minute, across all devices.
    #[serde(default = "default_max_per_minute")]
    pub max_per_minute: u32,
    /// Timeout of one attempt, in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Notifications waiting for delivery; newer ones are dropped (and counted) when full.
    #[serde(default = "default_queue_length")]
    pub queue_length: usize,
}

fn default_max_attempts() -> u32 {
    4
}

fn default_initial_backoff_ms() -> u64 {
    500
}

fn default_max_per_minute() -> u32 {
    60
}

fn default_timeout_secs() -> u64 {
    5
}

fn default_queue_length() -> usize {
    256
}

/// Result of delivering one notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered {
        attempts: u32,
    },
    /// The receiver rejected the notification with a status that retrying cannot fix.
    Rejected {
        status: u16,
    },
    Failed {
        attempts: u32,
        last_error: String,
    },
}

/// Background task that delivers notifications from its queue.
pub struct WebhookWorker {
    config: WebhookConfig,
    queue: mpsc::Receiver<PromptEvent>,
    http: reqwest::Client,
}

impl WebhookWorker {
    pub(super) fn new(config: WebhookConfig) -> (mpsc::Sender<PromptEvent>, Self) {
        let (sender, queue) = mpsc::channel(config.queue_length.max(1));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        (
            sender,
            Self {
                config,
                queue,
                http,
            },
        )
    }

    /// Delivers queued notifications until every sender is dropped. Calls `on_delivery`
    /// with each outcome, so tests and metrics can observe them.
    pub async fn run(mut self, mut on_delivery: impl FnMut(&PromptEvent, &Delivery) + Send) {
        let per_minute = self.config.max_per_minute.max(1);
        let spacing = Duration::from_secs(60) / per_minute;
        let mut limiter = tokio::time::interval(spacing);
        limiter.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while let Some(event) = self.queue.recv().await {
            limiter.tick().await;
            let outcome = self.deliver(&event).await;
            match &outcome {
                Delivery::Delivered { attempts } => {
                    debug!(device_id = event.device_id, attempts, "webhook delivered");
                }
                Delivery::Rejected { status } => warn!(
                    device_id = event.device_id,
                    status,
                    url = %self.config.url,
                    "webhook receiver rejected the notification; check its configuration"
                ),
                Delivery::Failed {
                    attempts,
                    last_error,
                } => warn!(
                    device_id = event.device_id,
                    attempts,
                    error = %last_error,
                    url = %self.config.url,
                    "webhook delivery failed; check that the receiver is reachable"
                ),
            }
            on_delivery(&event, &outcome);
        }
    }

    async fn deliver(&self, event: &PromptEvent) -> Delivery {
        let mut backoff = Duration::from_millis(self.config.initial_backoff_ms);
        let attempts = self.config.max_attempts.max(1);
        let mut last_error = String::new();
        for attempt in 1..=attempts {
            match self.http.post(&self.config.url).json(event).send().await {
                Ok(response) if response.status().is_success() => {
                    return Delivery::Delivered { attempts: attempt };
                }
                Ok(response) => {
                    let status = response.status();
                    if status.is_client_error() && status.as_u16() != 429 {
                        return Delivery::Rejected {
                            status: status.as_u16(),
                        };
                    }
                    last_error = format!("HTTP status {status}");
                }
                Err(err) => last_error = err.to_string(),
            }
            if attempt < attempts {
                debug!(device_id = event.device_id, attempt, error = %last_error, "webhook attempt failed, retrying");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        Delivery::Failed {
            attempts,
            last_error,
        }
    }
}
