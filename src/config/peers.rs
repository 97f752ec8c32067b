//! `peer_id:` and `peers:` — the replicas a CancelRequest may be passed on to (see
//! [`crate::pg::cancel`]): each replica has its own number, written into the cancel keys it
//! hands out, and knows the others' Postgres listeners by number.

use std::collections::BTreeMap;

use serde_saphyr::Spanned;

use crate::yaml::{self, Problems, SpannedMap};

/// Largest peer number: 14 bits of the cancel key carry it.
pub const PEER_ID_MAX: u32 = 16_383;

/// This replica's number and its peers' Postgres listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peering {
    pub id: u16,
    pub peers: BTreeMap<u16, PeerAddr>,
}

/// Where a peer's Postgres listener is; `host` is also the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `host:port` or `[v6]:port`.
fn peer_addr(text: &str) -> Result<PeerAddr, String> {
    let bad = || {
        format!(
            "peer address `{}` must be host:port (the peer's Postgres listener), e.g. 10.0.0.2:6432",
            yaml::printable(text)
        )
    };
    let (host, port) = text.trim().rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(bad)?;
    Ok(PeerAddr {
        host: host.to_string(),
        port,
    })
}

/// `None` when neither key is set (no peering: cancel keys are wholly random).
pub(super) fn validate(
    peer_id: Option<&Spanned<String>>,
    peers: Option<&SpannedMap<Spanned<String>>>,
    problems: &mut Problems<'_>,
) -> Option<Option<Peering>> {
    let number = |field: &str, text: &String| {
        yaml::integer_in(field, text, 1, PEER_ID_MAX).map(|n| n as u16)
    };
    let id = match peer_id {
        None => None,
        Some(raw) => Some(problems.check(raw, |t| number("peer_id", t))?),
    };
    let Some(list) = peers else {
        return Some(id.map(|id| Peering {
            id,
            peers: BTreeMap::new(),
        }));
    };
    let mut found = BTreeMap::new();
    let mut ok = true;
    for (key, addr) in &list.0 {
        let n = problems.check(key, |t| {
            let n = number("a peer's number", t)?;
            if Some(n) == id {
                Err(format!("peers: {n} is this gateway's own peer_id"))
            } else {
                Ok(n)
            }
        });
        let a = problems.check(addr, |t| peer_addr(t));
        match (n, a) {
            (Some(n), Some(a)) => {
                found.insert(n, a);
            }
            _ => ok = false,
        }
    }
    let Some(id) = id else {
        let at = list.0.first().map(|(k, _)| k);
        if let Some(at) = at {
            problems.check(at, |_| {
                Err::<(), _>(
                    "peers needs peer_id: this gateway's own number, written into the cancel \
                     keys it hands out"
                        .to_string(),
                )
            });
        }
        return None;
    };
    ok.then_some(Some(Peering { id, peers: found }))
}
