//! Portal pages as HTML for browsers and as plain text for curl and scripts.

use std::{fmt::Write as _, time::SystemTime};

use axum::http::{HeaderMap, header};
use chrono::{DateTime, SecondsFormat, Utc};

use super::{DeviceGrant, DeviceStatus, Granted, SessionView};
use crate::idp::Authentication;

/// Output format of a portal page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Html,
    Text,
}

impl Format {
    /// Chooses HTML when the client accepts `text/html` (browsers do), else plain text.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let accepts_html = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| value.contains("text/html"));
        if accepts_html {
            Format::Html
        } else {
            Format::Text
        }
    }
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

fn timestamp(time: SystemTime) -> String {
    DateTime::<Utc>::from(time).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Formats the time left until `time`, for example "1h 05m" or "expired".
fn remaining(time: SystemTime, now: SystemTime) -> String {
    match time.duration_since(now) {
        Ok(left) => {
            let minutes = left.as_secs() / 60;
            if minutes >= 60 {
                format!("{}h {:02}m", minutes / 60, minutes % 60)
            } else {
                format!("{minutes}m {:02}s", left.as_secs() % 60)
            }
        }
        Err(_) => "expired".into(),
    }
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>{}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}}\
table{{border-collapse:collapse}}td,th{{padding:.2rem .8rem;text-align:left}}\
.error{{color:#a00}}</style></head><body>\n<h1>{}</h1>\n{}</body></html>\n",
        escape(title),
        escape(title),
        body
    )
}

fn sessions_html(sessions: &[SessionView], now: SystemTime) -> String {
    if sessions.is_empty() {
        return "<p id=\"no-sessions\">No live sessions.</p>\n".into();
    }
    let mut html = String::from(
        "<table id=\"sessions\"><tr><th>Resource</th><th>Expires</th><th>Left</th></tr>\n",
    );
    for session in sessions {
        let _ = writeln!(
            html,
            "<tr class=\"session\"><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&session.resource),
            timestamp(session.expires_at),
            remaining(session.expires_at, now)
        );
    }
    html.push_str("</table>\n");
    html
}

fn sessions_text(sessions: &[SessionView], now: SystemTime) -> String {
    if sessions.is_empty() {
        return "sessions: none\n".into();
    }
    let mut text = String::from("sessions:\n");
    for session in sessions {
        let _ = writeln!(
            text,
            "  {}  expires {} ({})",
            session.resource,
            timestamp(session.expires_at),
            remaining(session.expires_at, now)
        );
    }
    text
}

/// Renders the device's page: sessions, pending prompts and how to sign in.
pub fn status(
    format: Format,
    status: &DeviceStatus,
    grant: Option<&DeviceGrant>,
    now: SystemTime,
    portal_url: &str,
) -> String {
    match format {
        Format::Html => {
            let mut body = format!(
                "<p>Device <b id=\"device\">{}</b></p>\n",
                escape(&status.name)
            );
            body.push_str(&sessions_html(&status.sessions, now));
            if !status.pending.is_empty() {
                body.push_str("<h2>Waiting for sign-in</h2><ul id=\"pending\">\n");
                for resource in &status.pending {
                    let _ = writeln!(body, "<li>{}</li>", escape(resource));
                }
                body.push_str("</ul>\n");
                body.push_str(
                    "<form method=\"post\" action=\"/snooze\" id=\"snooze\">Remind me later: \
<button name=\"minutes\" value=\"15\" formaction=\"/snooze?minutes=15\">15 min</button> \
<button name=\"minutes\" value=\"60\" formaction=\"/snooze?minutes=60\">1 h</button> \
<button name=\"minutes\" value=\"240\" formaction=\"/snooze?minutes=240\">4 h</button></form>\n",
                );
            }
            let mfa = if status.pending_requires_mfa {
                "<input type=\"hidden\" name=\"mfa\" value=\"1\"><p>A resource waiting for you requires multi-factor sign-in.</p>"
            } else {
                ""
            };
            let _ = writeln!(
                body,
                "<form method=\"post\" action=\"/login\">{mfa}<button id=\"sign-in\" type=\"submit\">Sign in</button></form>"
            );
            if let Some(grant) = grant {
                body.push_str(&device_grant_html(grant));
            }
            page("enforcer sign-in", &body)
        }
        Format::Text => {
            let mut text = format!("device: {}\n", status.name);
            text.push_str(&sessions_text(&status.sessions, now));
            if !status.pending.is_empty() {
                let _ = writeln!(text, "waiting for sign-in: {}", status.pending.join(", "));
            }
            if status.pending_requires_mfa {
                text.push_str("a waiting resource requires multi-factor sign-in\n");
            }
            let _ = writeln!(
                text,
                "sign in: open this page in a browser, or run `curl -X POST {portal_url}/device`"
            );
            if let Some(grant) = grant {
                text.push_str(&device_grant_text(grant, portal_url));
            }
            text
        }
    }
}

