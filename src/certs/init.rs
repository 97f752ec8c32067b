//! `jitgate certs init`: the user CA, the gateway's server certificate and an empty CRL.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::secret::Secret;

use super::ca::{create_private_dir, random_serial, write_atomic, KEY_MODE, PUBLIC_MODE};
use super::ca::{CA_CERT, CA_KEY, CRL, CRL_NUMBER, REVOKED, SERVER_CERT, SERVER_KEY};
use super::error::{io_err, rcgen_err};
use super::revoke::signed_crl;
use super::CertError;

const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);
const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Back-date what `init` issues a little, so a client whose clock is slightly behind still
/// accepts a server certificate made a moment ago.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    /// Names and IP addresses for the server certificate; the CLI defaults them to
    /// `["localhost", "127.0.0.1"]`.
    pub hosts: Vec<String>,
    /// Replace an existing CA (which invalidates every certificate it issued).
    pub force: bool,
}

/// Create the CA, the gateway's server certificate and an empty CRL in `opts.dir`.
/// Returns the files written.
pub fn init(opts: &InitOptions) -> Result<Vec<PathBuf>, CertError> {
    if opts.hosts.is_empty() {
        return Err(CertError::BadInput {
            what: "host list",
            value: String::new(),
            reason: "the server certificate needs at least one name or IP address".into(),
        });
    }
    let sans = opts
        .hosts
        .iter()
        .map(|h| host_san(h))
        .collect::<Result<Vec<_>, _>>()?;

    create_private_dir(&opts.dir)?;
    let ca_key_path = opts.dir.join(CA_KEY);
    let exists = ca_key_path
        .try_exists()
        .map_err(io_err(&ca_key_path, "check for"))?;
    if exists && !opts.force {
        return Err(CertError::CaExists { path: ca_key_path });
    }

    let now = OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate().map_err(rcgen_err("generate the CA key"))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::OrganizationName, "jitgate");
    ca.distinguished_name
        .push(DnType::CommonName, "jitgate user CA");
    // pathLen 0: this CA signs end-entity certificates only, never another CA.
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.serial_number = Some(random_serial());
    ca.not_before = now - CLOCK_SKEW;
    ca.not_after = now + CA_VALIDITY;
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(rcgen_err("self-sign the CA certificate"))?;
    let ca_key_pem = Secret::new(ca_key.serialize_pem());
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate().map_err(rcgen_err("generate the server key"))?;
    let mut server = CertificateParams::default();
    server.distinguished_name = DistinguishedName::new();
    server
        .distinguished_name
        .push(DnType::OrganizationName, "jitgate");
    server
        .distinguished_name
        .push(DnType::CommonName, "jitgate gateway");
    server.subject_alt_names = sans;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    server.serial_number = Some(random_serial());
    server.not_before = now - CLOCK_SKEW;
    server.not_after = now + SERVER_VALIDITY;
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .map_err(rcgen_err("sign the server certificate"))?;
    let server_key_pem = Secret::new(server_key.serialize_pem());

    let crl = signed_crl(&issuer, 1, &[], now)?;

    let dir = &opts.dir;
    let (ca_cert_pem, server_cert_pem) = (ca_cert.pem(), server_cert.pem());
    let files = [
        (dir.join(CA_KEY), ca_key_pem.expose().as_bytes(), KEY_MODE),
        (dir.join(CA_CERT), ca_cert_pem.as_bytes(), PUBLIC_MODE),
        (
            dir.join(SERVER_KEY),
            server_key_pem.expose().as_bytes(),
            KEY_MODE,
        ),
        (
            dir.join(SERVER_CERT),
            server_cert_pem.as_bytes(),
            PUBLIC_MODE,
        ),
        (dir.join(CRL), crl.as_bytes(), PUBLIC_MODE),
        (dir.join(CRL_NUMBER), b"1\n".as_slice(), PUBLIC_MODE),
    ];
    let mut written = Vec::with_capacity(files.len());
    for (path, contents, mode) in files {
        write_atomic(&path, contents, mode)?;
        written.push(path);
    }
    // Serials revoked under a replaced CA mean nothing under the new one.
    let revoked = dir.join(REVOKED);
    match fs::remove_file(&revoked) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&revoked, "remove")(e)),
    }
    Ok(written)
}

fn host_san(host: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let bad = |reason: &str| CertError::BadInput {
        what: "host",
        value: host.to_owned(),
        reason: reason.to_owned(),
    };
    if host.is_empty() {
        return Err(bad("it is empty"));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'*'))
    {
        return Err(bad(
            "not an IP address, and a DNS name may hold only letters, digits, '.', '-', '_' and a \
             leading '*.' (use punycode for international names)",
        ));
    }
    Ok(SanType::DnsName(
        host.try_into().map_err(|_| bad("not an IA5 string"))?,
    ))
}
