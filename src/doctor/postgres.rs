//! The PostgreSQL target checks: reachable, TLS as configured, admin login, version, the
//! admin's privileges for this version (README "What the admin role needs"; the set-up
//! `sandbox::postgres::admin_setup_sql` runs), the roles the grants name, the databases, and a
//! dry-run mint + login + drop through `jit::postgres` and `pg::upstream` themselves.
//! Fixes are SQL for a superuser, or the config line to change.

use std::path::Path;

use postgres_protocol::escape::escape_identifier;
use tokio_postgres::Client;

use super::{policy, Mode, Needs, Section};
use crate::config::{PasswordSource, PgTarget, UpstreamTls};
use crate::jit::postgres::{AdminConnect, JitError, PgProvisioner};
use crate::jit::{LeaseId, Provisioner};
use crate::pg::upstream::{self, UpstreamError};
use crate::policy::{Grant, TargetKind};
use crate::secret::Secret;

/// The majors jitgate is tested against (scripts/test.sh runs them all).
const SUPPORTED: std::ops::RangeInclusive<i32> = 15..=18;

/// Keywords PostgreSQL does not take as a role or database name unquoted (its `reserved` and
/// `type_func_name` keyword classes, PostgreSQL 15-18).
const KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "none",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "public",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// A role or database name as SQL: bare when PostgreSQL reads it back unchanged, quoted
/// otherwise, so a fix reads like the README's set-up and still pastes correctly.
fn ident(name: &str) -> String {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !KEYWORDS.contains(&name);
    if plain {
        name.to_string()
    } else {
        escape_identifier(name)
    }
}

