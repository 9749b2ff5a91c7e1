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
        (status = 503, description = "The decision log is unreachable, or serve.max_connections connections are open (retry later)", body = ErrorBody),
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

/// The content type of `/metrics`: the OpenMetrics text format.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Prometheus metrics (OpenMetrics text format).
#[utoipa::path(
    get,
    path = "/metrics",
    responses(
        (status = 200, description = "The metrics in the OpenMetrics text format", body = String, content_type = OPENMETRICS),
        (status = 503, description = "serve.max_connections connections are open (retry later)", body = ErrorBody),
    )
)]
pub(crate) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS)], st.metrics.encode()).into_response()
}

/// This document: the API as this server is configured (its limits; security only when
/// `serve.api_keys_file` is set).
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses(
        (status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"),
        (status = 503, description = "serve.max_connections connections are open (retry later)", body = ErrorBody),
    )
)]
pub(crate) async fn openapi(State(st): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], st.openapi.clone()).into_response()
}
