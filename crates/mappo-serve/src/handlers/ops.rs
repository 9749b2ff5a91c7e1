//! The operational endpoints: `GET /healthz`, `GET /metrics` (Prometheus) and
//! `GET /openapi.json`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// `GET /healthz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`.
    pub status: String,
    /// The policy version being served.
    pub policy_version: i64,
    /// This replica's name.
    pub replica: String,
}

/// Liveness and the policy version served; 503 while the decision log is unreachable.
#[utoipa::path(
    get,
    path = "/healthz",
    responses(
        (status = 200, description = "Serving", body = HealthResponse),
        (status = 503, description = "The decision log is unreachable", body = ErrorBody),
    )
)]
pub(crate) async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    if st.db_ok.load(Ordering::Relaxed) {
        Json(HealthResponse {
            status: "ok".into(),
            policy_version: st.engine.version(),
            replica: st.replica.clone(),
        })
        .into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the decision log is unavailable: {}", st.db_error()),
        )
        .into_response()
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(
    get,
    path = "/metrics",
    responses(
        (status = 200, description = "Prometheus text", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        st.metrics.encode(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "The OpenAPI document")))]
pub(crate) async fn openapi(State(st): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], st.openapi.clone()).into_response()
}
