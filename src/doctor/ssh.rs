//! The SSH target checks: the admin key, reachable, the pinned host key, admin login,
//! `sudo -n` for a non-root admin, the tools the provisioning scripts run, `state_dir`, the
//! `uid_range`, the groups the grants name, and a dry-run account create + login + remove
//! through `jit::linux` itself. Fixes are shell commands for root on the target, or the
//! config line to change.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use russh::client::Handle;
use russh::keys::{HashAlg, PrivateKey};
use tokio::net::TcpStream;

use super::{policy, Mode, Needs, Section};
use crate::config::SshTarget;
use crate::jit::lease::Marker;
use crate::jit::linux::{is_account_name, shell_quote, LinuxProvisioner};
use crate::jit::{LeaseId, Provisioner};
use crate::policy::TargetKind;
use crate::ssh_client::{connect_pinned, exec, PinnedHost, SshClientError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the provisioning scripts run, and the Debian/Ubuntu package that has it.
const TOOLS: &[(&str, &str)] = &[
    ("useradd", "passwd"),
    ("userdel", "passwd"),
    ("usermod", "passwd"),
    ("groupadd", "passwd"),
    ("groupdel", "passwd"),
    ("pkill", "procps"),
    ("flock", "util-linux"),
    ("setpriv", "util-linux"),
    ("perl", "perl-base"),
    ("getent", "libc-bin"),
    ("find", "findutils"),
    ("stat", "coreutils"),
];
const VISUDO: (&str, &str) = ("visudo", "sudo");

/// Reads what the other checks need from the target in one run, changing nothing.
/// Needs: tools (space-separated), state, uid_lo, uid_hi, groups (comma-separated).
const PROBE: &str = r#"{
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
for t in $tools; do
    if command -v "$t" >/dev/null 2>&1; then echo "tool $t 1"; else echo "tool $t 0"; fi
done
# The mint's own StrictModes check of every existing ancestor of the state directory.
d=$(dirname "$state")
while :; do
    if [ -e "$d" ]; then
        if [ ! -d "$d" ]; then
            echo "state_bad $d is not a directory"
        else
            owner=$(stat -L -c %u "$d")
            mode=$(stat -L -c %a "$d")
            [ "$owner" = 0 ] || echo "state_bad $d is owned by uid $owner, not root"
            case $mode in *[2367]?|*[2367]) echo "state_bad $d is group- or world-writable (mode $mode)" ;; esac
        fi
    fi
    [ "$d" = / ] && break
    d=$(dirname "$d")
done
for d in "$state" "$state/home" "$state/tmp-home"; do
    if [ -L "$d" ]; then
        echo "state_bad $d is a symbolic link"
    elif [ -e "$d" ] && [ ! -d "$d" ]; then
        echo "state_bad $d is not a directory"
    fi
done
if [ -d "$state" ]; then echo "state_exists 1"; else echo "state_exists 0"; fi
getent passwd | while IFS=: read -r name pw uid rest; do
    case $uid in ''|*[!0-9]*) continue ;; esac
    if [ "$uid" -ge "$uid_lo" ] && [ "$uid" -le "$uid_hi" ]; then echo "passwd $name:$pw:$uid:$rest"; fi
done
getent group | while IFS=: read -r name pw gid rest; do
    case $gid in ''|*[!0-9]*) continue ;; esac
    if [ "$gid" -ge "$uid_lo" ] && [ "$gid" -le "$uid_hi" ]; then echo "group $name:$gid"; fi
done
IFS=,
for g in $groups; do
    if getent group "$g" >/dev/null; then echo "group_ok $g"; else echo "group_missing $g"; fi
done
} </dev/null
"#;

/// Whether the account's home and passwd entry are gone. Needs: account, home.
const GONE: &str = r#"{
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if getent passwd "$account" >/dev/null; then echo "left account"; fi
if getent group "$account" >/dev/null; then echo "left group"; fi
if [ -e "$home" ]; then echo "left home"; fi
echo done
} </dev/null
"#;

