//! Just enough DER to replace a certificate's subject: rcgen's `DistinguishedName` holds one
//! value per attribute type, and a subject needs one OU per group (RFC 5280 §4.1.2.6).

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
