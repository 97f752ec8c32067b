//! Who is on the other end: an [`Identity`] (user, groups, serial) read from the client
//! certificate that `tls` has already verified. Nothing here checks signatures or validity;
//! it only decides which name the certificate speaks for, and refuses names that are unusable.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::AttributeTypeAndValue;

/// Longest user or group name accepted, in bytes (PostgreSQL's own limit is far lower, but the
/// name is mapped to a role name later; here we only stop absurd input).
pub const MAX_NAME_BYTES: usize = 256;

/// Who a certificate names: a person (`spiffe://<td>/user/<name>` or, without any SPIFFE ID,
/// the subject CN) or a machine (`spiffe://<td>/workload/<name>`). The two never match each
/// other's policy subjects: a workload called `alice` gets nothing granted to the user `alice`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SubjectKind {
    #[default]
    Person,
    Workload,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Person => "person",
            SubjectKind::Workload => "workload",
        }
    }
}

impl std::fmt::Display for SubjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The user a verified client certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name: the SPIFFE user or workload name when the certificate has a SPIFFE ID, else
    /// the subject CN. Which kind of name it is, is `kind`.
    pub user: String,
    /// One per subject OU, in certificate order.
    pub groups: Vec<String>,
    /// The SPIFFE ID the name was taken from, if it was.
    pub spiffe_id: Option<String>,
    /// Certificate serial number: lowercase hex, no colons, no leading zero bytes.
    pub serial: String,
    pub kind: SubjectKind,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("client certificate cannot be parsed: {0}")]
    Parse(String),
    #[error(
        "client certificate names no user: it has neither a SPIFFE ID \
         `spiffe://{trust_domain}/user/<name>` nor a subject CN"
    )]
    NoUser { trust_domain: String },
    #[error("client certificate has {0} subject CNs; exactly one is required")]
    SeveralCommonNames(usize),
    #[error(
        "client certificate has several SPIFFE IDs ({0} and {1}); a SPIFFE certificate \
         carries exactly one"
    )]
    SeveralSpiffeIds(crate::logsafe::Owned, crate::logsafe::Owned),
    #[error("client certificate SPIFFE ID {uri} is malformed: {reason}")]
    BadSpiffeId {
        uri: crate::logsafe::Owned,
        reason: &'static str,
    },
    #[error(
        "client certificate SPIFFE ID {uri} is not in this gateway's trust domain \
         {trust_domain}; a certificate with a SPIFFE ID is identified by it alone"
    )]
    ForeignTrustDomain {
        uri: crate::logsafe::Owned,
        trust_domain: String,
    },
    #[error(
        "client certificate SPIFFE ID {uri} names neither a user nor a workload: \
         use spiffe://{trust_domain}/user/<name> or spiffe://{trust_domain}/workload/<name>"
    )]
    UnknownSpiffePath {
        uri: crate::logsafe::Owned,
        trust_domain: String,
    },
    #[error("{field} is not usable: {reason}")]
    BadName { field: &'static str, reason: String },
}

impl Identity {
    /// From an already-verified (by rustls) end-entity certificate DER.
    ///
    /// A certificate with any SPIFFE ID (a `spiffe://` URI SAN) is identified by it alone:
    /// it must be the only one, in our trust domain, and a `/user/<name>` or
    /// `/workload/<name>` path (percent-encoded, one segment), or the certificate is refused.
    /// Falling back to the CN would let a SPIFFE ID another system issued for a workload, or
    /// one from a foreign trust domain, speak for whatever person its CN names. Only a
    /// certificate without any SPIFFE ID is identified by its subject CN.
    pub fn from_der(der: &[u8], trust_domain: &str) -> Result<Identity, IdentityError> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        if !rest.is_empty() {
            return Err(IdentityError::Parse(format!(
                "{} bytes of trailing data after the certificate",
                rest.len()
            )));
        }