/// Renders the page after a successful sign-in: which resources are open again and until
/// when.
pub fn granted(
    format: Format,
    authentication: &Authentication,
    granted: &Granted,
    now: SystemTime,
) -> String {
    let sessions = &granted.sessions;
    let user = authentication
        .email
        .clone()
        .unwrap_or_else(|| authentication.subject.clone());
    match format {
        Format::Html => {
            let mut body = format!(
                "<p id=\"signed-in\">Signed in as <b>{}</b>.</p>\n",
                escape(&user)
            );
            if let Some(device) = &granted.enrolled_device {
                let _ = writeln!(
                    body,
                    "<p id=\"enrolled\">This device is now enrolled as <b>{}</b>, owned by you.</p>",
                    escape(device)
                );
            }
            if sessions.is_empty() {
                body.push_str("<p id=\"no-sessions\">No resource was opened: your policy grants this device none.</p>\n");
            } else {
                body.push_str("<p>Open again:</p>\n");
                body.push_str(&sessions_html(sessions, now));
            }
            page("Access restored", &body)
        }
        Format::Text => {
            let mut text = format!("signed in as {user}\n");
            if let Some(device) = &granted.enrolled_device {
                let _ = writeln!(text, "enrolled this device as {device}, owned by you");
            }
            if sessions.is_empty() {
                text.push_str("no resource was opened: your policy grants this device none\n");
            } else {
                text.push_str("open again:\n");
                text.push_str(&sessions_text(sessions, now).replacen("sessions:\n", "", 1));
            }
            text
        }
    }
}

fn device_grant_html(grant: &DeviceGrant) -> String {
    match grant {
        DeviceGrant::Waiting {
            verification_uri,
            user_code,
            expires_at,
            ..
        } => format!(
            "<p id=\"device-grant\">Open <a href=\"{0}\">{0}</a> and enter <code id=\"user-code\">{1}</code> before {2}.</p>\n",
            escape(verification_uri),
            escape(user_code),
            timestamp(*expires_at)
        ),
        DeviceGrant::Granted(sessions) => format!(
            "<p id=\"device-grant\">Device sign-in complete.</p>\n{}",
            sessions_html(sessions, SystemTime::now())
        ),
        DeviceGrant::Failed(reason) => format!(
            "<p id=\"device-grant\" class=\"error\">Device sign-in failed: {}</p>\n",
            escape(reason)
        ),
    }
}

fn device_grant_text(grant: &DeviceGrant, portal_url: &str) -> String {
    match grant {
        DeviceGrant::Waiting {
            verification_uri,
            verification_uri_complete,
            user_code,
            expires_at,
        } => {
            let mut text = format!(
                "device sign-in: open {verification_uri} and enter the code {user_code} before {}\n",
                timestamp(*expires_at)
            );
            if let Some(complete) = verification_uri_complete {
                let _ = writeln!(text, "or open {complete}");
            }
            let _ = writeln!(
                text,
                "then run `curl {portal_url}/device` to see the result"
            );
            text
        }
        DeviceGrant::Granted(sessions) => {
            let mut text = String::from("device sign-in: complete\n");
            text.push_str(&sessions_text(sessions, SystemTime::now()));
            text
        }
        DeviceGrant::Failed(reason) => format!("device sign-in: failed: {reason}\n"),
    }
}

/// Renders the device authorization grant's progress. `portal_url` has no trailing slash.
pub fn device_grant(format: Format, grant: Option<&DeviceGrant>, portal_url: &str) -> String {
    match (format, grant) {
        (Format::Html, Some(grant)) => page("Device sign-in", &device_grant_html(grant)),
        (Format::Html, None) => page(
            "Device sign-in",
            "<p>No device sign-in started. <form method=\"post\" action=\"/device\"><button type=\"submit\">Start</button></form></p>\n",
        ),
        (Format::Text, Some(grant)) => device_grant_text(grant, portal_url),
        (Format::Text, None) => {
            format!("device sign-in: not started; run `curl -X POST {portal_url}/device`\n")
        }
    }
}

/// Renders the confirmation of a snooze.
pub fn snoozed(format: Format, until: SystemTime) -> String {
    match format {
        Format::Html => page(
            "Prompts snoozed",
            &format!(
                "<p id=\"snoozed\">No sign-in notifications until {}.</p>\n<p><a href=\"/\">Back to the portal</a></p>\n",
                timestamp(until)
            ),
        ),
        Format::Text => format!("sign-in notifications snoozed until {}\n", timestamp(until)),
    }
}

/// Renders an error page.
pub fn error(format: Format, message: &str) -> String {
    match format {
        Format::Html => page(
            "Sign-in failed",
            &format!(
                "<p class=\"error\" id=\"error\">{}</p>\n<p><a href=\"/\">Back to the portal</a></p>\n",
                escape(message)
            ),
        ),
        Format::Text => format!("error: {message}\n"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn format_html_for_browsers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            "text/html,application/xhtml+xml,*/*;q=0.8"
                .parse()
                .expect("valid header"),
        );
        assert_eq!(Format::from_headers(&headers), Format::Html);
    }

    #[test]
    fn format_text_for_curl() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, "*/*".parse().expect("valid header"));
        assert_eq!(Format::from_headers(&headers), Format::Text);
    }

    #[test]
    fn escape_html_metacharacters() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn remaining_formats_hours_and_expired() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(remaining(now + Duration::from_secs(3900), now), "1h 05m");
        assert_eq!(remaining(now + Duration::from_secs(65), now), "1m 05s");
        assert_eq!(remaining(now - Duration::from_secs(1), now), "expired");
    }

    #[test]
    fn status_text_names_portal_url() {
        let status = DeviceStatus {
            device_id: 1,
            name: "laptop".into(),
            sessions: Vec::new(),
            pending: Vec::new(),
            pending_requires_mfa: false,
        };
        let text = super::status(
            Format::Text,
            &status,
            None,
            SystemTime::now(),
            "http://192.0.2.1:8080",
        );
        assert!(
            text.contains("run `curl -X POST http://192.0.2.1:8080/device`"),
            "{text}"
        );
    }

    #[test]
    fn device_grant_text_names_portal_url() {
        let text = device_grant(Format::Text, None, "http://192.0.2.1:8080");
        assert_eq!(
            text,
            "device sign-in: not started; run `curl -X POST http://192.0.2.1:8080/device`\n"
        );
    }
}
