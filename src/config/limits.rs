//! The `limits:` section: see [`crate::limits::LimitsConfig`] for what each key bounds.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::limits::LimitsConfig;
use crate::yaml::{self, Problems};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_sessions: Option<Spanned<String>>,
    max_sessions_per_identity: Option<Spanned<String>>,
    max_handshakes_per_source: Option<Spanned<String>>,
    max_failed_handshakes_per_minute: Option<Spanned<String>>,
    tcp_keepalive: Option<Spanned<String>>,
    max_mints_per_target: Option<Spanned<String>>,
}

/// Each key alone falls back to its default.
pub(super) fn validate(
    raw: Option<&RawLimits>,
    problems: &mut Problems<'_>,
) -> Option<LimitsConfig> {
    let default = LimitsConfig::default();
    let Some(raw) = raw else {
        return Some(default);
    };
    let mut count =
        |field: &str, value: &Option<Spanned<String>>, default: usize, max: u32| match value {
            None => Some(default),
            Some(v) => problems.check(v, |text| {
                yaml::integer_in(&format!("limits.{field}"), text, 1, max).map(|n| n as usize)
            }),
        };
    let max_sessions = count(
        "max_sessions",
        &raw.max_sessions,
        default.max_sessions,
        1_000_000,
    );
    let max_sessions_per_identity = count(
        "max_sessions_per_identity",
        &raw.max_sessions_per_identity,
        default.max_sessions_per_identity,
        1_000_000,
    );
    let max_handshakes_per_source = count(
        "max_handshakes_per_source",
        &raw.max_handshakes_per_source,
        default.max_handshakes_per_source,
        1_000_000,
    );
    let max_failed = count(
        "max_failed_handshakes_per_minute",
        &raw.max_failed_handshakes_per_minute,
        default.max_failed_handshakes_per_minute as usize,
        1_000_000,
    );
    let max_mints_per_target = count(
        "max_mints_per_target",
        &raw.max_mints_per_target,
        default.max_mints_per_target,
        256,
    );
    let tcp_keepalive = match &raw.tcp_keepalive {
        None => Some(default.tcp_keepalive),
        Some(v) => problems.check(v, |text| {
            yaml::duration_in(
                "limits.tcp_keepalive",
                text,
                Duration::from_secs(1),
                Duration::from_secs(7200),
            )
        }),
    };
    Some(LimitsConfig {
        max_sessions: max_sessions?,
        max_sessions_per_identity: max_sessions_per_identity?,
        max_handshakes_per_source: max_handshakes_per_source?,
        max_failed_handshakes_per_minute: u32::try_from(max_failed?).ok()?,
        tcp_keepalive: tcp_keepalive?,
        max_mints_per_target: max_mints_per_target?,
    })
}
