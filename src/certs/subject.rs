//! The client certificate's subject: one OU per group, then the CN (RFC 5280 §4.1.2.6 lets a
//! Name hold any number of RDNs). rcgen's `DistinguishedName` keeps one value per attribute
//! type, so `issue` has rcgen sign the certificate with a placeholder subject, and x509-cert's
//! builder makes it again around the real one: serial, validity, key, extensions and signature
//! algorithm are rcgen's, unchanged, and the CA key signs the new `TBSCertificate`.

use rcgen::{KeyPair, PublicKeyData, SigningKey};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::der::asn1::{Any, BitString};
use x509_cert::der::oid::db::rfc4519;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Document, Encode, Tag};
use x509_cert::ext::Extension;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey,
    SubjectPublicKeyInfoRef,
};
use x509_cert::{Certificate, TbsCertificate};

use super::CertError;

/// `OU=<group>`… then `CN=<user>`, each its own single-valued RDN, as UTF8String.
pub(super) fn subject_name(user: &str, groups: &[String]) -> Result<Name, CertError> {
    let rdn = |oid: ObjectIdentifier, value: &str| {
        let value = Any::new(Tag::Utf8String, value.as_bytes())?;
        RelativeDistinguishedName::try_from(vec![AttributeTypeAndValue { oid, value }])
    };
    let rdns = groups
        .iter()
        .map(|group| rdn(rfc4519::OU, group))
        .chain([rdn(rfc4519::CN, user)])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| CertError::Internal("a group or user name does not fit a subject"))?;
    // x509-cert makes a `Name` straight from RDNs only under its `hazmat` feature; through DER
    // it is the same value, by its checked API.
    RdnSequence::from(rdns)
        .to_der()
        .and_then(|der| Name::from_der(&der))
        .map_err(|_| CertError::Internal("cannot encode the subject"))
}

/// `cert` with its subject replaced by `subject` and signed again by `key`, with the same
/// signature algorithm.
pub(super) fn with_subject(
    cert: &[u8],
    subject: Name,
    key: &KeyPair,
) -> Result<Vec<u8>, CertError> {
    let reencode = || CertError::Internal("rcgen produced a certificate we cannot re-encode");
    let placeholder = Certificate::from_der(cert).map_err(|_| reencode())?;
    let tbs = placeholder.tbs_certificate();
    let profile = Reissue {
        issuer: tbs.issuer().clone(),
        subject,
        extensions: tbs.extensions().cloned().unwrap_or_default(),
    };
    let signer = CaKey {
        key,
        algorithm: placeholder.signature_algorithm().clone(),
    };
    let mut builder = CertificateBuilder::new(
        profile,
        tbs.serial_number().clone(),
        *tbs.validity(),
        tbs.subject_public_key_info().clone(),
    )
    .map_err(|_| reencode())?;
    let tbs_der = builder.finalize(&signer).map_err(|_| reencode())?;
    let signature = key.sign(&tbs_der).map_err(|source| CertError::Rcgen {
        what: "sign the client certificate",
        source,
    })?;
    let signature = BitString::from_bytes(&signature).map_err(|_| reencode())?;
    builder
        .assemble(signature, &signer)
        .map_err(|_| reencode())?
        .to_der()
        .map_err(|_| reencode())
}

/// The builder's profile: rcgen's issuer and extensions, our subject.
struct Reissue {
    issuer: Name,
    subject: Name,
    extensions: Vec<Extension>,
}

impl BuilderProfile for Reissue {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

/// The CA's key as the builder sees it: the algorithm rcgen signed with and the public key.
/// The signing itself is rcgen's (`with_subject`), so rcgen errors stay rcgen errors.
struct CaKey<'a> {
    key: &'a KeyPair,
    algorithm: AlgorithmIdentifierOwned,
}

/// The CA's SubjectPublicKeyInfo, DER.
#[derive(Clone)]
struct CaPublicKey(Vec<u8>);

impl EncodePublicKey for CaPublicKey {
    fn to_public_key_der(&self) -> x509_cert::spki::Result<Document> {
        Ok(Document::from_der(&self.0)?)
    }
}

impl signature::Keypair for CaKey<'_> {
    type VerifyingKey = CaPublicKey;

    fn verifying_key(&self) -> CaPublicKey {
        CaPublicKey(self.key.subject_public_key_info())
    }
}

impl DynSignatureAlgorithmIdentifier for CaKey<'_> {
    fn signature_algorithm_identifier(&self) -> x509_cert::spki::Result<AlgorithmIdentifierOwned> {
        Ok(self.algorithm.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, Issuer, SanType};

    /// Only the subject changes: every other field of rcgen's certificate comes out byte for
    /// byte, and the new signature verifies with the CA's key.
    #[test]
    fn only_the_subject_changes() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "alice");
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://jitgate.local/user/alice".try_into().unwrap(),
        )];
        params.use_authority_key_identifier_extension = true;
        let placeholder = params.signed_by(&key, &issuer).unwrap();

        let groups = [
            "dba".to_string(),
            "dba".to_string(),
            "on call ü".to_string(),
        ];
        let subject = subject_name("alice", &groups).unwrap();
        let cert = with_subject(placeholder.der(), subject, issuer.key()).unwrap();

        let (_, before) = x509_parser::parse_x509_certificate(placeholder.der()).unwrap();
        let (rest, after) = x509_parser::parse_x509_certificate(&cert).unwrap();
        assert!(rest.is_empty());
        let (b, a) = (&before.tbs_certificate, &after.tbs_certificate);
        assert_eq!(a.version, b.version);
        assert_eq!(a.raw_serial(), b.raw_serial());
        assert_eq!(a.signature, b.signature);
        assert_eq!(a.issuer.as_raw(), b.issuer.as_raw());
        assert_eq!(a.validity, b.validity);
        assert_eq!(a.subject_pki.raw, b.subject_pki.raw);
        assert_eq!(a.extensions(), b.extensions());
        assert_eq!(after.signature_algorithm, before.signature_algorithm);
        let (_, ca) = x509_parser::parse_x509_certificate(ca_cert.der()).unwrap();
        after.verify_signature(Some(ca.public_key())).unwrap();

        // One RDN per attribute, in order, each a UTF8String (tag 12).
        let rdns: Vec<_> = a
            .subject
            .iter()
            .map(|rdn| {
                let atvs: Vec<_> = rdn.iter().collect();
                assert_eq!(atvs.len(), 1);
                let value = atvs[0].attr_value();
                assert_eq!(value.header.tag().0, 12);
                (atvs[0].attr_type().to_id_string(), value.as_str().unwrap())
            })
            .collect();
        assert_eq!(
            rdns,
            [
                ("2.5.4.11".to_string(), "dba"),
                ("2.5.4.11".to_string(), "dba"),
                ("2.5.4.11".to_string(), "on call ü"),
                ("2.5.4.3".to_string(), "alice"),
            ]
        );
    }
}
