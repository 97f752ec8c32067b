//! `jitgate certs issue`: a client certificate carrying what `identity` reads back — the user
//! (CN and SPIFFE ID), one OU per group, and the validity asked for.

use std::path::PathBuf;
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::identity;
use crate::secret::Secret;

use super::ca::{
    create_private_dir, load_issuer, random_serial, write_atomic, KEY_MODE, PUBLIC_MODE,
};
use super::error::rcgen_err;
use super::subject;
use super::CertError;

pub const DEFAULT_TRUST_DOMAIN: &str = "jitgate.local";

/// Linux file names stop at 255 bytes; leave room for the extension.
pub(super) const MAX_FILE_STEM: usize = 200;

#[derive(Debug, Clone)]
pub struct IssueOptions {
    pub ca_dir: PathBuf,
    pub out_dir: PathBuf,
    pub user: String,
    pub groups: Vec<String>,
    pub trust_domain: String,
    pub not_before: OffsetDateTime,
    /// May lie in the past: tests issue already-expired certificates on purpose.
    pub not_after: OffsetDateTime,
}

/// What `issue` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Lowercase hex, as in `Identity::serial` and `revoked.txt`.
    pub serial: String,
}

/// Sign a client certificate for `opts.user` with the CA in `opts.ca_dir`.
pub fn issue(opts: &IssueOptions) -> Result<Issued, CertError> {
    identity::check_name("user name", &opts.user)?;
    for group in &opts.groups {
        identity::check_name("group name", group)?;
    }
    check_trust_domain(&opts.trust_domain)?;
    if opts.not_after <= opts.not_before {
        return Err(CertError::BadInput {
            what: "validity",
            value: format!("{} .. {}", opts.not_before, opts.not_after),
            reason: "not_after must be later than not_before".into(),
        });
    }

    let issuer = load_issuer(&opts.ca_dir)?;
    let key = KeyPair::generate().map_err(rcgen_err("generate the client key"))?;
    let serial = random_serial();
    let spiffe = format!(
        "spiffe://{}/user/{}",
        opts.trust_domain,
        identity::percent_encode(&opts.user)
    );

    let mut params = CertificateParams::default();
    // Placeholder: rcgen keeps one value per attribute type, so the real subject (one OU per
    // group) is put in by `with_subject` below.
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, opts.user.as_str());
    params.subject_alt_names = vec![SanType::URI(
        spiffe
            .try_into()
            .map_err(rcgen_err("encode the SPIFFE ID"))?,
    )];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial.clone());
    params.not_before = opts.not_before;
    params.not_after = opts.not_after;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(rcgen_err("sign the client certificate"))?;
    let subject = subject::subject_name(&opts.user, &opts.groups)?;
    let cert_der = subject::with_subject(cert.der(), subject, issuer.key())?;
    let cert_pem = pem::encode(&pem::Pem::new("CERTIFICATE", cert_der));
    let key_pem = Secret::new(key.serialize_pem());

    create_private_dir(&opts.out_dir)?;
    let stem = file_safe(&opts.user);
    let cert_path = opts.out_dir.join(format!("{stem}.crt"));
    let key_path = opts.out_dir.join(format!("{stem}.key"));
    write_atomic(&key_path, key_pem.expose().as_bytes(), KEY_MODE)?;
    write_atomic(&cert_path, cert_pem.as_bytes(), PUBLIC_MODE)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        serial: identity::serial_hex(&serial.to_bytes()),
    })
}

/// "8h", "30m", "90s", "2d", or combinations such as "1h 30m".
pub fn parse_ttl(s: &str) -> Result<Duration, CertError> {
    let bad = |reason: String| CertError::BadInput {
        what: "TTL",
        value: s.to_owned(),
        reason,
    };
    let ttl = humantime::parse_duration(s.trim())
        .map_err(|e| bad(format!("{e}; write it like 8h, 30m, 90s or 2d")))?;
    if ttl.is_zero() {
        return Err(bad("it must be longer than zero".into()));
    }
    Ok(ttl)
}
/// SPIFFE trust domains: lowercase letters, digits, '.', '-', '_' (SPIFFE-ID spec §2.1).
fn check_trust_domain(td: &str) -> Result<(), CertError> {
    let ok = !td.is_empty()
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(CertError::BadInput {
            what: "trust domain",
            value: td.to_owned(),
            reason: "use lowercase letters, digits, '.', '-' and '_' only, e.g. jitgate.local"
                .into(),
        })
    }
}

/// The user's name made safe for a file name: anything outside `[A-Za-z0-9._-]` becomes `_`.
pub(super) fn file_safe(user: &str) -> String {
    user.chars()
        .take(MAX_FILE_STEM)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