/// What the probe script found.
#[derive(Debug, Default)]
struct Probe {
    missing_tools: Vec<String>,
    state_bad: Vec<String>,
    state_exists: bool,
    /// `name (uid N)` of passwd entries in the range that are not JIT accounts.
    foreign_users: Vec<String>,
    foreign_groups: Vec<String>,
    groups_ok: BTreeSet<String>,
    groups_missing: BTreeSet<String>,
}

fn parse_probe(stdout: &str) -> Probe {
    let mut p = Probe::default();
    for line in stdout.lines() {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "tool" => {
                if let Some((name, "0")) = rest.split_once(' ') {
                    p.missing_tools.push(name.to_string());
                }
            }
            "state_bad" => p.state_bad.push(crate::yaml::printable(rest)),
            "state_exists" => p.state_exists = rest == "1",
            "passwd" => {
                let fields: Vec<&str> = rest.split(':').collect();
                if let [name, _, uid, _, gecos, ..] = fields.as_slice() {
                    let ours = is_account_name(name) && Marker::parse_gecos(gecos).is_some();
                    if !ours {
                        p.foreign_users
                            .push(format!("{} (uid {uid})", crate::yaml::printable(name)));
                    }
                }
            }
            "group" => {
                if let Some((name, gid)) = rest.rsplit_once(':') {
                    // A JIT account's private group has its name and GID = UID.
                    if !is_account_name(name) {
                        p.foreign_groups.push(format!(
                            "group {} (gid {gid})",
                            crate::yaml::printable(name)
                        ));
                    }
                }
            }
            "group_ok" => {
                p.groups_ok.insert(rest.to_string());
            }
            "group_missing" => {
                p.groups_missing.insert(rest.to_string());
            }
            _ => {}
        }
    }
    p
}

