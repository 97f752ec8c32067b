//! OpenTelemetry, off unless an OTLP endpoint is configured (`telemetry.otlp_endpoint` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`): a trace per client connection with child spans for the
//! policy decision, the mint, the upstream login and the drop (the `tracing` spans of
//! `pg::session` and `ssh::session`, exported by `tracing-opentelemetry`); metrics; and every
//! audit event as an OTLP log record whose body is the event's JSON line, chain link
//! included. All three go over OTLP/HTTP with protobuf (`http::Client`).
//!
//! Metrics (names as exported):
//! - `jitgate.sessions.active`, `jitgate.jit.accounts.live`: gauges, read from the session
//!   registry and the live leases at each export;
//! - `jitgate.jit.mint.duration`, `jitgate.jit.drop.duration` (seconds; `protocol`, `target`,
//!   and `outcome` for drops);
//! - `jitgate.relay.bytes` (`protocol`, `target`, `direction`: `from_client` | `to_client`),
//!   counted when a session ends;
//! - `jitgate.access.refused` (`protocol`, `stage`: `handshake` | `login`, `sqlstate`);
//! - `jitgate.jit.drop.failures` (`protocol`, `target`): drops handed to the reaper.
//!
//! Everything here is fed from the audit pipeline's typed events, so a count cannot differ
//! from what the audit log says.

mod http;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::{reload, Registry};

use crate::audit::event::{Body, DropOutcome, Event};
use crate::config::telemetry::TelemetryConfig;

/// The `tracing` layer that turns spans into OTLP spans; `None` until [`start`] fills it.
pub type TraceLayer = tracing_opentelemetry::OpenTelemetryLayer<Registry, SdkTracer>;
pub type TraceLayerHandle = reload::Handle<Option<TraceLayer>, Registry>;

static TRACE_LAYER: OnceLock<TraceLayerHandle> = OnceLock::new();
static METRICS: OnceLock<Metrics> = OnceLock::new();
static LOGGER: OnceLock<SdkLogger> = OnceLock::new();

/// How long one export may take before it is abandoned (the SDK retries on its schedule).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Called once by the binary's logging set-up: where [`start`] installs the span exporter.
pub fn set_trace_layer_handle(handle: TraceLayerHandle) {
    let _ = TRACE_LAYER.set(handle);
}

/// What a session's metrics are labelled with.
#[derive(Debug, Clone)]
pub struct Labels {
    pub protocol: &'static str,
    pub target: String,
}

/// Live counts the gauges read at each export.
pub struct Gauges {
    pub sessions: Arc<dyn Fn() -> u64 + Send + Sync>,
    pub accounts: Arc<dyn Fn() -> u64 + Send + Sync>,
}

#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry exporter for {endpoint}: {reason}")]
pub struct TelemetryError {
    endpoint: String,
    reason: String,
}

/// The running exporters; [`Telemetry::shutdown`] sends what is left.
pub struct Telemetry {
    traces: SdkTracerProvider,
    metrics: SdkMeterProvider,
    logs: SdkLoggerProvider,
}

/// Starts the exporters if an endpoint is configured; `Ok(None)` when telemetry is off.
/// Must run inside the gateway's tokio runtime.
pub fn start(
    config: &TelemetryConfig,
    instance: &str,
    gauges: Gauges,
) -> Result<Option<Telemetry>, TelemetryError> {
    let Some(endpoint) = config.endpoint() else {
        return Ok(None);
    };
    let fail = |reason: String| TelemetryError {
        endpoint: endpoint.clone(),
        reason,
    };
    let base = crate::config::telemetry::endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .map_err(&fail)?;
    let client = http::Client::new(tokio::runtime::Handle::current(), EXPORT_TIMEOUT);
    let resource = Resource::builder()
        .with_service_name("jitgate")
        .with_attribute(KeyValue::new("service.instance.id", instance.to_string()))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();

    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client.clone())
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{base}/v1/traces"))
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let traces = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource.clone())
        .build();

    let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_http_client(client.clone())
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{base}/v1/metrics"))
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let reader = PeriodicReader::builder(metric_exporter)
        .with_interval(config.export_interval)
        .build();
    let metrics = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource.clone())
        .build();

    let log_exporter = opentelemetry_otlp::LogExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{base}/v1/logs"))
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let logs = SdkLoggerProvider::builder()
        .with_batch_exporter(log_exporter)
        .with_resource(resource)
        .build();

    let meter = metrics.meter("jitgate");
    let Gauges { sessions, accounts } = gauges;
    let _ = meter
        .u64_observable_gauge("jitgate.sessions.active")
        .with_description("Client sessions open now (both protocols)")
        .with_callback(move |o| o.observe(sessions(), &[]))
        .build();
    let _ = meter
        .u64_observable_gauge("jitgate.jit.accounts.live")
        .with_description("JIT accounts this instance holds now (leases not yet dropped)")
        .with_callback(move |o| o.observe(accounts(), &[]))
        .build();
    let _ = METRICS.set(Metrics {
        mint: meter
            .f64_histogram("jitgate.jit.mint.duration")
            .with_unit("s")
            .with_description("Time to create a JIT account")
            .build(),
        drop: meter
            .f64_histogram("jitgate.jit.drop.duration")
            .with_unit("s")
            .with_description("Time to drop a JIT account, retries included")
            .build(),
        bytes: meter
            .u64_counter("jitgate.relay.bytes")
            .with_unit("By")
            .with_description("Bytes relayed, counted when a session ends")
            .build(),
        refused: meter
            .u64_counter("jitgate.access.refused")
            .with_description("Connections and logins refused")
            .build(),
        drop_failures: meter
            .u64_counter("jitgate.jit.drop.failures")
            .with_description("JIT accounts whose drop failed and went to the reaper")
            .build(),
    });
    let _ = LOGGER.set(logs.logger("jitgate.audit"));
    if let Some(handle) = TRACE_LAYER.get() {
        let layer = tracing_opentelemetry::layer().with_tracer(traces.tracer("jitgate"));
        handle
            .reload(Some(layer))
            .map_err(|e| fail(e.to_string()))?;
    }
    tracing::info!(endpoint = %base, "OpenTelemetry export on");
    Ok(Some(Telemetry {
        traces,
        metrics,
        logs,
    }))
}

