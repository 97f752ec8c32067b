//! Unit tests of `certs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::issue::{file_safe, MAX_FILE_STEM};
use super::revoke::{read_crl_number, read_revoked};
use super::*;
use crate::identity::{self, Identity};
use std::os::unix::fs::PermissionsExt;

fn init_dir(dir: &Path) -> Vec<PathBuf> {
    init(&InitOptions {
        dir: dir.to_owned(),
        hosts: vec!["localhost".into(), "127.0.0.1".into()],
        force: false,
    })
    .unwrap()
}

fn issue_for(ca_dir: &Path, user: &str, groups: &[&str]) -> Issued {
    let now = OffsetDateTime::now_utc();
    issue(&IssueOptions {
        ca_dir: ca_dir.to_owned(),
        out_dir: ca_dir.join("users"),
        user: user.to_owned(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        trust_domain: DEFAULT_TRUST_DOMAIN.into(),
        not_before: now - Duration::from_secs(60),
        not_after: now + Duration::from_secs(3600),
    })
    .unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn cert_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

#[test]
fn init_writes_everything_with_private_keys_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let files = init_dir(&dir);
    let names: Vec<_> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "ca.key",
            "ca.crt",
            "server.key",
            "server.crt",
            "crl.pem",
            "crl.number"
        ]
    );
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(CA_KEY)), 0o600);
    assert_eq!(mode(&dir.join(SERVER_KEY)), 0o600);
    // No temporary files left behind.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 6);

    let ca_der = cert_der(&dir.join(CA_CERT));
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert!(ca.is_ca());
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());

    let server_der = cert_der(&dir.join(SERVER_CERT));
    let (_, server) = x509_parser::parse_x509_certificate(&server_der).unwrap();
    server.verify_signature(Some(ca.public_key())).unwrap();
    let eku = server.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let sans = &server.subject_alternative_name().unwrap().unwrap().value;
    let sans: Vec<_> = sans.general_names.iter().map(|n| format!("{n}")).collect();
    assert_eq!(sans, ["DNSName(localhost)", "IPAddress(7f:00:00:01)"]);

    let crl_der =
        rustls_pki_types::CertificateRevocationListDer::from_pem_file(dir.join(CRL)).unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(&crl_der).unwrap();
    crl.verify_signature(ca.public_key()).unwrap();
    assert_eq!(crl.iter_revoked_certificates().count(), 0);
    assert_eq!(read_crl_number(&dir).unwrap(), 1);
}

#[test]
fn init_refuses_to_replace_a_ca_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    init_dir(tmp.path());
    let before = fs::read(tmp.path().join(CA_KEY)).unwrap();
    let err = init(&InitOptions {
        dir: tmp.path().to_owned(),
        hosts: vec!["localhost".into()],
        force: false,
    })
    .unwrap_err();
    assert!(matches!(err, CertError::CaExists { .. }));
    assert!(err.to_string().contains("ca.key already exists"), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(fs::read(tmp.path().join(CA_KEY)).unwrap(), before);

    init(&InitOptions {
        dir: tmp.path().to_owned(),
        hosts: vec!["localhost".into()],
        force: true,
    })
    .unwrap();
    assert_ne!(fs::read(tmp.path().join(CA_KEY)).unwrap(), before);
    assert_eq!(mode(&tmp.path().join(CA_KEY)), 0o600);
}

#[test]
fn issue_writes_a_client_cert_identity_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    init_dir(tmp.path());
    let issued = issue_for(tmp.path(), "alice", &["dba", "dev", "on-call"]);
    assert_eq!(issued.cert, tmp.path().join("users/alice.crt"));
    assert_eq!(issued.key, tmp.path().join("users/alice.key"));
    assert_eq!(mode(&issued.key), 0o600);
    assert_eq!(mode(&tmp.path().join("users")), 0o700);
    assert_eq!(issued.serial.len(), 32);

    let der = cert_der(&issued.cert);
    let id = Identity::from_der(&der, DEFAULT_TRUST_DOMAIN).unwrap();
    assert_eq!(
        id,
        Identity {
            user: "alice".into(),
            groups: vec!["dba".into(), "dev".into(), "on-call".into()],
            spiffe_id: Some("spiffe://jitgate.local/user/alice".into()),
            serial: issued.serial.clone(),
            kind: crate::identity::SubjectKind::Person,
        }
    );

    let ca_der = cert_der(&tmp.path().join(CA_CERT));
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(cert.issuer(), ca.subject());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
    assert!(!cert.is_ca());
    assert_eq!(
        cert.subject().to_string(),
        "OU=dba, OU=dev, OU=on-call, CN=alice"
    );
}