pub(super) async fn check(
    t: &SshTarget,
    needs: &Needs,
    instance: &str,
    config_path: &Path,
    mode: Mode,
) -> Section {
    let mut s = Section::new(
        &t.name,
        format!("target {} (ssh {}:{})", t.name, t.host, t.port),
    );
    let addr = format!("{}:{}", t.host, t.port);
    let keyscan = format!(
        "ssh-keyscan -t ed25519 -p {} {}",
        t.port,
        shell_quote(&t.host)
    );

    let pinned = match t.pinned_key() {
        Ok(key) => key,
        Err(e) => {
            s.fail(
                format!("pinned host key: {e}"),
                Some(format!(
                    "set host_key: of target {} in {} to the line `{keyscan}` prints (check it \
                     on the host: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)",
                    t.name,
                    config_path.display()
                )),
            );
            return s.skip("no host key is pinned");
        }
    };
    let key = match russh::keys::load_secret_key(&t.admin.key_file, None) {
        Ok(key) => key,
        Err(e) => {
            let file = t.admin.key_file.display();
            s.fail(
                format!("admin key {file}: {e}"),
                Some(format!(
                    "ssh-keygen -t ed25519 -N '' -C jitgate-admin -f {file}, then add {file}.pub \
                     to ~{}/.ssh/authorized_keys on the target",
                    t.admin.user
                )),
            );
            return s.skip("there is no admin key to log in with");
        }
    };

    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((t.host.as_str(), t.port)),
    )
    .await;
    match tcp {
        Ok(Ok(_)) => s.pass("reachable"),
        Ok(Err(e)) => {
            s.fail(
                format!("reachable: {addr}: {e}"),
                Some(format!(
                    "start sshd at {addr}, or correct host/port of target {} in {}",
                    t.name,
                    config_path.display()
                )),
            );
            return s.skip("the target is not reachable");
        }
        Err(_) => {
            s.fail(
                format!(
                    "reachable: {addr}: no TCP connection within {}s",
                    CONNECT_TIMEOUT.as_secs()
                ),
                Some(format!(
                    "check that sshd listens at {addr} and that no firewall drops the gateway's packets"
                )),
            );
            return s.skip("the target is not reachable");
        }
    }

    let pinned_fp = pinned.fingerprint(HashAlg::Sha256);
    let handle = match connect_pinned(t, &t.admin.user, &key).await {
        Ok(handle) => {
            s.pass(format!("host key matches the pinned one ({pinned_fp})"));
            s.pass(format!(
                "admin {} logs in with {}",
                t.admin.user,
                t.admin.key_file.display()
            ));
            handle
        }
        Err(SshClientError::HostKeyMismatch { presented, .. }) => {
            s.fail(
                format!(
                    "host key matches the pinned one: the target presented {presented}, the \
                     config pins {pinned_fp}"
                ),
                Some(format!(
                    "if the host's key really changed (compare on the host: ssh-keygen -lf \
                     /etc/ssh/ssh_host_ed25519_key.pub), set host_key: of target {} in {} to \
                     the line `{keyscan}` prints; otherwise something else answers at {addr}",
                    t.name,
                    config_path.display()
                )),
            );
            return s.skip("the host is not the pinned one");
        }
        Err(SshClientError::AuthRejected { .. }) => {
            s.pass(format!("host key matches the pinned one ({pinned_fp})"));
            let fix = key.public_key().to_openssh().ok().map(|line| {
                let u = &t.admin.user;
                format!(
                    "on the target, as root: install -d -m 0700 -o {u} ~{u}/.ssh && echo {} >> \
                     ~{u}/.ssh/authorized_keys",
                    shell_quote(&line)
                )
            });
            s.fail(
                format!(
                    "admin {} logs in with {}: the target rejected the key",
                    t.admin.user,
                    t.admin.key_file.display()
                ),
                fix,
            );
            return s.skip("the admin cannot log in");
        }
        Err(e) => {
            s.fail(format!("SSH handshake and admin login: {e}"), None);
            return s.skip("the admin cannot log in");
        }
    };

    if t.admin.user != "root" {
        let sudo = exec(&handle, crate::jit::linux::admin_shell(t), Some(b"true\n")).await;
        let what = format!(
            "sudo -n /bin/sh works for admin {} (every provisioning script runs through it)",
            t.admin.user
        );
        match sudo {
            Ok(out) if out.success() => s.pass(what),
            Ok(out) => {
                let u = &t.admin.user;
                s.fail(
                    format!("{what}: {}", out.stderr_line()),
                    Some(format!(
                        "on the target, as root: echo '{u} ALL=(root) NOPASSWD: /bin/sh' > \
                         /etc/sudoers.d/jitgate-admin && chmod 0440 /etc/sudoers.d/jitgate-admin \
                         && visudo -cf /etc/sudoers.d/jitgate-admin"
                    )),
                );
                return s.skip("the admin cannot run the provisioning scripts as root");
            }
            Err(e) => {
                s.fail(format!("{what}: {e}"), None);
                return s.skip("the admin connection failed");
            }
        }
    }

    let mut tools: Vec<(&str, &str)> = TOOLS.to_vec();
    if needs.sudo {
        tools.push(VISUDO);
    }
    let tool_names: Vec<&str> = tools.iter().map(|(t, _)| *t).collect();
    let (lo, hi) = t.uid_range;
    let (lo_s, hi_s) = (lo.to_string(), hi.to_string());
    let groups: Vec<&str> = needs.names.keys().map(String::as_str).collect();
    let groups_joined = groups.join(",");
    let tools_joined = tool_names.join(" ");
    let text = crate::jit::linux::script_with(
        &[
            ("tools", &tools_joined),
            ("state", &t.state_dir),
            ("uid_lo", &lo_s),
            ("uid_hi", &hi_s),
            ("groups", &groups_joined),
        ],
        PROBE,
    );
    let probe = match exec(
        &handle,
        crate::jit::linux::admin_shell(t),
        Some(text.as_bytes()),
    )
    .await
    {
        Ok(out) if out.success() => parse_probe(&out.stdout_text()),
        Ok(out) => {
            s.fail(
                format!("reading the target's state: {}", out.stderr_line()),
                None,
            );
            return s.skip("the target's state could not be read");
        }
        Err(e) => {
            s.fail(format!("reading the target's state: {e}"), None);
            return s.skip("the admin connection failed");
        }
    };

    if probe.missing_tools.is_empty() {
        s.pass(format!("tools present: {}", tool_names.join(", ")));
    } else {
        let mut packages: Vec<&str> = tools
            .iter()
            .filter(|(t, _)| probe.missing_tools.iter().any(|m| m == t))
            .map(|(_, p)| *p)
            .collect();
        packages.dedup();
        let why_visudo = if probe.missing_tools.iter().any(|m| m == VISUDO.0) {
            " (visudo: a grant for this target gives sudo)"
        } else {
            ""
        };
        s.fail(
            format!(
                "tools missing: {}{why_visudo}",
                probe.missing_tools.join(", ")
            ),
            Some(format!(
                "on the target: apt-get install -y {} (Debian/Ubuntu package names)",
                packages.join(" ")
            )),
        );
    }

    let state = &t.state_dir;
    if probe.state_bad.is_empty() {
        s.pass(if probe.state_exists {
            format!("state_dir {state} is usable")
        } else {
            format!("state_dir {state} is usable (the first account creates it)")
        });
    } else {
        for bad in &probe.state_bad {
            // `<path> <reason>`: the path never holds a space (config validation).
            let path = bad.split(' ').next().unwrap_or(state);
            let fix = if bad.contains("symbolic link") || bad.contains("not a directory") {
                format!(
                    "remove {path} (or choose another state_dir for target {} in {})",
                    t.name,
                    config_path.display()
                )
            } else {
                format!("on the target: chown root:root {path} && chmod go-w {path}")
            };
            s.fail(
                format!(
                    "state_dir {state}: {bad} (sshd's StrictModes would refuse homes below it)"
                ),
                Some(fix),
            );
        }
    }

    let mut foreign = probe.foreign_users.clone();
    foreign.extend(probe.foreign_groups.iter().cloned());
    if foreign.is_empty() {
        s.pass(format!(
            "uid_range {lo}-{hi} holds no account or group but jitgate's"
        ));
    } else {
        let shown: Vec<&str> = foreign.iter().take(5).map(String::as_str).collect();
        let more = foreign.len().saturating_sub(shown.len());
        s.fail(
            format!(
                "uid_range {lo}-{hi} holds accounts jitgate did not make: {}{}",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ),
            Some(format!(
                "set uid_range of target {} in {} to a range no other account or group uses (a \
                 JIT account must never get a UID whose files belong to someone else)",
                t.name,
                config_path.display()
            )),
        );
    }

    for (group, grants) in &needs.names {
        let what = format!(
            "group {group} (grant{} {}) exists on the target",
            if grants.len() == 1 { "" } else { "s" },
            grants.join(", ")
        );
        if probe.groups_ok.contains(group) {
            s.pass(what);
        } else {
            s.fail(
                what,
                Some(format!("on the target: groupadd {}", shell_quote(group))),
            );
        }
    }

    if mode == Mode::Full {
        let groups: Vec<String> = probe.groups_ok.iter().cloned().collect();
        let sudo = needs.sudo && !probe.missing_tools.iter().any(|m| m == VISUDO.0);
        dry_run(&mut s, t, &handle, &groups, sudo, instance).await;
    }
    s
}

