//! HTTP listeners: the portal (users sign in there) and Prometheus metrics.
//!
//! `portal_router` builds the portal's `axum::Router`; the portal module adds its routes by
//! merging its own `Router<DaemonState>` there, so every route shares `DaemonState`.

use std::net::SocketAddr;

use axum::{Router, extract::State, routing::get};
use tokio_util::sync::CancellationToken;

use crate::daemon::DaemonState;

/// Errors from the HTTP listeners.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "failed to listen on {address} for the {role}: {source}; choose a free address in the config"
    )]
    Bind {
        role: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Routes served on the portal listener.
pub fn portal_router(state: DaemonState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn healthz(State(_state): State<DaemonState>) -> &'static str {
    "ok\n"
}

/// Routes served on the metrics listener: Prometheus text format at `/metrics`.
pub fn metrics_router(state: DaemonState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(State(state): State<DaemonState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let rendered = tokio::task::spawn_blocking(move || crate::metrics::render(&state)).await;
    match rendered {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(error = %err, "failed to render metrics");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Binds `address` now, so a taken port fails the start, and serves `router` until `shutdown`.
pub async fn serve(
    role: &'static str,
    address: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, HttpError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| HttpError::Bind {
            role,
            address,
            source,
        })?;
    let local = listener.local_addr().unwrap_or(address);
    tracing::info!(%local, role, "listening");
    Ok(tokio::spawn(async move {
        // The portal identifies devices by the source address, so handlers get ConnectInfo.
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        let result = axum::serve(listener, service)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(err) = result {
            tracing::error!(role, error = %err, "HTTP listener failed");
        }
    }))
}
