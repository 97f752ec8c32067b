//! Who is on the other end: an [`Identity`] (user, groups, serial) read from the client
//! certificate that `tls` has already verified. Nothing here checks signatures or validity;
//! it only decides which name the certificate speaks for, and refuses names that are unusable.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::AttributeTypeAndValue;

/// Longest user or group name accepted, in bytes (PostgreSQL's own limit is far lower, but the
/// name is mapped to a role name later; here we only stop absurd input).
pub const MAX_NAME_BYTES: usize = 256;

/// The user a verified client certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The SPIFFE user name if the certificate has one in our trust domain, else the subject CN.
    pub user: String,
    /// One per subject OU, in certificate order.
    pub groups: Vec<String>,
    /// The SPIFFE ID the user name was taken from, if it was.
    pub spiffe_id: Option<String>,
    /// Certificate serial number: lowercase hex, no colons, no leading zero bytes.
    pub serial: String,
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
    #[error("client certificate has several SPIFFE user IDs in our trust domain: {0} and {1}")]
    SeveralSpiffeIds(String, String),
    #[error("client certificate SPIFFE ID {uri:?} is malformed: {reason}")]
    BadSpiffeId { uri: String, reason: &'static str },
    #[error("{field} is not usable: {reason}")]
    BadName { field: &'static str, reason: String },
}

impl Identity {
    /// From an already-verified (by rustls) end-entity certificate DER.
    ///
    /// The user is taken from a URI SAN `spiffe://<trust_domain>/user/<percent-encoded name>`
    /// if there is one; SPIFFE IDs of other trust domains, and non-user SPIFFE IDs of ours, are
    /// ignored and the subject CN is used instead.
    pub fn from_der(der: &[u8], trust_domain: &str) -> Result<Identity, IdentityError> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        if !rest.is_empty() {
            return Err(IdentityError::Parse(format!(
                "{} bytes of trailing data after the certificate",
                rest.len()
            )));
        }

        let (user, spiffe_id) = match spiffe_user(&cert, trust_domain)? {
            Some((user, uri)) => (user, Some(uri)),
            None => (common_name(&cert, trust_domain)?, None),
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
        })
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

/// The user named by a SPIFFE ID in our trust domain, with the URI it came from.
fn spiffe_user(
    cert: &X509Certificate<'_>,
    trust_domain: &str,
) -> Result<Option<(String, String)>, IdentityError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Parse(format!("subjectAltName: {e}")))?;
    let Some(san) = san else {
        return Ok(None);
    };
    let mut found: Option<(String, String)> = None;
    for name in &san.value.general_names {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(user) = parse_spiffe_user(uri, trust_domain)? else {
            continue;
        };
        if let Some((_, first)) = &found {
            return Err(IdentityError::SeveralSpiffeIds(
                first.clone(),
                (*uri).to_owned(),
            ));
        }
        found = Some((user, (*uri).to_owned()));
    }
    Ok(found)
}

/// `Ok(None)` for URIs that are not a SPIFFE user ID of `trust_domain`; an error for one that
/// is meant to be (our trust domain, `/user/` path) but cannot be decoded.
fn parse_spiffe_user(uri: &str, trust_domain: &str) -> Result<Option<String>, IdentityError> {
    const SCHEME: &str = "spiffe://";
    let Some(rest) = uri
        .get(..SCHEME.len())
        .filter(|s| s.eq_ignore_ascii_case(SCHEME))
        .and_then(|_| uri.get(SCHEME.len()..))
    else {
        return Ok(None);
    };
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    // SPIFFE trust domains are lowercase by spec; compare without case so a config written in
    // capitals does not silently fall back to the CN.
    if !domain.eq_ignore_ascii_case(trust_domain) {
        return Ok(None);
    }
    let Some(encoded) = path.strip_prefix("user/") else {
        return Ok(None);
    };
    let bad = |reason| IdentityError::BadSpiffeId {
        uri: uri.to_owned(),
        reason,
    };
    if encoded.contains(['/', '?', '#']) {
        return Err(bad("the user name must be a single path segment"));
    }
    let bytes = percent_decode(encoded).ok_or_else(|| bad("invalid percent-encoding"))?;
    let user = String::from_utf8(bytes).map_err(|_| bad("the decoded user name is not UTF-8"))?;
    check_name("client certificate SPIFFE user name", &user)?;
    Ok(Some(user))
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
    fn other_trust_domain_and_non_user_ids_fall_back_to_cn() {
        let der = cert(
            utf8("carol"),
            &[],
            &[
                "spiffe://evil.example/user/root",
                "spiffe://jitgate.local/workload/x",
                "https://jitgate.local/user/root",
            ],
        );
        let id = Identity::from_der(&der, TD).unwrap();
        assert_eq!(id.user, "carol");
        assert_eq!(id.spiffe_id, None);
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
        assert!(matches!(err, IdentityError::NoUser { .. }), "{err}");
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
