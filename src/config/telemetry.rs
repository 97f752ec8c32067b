//! The `telemetry:` section: where OpenTelemetry data goes, if anywhere.
//!
//! ```yaml
//! telemetry:
//!   otlp_endpoint: http://127.0.0.1:4318   # an OTLP/HTTP receiver (a collector beside jitgate)
//!   export_interval: 10s                   # how often metrics are sent
//! ```
//!
//! With no `otlp_endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT` from the environment is used; with
//! neither, nothing is exported and no exporter runs.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::yaml::{self, Problems};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP base URL (`/v1/traces`, `/v1/metrics`, `/v1/logs` are appended).
    pub otlp_endpoint: Option<String>,
    pub export_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            export_interval: Duration::from_secs(10),
        }
    }
}

impl TelemetryConfig {
    /// The endpoint in effect: the config's, else `OTEL_EXPORTER_OTLP_ENDPOINT`'s.
    pub fn endpoint(&self) -> Option<String> {
        self.otlp_endpoint.clone().or_else(|| {
            std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .ok()
                .filter(|v| !v.trim().is_empty())
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    otlp_endpoint: Option<Spanned<String>>,
    export_interval: Option<Spanned<String>>,
}

pub(super) fn validate(
    raw: Option<&RawTelemetry>,
    problems: &mut Problems<'_>,
) -> Option<TelemetryConfig> {
    let default = TelemetryConfig::default();
    let Some(raw) = raw else {
        return Some(default);
    };
    let otlp_endpoint = match &raw.otlp_endpoint {
        None => Some(None),
        Some(v) => problems.check(v, |text| {
            endpoint("telemetry.otlp_endpoint", text).map(Some)
        }),
    };
    let export_interval = match &raw.export_interval {
        None => Some(default.export_interval),
        Some(v) => problems.check(v, |text| {
            yaml::duration_in(
                "telemetry.export_interval",
                text,
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )
        }),
    };
    Some(TelemetryConfig {
        otlp_endpoint: otlp_endpoint?,
        export_interval: export_interval?,
    })
}

/// An `http://host:port[/path]` URL. `https` is refused by name: jitgate's exporter speaks
/// plain HTTP, to a collector on the same host or network segment, which forwards with TLS.
pub fn endpoint(field: &str, text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.starts_with("https://") {
        return Err(format!(
            "{field}: {text}: jitgate exports OTLP over plain HTTP only; run an OpenTelemetry \
             collector beside jitgate (http://127.0.0.1:4318) and let it forward over TLS"
        ));
    }
    let Some(rest) = text.strip_prefix("http://") else {
        return Err(format!(
            "{field}: {text}: expected an OTLP/HTTP URL such as http://127.0.0.1:4318"
        ));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "{field}: {text}: expected http://host:port (no user info)"
        ));
    }
    Ok(text.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoints_are_plain_http_urls() {
        assert_eq!(
            endpoint("f", "http://127.0.0.1:4318/").as_deref(),
            Ok("http://127.0.0.1:4318")
        );
        assert!(endpoint("f", "https://collector:4318")
            .unwrap_err()
            .contains("plain HTTP only"));
        assert!(endpoint("f", "collector:4318").is_err());
        assert!(endpoint("f", "http://u:p@collector:4318").is_err());
        assert!(endpoint("f", "http://").is_err());
    }
}
