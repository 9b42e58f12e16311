//! `GET /events`: a server-sent event stream of the requesting device's sign-in prompts, for
//! a desktop agent. The current prompt, if any, comes first.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, State},
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use futures_util::{Stream, StreamExt as _, stream};
use tokio_stream::wrappers::BroadcastStream;

use super::{Format, Portal, PortalError, identify};
use crate::{responder::PromptEvent, store::unix_ms_now};

fn event(prompt: &PromptEvent) -> Option<Result<Event, Infallible>> {
    Event::default()
        .event("prompt")
        .json_data(prompt)
        .ok()
        .map(Ok)
}

pub(super) async fn stream(
    State(portal): State<Arc<Portal>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, PortalError> {
    let format = Format::from_headers(&headers);
    let device_id = identify(&portal, address, format)?;
    let responder = portal.responder(format)?;
    let receiver = responder.subscribe();

    let current = responder.prompt(device_id).map(|prompt| PromptEvent {
        device_id,
        resource_ids: prompt.resources.iter().map(|r| r.resource_id).collect(),
        first_punt_unix_ms: prompt
            .first_punt_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or_else(|_| unix_ms_now(), |since| since.as_millis() as u64),
        portal_url: responder.portal_url().to_owned(),
    });
    let updates = BroadcastStream::new(receiver).filter_map(move |item| {
        // A lagging client skips the notifications it missed; the next one lists every
        // waiting resource anyway.
        let prompt = item.ok().filter(|prompt| prompt.device_id == device_id);
        std::future::ready(prompt.as_ref().and_then(event))
    });
    let first = stream::iter(current.as_ref().and_then(event));
    Ok(Sse::new(first.chain(updates)).keep_alive(KeepAlive::default()))
}