/// Creates an account for the doctor's own grant through `jit::linux`, logs in as it with its
/// ephemeral key, removes it, and checks that neither it nor its home is left.
async fn dry_run(
    s: &mut Section,
    t: &SshTarget,
    admin: &Handle<PinnedHost>,
    groups: &[String],
    sudo: bool,
    instance: &str,
) {
    let (grant, identity) = match policy::probe_grant(&t.name, TargetKind::Ssh, groups, sudo) {
        Ok(g) => g,
        Err(e) => {
            s.fail(format!("dry run: no grant for the dry run: {e}"), None);
            return;
        }
    };
    let provisioner = match LinuxProvisioner::new(t.clone(), instance.to_string()) {
        Ok(p) => p,
        Err(e) => {
            s.fail(format!("dry run: {e}"), None);
            return;
        }
    };
    let lease = match provisioner.mint(LeaseId::random(), &grant, &identity).await {
        Ok(lease) => lease,
        Err(e) => {
            s.fail(format!("dry run: creating an account failed: {e}"), None);
            return;
        }
    };
    let login = login_as(t, &lease.user, lease.key.expose()).await;
    let removed = provisioner.drop_lease(&lease).await;
    let gone = exec(
        admin,
        crate::jit::linux::admin_shell(t),
        Some(
            crate::jit::linux::script_with(
                &[("account", &lease.user), ("home", &lease.home)],
                GONE,
            )
            .as_bytes(),
        ),
    )
    .await;
    let account = &lease.user;
    let what_made = format!(
        "account {account} (uid {}{}{})",
        lease.uid,
        if groups.is_empty() {
            String::new()
        } else {
            format!(", groups {}", groups.join(","))
        },
        if sudo { ", sudo" } else { "" }
    );
    match (login, removed, gone) {
        (Ok(()), Ok(()), Ok(out)) if out.success() && out.stdout_text().trim() == "done" => s.pass(
            format!("dry run: created {what_made}, logged in as it, removed it; nothing left"),
        ),
        (Err(e), _, _) => s.fail(
            format!("dry run: logging in as {account} failed: {e}"),
            Some(
                "check the target's sshd_config (AllowUsers/AllowGroups, AuthorizedKeysFile \
                 must include .ssh/authorized_keys) and its log"
                    .to_string(),
            ),
        ),
        (Ok(()), Err(e), _) => s.fail(
            format!("dry run: removing {account} failed: {e}"),
            Some(format!(
                "on the target: pkill -KILL -u {account}; userdel {account}; rm -rf {} (or let \
                 a gateway's reaper remove it once its minute is up)",
                shell_quote(&lease.home)
            )),
        ),
        (Ok(()), Ok(()), Ok(out)) => s.fail(
            format!(
                "dry run: after removing {account}, the target still has: {}",
                out.stdout_text().replace('\n', " ").trim()
            ),
            None,
        ),
        (Ok(()), Ok(()), Err(e)) => s.fail(
            format!("dry run: checking that {account} is gone: {e}"),
            None,
        ),
    }
}