impl Telemetry {
    /// Sends what is buffered and stops the exporters (at shutdown; blocks up to their
    /// timeouts, so it runs off the runtime's worker threads).
    pub async fn shutdown(self) {
        if let Some(handle) = TRACE_LAYER.get() {
            let _ = handle.reload(None);
        }
        let done = tokio::task::spawn_blocking(move || {
            for (what, result) in [
                ("traces", self.traces.shutdown()),
                ("metrics", self.metrics.shutdown()),
                ("logs", self.logs.shutdown()),
            ] {
                if let Err(e) = result {
                    tracing::warn!(signal = what, error = %e, "OpenTelemetry export did not finish at shutdown");
                }
            }
        });
        let _ = done.await;
    }
}

struct Metrics {
    mint: Histogram<f64>,
    drop: Histogram<f64>,
    bytes: Counter<u64>,
    refused: Counter<u64>,
    drop_failures: Counter<u64>,
}

/// Counts one audit event (a no-op while telemetry is off).
pub fn observe(body: &Body, labels: Option<&Labels>) {
    let Some(m) = METRICS.get() else {
        return;
    };
    let Body::Core(event) = body else {
        return;
    };
    let session = |extra: &[KeyValue]| -> Vec<KeyValue> {
        let mut kv = match labels {
            Some(l) => vec![
                KeyValue::new("protocol", l.protocol),
                KeyValue::new("target", l.target.clone()),
            ],
            None => Vec::new(),
        };
        kv.extend_from_slice(extra);
        kv
    };
    match event {
        Event::AccountCreated { mint_ms, .. } => {
            m.mint.record(*mint_ms as f64 / 1000.0, &session(&[]));
        }
        Event::AccountDropped {
            outcome, drop_ms, ..
        } => {
            let name = match outcome {
                DropOutcome::Dropped => "dropped",
                DropOutcome::Failed => "failed",
                DropOutcome::TimedOut => "timed_out",
            };
            let kv = session(&[KeyValue::new("outcome", name)]);
            m.drop.record(*drop_ms as f64 / 1000.0, &kv);
            if !matches!(outcome, DropOutcome::Dropped) {
                m.drop_failures.add(1, &session(&[]));
            }
        }
        Event::SessionEnd {
            bytes_from_client,
            bytes_to_client,
            ..
        } => {
            m.bytes.add(
                *bytes_from_client,
                &session(&[KeyValue::new("direction", "from_client")]),
            );
            m.bytes.add(
                *bytes_to_client,
                &session(&[KeyValue::new("direction", "to_client")]),
            );
        }
        Event::AccessDenied {
            protocol,
            user,
            sqlstate,
            ..
        } => {
            let mut kv = vec![
                KeyValue::new("protocol", *protocol),
                KeyValue::new("stage", if user.is_some() { "login" } else { "handshake" }),
            ];
            if let Some(code) = sqlstate {
                kv.push(KeyValue::new("sqlstate", code.clone()));
            }
            m.refused.add(1, &kv);
        }
        _ => {}
    }
}

/// Sends one written audit line as a log record (a no-op while telemetry is off). `body` is
/// the event's own JSON members (`"event":"…",…`), `line` the whole chained line.
pub fn audit_line(line: &str, body: &str) {
    let Some(logger) = LOGGER.get() else {
        return;
    };
    let event = body
        .strip_prefix("\"event\":\"")
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("");
    let mut record = logger.create_log_record();
    record.set_severity_number(Severity::Info);
    record.set_severity_text("INFO");
    record.set_body(AnyValue::from(line.to_string()));
    record.add_attribute("event.name", event.to_string());
    logger.emit(record);
}
