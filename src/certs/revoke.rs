//! `jitgate certs revoke`: `revoked.txt` (the serials, for people and for rebuilding) and the
//! signed CRL the gateway reloads, with its number kept in `crl.number`.

use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::identity;

use super::ca::{load_issuer, read_ca_file, write_atomic, PUBLIC_MODE};
use super::ca::{CA_CERT, CRL, CRL_NUMBER, REVOKED};
use super::error::{io_err, rcgen_err};
use super::CertError;

const CRL_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Add the serial of `cert` to `ca_dir/revoked.txt` and rewrite `ca_dir/crl.pem` (atomically:
/// the gateway watches it) with every revoked serial and the next CRL number.
/// Returns the serial, lowercase hex.
pub fn revoke(ca_dir: &Path, cert: &Path) -> Result<String, CertError> {
    let ca_pem = read_ca_file(ca_dir, CA_CERT)?;
    let ca_path = ca_dir.join(CA_CERT);
    let ca_der = CertificateDer::from_pem_slice(ca_pem.expose().as_bytes()).map_err(|e| {
        CertError::BadFile {
            path: ca_path.clone(),
            reason: format!("not a PEM certificate: {e}"),
        }
    })?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).map_err(|e| CertError::BadFile {
        path: ca_path.clone(),
        reason: format!("cannot parse the CA certificate: {e}"),
    })?;

    let cert_bytes = fs::read(cert).map_err(io_err(cert, "read"))?;
    let cert_der = CertificateDer::from_pem_slice(&cert_bytes)
        .map(|c| c.to_vec())
        .unwrap_or(cert_bytes);
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&cert_der).map_err(|e| CertError::BadFile {
            path: cert.to_owned(),
            reason: format!("not a certificate (PEM or DER): {e}"),
        })?;
    // Listing a serial the CA never issued would be harmless to the verifier but confusing in
    // revoked.txt; more likely the wrong --ca-dir was given.
    parsed
        .verify_signature(Some(ca.public_key()))
        .map_err(|_| CertError::BadFile {
            path: cert.to_owned(),
            reason: format!("was not issued by the CA in {}", ca_path.display()),
        })?;
    let serial = identity::serial_hex(parsed.raw_serial());

    // Whole seconds: that is all a CRL (UTCTime) and revoked.txt keep.
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let revoked_path = ca_dir.join(REVOKED);
    let mut revoked = read_revoked(&revoked_path)?;
    if !revoked.iter().any(|(s, _)| *s == serial) {
        revoked.push((serial.clone(), now));
    }
    let number = read_crl_number(ca_dir)?
        .checked_add(1)
        .ok_or(CertError::Internal("CRL number overflow"))?;

    let issuer = load_issuer(ca_dir)?;
    let crl = signed_crl(&issuer, number, &revoked, now)?;

    // Order matters for a crash half-way: revoked.txt first, so running `revoke` again
    // rebuilds a CRL that lists everything.
    write_atomic(
        &revoked_path,
        format_revoked(&revoked).as_bytes(),
        PUBLIC_MODE,
    )?;
    write_atomic(
        &ca_dir.join(CRL_NUMBER),
        format!("{number}\n").as_bytes(),
        PUBLIC_MODE,
    )?;
    write_atomic(&ca_dir.join(CRL), crl.as_bytes(), PUBLIC_MODE)?;
    Ok(serial)
}
pub(super) fn signed_crl(
    issuer: &Issuer<'_, KeyPair>,
    number: u64,
    revoked: &[(String, OffsetDateTime)],
    now: OffsetDateTime,
) -> Result<String, CertError> {
    let revoked_certs = revoked
        .iter()
        .map(|(serial, at)| {
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&hex_decode(serial).ok_or(
                    CertError::Internal("revoked serial is not hex after validation"),
                )?),
                revocation_time: *at,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, CertError>>()?;
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + CRL_VALIDITY,
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params
        .signed_by(issuer)
        .and_then(|crl| crl.pem())
        .map_err(rcgen_err("sign the CRL"))
}

/// `revoked.txt`: one `<serial hex> <unix seconds> <RFC 3339 time>` per line; `#` comments.
/// The unix seconds are what is read back; the RFC 3339 column is for people.
pub(super) fn read_revoked(path: &Path) -> Result<Vec<(String, OffsetDateTime)>, CertError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path, "read")(e)),
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || CertError::BadFile {
            path: path.to_owned(),
            reason: format!(
                "line {}: expected `<serial hex> <unix seconds> [time]`, got {line:?}; fix or \
                 remove the line",
                n + 1
            ),
        };
        let mut fields = line.split_whitespace();
        let serial = fields.next().ok_or_else(bad)?.to_ascii_lowercase();
        hex_decode(&serial).ok_or_else(bad)?;
        let at = fields
            .next()
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
            .ok_or_else(bad)?;
        out.push((serial, at));
    }
    Ok(out)
}

fn format_revoked(revoked: &[(String, OffsetDateTime)]) -> String {
    let mut out = String::from("# serial (hex)  revoked at (unix seconds)  revoked at (UTC)\n");
    for (serial, at) in revoked {
        let human = at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        out.push_str(&format!("{serial} {} {human}\n", at.unix_timestamp()));
    }
    out
}

/// The number of the current CRL: `crl.number`, else the number inside `crl.pem`, else 0.
pub(super) fn read_crl_number(ca_dir: &Path) -> Result<u64, CertError> {
    let path = ca_dir.join(CRL_NUMBER);
    match fs::read_to_string(&path) {
        Ok(s) => {
            return s.trim().parse().map_err(|_| CertError::BadFile {
                path,
                reason: format!("expected a decimal CRL number, got {:?}", s.trim()),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path, "read")(e)),
    }
    let crl_path = ca_dir.join(CRL);
    let pem = match fs::read(&crl_path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(&crl_path, "read")(e)),
    };
    let bad = |reason: String| CertError::BadFile {
        path: crl_path.clone(),
        reason,
    };
    let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(&pem)
        .map_err(|e| bad(format!("not a PEM CRL: {e}")))?;
    let (_, crl) =
        x509_parser::parse_x509_crl(&der).map_err(|e| bad(format!("cannot parse: {e}")))?;
    let bytes = crl
        .crl_number()
        .map(|n| n.to_bytes_be())
        .unwrap_or_default();
    if bytes.len() > 8 {
        return Err(bad("CRL number does not fit in 64 bits".into()));
    }
    Ok(bytes.iter().fold(0u64, |n, b| n << 8 | u64::from(*b)))
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
