//! The picker's gRPC health service (`grpc.health.v1.Health`, the
//! tonic-health crate), as the Endpoint Picker Protocol asks: `liveness`
//! serves while the process answers; `readiness` and the ext_proc service
//! name (`envoy.service.ext_proc.v3.ExternalProcessor`, what gateways
//! check) serve once some pool has a node — the admin `/readyz` rule — and
//! stop serving when the last node goes. The overall status (`""`) follows
//! readiness too.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use tonic::server::NamedService;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::{health_reporter, HealthReporter};
use tonic_health::ServingStatus;

use super::Picker;
use crate::proxy::Gateway;

/// Service name of the liveness check.
pub const LIVENESS: &str = "liveness";
/// Service name of the readiness check.
pub const READINESS: &str = "readiness";
/// Service name of the ext_proc service.
pub const EXT_PROC: &str = <ExternalProcessorServer<Picker> as NamedService>::NAME;

/// How often readiness is looked at again (a node set changes at most as
/// often as discovery reports, seconds apart).
const RECHECK: Duration = Duration::from_millis(250);

/// The health service for `gateway`, and the task keeping it current
/// (stops with the picker).
pub async fn service(
    gateway: Arc<Gateway>,
) -> (HealthServer<impl Health>, tokio::task::JoinHandle<()>) {
    let (reporter, server) = health_reporter();
    reporter
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
    let mut ready = gateway.known_nodes() > 0;
    set_ready(&reporter, ready).await;
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(RECHECK);
        loop {
            tick.tick().await;
            let now = gateway.known_nodes() > 0;
            if now != ready {
                ready = now;
                set_ready(&reporter, ready).await;
            }
        }
    });
    (server, task)
}

async fn set_ready(reporter: &HealthReporter, ready: bool) {
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in [READINESS, EXT_PROC, ""] {
        reporter.set_service_status(name, status).await;
    }
}