        let (user, spiffe_id, kind) = match spiffe_uri(&cert)? {
            Some(uri) => {
                let (kind, name) = parse_spiffe_id(&uri, trust_domain)?;
                (name, Some(uri), kind)
            }
            None => (common_name(&cert, trust_domain)?, None, SubjectKind::Person),
        };

        let groups = cert
            .subject()
            .iter_organizational_unit()
            .map(|ou| attr_string(ou, "client certificate subject OU"))
            .collect::<Result<Vec<_>, _>>()?;

        Ok(Identity {
            user,
            groups,
            spiffe_id,
            serial: serial_hex(cert.raw_serial()),
            kind,
        })
    }

    /// A person identity (as `policy explain` and tests build one).
    pub fn person(user: &str, groups: &[String]) -> Identity {
        Identity {
            user: user.to_string(),
            groups: groups.to_vec(),
            spiffe_id: None,
            serial: String::new(),
            kind: SubjectKind::Person,
        }
    }

    /// The stem JIT account names are built from (each target sanitises it further and adds
    /// a random suffix): the person's user name, or `w_<name>` for a workload, so a machine's
    /// accounts (`jit_w_report_…`, `jit-w_report-…`) read as such in the target's lists.
    pub fn account_stem(&self) -> String {
        match self.kind {
            SubjectKind::Person => self.user.clone(),
            SubjectKind::Workload => format!("w_{}", self.user),
        }
    }

    /// The key a persistent home is chosen by. A person's is the user name. A workload's
    /// holds U+0001, which `check_name` refuses in every person name, so no person can ever
    /// be lent a workload's home (or the other way round), whatever their names.
    pub fn home_key(&self) -> String {
        match self.kind {
            SubjectKind::Person => self.user.clone(),
            SubjectKind::Workload => format!("workload\u{1}{}", self.user),
        }
    }

    /// How logs and refusals name this identity: `alice`, or `workload report`.
    pub fn describe(&self) -> String {
        match self.kind {
            SubjectKind::Person => self.user.clone(),
            SubjectKind::Workload => format!("workload {}", self.user),
        }
    }
}

/// Lowercase hex of a DER INTEGER's value bytes, leading zero bytes (the sign pad) dropped.
/// `certs` uses the same spelling for `revoked.txt`, so the two always agree.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[start..].iter().map(|b| format!("{b:02x}")).collect()
}