fn idents(names: &[String]) -> String {
    names
        .iter()
        .map(|n| ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The membership the admin needs on 16+ to grant `roles`: ADMIN OPTION, and neither the
/// roles' privileges nor SET ROLE to them for itself.
fn admin_option_sql(roles: &[String], admin: &str) -> String {
    format!(
        "GRANT {} TO {} WITH ADMIN OPTION, INHERIT FALSE, SET FALSE;",
        idents(roles),
        ident(admin)
    )
}

/// The quoted names in a PostgreSQL message (`permission denied to grant role "app_rw"`).
fn quoted_names(message: &str) -> Vec<&str> {
    message.split('"').skip(1).step_by(2).collect()
}

/// The SQL that fixes a failed mint, when the failure is a privilege or object jitgate needs
/// on the target: for the operator's log line (the user only hears "ask the operator").
/// `None` when no SQL fixes it (unreachable, a credential, TLS); `jitgate doctor` checks those.
pub fn fix_for_mint_error(e: &JitError, target: &PgTarget, grant: &Grant) -> Option<String> {
    let JitError::Sql {
        sqlstate: Some(code),
        reason,
        ..
    } = e
    else {
        return None;
    };
    let admin = &target.admin.user;
    let named: Vec<String> = quoted_names(reason)
        .into_iter()
        .filter(|n| grant.pg_roles().iter().any(|r| r == n))
        .map(str::to_string)
        .collect();
    match code.as_str() {
        // insufficient_privilege: on 16+ "permission denied to grant role", without
        // CREATEROLE "permission denied to create role".
        "42501" if !named.is_empty() => Some(admin_option_sql(&named, admin)),
        "42501" if reason.contains("create role") => {
            Some(format!("ALTER ROLE {} CREATEROLE;", ident(admin)))
        }
        "42501" if !grant.pg_roles().is_empty() => Some(format!(
            "ALTER ROLE {} CREATEROLE; {} (the GRANT on PostgreSQL 16+)",
            ident(admin),
            admin_option_sql(grant.pg_roles(), admin)
        )),
        "42501" => Some(format!("ALTER ROLE {} CREATEROLE;", ident(admin))),
        // undefined_object: a role the grant names does not exist.
        "42704" if !named.is_empty() => Some(format!(
            "CREATE ROLE {} NOLOGIN; {} (the GRANT on PostgreSQL 16+)",
            idents(&named),
            admin_option_sql(&named, admin)
        )),
        _ => None,
    }
}

/// Where the admin password comes from, for a fix that must not print it.
fn password_source(source: &PasswordSource) -> String {
    match source {
        PasswordSource::File(path) => format!("the password in {}", path.display()),
        PasswordSource::Env(var) => format!("the password in ${var}"),
    }
}

#[derive(Debug)]
enum ConnectError {
    Tls(String),
    Unreachable(String),
    Pg(tokio_postgres::Error),
}

/// An admin connection exactly as the gateway makes one (`jit::postgres::admin_session`: the
/// same strict login and TLS), with the error kept whole so its SQLSTATE says which fix applies.
async fn connect(
    t: &PgTarget,
    database: &str,
    password: &Secret<String>,
) -> Result<Client, ConnectError> {
    crate::jit::postgres::admin_session(t, database, password, "jitgate doctor")
        .await
        .map_err(|e| match e {
            AdminConnect::Unreachable(reason) => ConnectError::Unreachable(reason),
            AdminConnect::Tls(reason) => ConnectError::Tls(reason),
            AdminConnect::Postgres(e) => ConnectError::Pg(e),
        })
}

/// What a failed admin connection to `database` means, and its fix.
fn connect_failure(t: &PgTarget, database: &str, e: &ConnectError) -> (String, Option<String>) {
    let admin = ident(&t.admin.user);
    let e = match e {
        ConnectError::Tls(reason) => return (format!("TLS set-up: {reason}"), None),
        ConnectError::Unreachable(reason) => return (reason.clone(), None),
        ConnectError::Pg(e) => e,
    };
    let Some(db) = e.as_db_error() else {
        let reason = std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string());
        return (reason, None);
    };
    let message = db.message().to_string();
    let fix = match db.code().code() {
        // invalid_password: PostgreSQL says the same for a role that does not exist.
        "28P01" => Some(format!(
            "ALTER ROLE {admin} LOGIN PASSWORD '<{}>'; (or, if the role does not exist, the \
             README's set-up: CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD '…'; GRANT \
             pg_signal_backend TO {admin};)",
            password_source(&t.admin.password)
        )),
        "28000" if message.contains("not permitted to log in") => {
            Some(format!("ALTER ROLE {admin} LOGIN;"))
        }
        "28000" => Some(format!(
            "in the server's pg_hba.conf: `host {database} {} <gateway address>/32 \
             scram-sha-256` (hostssl when tls is not disable), then SELECT pg_reload_conf();",
            t.admin.user
        )),
        "3D000" => Some(format!("CREATE DATABASE {};", ident(database))),
        "42501" => Some(format!(
            "GRANT CONNECT ON DATABASE {} TO {admin};",
            ident(database)
        )),
        "53300" => Some("raise max_connections on the server, or end idle sessions".to_string()),
        _ => None,
    };
    (message, fix)
}

/// The admin's standing, from one query.
struct Facts {
    version_num: i32,
    version: String,
    superuser: bool,
    createrole: bool,
    signal_backend: bool,
    password_encryption: String,
    createrole_self_grant: String,
}

async fn facts(admin: &Client) -> Result<Facts, tokio_postgres::Error> {
    // current_setting(name, true) is NULL for a setting the version lacks
    // (createrole_self_grant is 16+).
    let row = admin
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'), \
             r.rolsuper, r.rolcreaterole, pg_has_role(current_user, 'pg_signal_backend', 'USAGE'), \
             current_setting('password_encryption'), \
             coalesce(current_setting('createrole_self_grant', true), '') \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await?;
    Ok(Facts {
        version_num: row.get(0),
        version: row.get(1),
        superuser: row.get(2),
        createrole: row.get(3),
        signal_backend: row.get(4),
        password_encryption: row.get(5),
        createrole_self_grant: row.get(6),
    })
}

/// A granted role as the target has it, and what the admin holds of it.
struct RoleFacts {
    superuser: bool,
    /// 16+: ADMIN OPTION (so the admin can grant it).
    admin_option: bool,
    /// The admin has the role's privileges (INHERIT) or can SET ROLE to it.
    uses_it: bool,
}

async fn role_facts(
    admin: &Client,
    roles: &[String],
    version_num: i32,
) -> Result<Vec<(String, RoleFacts)>, tokio_postgres::Error> {
    // 'SET' and the meaning of ADMIN OPTION for granting are 16+; 15 lets CREATEROLE grant.
    let sql = if version_num >= 160_000 {
        "SELECT rolname::text, rolsuper, pg_has_role(current_user, oid, 'MEMBER WITH ADMIN OPTION'), \
         pg_has_role(current_user, oid, 'USAGE') OR pg_has_role(current_user, oid, 'SET') \
         FROM pg_roles WHERE rolname::text = ANY($1::text[])"
    } else {
        "SELECT rolname::text, rolsuper, true, pg_has_role(current_user, oid, 'USAGE') \
         FROM pg_roles WHERE rolname::text = ANY($1::text[])"
    };
    let rows = admin.query(sql, &[&roles]).await?;
    Ok(rows
        .iter()
        .map(|row| {
            (
                row.get(0),
                RoleFacts {
                    superuser: row.get(1),
                    admin_option: row.get(2),
                    uses_it: row.get(3),
                },
            )
        })
        .collect())
}

fn grants_naming(grants: &[String]) -> String {
    let s = if grants.len() == 1 { "" } else { "s" };
    format!("grant{s} {}", grants.join(", "))
}

pub(super) async fn check(
    t: &PgTarget,
    needs: &Needs,
    instance: &str,
    config_path: &Path,
    mode: Mode,
) -> Section {
    let mut s = Section::new(
        &t.name,
        format!("target {} (postgres {}:{})", t.name, t.host, t.port),
    );
    let admin_name = ident(&t.admin.user);
    let addr = format!("{}:{}", t.host, t.port);

    // Reachable, and TLS exactly as the gateway's own logins do it.
    match upstream::connect(t).await {
        Ok(stream) => {
            drop(stream);
            s.pass("reachable");
            s.pass(match &t.tls {
                UpstreamTls::Disable => {
                    "TLS: disable, as configured (traffic to the target is not encrypted)"
                        .to_string()
                }
                UpstreamTls::Require => {
                    "TLS: require, as configured (encrypted; the server's certificate is not \
                     verified)"
                        .to_string()
                }
                UpstreamTls::VerifyFull { ca } => format!(
                    "TLS: verify-full, as configured (the certificate verifies against {} for {})",
                    ca.display(),
                    t.host
                ),
            });
        }
        Err(UpstreamError::Unreachable { reason, .. }) => {
            s.fail(
                format!("reachable: {addr}: {reason}"),
                Some(format!(
                    "start PostgreSQL at {addr} (listen_addresses, port), or correct host/port \
                     of target {} in {}",
                    t.name,
                    config_path.display()
                )),
            );
            return s.skip("the target is not reachable");
        }
        Err(UpstreamError::NoTls { .. }) => {
            s.pass("reachable");
            s.fail(
                "TLS: the server does not accept TLS, and the config requires it",
                Some(
                    "on the server: ssl = on with ssl_cert_file and ssl_key_file in \
                     postgresql.conf, then SELECT pg_reload_conf();"
                        .to_string(),
                ),
            );
            return s.skip("TLS is not available");
        }
        Err(UpstreamError::Tls { reason, .. }) => {
            s.pass("reachable");
            let fix = match &t.tls {
                UpstreamTls::VerifyFull { ca } => {
                    let name_flag = if t.host.parse::<std::net::IpAddr>().is_ok() {
                        "-verify_ip"
                    } else {
                        "-verify_hostname"
                    };
                    format!(
                        "the server's certificate must be signed by the CA in {ca} and name {host} \
                         (subjectAltName); see what it presents: openssl s_client -starttls \
                         postgres -connect {addr} -CAfile {ca} {name_flag} {host} \
                         -verify_return_error",
                        ca = ca.display(),
                        host = t.host
                    )
                }
                UpstreamTls::Require | UpstreamTls::Disable => {
                    "check the server's ssl settings (its log says why the handshake failed)"
                        .to_string()
                }
            };
            s.fail(format!("TLS handshake: {reason}"), Some(fix));
            return s.skip("TLS to the target fails");
        }
        Err(e) => {
            s.fail(format!("reachable: {e}"), None);
            return s.skip("the target does not answer as PostgreSQL");
        }
    }

    let password = match t.admin.password.read() {
        Ok(p) => p,
        Err(e) => {
            let fix = match &t.admin.password {
                PasswordSource::File(path) => format!(
                    "write the admin password to {} (one line, mode 0600, readable by jitgate)",
                    path.display()
                ),
                PasswordSource::Env(var) => {
                    format!("set {var} in jitgate's environment to the admin password")
                }
            };
            s.fail(format!("admin password: {e}"), Some(fix));
            return s.skip("there is no admin password to log in with");
        }
    };
    let admin = match connect(t, &t.admin.database, &password).await {
        Ok(client) => client,
        Err(e) => {
            let (what, fix) = connect_failure(t, &t.admin.database, &e);
            s.fail(
                format!(
                    "admin {} logs in to database {}: {what}",
                    t.admin.user, t.admin.database
                ),
                fix,
            );
            return s.skip("the admin cannot log in");
        }
    };
    s.pass(format!(
        "admin {} logs in to database {}",
        t.admin.user, t.admin.database
    ));

    let f = match facts(&admin).await {
        Ok(f) => f,
        Err(e) => {
            s.fail(format!("reading the admin's privileges: {e}"), None);
            return s.skip("the admin's privileges cannot be read");
        }
    };
    let major = f.version_num / 10_000;
    if SUPPORTED.contains(&major) {
        s.pass(format!(
            "PostgreSQL {}: a supported version (15-18)",
            f.version
        ));
    } else {
        s.fail(
            format!(
                "PostgreSQL {}: not a supported version (jitgate is tested on 15-18)",
                f.version
            ),
            Some("run the target on PostgreSQL 15, 16, 17 or 18".to_string()),
        );
    }

    if f.superuser {
        s.pass(format!(
            "admin {} has CREATEROLE (it is a superuser: far more than jitgate needs)",
            t.admin.user
        ));
    } else if f.createrole {
        s.pass(format!("admin {} has CREATEROLE", t.admin.user));
    } else {
        s.fail(
            format!("admin {} has CREATEROLE", t.admin.user),
            Some(format!("ALTER ROLE {admin_name} CREATEROLE;")),
        );
    }
    if f.signal_backend {
        s.pass(format!(
            "admin {} has pg_signal_backend (to end a JIT role's sessions)",
            t.admin.user
        ));
    } else {
        s.fail(
            format!(
                "admin {} has pg_signal_backend (to end a JIT role's sessions)",
                t.admin.user
            ),
            Some(format!("GRANT pg_signal_backend TO {admin_name};")),
        );
    }
    if f.version_num >= 160_000 && !f.superuser {
        if f.createrole_self_grant.trim().is_empty() {
            s.pass("createrole_self_grant is empty (the admin keeps no membership in the roles it creates)");
        } else {
            s.fail(
                format!(
                    "createrole_self_grant is '{}': the admin would hold each JIT role, and so \
                     the privileges it is granted, during its session",
                    f.createrole_self_grant
                ),
                Some(format!(
                    "ALTER ROLE {admin_name} SET createrole_self_grant = '';"
                )),
            );
        }
    }

    // The roles the grants name.
    let wanted: Vec<String> = needs.names.keys().cloned().collect();
    let found = match role_facts(&admin, &wanted, f.version_num).await {
        Ok(found) => found,
        Err(e) => {
            s.fail(format!("reading the granted roles: {e}"), None);
            Vec::new()
        }
    };
    let mut existing = Vec::new();
    for (role, grants) in &needs.names {
        let Some((_, rf)) = found.iter().find(|(name, _)| name == role) else {
            let create = format!("CREATE ROLE {} NOLOGIN;", ident(role));
            let fix = if f.version_num >= 160_000 {
                format!(
                    "{create} {}",
                    admin_option_sql(std::slice::from_ref(role), &t.admin.user)
                )
            } else {
                create
            };
            s.fail(
                format!(
                    "role {role} ({}) exists on the target",
                    grants_naming(grants)
                ),
                Some(fix),
            );
            continue;
        };
        existing.push(role.clone());
        s.pass(format!(
            "role {role} ({}) exists on the target",
            grants_naming(grants)
        ));
        if rf.superuser {
            s.fail(
                format!("role {role} is a superuser: every JIT role joining it would be one"),
                Some(format!("ALTER ROLE {} NOSUPERUSER;", ident(role))),
            );
        }
        if f.superuser {
            continue;
        }
        if f.version_num >= 160_000 {
            let what = format!(
                "admin {} holds ADMIN OPTION on {role} (PostgreSQL {major} needs it)",
                t.admin.user
            );
            let fix = admin_option_sql(std::slice::from_ref(role), &t.admin.user);
            if rf.admin_option {
                s.pass(what);
            } else {
                s.fail(what, Some(fix.clone()));
            }
            if rf.uses_it {
                s.fail(
                    format!(
                        "admin {} holds {role}'s privileges itself (INHERIT or SET): it needs \
                         only ADMIN OPTION",
                        t.admin.user
                    ),
                    Some(fix),
                );
            }
        } else if rf.uses_it {
            s.fail(
                format!(
                    "admin {} holds {role}'s privileges itself: on PostgreSQL 15 CREATEROLE \
                     alone lets it grant the role",
                    t.admin.user
                ),
                Some(format!("REVOKE {} FROM {admin_name};", ident(role))),
            );
        }
    }

    if f.password_encryption == "scram-sha-256" {
        s.pass("password_encryption is scram-sha-256");
    } else {
        s.fail(
            format!(
                "password_encryption is {}, not scram-sha-256",
                f.password_encryption
            ),
            Some(
                "ALTER SYSTEM SET password_encryption = 'scram-sha-256'; SELECT pg_reload_conf();"
                    .to_string(),
            ),
        );
    }

    // Every listed database (the admin's own is connected to already).
    let mut databases_ok = Vec::new();
    for database in &t.databases {
        let result = if *database == t.admin.database {
            Ok(None)
        } else {
            connect(t, database, &password).await.map(Some)
        };
        let what = format!(
            "database {database} exists and admin {} can connect to it",
            t.admin.user
        );
        match result {
            Ok(_) => {
                s.pass(what);
                databases_ok.push(database.clone());
            }
            Err(e) => {
                let (why, fix) = connect_failure(t, database, &e);
                s.fail(format!("{what}: {why}"), fix);
            }
        }
    }

    if mode == Mode::Full {
        // One failure is enough: the next database would fail the same way.
        for database in &databases_ok {
            if !dry_run(&mut s, t, &admin, &existing, database, instance).await {
                break;
            }
        }
    }
    s
}

/// Mints a throwaway role for the doctor's own grant, logs in as it through `pg::upstream`
/// (SCRAM, TLS and pg_hba exactly as for a user), drops it, and checks it is gone. True if
/// all of that worked.
async fn dry_run(
    s: &mut Section,
    t: &PgTarget,
    admin: &Client,
    roles: &[String],
    database: &str,
    instance: &str,
) -> bool {
    let prefix = format!("dry run in {database}");
    let (grant, identity) = match policy::probe_grant(&t.name, TargetKind::Postgres, roles, false) {
        Ok(g) => g,
        Err(e) => {
            s.fail(format!("{prefix}: no grant for the dry run: {e}"), None);
            return false;
        }
    };
    let provisioner = PgProvisioner::new(t.clone(), instance.to_string());
    let lease = match provisioner
        .mint(LeaseId::random(), &grant, &identity, database)
        .await
    {
        Ok(lease) => lease,
        Err(e) => {
            s.fail(
                format!("{prefix}: creating a role failed: {e}"),
                fix_for_mint_error(&e, t, &grant),
            );
            return false;
        }
    };
    let login = upstream::login(t, &lease, &[])
        .await
        .map(|u| drop(u.stream));
    let dropped = provisioner.drop_lease(&lease).await;
    let left = admin
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&lease.role])
        .await;
    let role = &lease.role;
    let ok = matches!((&login, &dropped, &left), (Ok(()), Ok(()), Ok(None)));
    match (login, dropped, left) {
        (Ok(()), Ok(()), Ok(None)) => s.pass(format!(
            "{prefix}: created role {role}{}, logged in as it, dropped it; nothing left",
            if roles.is_empty() {
                String::new()
            } else {
                format!(" in {}", roles.join(", "))
            }
        )),
        (Err(e), _, _) => {
            let fix = login_fix(&e, database, roles);
            s.fail(format!("{prefix}: logging in as {role} failed: {e}"), fix);
        }
        (Ok(()), Err(e), _) => s.fail(
            format!("{prefix}: dropping {role} failed: {e}"),
            Some(format!(
                "DROP OWNED BY {r}; DROP ROLE {r}; (in {database}; or let a gateway's reaper \
                 remove it once its minute is up)",
                r = ident(role)
            )),
        ),
        (Ok(()), Ok(()), Ok(Some(_))) => s.fail(
            format!("{prefix}: role {role} is still there after its drop"),
            Some(format!("DROP ROLE {};", ident(role))),
        ),
        (Ok(()), Ok(()), Err(e)) => {
            s.fail(format!("{prefix}: checking that {role} is gone: {e}"), None)
        }
    }
    ok
}