async fn login_as(t: &SshTarget, user: &str, key: &PrivateKey) -> Result<(), String> {
    let handle = connect_pinned(t, user, key)
        .await
        .map_err(|e| e.to_string())?;
    let out = exec(&handle, "true", None)
        .await
        .map_err(|e| e.to_string())?;
    if out.success() {
        Ok(())
    } else {
        Err(format!(
            "`true` exited with status {}: {}",
            out.status,
            out.stderr_line()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_is_sorted_out() {
        let out = "tool useradd 1\ntool perl 0\nstate_bad /var is owned by uid 5, not root\n\
                   state_exists 0\n\
                   passwd jit-alice-abcd1234:x:200001:200001:jitgate-managed instance=gw lease=0123456789abcdef expires=1 grant=g:/h:/bin/sh\n\
                   passwd bob:x:200002:200002:Bob:/home/bob:/bin/bash\n\
                   group jit-alice-abcd1234:200001\ngroup staff2:200003\n\
                   group_ok adm\ngroup_missing nope\n";
        let p = parse_probe(out);
        assert_eq!(p.missing_tools, vec!["perl"]);
        assert_eq!(p.state_bad, vec!["/var is owned by uid 5, not root"]);
        assert!(!p.state_exists);
        assert_eq!(p.foreign_users, vec!["bob (uid 200002)"]);
        assert_eq!(p.foreign_groups, vec!["group staff2 (gid 200003)"]);
        assert!(p.groups_ok.contains("adm") && p.groups_missing.contains("nope"));
    }
}