/// Rules every user and group name must pass. Printable hostile text (quotes, semicolons,
/// SQL) is allowed on purpose: quoting is the job of whoever builds a statement from it.
pub(crate) fn check_name(field: &'static str, name: &str) -> Result<(), IdentityError> {
    let bad = |reason: String| IdentityError::BadName { field, reason };
    if name.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(bad(format!(
            "it is {} bytes long, the limit is {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    // `is_control` covers NUL, the other C0 controls, DEL and C1: none of them belong in a name
    // that ends up in logs, role names and audit records.
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(bad(format!(
            "it contains the control character U+{:04X}",
            u32::from(c)
        )));
    }
    Ok(())
}

fn attr_string(
    attr: &AttributeTypeAndValue<'_>,
    field: &'static str,
) -> Result<String, IdentityError> {
    let s = attr.as_str().map_err(|_| IdentityError::BadName {
        field,
        reason: "it is not a UTF-8 (or ASCII) string".into(),
    })?;
    check_name(field, s)?;
    Ok(s.to_owned())
}

fn common_name(cert: &X509Certificate<'_>, trust_domain: &str) -> Result<String, IdentityError> {
    let cns: Vec<_> = cert.subject().iter_common_name().collect();
    match cns.as_slice() {
        [] => Err(IdentityError::NoUser {
            trust_domain: trust_domain.to_owned(),
        }),
        [cn] => attr_string(cn, "client certificate subject CN"),
        more => Err(IdentityError::SeveralCommonNames(more.len())),
    }
}

/// The certificate's SPIFFE ID, if it has one (any `spiffe://` URI SAN, whatever its trust
/// domain); more than one is an error (SPIFFE X509-SVID spec, section 2: exactly one).
fn spiffe_uri(cert: &X509Certificate<'_>) -> Result<Option<String>, IdentityError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Parse(format!("subjectAltName: {e}")))?;
    let Some(san) = san else {
        return Ok(None);
    };
    let mut found: Option<String> = None;
    for name in &san.value.general_names {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        if !is_spiffe(uri) {
            continue;
        }
        if let Some(first) = &found {
            return Err(IdentityError::SeveralSpiffeIds(
                crate::logsafe::Owned::new(first),
                crate::logsafe::Owned::new(uri),
            ));
        }
        found = Some((*uri).to_owned());
    }
    Ok(found)
}

const SCHEME: &str = "spiffe://";

/// The scheme compares without case (RFC 3986 section 3.1).
fn is_spiffe(uri: &str) -> bool {
    uri.get(..SCHEME.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(SCHEME))
}

/// The kind and name of a SPIFFE ID of `trust_domain`; any other is an error.
fn parse_spiffe_id(uri: &str, trust_domain: &str) -> Result<(SubjectKind, String), IdentityError> {
    let shown = || crate::logsafe::Owned::new(uri);
    let rest = uri.get(SCHEME.len()..).unwrap_or("");
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    // SPIFFE trust domains are lowercase by spec; compare without case so a config written in
    // capitals does not refuse every certificate.
    if !domain.eq_ignore_ascii_case(trust_domain) {
        return Err(IdentityError::ForeignTrustDomain {
            uri: shown(),
            trust_domain: trust_domain.to_owned(),
        });
    }
    let (kind, encoded, field) = if let Some(name) = path.strip_prefix("user/") {
        (
            SubjectKind::Person,
            name,
            "client certificate SPIFFE user name",
        )
    } else if let Some(name) = path.strip_prefix("workload/") {
        (
            SubjectKind::Workload,
            name,
            "client certificate SPIFFE workload name",
        )
    } else {
        return Err(IdentityError::UnknownSpiffePath {
            uri: shown(),
            trust_domain: trust_domain.to_owned(),
        });
    };
    let bad = |reason| IdentityError::BadSpiffeId {
        uri: shown(),
        reason,
    };
    if encoded.contains(['/', '?', '#']) {
        return Err(bad("the name must be a single path segment"));
    }
    let bytes = percent_decode(encoded).ok_or_else(|| bad("invalid percent-encoding"))?;
    let name = String::from_utf8(bytes).map_err(|_| bad("the decoded name is not UTF-8"))?;
    check_name(field, &name)?;
    Ok((kind, name))
}

/// Every byte outside RFC 3986's unreserved set `[A-Za-z0-9._~-]` as `%XX`.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, DnValue, KeyPair, SanType, SerialNumber,
    };

    const TD: &str = "jitgate.local";

    fn cert(cn: Option<DnValue>, ous: &[&str], uris: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        // rcgen keeps one value per attribute type, so only one OU here; multi-OU subjects
        // are covered through `certs::issue` in its tests.
        if let Some(ou) = ous.first() {
            dn.push(DnType::OrganizationalUnitName, *ou);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.serial_number = Some(SerialNumber::from_slice(&[0x00, 0x9a, 0x01]));
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn utf8(s: &str) -> Option<DnValue> {
        Some(DnValue::Utf8String(s.to_owned()))
    }

    #[test]
    fn common_name_and_group() {
        let id = Identity::from_der(&cert(utf8("alice"), &["dba"], &[]), TD).unwrap();
        assert_eq!(
            id,
            Identity {
                user: "alice".into(),
                groups: vec!["dba".into()],
                spiffe_id: None,
                serial: "9a01".into(),
                kind: SubjectKind::Person,
            }
        );
    }

    #[test]
    fn spiffe_user_wins_over_cn_and_is_decoded() {
        let uri = "spiffe://jitgate.local/user/a%22%3B%20DROP%20ROLE%20x%3B%20--";
        let id = Identity::from_der(&cert(utf8("someone-else"), &[], &[uri]), TD).unwrap();
        assert_eq!(id.user, "a\"; DROP ROLE x; --");
        assert_eq!(id.spiffe_id.as_deref(), Some(uri));
    }

    #[test]
    fn a_spiffe_id_that_is_not_ours_or_not_a_user_is_refused_not_a_cn_fallback() {
        // Before: each of these was identified as "carol", its CN.
        for (uri, why) in [
            (
                "spiffe://evil.example/user/root",
                "not in this gateway's trust domain",
            ),
            (
                "spiffe://jitgate.local.evil/user/carol",
                "not in this gateway's trust domain",
            ),
            (
                "SPIFFE://evil.example/user/carol",
                "not in this gateway's trust domain",
            ),
            (
                "spiffe://jitgate.local/svc/x",
                "names neither a user nor a workload",
            ),
            (
                "spiffe://jitgate.local/",
                "names neither a user nor a workload",
            ),
            (
                "spiffe://jitgate.local/users/carol",
                "names neither a user nor a workload",
            ),
        ] {
            let der = cert(
                utf8("carol"),
                &[],
                &[uri, "https://jitgate.local/user/root"],
            );
            let err = Identity::from_der(&der, TD).unwrap_err();
            assert!(err.to_string().contains(why), "{uri}: {err}");
        }
        // A URI SAN of another scheme is no SPIFFE ID: the CN still speaks.
        let der = cert(utf8("carol"), &[], &["https://jitgate.local/user/root"]);
        assert_eq!(Identity::from_der(&der, TD).unwrap().user, "carol");
    }

    #[test]
    fn workload_ids_are_a_kind_of_their_own() {
        let uri = "spiffe://jitgate.local/workload/report%2Dbuilder";
        let id = Identity::from_der(&cert(utf8("alice"), &[], &[uri]), TD).unwrap();
        assert_eq!(id.user, "report-builder");
        assert_eq!(id.kind, SubjectKind::Workload);
        assert_eq!(id.spiffe_id.as_deref(), Some(uri));
        assert_eq!(id.account_stem(), "w_report-builder");
        assert_eq!(id.describe(), "workload report-builder");

        let person = Identity::from_der(
            &cert(None, &[], &["spiffe://jitgate.local/user/report-builder"]),
            TD,
        )
        .unwrap();
        assert_eq!(person.kind, SubjectKind::Person);
        assert_eq!(person.account_stem(), "report-builder");
        // Same name, other kind: never the same home.
        assert_ne!(person.home_key(), id.home_key());
        assert!(check_name("x", &id.home_key()).is_err());

        for bad in [
            "spiffe://jitgate.local/workload/",
            "spiffe://jitgate.local/workload/a/b",
            "spiffe://jitgate.local/workload/%0a",
        ] {
            assert!(
                Identity::from_der(&cert(utf8("x"), &[], &[bad]), TD).is_err(),
                "{bad}"
            );
        }
        // One SPIFFE ID per certificate, whichever kinds.
        let two = [
            "spiffe://jitgate.local/user/a",
            "spiffe://jitgate.local/workload/a",
        ];
        let err = Identity::from_der(&cert(utf8("x"), &[], &two), TD).unwrap_err();
        assert!(matches!(err, IdentityError::SeveralSpiffeIds(..)), "{err}");
    }

    #[test]
    fn refusals_escape_the_uri() {
        let uri = "spiffe://evil.example/user/\x1b[31m\nforged";
        let err = Identity::from_der(&cert(utf8("x"), &[], &[uri]), TD).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("\"spiffe://evil.example/user/\\x1b[31m\\nforged\""),
            "{text}"
        );
    }

    #[test]
    fn hostile_printable_cn_is_kept_verbatim() {
        let name = "a\"; DROP ROLE x; -- ünïcødé 'quoted'";
        let id = Identity::from_der(&cert(utf8(name), &[], &[]), TD).unwrap();
        assert_eq!(id.user, name);
    }

    #[test]
    fn no_usable_name_is_an_error() {
        let err = Identity::from_der(&cert(None, &["dba"], &[]), TD).unwrap_err();
        assert!(matches!(err, IdentityError::NoUser { .. }), "{err}");
        assert!(err.to_string().contains("spiffe://jitgate.local/user/"));

        let err =
            Identity::from_der(&cert(None, &[], &["spiffe://other/user/bob"]), TD).unwrap_err();
        assert!(
            matches!(err, IdentityError::ForeignTrustDomain { .. }),
            "{err}"
        );
    }

    #[test]
    fn bad_names_are_rejected() {
        for (cn, why) in [
            ("", "empty"),
            ("al\0ice", "U+0000"),
            ("al\nice", "U+000A"),
            ("al\u{1b}[31mice", "U+001B"),
            ("al\u{7f}ice", "U+007F"),
            ("al\u{85}ice", "U+0085"),
        ] {
            let err = Identity::from_der(&cert(utf8(cn), &[], &[]), TD).unwrap_err();
            assert!(err.to_string().contains(why), "{cn:?}: {err}");
        }
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let err = Identity::from_der(&cert(utf8(&long), &[], &[]), TD).unwrap_err();
        assert!(err.to_string().contains("257 bytes"), "{err}");
        let max = "é".repeat(MAX_NAME_BYTES / 2);
        assert_eq!(
            Identity::from_der(&cert(utf8(&max), &[], &[]), TD)
                .unwrap()
                .user,
            max
        );

        let err = Identity::from_der(&cert(utf8("ok"), &["bad\tgroup"], &[]), TD).unwrap_err();
        assert!(err.to_string().contains("subject OU"), "{err}");
    }

    #[test]
    fn non_utf8_names_are_rejected() {
        let bmp = DnValue::BmpString("alice".try_into().unwrap());
        let err = Identity::from_der(&cert(Some(bmp), &[], &[]), TD).unwrap_err();
        assert!(err.to_string().contains("not a UTF-8"), "{err}");

        let uri = "spiffe://jitgate.local/user/%ff%fe";
        let err = Identity::from_der(&cert(utf8("x"), &[], &[uri]), TD).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn malformed_spiffe_user_ids_are_errors_not_fallbacks() {
        for uri in [
            "spiffe://jitgate.local/user/",
            "spiffe://jitgate.local/user/a/b",
            "spiffe://jitgate.local/user/%4",
            "spiffe://jitgate.local/user/%zz",
            "spiffe://jitgate.local/user/nul%00",
        ] {
            assert!(
                Identity::from_der(&cert(utf8("x"), &[], &[uri]), TD).is_err(),
                "{uri}"
            );
        }
        let two = [
            "spiffe://jitgate.local/user/a",
            "spiffe://jitgate.local/user/b",
        ];
        let err = Identity::from_der(&cert(utf8("x"), &[], &two), TD).unwrap_err();
        assert!(matches!(err, IdentityError::SeveralSpiffeIds(..)), "{err}");
    }

    #[test]
    fn garbage_is_a_parse_error() {
        let err = Identity::from_der(b"not a certificate", TD).unwrap_err();
        assert!(matches!(err, IdentityError::Parse(_)), "{err}");
    }

    #[test]
    fn percent_encoding_round_trips_every_byte() {
        let all: String = (1u32..0x300).filter_map(char::from_u32).collect();
        let enc = percent_encode(&all);
        assert!(enc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-%".contains(&b)));
        assert_eq!(percent_decode(&enc).unwrap(), all.as_bytes());
        assert_eq!(percent_encode("a b/é"), "a%20b%2F%C3%A9");
    }

    #[test]
    fn serial_hex_drops_the_sign_byte() {
        assert_eq!(serial_hex(&[0x00, 0xff, 0x01]), "ff01");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[0x7f, 0x00]), "7f00");
    }
}
