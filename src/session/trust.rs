//! Trust changes reach live sessions. The rule: a live session goes on only while a new
//! connection with the same certificate and request would still be let in with the same grant.
//! After a CRL reload every live session's certificate chain is verified again exactly as a new
//! one would be (CA, validity, CRL); after a policy reload every live session's request
//! (identity, target, kind, reason) is evaluated again for the grant it was opened with, which
//! must still exist and apply. A session registered while either changed is checked once more at
//! registration ([`recheck_new`]), so no change slips between a login's decision and its
//! registration.

use std::sync::Arc;

use super::{EndReason, Registered, SessionInfo, Sessions};
use crate::logsafe::diagnostic;
use crate::policy::{self, AccessRequest, PolicySet, TargetKind};
use crate::tls::{ClientCertError, ServerTls};

/// Why `tls` would refuse this session's certificate now, if it would.
pub fn certificate_verdict(tls: &ServerTls, session: &SessionInfo) -> Option<EndReason> {
    match tls.verify_client(&session.credential.chain) {
        Ok(()) => None,
        Err(ClientCertError::Revoked) => Some(EndReason::CertificateRevoked),
        Err(ClientCertError::Expired) => Some(EndReason::CertificateExpired),
        Err(
            e @ (ClientCertError::Missing
            | ClientCertError::NotValidYet
            | ClientCertError::UnknownIssuer
            | ClientCertError::NotForClients
            | ClientCertError::Other(_)),
        ) => Some(EndReason::CertificateRefused(e.to_string())),
    }
}

/// Why `policies` would not give this session its grant now, if they would not: the grant
/// is gone, no longer applies to this identity, target or kind, or now wants a reason the
/// session did not give. The request is asked again *by the grant's name*, not by what the
/// client typed: a session asked for by the user's own name is not ended because a reload
/// added a second grant that makes that name ambiguous for new logins — trust in it was not
/// withdrawn.
pub fn policy_verdict(policies: &PolicySet, session: &SessionInfo) -> Option<EndReason> {
    let request = AccessRequest {
        identity: &session.identity,
        target: &session.target,
        kind: session.protocol,
        requested: &session.grant,
        reason: session.reason.as_deref(),
    };
    let detail = match policy::evaluate(policies, &request) {
        Ok(grant) if grant.name() == session.grant => return None,
        Ok(grant) => format!("grant {} applies to the request now", grant.name()),
        Err(denial) => denial.detail(),
    };
    Some(EndReason::PolicyChanged {
        grant: session.grant.clone(),
        detail,
    })
}

/// After a CRL change: ends every live session whose certificate `tls_for(protocol)` now
/// refuses. Returns how many were ended.
pub fn recheck_certificates<'t>(
    sessions: &Sessions,
    tls_for: impl Fn(TargetKind) -> Option<&'t ServerTls>,
) -> usize {
    let ended =
        sessions.end_where(|s| tls_for(s.protocol).and_then(|tls| certificate_verdict(tls, s)));
    log_ended(&ended, "crl_reload");
    ended.len()
}

/// After a successful policy reload: ends every live session the new set no longer grants.
pub fn recheck_policies(sessions: &Sessions, policies: &PolicySet) -> usize {
    let ended = sessions.end_where(|s| policy_verdict(policies, s));
    log_ended(&ended, "policy_reload");
    ended.len()
}

/// Right after a session registered: its certificate against the current CRL and its request
/// against the current policies, once. Ends it (through its switch) if either says no.
pub fn recheck_new(registered: &Registered, tls: &ServerTls, policies: &PolicySet) {
    let info = registered.info();
    let (verdict, trigger) = match certificate_verdict(tls, info) {
        Some(reason) => (Some(reason), "crl_reload"),
        None => (policy_verdict(policies, info), "policy_reload"),
    };
    if let Some(reason) = verdict {
        if registered.switch().end(reason.clone()) {
            log_ended(&[(Arc::new(info.clone()), reason)], trigger);
        }
    }
}

fn log_ended(ended: &[(Arc<SessionInfo>, EndReason)], trigger: &str) {
    for (s, reason) in ended {
        tracing::warn!(
            event = "session.ended_by_trust", trigger, lease = %s.id, protocol = %s.protocol,
            user = %s.identity.describe(), serial = %s.identity.serial, target_name = %s.target,
            grant = %s.grant, account = %s.account, client = %s.client,
            end_reason = reason.as_str(), reason = %diagnostic(&reason.to_string()),
            "live session ended: trust in it was withdrawn"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use super::*;
    use crate::session::tests::info;

    fn set(text: &str) -> PolicySet {
        PolicySet::from_sources([(Path::new("p/a.yaml"), text)]).unwrap()
    }

    const BEFORE: &str = "grants:
  - name: db
    subjects: { users: [alice] }
    targets: [orders]
    postgres: { roles: [orders_read] }
";

    #[test]
    fn a_session_goes_on_while_its_grant_applies() {
        let session = info("alice", "db");
        assert_eq!(policy_verdict(&set(BEFORE), &session), None);
        // Asked for by her own name: a second grant for her makes that name ambiguous for
        // new logins, but takes nothing from the live session.
        let mut own_name = info("alice", "db");
        own_name.requested = "alice".into();
        let two = format!(
            "{BEFORE}  - name: db2\n    subjects: {{ users: [alice] }}\n    targets: [orders]\n    postgres: {{ roles: [orders_read] }}\n"
        );
        assert_eq!(policy_verdict(&set(&two), &own_name), None);
    }

    #[test]
    fn removed_narrowed_or_reason_wanting_grants_end_it() {
        let session = info("alice", "db");
        let removed = set(&BEFORE.replace("name: db", "name: other"));
        let narrowed = set(&BEFORE.replace("users: [alice]", "users: [bob]"));
        let retargeted = set(&BEFORE.replace("targets: [orders]", "targets: [billing]"));
        let reason = set(&format!("{BEFORE}    require_reason: true\n"));
        for new in [removed, narrowed, retargeted, reason] {
            let verdict = policy_verdict(&new, &session);
            assert!(
                matches!(&verdict, Some(EndReason::PolicyChanged { grant, .. }) if grant == "db"),
                "{verdict:?}"
            );
        }
    }
}