/// The fix for a JIT role's failed login, when there is one.
fn login_fix(e: &UpstreamError, database: &str, roles: &[String]) -> Option<String> {
    let hba = format!(
        "in the server's pg_hba.conf: `host {database} all <gateway address>/32 scram-sha-256` \
         (hostssl when tls is not disable) for the JIT roles, then SELECT pg_reload_conf();"
    );
    match e {
        UpstreamError::UnsupportedAuth { .. } => Some(hba),
        UpstreamError::Refused { code, .. } if code == "28000" => Some(hba),
        UpstreamError::Refused { code, .. } if code == "42501" => Some(format!(
            "GRANT CONNECT ON DATABASE {} TO {};",
            ident(database),
            if roles.is_empty() {
                "PUBLIC".to_string()
            } else {
                idents(roles)
            }
        )),
        UpstreamError::Unreachable { .. }
        | UpstreamError::NoTls { .. }
        | UpstreamError::Tls { .. }
        | UpstreamError::Refused { .. }
        | UpstreamError::Unauthenticated { .. }
        | UpstreamError::Protocol { .. }
        | UpstreamError::Timeout { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::PgAdmin;

    fn target() -> PgTarget {
        PgTarget {
            name: "app".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            databases: vec!["app".into()],
            tls: UpstreamTls::Disable,
            admin: PgAdmin {
                user: "jitgate_admin".into(),
                database: "app".into(),
                password: PasswordSource::Env("X".into()),
            },
        }
    }

    fn sql_error(code: &str, reason: &str) -> JitError {
        JitError::Sql {
            target: "app".into(),
            statement: "CREATE ROLE",
            reason: reason.into(),
            sqlstate: Some(code.into()),
        }
    }

    #[test]
    fn identifiers_are_quoted_only_when_needed() {
        assert_eq!(ident("orders_write"), "orders_write");
        assert_eq!(ident("App-RW"), "\"App-RW\"");
        assert_eq!(ident("user"), "\"user\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn a_missing_admin_option_names_the_grant_that_fixes_it() {
        let roles = vec!["app_rw".to_string(), "app_ro".to_string()];
        let (grant, _) = policy::probe_grant("app", TargetKind::Postgres, &roles, false).unwrap();
        let e = sql_error("42501", "permission denied to grant role \"app_rw\"");
        assert_eq!(
            fix_for_mint_error(&e, &target(), &grant).as_deref(),
            Some("GRANT app_rw TO jitgate_admin WITH ADMIN OPTION, INHERIT FALSE, SET FALSE;")
        );
        let e = sql_error("42501", "permission denied to create role");
        assert_eq!(
            fix_for_mint_error(&e, &target(), &grant).as_deref(),
            Some("ALTER ROLE jitgate_admin CREATEROLE;")
        );
        let e = sql_error("42704", "role \"app_ro\" does not exist");
        assert!(fix_for_mint_error(&e, &target(), &grant)
            .unwrap()
            .starts_with("CREATE ROLE app_ro NOLOGIN; GRANT app_ro TO jitgate_admin"));
        let e = JitError::AdminRejected {
            target: "app".into(),
            reason: "password authentication failed".into(),
            sqlstate: Some("28P01".into()),
        };
        assert_eq!(fix_for_mint_error(&e, &target(), &grant), None);
    }
}
