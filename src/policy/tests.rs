//! Tests for loading (locations of every kind of error) and for every branch of `evaluate`.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::identity::Identity;

const POLICY: &str = "\
grants:
  - name: orders-dba
    description: DBAs get read-write on orders
    subjects:
      groups: [dba]
    targets: [orders]
    postgres:
      roles: [orders_read, orders_write]
      # each JIT role is limited to one connection
  - name: orders-read
    subjects:
      users: [alice]
      groups: [analyst]
    targets: [\"orders*\"]
    postgres:
      roles: [orders_read]
    max_session: 30m
    require_reason: true
  - name: svc-reports
    subjects:
      spiffe: [\"spiffe://jitgate.local/workload/report-?\"]
    targets: [\"reports-*\"]
    postgres: {}
";

fn set(text: &str) -> Result<PolicySet, PolicyError> {
    PolicySet::from_sources([(Path::new("p/a.yaml"), text)])
}

fn errors(sources: &[(&str, &str)]) -> Vec<String> {
    match PolicySet::from_sources(sources.iter().map(|(p, t)| (Path::new(*p), *t))) {
        Ok(set) => vec![format!("unexpectedly valid: {set:?}")],
        Err(PolicyError::Invalid(list)) => list.iter().map(|m| m.to_string()).collect(),
        Err(other) => vec![format!("unexpected error kind: {other}")],
    }
}

fn person(user: &str, groups: &[&str]) -> Identity {
    Identity {
        user: user.to_string(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        spiffe_id: Some(format!("spiffe://jitgate.local/user/{user}")),
        serial: "01".to_string(),
        kind: crate::identity::SubjectKind::Person,
    }
}

/// A Postgres connection attempt.
fn ask(
    policies: &PolicySet,
    identity: &Identity,
    target: &str,
    requested: &str,
    reason: Option<&str>,
) -> Result<Grant, Denial> {
    ask_kind(
        policies,
        identity,
        target,
        TargetKind::Postgres,
        requested,
        reason,
    )
}

fn ask_ssh(
    policies: &PolicySet,
    identity: &Identity,
    target: &str,
    requested: &str,
) -> Result<Grant, Denial> {
    ask_kind(policies, identity, target, TargetKind::Ssh, requested, None)
}

fn ask_kind(
    policies: &PolicySet,
    identity: &Identity,
    target: &str,
    kind: TargetKind,
    requested: &str,
    reason: Option<&str>,
) -> Result<Grant, Denial> {
    evaluate(
        policies,
        &AccessRequest {
            identity,
            target,
            kind,
            requested,
            reason,
        },
    )
}

fn workload(name: &str) -> Identity {
    Identity {
        user: name.to_string(),
        groups: Vec::new(),
        spiffe_id: Some(format!("spiffe://jitgate.local/workload/{name}")),
        serial: "02".to_string(),
        kind: crate::identity::SubjectKind::Workload,
    }
}

/// The user-facing text of a denial.
fn said(denial: Option<Denial>) -> Option<String> {
    denial.map(|d| d.to_string())
}

// ---- loading ---------------------------------------------------------------------------------

#[test]
fn shipped_example_policies_load() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let policies = PolicySet::load_dir(&dir)?;
    assert_eq!(
        policies.grant_names().collect::<Vec<_>>(),
        vec!["orders-dba", "orders-analyst"]
    );
    let dba = ask(&policies, &person("dana", &["dba"]), "orders", "dana", None)?;
    assert_eq!(dba.pg_roles(), ["orders_read", "orders_write"]);
    let analyst = person("ann", &["analyst"]);
    assert_eq!(
        ask(&policies, &analyst, "orders", "ann", None).err(),
        Some(Denial::ReasonRequired {
            grant: "orders-analyst".into()
        })
    );
    let grant = ask(&policies, &analyst, "orders", "ann", Some("T-1"))?;
    assert_eq!(grant.pg_roles(), ["orders_read"]);
    assert_eq!(grant.max_session(), Duration::from_secs(30 * 60));
    Ok(())
}

#[test]
fn load_dir_reads_yaml_and_yml_sorted_and_skips_the_rest() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    let grant = |name: &str| {
        format!(
            "grants:\n  - {{name: {name}, subjects: {{users: [a]}}, targets: [t], postgres: {{}}}}\n"
        )
    };
    fs::write(dir.path().join("b.yml"), grant("from-b"))?;
    fs::write(dir.path().join("a.yaml"), grant("from-a"))?;
    fs::write(dir.path().join("c.txt"), "not: yaml policy")?;
    fs::write(dir.path().join(".hidden.yaml"), "garbage: [")?;
    fs::create_dir(dir.path().join("d.yaml"))?;
    fs::write(dir.path().join("e.yaml"), "# nothing here yet\n")?;
    let policies = PolicySet::load_dir(dir.path())?;
    assert_eq!(
        policies.grant_names().collect::<Vec<_>>(),
        vec!["from-a", "from-b"]
    );
    assert_eq!(policies.len(), 2);
    Ok(())
}

#[test]
fn empty_dir_denies_everything_and_missing_dir_is_an_error(
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let policies = PolicySet::load_dir(dir.path())?;
    assert!(policies.is_empty());
    assert_eq!(
        said(
            ask(
                &policies,
                &person("alice", &["dba"]),
                "orders",
                "alice",
                None
            )
            .err()
        ),
        Some("no grant gives alice access to target \"orders\"".to_string())
    );
    let missing = dir.path().join("nope");
    let err = PolicySet::load_dir(&missing).err();
    assert!(
        matches!(&err, Some(PolicyError::Io { path, .. }) if *path == missing),
        "{err:?}"
    );
    let text = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        text.starts_with(&format!("cannot read {}: ", missing.display())),
        "{text}"
    );
    Ok(())
}

#[test]
fn unknown_field_points_at_the_key() {
    let text = POLICY.replace("    require_reason: true", "    require_reasn: true");
    assert_eq!(
        errors(&[("p/a.yaml", &text)]),
        vec![
            "p/a.yaml:18:5: unknown field `require_reasn`, expected one of name, description, \
             subjects, targets, postgres, ssh, max_session, idle_timeout, require_reason"
        ]
    );
}

#[test]
fn bad_duration_and_out_of_range_values_point_at_the_value() {
    let text = POLICY
        .replace("max_session: 30m", "max_session: 30 fortnights")
        .replace(
            "# each JIT role is limited to one connection",
            "connection_limit: 5",
        );
    assert_eq!(
        errors(&[("p/a.yaml", &text)]),
        vec![
            "p/a.yaml:9:25: connection_limit is no longer accepted: every gateway connection \
             gets a role of its own, limited to that one connection; remove the line"
                .to_string(),
            "p/a.yaml:17:18: max_session: invalid duration `30 fortnights` (unknown time unit \
             \"fortnights\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, \
             months, years (and few variations)); write e.g. 30s, 10m, 1h"
                .to_string(),
        ]
    );
    let text = POLICY.replace("max_session: 30m", "max_session: 25h");
    assert_eq!(
        errors(&[("p/a.yaml", &text)]),
        vec!["p/a.yaml:17:18: max_session must be between 1m and 1day (got 1day 1h)"]
    );
}

#[test]
fn duplicate_grant_names_across_files_report_both_locations() {
    let other =
        "grants:\n  - name: orders-dba\n    subjects: {users: [x]}\n    targets: [t]\n    ssh: {}\n";
    assert_eq!(
        errors(&[("p/a.yaml", POLICY), ("p/b.yaml", other)]),
        vec!["p/b.yaml:2:11: duplicate grant name `orders-dba` (first defined at p/a.yaml:2:11)"]
    );
}

#[test]
fn all_problems_in_all_files_are_reported() {
    let bad = "\
grants:
  - name: bad name
    subjects: {}
    targets: []
  - name: globs
    subjects:
      spiffe: [\"*\"]
    targets: [\"orders/x\"]
    postgres:
      roles: [r, r]
";
    let broken = "grants: [\n";
    assert_eq!(
        errors(&[("p/a.yaml", bad), ("p/b.yaml", broken)]),
        vec![
            "p/a.yaml:2:11: grant name `bad name` may only contain A-Z, a-z, 0-9, `_`, `.` \
             and `-` (found ' ')",
            "p/a.yaml:2:11: the grant has neither a postgres: nor an ssh: section, so it \
             applies to no target: add `postgres: {}` for databases and/or `ssh: {}` for hosts",
            "p/a.yaml:3:15: subjects must list at least one of users, groups, workloads, spiffe",
            "p/a.yaml:4:14: targets must list at least one target name or glob",
            "p/a.yaml:7:16: spiffe entry `*` must be a SPIFFE id glob starting with spiffe://, \
             e.g. spiffe://jitgate.local/user/*",
            "p/a.yaml:8:15: target `orders/x` must be a target name or a glob of A-Z, a-z, 0-9, \
             `_`, `.`, `-`, `*`, `?` (at most 63 characters)",
            "p/a.yaml:10:18: role `r` is listed twice",
            "p/b.yaml:1:9: unclosed bracket '['",
        ]
    );
}

#[test]
fn invalid_display_is_one_problem_per_line() {
    let err = set("grants:\n  - name: x\n    subjects: {}\n    targets: []\n    ssh: {}\n").err();
    assert_eq!(
        err.map(|e| e.to_string()),
        Some(
            "p/a.yaml:3:15: subjects must list at least one of users, groups, workloads, spiffe\n\
             p/a.yaml:4:14: targets must list at least one target name or glob"
                .to_string()
        )
    );
}

const SSH_POLICY: &str = "\
grants:
  - name: web-ops
    subjects: {groups: [ops]}
    targets: [\"web-*\"]
    ssh:
      groups: [adm, systemd-journal]
      sudo: true
      port_forwards: [\"127.0.0.1:5432\", \"DB.internal:443\", \"[::1]:8080\"]
      sftp: false
      home: ephemeral
  - name: web-read
    subjects: {users: [alice]}
    targets: [\"web-*\"]
    ssh: {}
";

#[test]
fn ssh_section_values_and_defaults() -> Result<(), Box<dyn std::error::Error>> {
    let policies = set(SSH_POLICY)?;
    let ops = ask_ssh(&policies, &person("olga", &["ops"]), "web-1", "olga")?;
    assert_eq!(ops.ssh_groups(), ["adm", "systemd-journal"]);
    assert!(ops.sudo());
    assert!(!ops.sftp_allowed());
    assert_eq!(ops.home(), HomeMode::Ephemeral);
    assert!(ops.forward_allowed("127.0.0.1", 5432));
    assert!(ops.forward_allowed("db.INTERNAL", 443));
    assert!(ops.forward_allowed("::1", 8080));
    assert!(ops.forward_allowed("[::1]", 8080));
    assert!(!ops.forward_allowed("127.0.0.1", 5433));
    assert!(!ops.forward_allowed("localhost", 5432));
    assert!(!ops.forward_allowed("db.internal.evil", 443));

    // An empty `ssh:` section: the defaults.
    let read = ask_ssh(&policies, &person("alice", &[]), "web-1", "alice")?;
    assert!(read.ssh_groups().is_empty());
    assert!(!read.sudo());
    assert!(read.sftp_allowed());
    assert_eq!(read.home(), HomeMode::Persistent);
    assert!(!read.forward_allowed("127.0.0.1", 5432));
    Ok(())
}

#[test]
fn ssh_problems_point_at_the_value() {
    let text = SSH_POLICY
        .replace("[adm, systemd-journal]", "[adm, Wheel, adm, \"a;b\"]")
        .replace(
            "[\"127.0.0.1:5432\", \"DB.internal:443\", \"[::1]:8080\"]",
            "[\"127.0.0.1\", \"::1:80\", \"h:0\", \"a b:1\", \"[::1:2\"]",
        )
        .replace("home: ephemeral", "home: shared");
    assert_eq!(
        errors(&[("p/a.yaml", &text)]),
        vec![
            "p/a.yaml:6:21: group `Wheel` must be a Linux group name ([a-z_][a-z0-9_-]*, at \
             most 32 characters)",
            "p/a.yaml:6:28: group `adm` is listed twice",
            "p/a.yaml:6:33: group `a;b` must be a Linux group name ([a-z_][a-z0-9_-]*, at \
             most 32 characters)",
            "p/a.yaml:8:23: port forward `127.0.0.1` has no port; write host:port, e.g. \
             127.0.0.1:5432, db.internal:443 or [::1]:5432",
            "p/a.yaml:8:36: port forward `::1:80` needs [brackets] around an IPv6 address; write \
             host:port, e.g. 127.0.0.1:5432, db.internal:443 or [::1]:5432",
            "p/a.yaml:8:46: port forward `h:0` needs a port from 1 to 65535; write host:port, \
             e.g. 127.0.0.1:5432, db.internal:443 or [::1]:5432",
            "p/a.yaml:8:53: port forward `a b:1` has an invalid host name; write host:port, \
             e.g. 127.0.0.1:5432, db.internal:443 or [::1]:5432",
            "p/a.yaml:8:62: port forward `[::1:2` has an unclosed `[`; write host:port, e.g. \
             127.0.0.1:5432, db.internal:443 or [::1]:5432",
            "p/a.yaml:10:13: home must be persistent or ephemeral (got `shared`)",
        ]
    );
    let text = SSH_POLICY.replace("sudo: true", "sudo: yes");
    let errs = errors(&[("p/a.yaml", &text)]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("p/a.yaml:7:13: "), "{errs:?}");
    let text = SSH_POLICY.replace("      sftp: false", "      scp: false");
    assert_eq!(
        errors(&[("p/a.yaml", &text)]),
        vec![
            "p/a.yaml:9:7: unknown field `scp`, expected one of groups, sudo, port_forwards, \
             sftp, home, record_exec_output"
        ]
    );
}

#[test]
fn explain_shows_what_an_ssh_account_gets() -> Result<(), PolicyError> {
    let policies = set(SSH_POLICY)?;
    let report = explain(
        &policies,
        "olga",
        &["ops".to_string()],
        "web-1",
        TargetKind::Ssh,
    );
    assert!(
        report.contains(
            "     ssh: groups adm, systemd-journal; sudo yes; port forwards 127.0.0.1:5432, \
             db.internal:443, [::1]:8080; sftp no; home ephemeral\n"
        ),
        "{report}"
    );
    let report = explain(&policies, "alice", &[], "web-1", TargetKind::Ssh);
    assert!(
        report.contains(
            "     ssh: groups none; sudo no; port forwards none; sftp yes; home persistent\n"
        ),
        "{report}"
    );
    Ok(())
}

// ---- evaluation ------------------------------------------------------------------------------

#[test]
fn grant_by_name_when_it_applies() -> Result<(), Box<dyn std::error::Error>> {
    let policies = set(POLICY)?;
    let grant = ask(
        &policies,
        &person("bob", &["dba"]),
        "orders",
        "orders-dba",
        None,
    )?;
    assert_eq!(grant.name(), "orders-dba");
    assert_eq!(grant.target(), "orders");
    assert_eq!(grant.pg_roles(), ["orders_read", "orders_write"]);
    assert!(!grant.pg_set_role(), "SET ROLE is off unless asked for");
    assert_eq!(grant.max_session(), Duration::from_secs(3600));
    assert_eq!(grant.reason(), None);
    Ok(())
}

#[test]
fn set_role_is_asked_for_and_explained() -> Result<(), Box<dyn std::error::Error>> {
    let text = POLICY.replace(
        "# each JIT role is limited to one connection",
        "set_role: true",
    );
    let policies = set(&text)?;
    let grant = ask(
        &policies,
        &person("bob", &["dba"]),
        "orders",
        "orders-dba",
        None,
    )?;
    assert!(grant.pg_set_role());
    let report = explain(
        &policies,
        "bob",
        &["dba".to_string()],
        "orders",
        TargetKind::Postgres,
    );
    assert!(
        report.contains("postgres: roles orders_read, orders_write (SET ROLE allowed)"),
        "{report}"
    );
    Ok(())
}

#[test]
fn grant_by_name_that_does_not_apply() -> Result<(), PolicyError> {
    let policies = set(POLICY)?;
    let denial = ask(
        &policies,
        &person("bob", &["ops"]),
        "orders",
        "orders-dba",
        None,
    )
    .err();
    assert_eq!(
        said(denial),
        Some("no grant gives bob access to target \"orders\" as \"orders-dba\"".to_string())
    );
    // Right person, wrong target.
    let denial = ask(
        &policies,
        &person("bob", &["dba"]),
        "billing",
        "orders-dba",
        None,
    )
    .err();
    assert_eq!(
        said(denial),
        Some("no grant gives bob access to target \"billing\" as \"orders-dba\"".to_string())
    );
    Ok(())
}

#[test]
fn own_name_with_exactly_one_grant() -> Result<(), Box<dyn std::error::Error>> {
    let policies = set(POLICY)?;
    let grant = ask(&policies, &person("bob", &["dba"]), "orders", "bob", None)?;
    assert_eq!(grant.name(), "orders-dba");
    Ok(())
}

#[test]
fn own_name_with_no_grant() -> Result<(), PolicyError> {
    let policies = set(POLICY)?;
    let denial = ask(
        &policies,
        &person("bob", &["dba"]),
        "orders_archive",
        "bob",
        None,
    )
    .err();
    assert_eq!(
        denial.map(|d| d.to_string()),
        Some("no grant gives bob access to target \"orders_archive\"".to_string())
    );
    Ok(())
}

#[test]
fn own_name_with_several_grants_lists_them() -> Result<(), PolicyError> {
    let policies = set(POLICY)?;
    let denial = ask(
        &policies,
        &person("alice", &["dba"]),
        "orders",
        "alice",
        None,
    )
    .err();
    assert_eq!(
        denial.as_ref().map(|d| d.to_string()),
        Some(
            "alice has several grants for \"orders\" (orders-dba, orders-read): \
             connect with user=<grant name>"
                .to_string()
        )
    );
    assert_eq!(denial.map(|d| d.sqlstate()), Some("28000"));
    Ok(())
}

#[test]
fn neither_grant_nor_own_name() -> Result<(), PolicyError> {
    let policies = set(POLICY)?;
    let denial = ask(&policies, &person("alice", &["dba"]), "orders", "xyz", None).err();
    assert_eq!(
        said(denial),
        Some("no grant gives alice access to target \"orders\" as \"xyz\"".to_string())
    );
    Ok(())
}

#[test]
fn reason_required_missing_or_blank() -> Result<(), PolicyError> {
    let policies = set(POLICY)?;
    let carol = person("carol", &["analyst"]);
    let expected = Some(
        "grant orders-read requires a reason: connect with \
         options='-c jitgate.reason=TICKET-123' or application_name='reason:TICKET-123'"
            .to_string(),
    );
    let denial = ask(&policies, &carol, "orders", "carol", None).err();
    assert_eq!(denial.map(|d| d.to_string()), expected);
    let denial = ask(&policies, &carol, "orders", "orders-read", Some("  \t ")).err();
    assert_eq!(denial.map(|d| d.to_string()), expected);
    Ok(())
}

#[test]
fn reason_is_trimmed_and_limited() -> Result<(), Box<dyn std::error::Error>> {
    let policies = set(POLICY)?;
    let carol = person("carol", &["analyst"]);
    let grant = ask(&policies, &carol, "orders", "carol", Some("  TICKET-123 "))?;
    assert_eq!(grant.reason(), Some("TICKET-123"));
    assert_eq!(grant.max_session(), Duration::from_secs(30 * 60));

    let at_limit = "é".repeat(MAX_REASON_CHARS);
    let grant = ask(&policies, &carol, "orders", "carol", Some(&at_limit))?;
    assert_eq!(grant.reason(), Some(at_limit.as_str()));

    let too_long = "x".repeat(MAX_REASON_CHARS + 1);
    let denial = ask(&policies, &carol, "orders", "carol", Some(&too_long)).err();
    assert_eq!(
        denial.map(|d| d.to_string()),
        Some(
            "the reason given is 201 characters long; at most 200 are allowed \
             (grant orders-read)"
                .to_string()
        )
    );
    let denial = ask(&policies, &carol, "orders", "carol", Some("T-1\nDROP")).err();
    assert_eq!(
        denial,
        Some(Denial::ReasonNotPrintable {
            grant: "orders-read".into()
        })
    );
    // A grant that does not require one still records a reason given.
    let grant = ask(
        &policies,
        &person("bob", &["dba"]),
        "orders",
        "bob",
        Some("T-9"),
    )?;
    assert_eq!(grant.reason(), Some("T-9"));
    Ok(())
}

#[test]
fn target_globs() -> Result<(), Box<dyn std::error::Error>> {
    let policies = set(POLICY)?;
    let carol = person("carol", &["analyst"]);
    let grant = ask(&policies, &carol, "orders_archive", "carol", Some("T-1"))?;
    assert_eq!(grant.name(), "orders-read");
    assert_eq!(grant.target(), "orders_archive");
    assert!(ask(&policies, &carol, "billing", "carol", Some("T-1")).is_err());
    Ok(())
}

#[test]
fn spiffe_globs() -> Result<(), Box<dyn std::error::Error>> {
    let policies = set(POLICY)?;
    let mut svc = workload("report-1");
    let grant = ask(&policies, &svc, "reports-eu", "report-1", None)?;
    assert_eq!(grant.name(), "svc-reports");
    assert!(grant.pg_roles().is_empty());

    // `?` is one character; and no SPIFFE id means no SPIFFE match.
    svc.spiffe_id = Some("spiffe://jitgate.local/workload/report-10".into());
    assert!(ask(&policies, &svc, "reports-eu", "svc-reports", None).is_err());
    svc.spiffe_id = None;
    assert!(ask(&policies, &svc, "reports-eu", "svc-reports", None).is_err());
    Ok(())
}

#[test]
fn grant_name_takes_precedence_over_user_name() -> Result<(), Box<dyn std::error::Error>> {
    let policies = set(POLICY)?;
    // A person whose user name equals a grant name gets that grant's decision.
    let odd = person("orders-dba", &["analyst"]);
    let denial = ask(&policies, &odd, "orders", "orders-dba", Some("T-1")).err();
    assert!(
        matches!(denial, Some(Denial::NoAccess { .. })),
        "{denial:?}"
    );
    Ok(())
}

// ---- explain ---------------------------------------------------------------------------------

#[test]
fn explain_names_the_matching_grant_and_the_verdict() -> Result<(), PolicyError> {
    let policies = set(POLICY)?;
    let report = explain(
        &policies,
        "bob",
        &["dba".to_string()],
        "orders",
        TargetKind::Postgres,
    );
    assert!(
        report.contains("grant orders-dba (p/a.yaml:2:11)"),
        "{report}"
    );
    assert!(report.contains("  subjects: match (group dba)"), "{report}");
    assert!(report.contains("  targets:  match (orders)"), "{report}");
    assert!(
        report.contains(
            "  => applies: max session 1h\n     postgres: roles orders_read, orders_write\n"
        ),
        "{report}"
    );
    assert!(
        report.contains("spiffe none (not checked") || report.contains("not checked: no SPIFFE id"),
        "{report}"
    );
    assert!(
        report.ends_with("verdict: user=bob gets grant orders-dba\n"),
        "{report}"
    );

    let report = explain(
        &policies,
        "alice",
        &["dba".to_string()],
        "orders",
        TargetKind::Postgres,
    );
    assert!(
        report.contains(
            "verdict: user=alice is denied: alice has several grants for \"orders\" \
             (orders-dba, orders-read)"
        ),
        "{report}"
    );
    let report = explain(&policies, "zed", &[], "orders", TargetKind::Postgres);
    assert!(
        report.contains(
            "verdict: user=zed is denied: no grant gives zed access to target \"orders\" \
             (no grant applies to them for this target)"
        ),
        "{report}"
    );
    Ok(())
}

#[test]
fn explain_identity_checks_spiffe() -> Result<(), PolicyError> {
    let policies = set(POLICY)?;
    let svc = workload("report-1");
    let report = explain_identity(&policies, &svc, "reports-eu", TargetKind::Postgres);
    assert!(
        report.contains("  subjects: match (spiffe spiffe://jitgate.local/workload/report-?)"),
        "{report}"
    );
    assert!(
        report.ends_with("verdict: user=report-1 gets grant svc-reports\n"),
        "{report}"
    );
    Ok(())
}

// ---- target kinds (a grant applies only to the kinds whose section it has) ---------------------

const KINDS_POLICY: &str = "\
grants:
  - name: db-all
    subjects: {groups: [ops]}
    targets: [\"*\"]
    postgres: {roles: [reader]}
  - name: hosts-orders
    subjects: {groups: [ops]}
    targets: [\"orders-*\"]
    ssh: {}
  - name: both
    subjects: {users: [bea]}
    targets: [\"*\"]
    postgres: {}
    ssh: {}
";

#[test]
fn a_grant_applies_only_to_the_kinds_whose_section_it_has() -> Result<(), Box<dyn std::error::Error>>
{
    let policies = set(KINDS_POLICY)?;
    let olga = person("olga", &["ops"]);
    // Before: `db-all` (no ssh: section, targets "*") opened a shell on any SSH host.
    assert_eq!(
        ask_ssh(&policies, &olga, "web-1", "db-all")
            .err()
            .map(|d| d.sqlstate()),
        Some("28000")
    );
    assert!(ask_ssh(&policies, &olga, "web-1", "olga").is_err());
    // ...and `hosts-orders` (no postgres: section) minted LOGIN roles on `orders-db`.
    assert!(ask(&policies, &olga, "orders-db", "hosts-orders", None).is_err());
    // By own name, each kind sees only its own grant: no ambiguity across kinds.
    assert_eq!(
        ask(&policies, &olga, "orders-db", "olga", None)?.name(),
        "db-all"
    );
    assert_eq!(
        ask_ssh(&policies, &olga, "orders-web", "olga")?.name(),
        "hosts-orders"
    );
    let bea = person("bea", &[]);
    assert_eq!(ask(&policies, &bea, "x", "bea", None)?.name(), "both");
    assert_eq!(ask_ssh(&policies, &bea, "x", "bea")?.name(), "both");

    let denial = ask_ssh(&policies, &olga, "web-1", "db-all").err();
    assert_eq!(
        denial.as_ref().map(Denial::detail),
        Some(
            "no grant gives olga access to target \"web-1\" as \"db-all\" (grant db-all \
             exists but it has no ssh: section)"
                .to_string()
        )
    );
    Ok(())
}

#[test]
fn explain_says_when_a_grant_is_skipped_for_its_kind() -> Result<(), PolicyError> {
    let policies = set(KINDS_POLICY)?;
    let report = explain(
        &policies,
        "olga",
        &["ops".to_string()],
        "web-1",
        TargetKind::Ssh,
    );
    assert!(
        report.starts_with("person olga, groups ops, SPIFFE id none, target web-1 (ssh)\n"),
        "{report}"
    );
    assert!(
        report.contains(
            "grant db-all (p/a.yaml:2:11)\n  kind:     skipped: no ssh: section, so it never \
             applies to ssh targets\n  subjects: match (group ops)\n  targets:  match (*)\n  \
             => does not apply\n"
        ),
        "{report}"
    );
    assert!(
        report.contains("verdict: user=olga is denied: no grant gives olga"),
        "{report}"
    );
    let report = explain(
        &policies,
        "olga",
        &["ops".to_string()],
        "orders-web",
        TargetKind::Ssh,
    );
    assert!(
        report.contains("  kind:     match (ssh: section)\n"),
        "{report}"
    );
    assert!(
        report.ends_with("verdict: user=olga gets grant hosts-orders\n"),
        "{report}"
    );
    Ok(())
}

// ---- workloads -------------------------------------------------------------------------------

const WORKLOAD_POLICY: &str = "\
grants:
  - name: people
    subjects: {users: [report], groups: [ops]}
    targets: [orders]
    postgres: {}
  - name: machines
    subjects: {workloads: [report]}
    targets: [orders]
    postgres: {roles: [orders_read]}
";

#[test]
fn workloads_and_persons_never_match_each_others_subjects() -> Result<(), Box<dyn std::error::Error>>
{
    let policies = set(WORKLOAD_POLICY)?;
    let machine = workload("report");
    let grant = ask(&policies, &machine, "orders", "report", None)?;
    assert_eq!(grant.name(), "machines");
    // A workload with the same name as a user, or OUs naming a group, is still no person.
    let mut with_ou = workload("report");
    with_ou.groups = vec!["ops".to_string()];
    assert!(ask(&policies, &with_ou, "orders", "people", None).is_err());
    // A person called like the workload gets the person's grant only.
    let person_report = person("report", &[]);
    assert_eq!(
        ask(&policies, &person_report, "orders", "report", None)?.name(),
        "people"
    );
    assert!(ask(&policies, &person_report, "orders", "machines", None).is_err());

    let denial = ask(&policies, &workload("other"), "orders", "other", None).err();
    assert_eq!(
        said(denial),
        Some("no grant gives workload other access to target \"orders\"".to_string())
    );
    let report = explain_identity(&policies, &machine, "orders", TargetKind::Postgres);
    assert!(
        report.contains("  subjects: match (workload report)"),
        "{report}"
    );
    assert!(report.starts_with("workload report, "), "{report}");
    Ok(())
}

#[test]
fn workload_names_are_checked() {
    let text = WORKLOAD_POLICY.replace("workloads: [report]", "workloads: [\"a\\tb\"]");
    let errs = errors(&[("p/a.yaml", &text)]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("p/a.yaml:7:28: workload `a\\tb` must not contain control"),
        "{errs:?}"
    );
}

// ---- what a refusal tells a stranger -----------------------------------------------------------

#[test]
fn refusals_do_not_tell_whether_a_grant_or_a_target_exists() -> Result<(), PolicyError> {
    let policies = set(POLICY)?;
    let mallory = person("mallory", &["sales"]);
    // A grant that exists (but is not hers) and one that does not: the same words.
    let exists = ask(&policies, &mallory, "orders", "orders-dba", None).err();
    let invented = ask(&policies, &mallory, "orders", "orders-xyz", None).err();
    let (exists, invented) = (said(exists), said(invented));
    assert_eq!(
        exists.as_deref().map(|t| t.replace("orders-dba", "NAME")),
        invented.as_deref().map(|t| t.replace("orders-xyz", "NAME"))
    );
    // A target that exists but grants her nothing, and one that does not exist.
    let existing = said(ask(&policies, &mallory, "orders", "mallory", None).err());
    let missing = Denial::no_such_target(&mallory, "orders", Some("mallory")).to_string();
    assert_eq!(existing.as_deref(), Some(missing.as_str()));
    // Client-chosen names are escaped in the message.
    let odd = ask(&policies, &mallory, "a\nb\u{1b}[31m", "mallory", None).err();
    assert_eq!(
        said(odd),
        Some("no grant gives mallory access to target \"a\\nb\\x1b[31m\"".to_string())
    );
    Ok(())
}

#[test]
fn an_offer_names_only_what_applies() -> Result<(), PolicyError> {
    let policies = set(POLICY)?;
    let targets = ["orders", "orders_archive", "billing"];
    let alice = person("alice", &["dba"]);
    assert_eq!(
        offer(&policies, &alice, TargetKind::Postgres, targets).to_string(),
        "grants you can use: orders-dba on orders; orders-read on orders, orders_archive"
    );
    let mallory = person("mallory", &[]);
    assert_eq!(
        offer(&policies, &mallory, TargetKind::Postgres, targets).to_string(),
        "you have no grant for any postgres target here"
    );
    assert_eq!(
        offer(&policies, &alice, TargetKind::Ssh, targets).to_string(),
        "you have no grant for any ssh target here"
    );
    Ok(())
}

// ---- sftp: false and port_forwards only bind clients that ask for them -------------------------

#[test]
fn explain_and_check_say_a_shell_bypasses_sftp_and_forward_limits() -> Result<(), PolicyError> {
    let policies = set(SSH_POLICY)?;
    let report = explain(
        &policies,
        "olga",
        &["ops".to_string()],
        "web-1",
        TargetKind::Ssh,
    );
    assert!(
        report.contains(
            "     note: sftp: false and port_forwards hold only against clients that ask for \
             them (the sftp subsystem and scp, ssh -L): a shell or exec on the target can still \
             move files"
        ),
        "{report}"
    );
    // web-read sets neither: no note for it.
    assert_eq!(report.matches("     note: ").count(), 1, "{report}");
    assert_eq!(
        policies.warnings(),
        vec![format!("p/a.yaml:2:11: grant web-ops: {SHELL_BYPASS_NOTE}")]
    );
    let only_forwards = SSH_POLICY.replace("      sftp: false\n", "");
    assert_eq!(set(&only_forwards)?.warnings().len(), 1);
    let neither = SSH_POLICY.replace("      sftp: false\n", "").replace(
        "      port_forwards: [\"127.0.0.1:5432\", \"DB.internal:443\", \"[::1]:8080\"]\n",
        "",
    );
    assert!(set(&neither)?.warnings().is_empty());
    assert!(set(POLICY)?.warnings().is_empty());
    Ok(())
}
