//! `jitgate certs init|issue|revoke`: a small file-based CA for the gateway (rcgen).
//!
//! `init` makes the user CA, the gateway's server certificate and an empty CRL; `issue` signs
//! client certificates that `identity` reads back; `revoke` rewrites the CRL that `tls` watches.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::identity::{self, IdentityError};
use crate::secret::Secret;

pub const DEFAULT_TRUST_DOMAIN: &str = "jitgate.local";

/// File names inside the CA directory.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";
pub const CRL: &str = "crl.pem";
pub const CRL_NUMBER: &str = "crl.number";
pub const REVOKED: &str = "revoked.txt";

const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);
const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
const CRL_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Back-date what `init` issues a little, so a client whose clock is slightly behind still
/// accepts a server certificate made a moment ago.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// Linux file names stop at 255 bytes; leave room for the extension.
const MAX_FILE_STEM: usize = 200;

const KEY_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    /// Names and IP addresses for the server certificate; the CLI defaults them to
    /// `["localhost", "127.0.0.1"]`.
    pub hosts: Vec<String>,
    /// Replace an existing CA (which invalidates every certificate it issued).
    pub force: bool,
}

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

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{} not found: run `jitgate certs init --dir {}` first", path.display(), dir.display())]
    CaMissing { path: PathBuf, dir: PathBuf },
    #[error(
        "{} already exists: refusing to replace the CA, which would invalidate every certificate \
         it issued; pass --force to replace it anyway",
        path.display()
    )]
    CaExists { path: PathBuf },
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("invalid {what} {value:?}: {reason}")]
    BadInput {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error(transparent)]
    BadName(#[from] IdentityError),
    #[error("cannot {what}: {source}")]
    Rcgen {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Rcgen { what, source }
}

fn io_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> CertError + 'a {
    move |source| CertError::Io {
        path: path.to_owned(),
        action,
        source,
    }
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
    let subject = der::subject_name(&opts.user, &opts.groups);
    let cert_der = der::with_subject(cert.der(), &subject, issuer.key())?;
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

/// A random positive 16-byte serial (RFC 5280 §4.1.2.2: positive, at most 20 octets). The
/// first byte is kept in 0x01..=0x7f so the DER INTEGER is exactly 16 bytes, without a sign pad.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    SerialNumber::from_slice(&bytes)
}