#[test]
fn hostile_user_names_round_trip_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    init_dir(tmp.path());
    let name = "a\"; DROP ROLE x; -- ../../etc/passwd ünï 'q' %41 spiffe://x/y";
    let issued = issue_for(tmp.path(), name, &["g'; --", "two words"]);
    assert_eq!(
        issued.cert.file_name().unwrap().to_str().unwrap(),
        "a___DROP_ROLE_x__--_.._.._etc_passwd__n___q___41_spiffe___x_y.crt"
    );
    assert_eq!(issued.cert.parent().unwrap(), tmp.path().join("users"));
    let id = Identity::from_der(&cert_der(&issued.cert), DEFAULT_TRUST_DOMAIN).unwrap();
    assert_eq!(id.user, name);
    assert_eq!(id.groups, ["g'; --", "two words"]);
    assert!(id
        .spiffe_id
        .unwrap()
        .starts_with("spiffe://jitgate.local/user/a%22%3B%20DROP"));

    // The longest allowed name still makes a valid file name.
    let long = "é".repeat(crate::identity::MAX_NAME_BYTES / 2);
    let issued = issue_for(tmp.path(), &long, &[]);
    let id = Identity::from_der(&cert_der(&issued.cert), DEFAULT_TRUST_DOMAIN).unwrap();
    assert_eq!(id.user, long);
}

#[test]
fn issue_rejects_bad_input_and_missing_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let mut opts = IssueOptions {
        ca_dir: tmp.path().join("certs"),
        out_dir: tmp.path().to_owned(),
        user: "alice".into(),
        groups: vec![],
        trust_domain: DEFAULT_TRUST_DOMAIN.into(),
        not_before: now,
        not_after: now + Duration::from_secs(60),
    };
    let err = issue(&opts).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("certs/ca.crt not found"), "{msg}");
    assert!(msg.contains("jitgate certs init --dir"), "{msg}");

    init_dir(&opts.ca_dir);
    for (field, value) in [("user", "bad\nname"), ("user", ""), ("group", "x\0")] {
        let mut o = opts.clone();
        if field == "user" {
            o.user = value.into();
        } else {
            o.groups = vec![value.into()];
        }
        assert!(issue(&o).is_err(), "{field} {value:?}");
    }
    opts.trust_domain = "Evil/Domain".into();
    assert!(issue(&opts).is_err());
    opts.trust_domain = DEFAULT_TRUST_DOMAIN.into();
    opts.not_after = opts.not_before;
    assert!(issue(&opts).is_err());

    // Already expired is fine: the gateway's tests need such certificates.
    opts.not_before = now - Duration::from_secs(7200);
    opts.not_after = now - Duration::from_secs(3600);
    issue(&opts).unwrap();
}

#[test]
fn revoke_lists_every_serial_and_bumps_the_crl_number() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_dir(dir);
    let alice = issue_for(dir, "alice", &[]);
    let bob = issue_for(dir, "bob", &[]);

    assert_eq!(revoke(dir, &alice.cert).unwrap(), alice.serial);
    assert_eq!(read_crl_number(dir).unwrap(), 2);
    assert_eq!(revoke(dir, &bob.cert).unwrap(), bob.serial);
    // Revoking twice keeps one entry.
    assert_eq!(revoke(dir, &alice.cert).unwrap(), alice.serial);

    let crl_der =
        rustls_pki_types::CertificateRevocationListDer::from_pem_file(dir.join(CRL)).unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(&crl_der).unwrap();
    let serials: Vec<_> = crl
        .iter_revoked_certificates()
        .map(|r| identity::serial_hex(r.raw_serial()))
        .collect();
    assert_eq!(serials, [alice.serial.clone(), bob.serial.clone()]);
    assert_eq!(crl.crl_number().unwrap().to_bytes_be(), [4]);
    assert_eq!(read_crl_number(dir).unwrap(), 4);

    let listed = read_revoked(&dir.join(REVOKED)).unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].0, alice.serial);

    // Without crl.number the number comes from crl.pem.
    fs::remove_file(dir.join(CRL_NUMBER)).unwrap();
    assert_eq!(read_crl_number(dir).unwrap(), 4);
    revoke(dir, &bob.cert).unwrap();
    assert_eq!(read_crl_number(dir).unwrap(), 5);
}

#[test]
fn revoke_refuses_a_certificate_of_another_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours");
    let theirs = tmp.path().join("theirs");
    init_dir(&ours);
    init_dir(&theirs);
    let mallory = issue_for(&theirs, "mallory", &[]);
    let err = revoke(&ours, &mallory.cert).unwrap_err();
    assert!(
        err.to_string().contains("was not issued by the CA"),
        "{err}"
    );
    assert!(!ours.join(REVOKED).exists());

    let err = revoke(&ours, &tmp.path().join("nope.crt")).unwrap_err();
    assert!(err.to_string().contains("nope.crt: cannot read"), "{err}");
}

#[test]
fn ttl_parsing() {
    assert_eq!(parse_ttl("8h").unwrap(), Duration::from_secs(8 * 3600));
    assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
    assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_ttl("2d").unwrap(), Duration::from_secs(2 * 86400));
    assert_eq!(parse_ttl("1h 30m").unwrap(), Duration::from_secs(5400));
    for bad in ["", "8", "eight hours", "0s", "-1h"] {
        let err = parse_ttl(bad).unwrap_err();
        assert!(err.to_string().contains("TTL"), "{bad:?}: {err}");
    }
}

#[test]
fn file_names_are_safe() {
    assert_eq!(file_safe("alice"), "alice");
    assert_eq!(file_safe("a/b\\c d.é"), "a_b_c_d._");
    assert_eq!(file_safe(&"x".repeat(300)).len(), MAX_FILE_STEM);
}
