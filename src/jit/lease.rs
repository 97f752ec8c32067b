//! A lease: one JIT account's life, from mint to drop. Its marker (written as the account's
//! comment on the target) is how the gateway and the reaper recognise accounts that are theirs.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::distr::{Alphanumeric, SampleString};
use rand::Rng;

use crate::secret::Secret;

/// Prefix of every marker; an account whose comment does not start with it is never touched.
pub const MARKER_PREFIX: &str = "jitgate:managed";
/// The same for Linux accounts, whose comment (GECOS) cannot hold a `:` (the passwd field
/// separator) or a newline.
pub const GECOS_MARKER_PREFIX: &str = "jitgate-managed";

/// Random identifier of one lease (16 hex digits), written into the account's marker and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseId(String);

impl LeaseId {
    pub fn random() -> Self {
        LeaseId(format!("{:016x}", rand::rng().random::<u64>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Postgres role minted for one session. Only `jit::postgres` makes one.
#[derive(Debug)]
pub struct PgLease {
    pub id: LeaseId,
    pub role: String,
    pub password: Secret<String>,
    pub database: String,
    pub expires_at: SystemTime,
}

/// What the marker on an account says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub instance: String,
    pub lease: String,
    pub expires_at: SystemTime,
    /// `live=1`: the owning instance holds a liveness lock on the target while it runs
    /// (`jit::liveness`), so a free lock means it is gone and its accounts may be reaped at
    /// once. Accounts without it (a `jitgate doctor` dry run, a gateway of an earlier
    /// version) are only reaped by another instance after expiry and `FOREIGN_GRACE`.
    pub liveness: bool,
}

/// The word a marker carries after `expires=` when its owner holds a liveness lock.
const LIVENESS_WORD: &str = "live=1";

impl Marker {
    /// `jitgate:managed instance=gw-1 lease=0123456789abcdef expires=1764400000 [live=1]
    /// grant=.. user=..`; grant and user are informational and come last (the user may contain
    /// anything). `live=1` comes after `expires=`, where parsers that predate it (which read
    /// only the first three words) ignore it.
    pub fn render(
        instance: &str,
        lease: &LeaseId,
        expires_at: SystemTime,
        liveness: bool,
        grant: &str,
        user: &str,
    ) -> String {
        let secs = expires_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let live = if liveness { " live=1" } else { "" };
        format!("{MARKER_PREFIX} instance={instance} lease={lease} expires={secs}{live} grant={grant} user={user}")
    }

    /// Parses a marker; `None` for anything that is not exactly ours.
    pub fn parse(comment: &str) -> Option<Marker> {
        Self::parse_with(MARKER_PREFIX, comment)
    }

    /// The marker of a Linux account, for its GECOS field:
    /// `jitgate-managed instance=gw-1 lease=0123456789abcdef expires=1764400000 [live=1] grant=..`.
    /// No `:`, `,` or newline can appear in it; the user name is left out (the account
    /// name carries its sanitised form).
    pub fn render_gecos(
        instance: &str,
        lease: &LeaseId,
        expires_at: SystemTime,
        liveness: bool,
        grant: &str,
    ) -> String {
        let secs = expires_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // Instance ids and grant names are validated to plain characters already; this keeps
        // the field parseable whatever they become.
        let plain = |text: &str| -> String {
            text.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        format!(
            "{GECOS_MARKER_PREFIX} instance={} lease={lease} expires={secs}{} grant={}",
            plain(instance),
            if liveness { " live=1" } else { "" },
            plain(grant)
        )
    }

    /// Parses a GECOS marker; `None` for anything that is not exactly ours.
    pub fn parse_gecos(comment: &str) -> Option<Marker> {
        Self::parse_with(GECOS_MARKER_PREFIX, comment)
    }

    fn parse_with(prefix: &str, comment: &str) -> Option<Marker> {
        let rest = comment.strip_prefix(prefix)?.strip_prefix(' ')?;
        let mut words = rest.splitn(4, ' ');
        let instance = words.next()?.strip_prefix("instance=")?;
        let lease = words.next()?.strip_prefix("lease=")?;
        let expires: u64 = words.next()?.strip_prefix("expires=")?.parse().ok()?;
        let liveness = words
            .next()
            .is_some_and(|rest| rest.split(' ').next() == Some(LIVENESS_WORD));
        if instance.is_empty() || lease.len() != 16 || !lease.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        Some(Marker {
            instance: instance.to_string(),
            lease: lease.to_string(),
            expires_at: UNIX_EPOCH + Duration::from_secs(expires),
            liveness,
        })
    }
}

/// A random password for a JIT account: 32 random bytes as 43 base62-ish characters.
/// Alphanumeric keeps SASLprep (RFC 4013) a no-op, so client and verifier agree.
pub fn random_password() -> Secret<String> {
    Secret::new(Alphanumeric.sample_string(&mut rand::rng(), 43))
}

/// Debug builds only, and only when `JITGATE_TEST_CREDENTIAL_LOG` names a file: appends the
/// credential there, so the leak tests know what to search every output for. Release builds
/// contain no such path.
#[cfg(debug_assertions)]
pub fn record_for_leak_tests(credential: &Secret<String>) {
    use std::io::Write;
    if let Some(path) = std::env::var_os("JITGATE_TEST_CREDENTIAL_LOG") {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        if let Ok(mut file) = file {
            let _ = writeln!(file, "{}", credential.expose());
        }
    }
}

#[cfg(not(debug_assertions))]
pub fn record_for_leak_tests(_: &Secret<String>) {}

/// [`record_for_leak_tests`] for a credential that is not a `Secret<String>` (an SSH private
/// key's PEM). The file is one credential per line, so line breaks are removed: a PEM is
/// recorded as its base64 body on one line, without the BEGIN/END lines.
pub fn record_text_for_leak_tests(credential: &str) {
    let one_line: String = credential
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .map(str::trim)
        .collect();
    record_for_leak_tests(&Secret::new(one_line));
}

/// Lowercase letters and digits, for account name suffixes.
pub fn random_suffix(len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn marker_round_trips_and_rejects_foreign_comments() {
        let id = LeaseId::random();
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let text = Marker::render("gw-1", &id, at, false, "orders-dba", "a\"; DROP ROLE x; --");
        let m = Marker::parse(&text).unwrap();
        assert_eq!(m.instance, "gw-1");
        assert_eq!(m.lease, id.as_str());
        assert_eq!(m.expires_at, at);
        assert!(!m.liveness);
        let live = Marker::render("gw-1", &id, at, true, "orders-dba", "live=1");
        assert!(live.contains(" expires=1800000000 live=1 grant="), "{live}");
        assert!(Marker::parse(&live).unwrap().liveness);
        // Only the word right after `expires=` counts: a user named `live=1` does not.
        assert!(
            !Marker::parse(&text.replace("a\"", "live=1 a"))
                .unwrap()
                .liveness
        );
        let user_forged = Marker::render("gw-1", &id, at, false, "g", "x live=1");
        assert!(!Marker::parse(&user_forged).unwrap().liveness);
        assert_eq!(Marker::parse("managed by someone else"), None);
        assert_eq!(
            Marker::parse("jitgate:managedinstance=x lease=0123456789abcdef expires=1"),
            None
        );
        assert_eq!(
            Marker::parse("jitgate:managed instance=x lease=zz expires=1"),
            None
        );
    }

    #[test]
    fn gecos_marker_round_trips_without_colons() {
        let id = LeaseId::random();
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let text = Marker::render_gecos("gw-1", &id, at, false, "web:ops,x\ny");
        assert!(!text.contains([':', ',', '\n']), "{text}");
        assert_eq!(
            text,
            format!(
                "jitgate-managed instance=gw-1 lease={id} expires=1800000000 grant=web_ops_x_y"
            )
        );
        let m = Marker::parse_gecos(&text).unwrap();
        assert_eq!(m.instance, "gw-1");
        assert_eq!(m.lease, id.as_str());
        assert_eq!(m.expires_at, at);
        assert!(!m.liveness);
        let live = Marker::render_gecos("gw-1", &id, at, true, "web-ops");
        assert_eq!(
            live,
            format!(
                "jitgate-managed instance=gw-1 lease={id} expires=1800000000 live=1 grant=web-ops"
            )
        );
        assert!(Marker::parse_gecos(&live).unwrap().liveness);
        // The two kinds of marker are not interchangeable.
        assert_eq!(Marker::parse(&text), None);
        let pg = Marker::render("gw-1", &id, at, false, "g", "u");
        assert_eq!(Marker::parse_gecos(&pg), None);
        assert_eq!(Marker::parse_gecos("Alice Smith,,,"), None);
        assert_eq!(Marker::parse_gecos(""), None);
    }

    #[test]
    fn passwords_are_long_and_different() {
        let a = random_password();
        let b = random_password();
        assert_eq!(a.expose().len(), 43);
        assert_ne!(a.expose(), b.expose());
    }
}