/// The user's name made safe for a file name: anything outside `[A-Za-z0-9._-]` becomes `_`.
fn file_safe(user: &str) -> String {
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

fn read_ca_file(ca_dir: &Path, name: &str) -> Result<Secret<String>, CertError> {
    let path = ca_dir.join(name);
    match fs::read_to_string(&path) {
        Ok(s) => Ok(Secret::new(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CertError::CaMissing {
            path,
            dir: ca_dir.to_owned(),
        }),
        Err(e) => Err(io_err(&path, "read")(e)),
    }
}

fn load_issuer(ca_dir: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let cert_pem = read_ca_file(ca_dir, CA_CERT)?;
    let key_pem = read_ca_file(ca_dir, CA_KEY)?;
    let key = KeyPair::from_pem(key_pem.expose()).map_err(|e| CertError::BadFile {
        path: ca_dir.join(CA_KEY),
        reason: format!("not a PKCS#8 PEM private key: {e}"),
    })?;
    Issuer::from_ca_cert_pem(cert_pem.expose(), key).map_err(|e| CertError::BadFile {
        path: ca_dir.join(CA_CERT),
        reason: format!("not a usable CA certificate: {e}"),
    })
}

fn signed_crl(
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
fn read_revoked(path: &Path) -> Result<Vec<(String, OffsetDateTime)>, CertError> {
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
fn read_crl_number(ca_dir: &Path) -> Result<u64, CertError> {
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

fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err(dir, "create directory"))
}

/// Write via a temporary file in the same directory, created with `mode` from the start (no
/// moment where a key is readable by others), then rename over `path`: readers such as the
/// gateway's CRL watcher see the old file or the new one, never half of one.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or(CertError::Internal("output path has no file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err(&tmp, "create"))?;
        file.write_all(contents).map_err(io_err(&tmp, "write"))?;
        file.sync_all().map_err(io_err(&tmp, "sync"))?;
        fs::rename(&tmp, path).map_err(io_err(path, "replace"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable; failure here loses nothing already visible.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Just enough DER to replace a certificate's subject: rcgen's `DistinguishedName` holds one
/// value per attribute type, and a subject needs one OU per group (RFC 5280 §4.1.2.6).
mod der {
    use super::CertError;
    use rcgen::{KeyPair, SigningKey};

    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const UTF8_STRING: u8 = 0x0c;
    const BIT_STRING: u8 = 0x03;
    const CONTEXT_0: u8 = 0xa0;
    /// 2.5.4.3 and 2.5.4.11, content octets.
    const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
    const OID_OU: &[u8] = &[0x55, 0x04, 0x0b];

    struct Tlv<'a> {
        tag: u8,
        whole: &'a [u8],
        content: &'a [u8],
    }

    /// One element and what follows it. Definite lengths and low tag numbers only, which is
    /// all DER certificates use.
    fn read(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
        let tag = *input.first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let first = *input.get(1)?;
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let len = input
                .get(2..2 + n)?
                .iter()
                .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
            (len, 2 + n)
        };
        let end = header.checked_add(len)?;
        let whole = input.get(..end)?;
        Some((
            Tlv {
                tag,
                whole,
                content: whole.get(header..)?,
            },
            input.get(end..)?,
        ))
    }

    fn write(tag: u8, content: &[u8], out: &mut Vec<u8>) {
        out.push(tag);
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend(&bytes[skip..]);
        }
        out.extend(content);
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(content.len() + 6);
        write(tag, content, &mut out);
        out
    }

    /// `OU=<group>`… then `CN=<user>`, each its own single-valued RDN, as UTF8String.
    pub(super) fn subject_name(user: &str, groups: &[String]) -> Vec<u8> {
        let rdn = |oid: &[u8], value: &str| {
            let mut atv = tlv(OID, oid);
            write(UTF8_STRING, value.as_bytes(), &mut atv);
            tlv(SET, &tlv(SEQUENCE, &atv))
        };
        let mut rdns = Vec::new();
        for group in groups {
            rdns.extend(rdn(OID_OU, group));
        }
        rdns.extend(rdn(OID_CN, user));
        tlv(SEQUENCE, &rdns)
    }

    /// `cert` with its subject replaced by `subject` (a DER Name) and signed again by `key`
    /// with the same signature algorithm.
    pub(super) fn with_subject(
        cert: &[u8],
        subject: &[u8],
        key: &KeyPair,
    ) -> Result<Vec<u8>, CertError> {
        let malformed = CertError::Internal("rcgen produced a certificate we cannot re-encode");
        let parts = || -> Option<(Vec<Tlv<'_>>, &[u8])> {
            let (outer, rest) = read(cert)?;
            if outer.tag != SEQUENCE || !rest.is_empty() {
                return None;
            }
            let (tbs, rest) = read(outer.content)?;
            let (sig_alg, _signature) = read(rest)?;
            let mut fields = Vec::new();
            let mut cur = tbs.content;
            while !cur.is_empty() {
                let (field, rest) = read(cur)?;
                fields.push(field);
                cur = rest;
            }
            // TBSCertificate: [0] version, serial, signature, issuer, validity, subject, …
            let ok = tbs.tag == SEQUENCE
                && fields.len() > 6
                && fields[0].tag == CONTEXT_0
                && fields[5].tag == SEQUENCE;
            ok.then_some((fields, sig_alg.whole))
        };
        let (fields, sig_alg) = parts().ok_or(malformed)?;

        let mut tbs_content = Vec::new();
        for (i, field) in fields.iter().enumerate() {
            tbs_content.extend_from_slice(if i == 5 { subject } else { field.whole });
        }
        let tbs = tlv(SEQUENCE, &tbs_content);
        let signature = key.sign(&tbs).map_err(|source| CertError::Rcgen {
            what: "sign the client certificate",
            source,
        })?;
        let mut bits = vec![0u8]; // no unused bits
        bits.extend(signature);

        let mut body = tbs;
        body.extend_from_slice(sig_alg);
        write(BIT_STRING, &bits, &mut body);
        Ok(tlv(SEQUENCE, &body))
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]
        use super::*;

        #[test]
        fn lengths_round_trip() {
            for len in [0usize, 1, 127, 128, 255, 256, 65535, 65536, 1 << 20] {
                let content = vec![7u8; len];
                let enc = tlv(SEQUENCE, &content);
                let (t, rest) = read(&enc).unwrap();
                assert!(rest.is_empty());
                assert_eq!(t.tag, SEQUENCE);
                assert_eq!(t.content.len(), len);
            }
            assert!(read(&[0x30, 0x05, 0x00]).is_none(), "truncated");
            assert!(read(&[0x30, 0x80]).is_none(), "indefinite length");
        }
    }
}

#[cfg(test)]
mod tests;
