//! What `jitgate demo` prints once the gateway listens: commands to paste, built from the
//! sandbox's real paths and ports and quoted for the shell (and for libpq), so that they work
//! as pasted wherever the sandbox is.

use std::fmt;
use std::path::Path;
use std::process::Command;

use super::{DemoError, DemoOptions, Sandbox, PG_TARGET, SSH_TARGET};

/// The line a script (or test) can wait for.
pub const READY: &str = "jitgate demo ready";

pub struct Instructions {
    pg_port: u16,
    ssh_port: Option<u16>,
    os_user: String,
    certs: String,
    alice: String,
    bob: String,
    ssh: Option<String>,
    pg_log: String,
    audit: String,
}

impl Instructions {
    pub fn new(
        sandbox: &Sandbox,
        opts: &DemoOptions,
        known_hosts: Option<&Path>,
    ) -> Result<Instructions, DemoError> {
        let certs = &sandbox.certs;
        let cert_file = |name: &str| certs.join(name).display().to_string();
        let conninfo = |user: &str| {
            format!(
                "host=127.0.0.1 port={port} dbname={PG_TARGET} user={user} sslmode=verify-full \
                 sslrootcert={ca} sslcert={crt} sslkey={key}",
                port = opts.pg_port,
                ca = libpq_value(&cert_file("ca.crt")),
                crt = libpq_value(&cert_file(&format!("{user}.crt"))),
                key = libpq_value(&cert_file(&format!("{user}.key"))),
            )
        };
        let psql = |user: &str, sql: &[&str]| {
            let mut line = format!("psql {}", sh_quote(&conninfo(user)));
            for statement in sql {
                line.push_str(&format!(" -c {}", sh_quote(statement)));
            }
            line
        };
        let ssh = if let Some(known_hosts) = known_hosts {
            let exe = std::env::current_exe()
                .map_err(|e| DemoError::Internal(format!("finding the jitgate binary: {e}")))?;
            // ssh expands %-tokens in both options and runs ProxyCommand with /bin/sh: its
            // words are quoted for that shell, the known_hosts path for ssh's own tokenizer,
            // and each whole option once more for the shell the line is pasted into.
            let word = |path: &str| sh_quote(path).replace('%', "%%");
            let proxy = format!(
                "ProxyCommand={exe} tunnel --gateway 127.0.0.1:{port} --cert {crt} --key {key} --ca {ca} {SSH_TARGET}",
                exe = word(&exe.display().to_string()),
                port = opts.ssh_port,
                crt = word(&cert_file("alice.crt")),
                key = word(&cert_file("alice.key")),
                ca = word(&cert_file("ca.crt")),
            );
            let known = ssh_quote(&known_hosts.display().to_string().replace('%', "%%"));
            Some(format!(
                "ssh -o {} -o {} alice@{SSH_TARGET}",
                sh_quote(&proxy),
                sh_quote(&format!("UserKnownHostsFile={known}")),
            ))
        } else {
            None
        };
        Ok(Instructions {
            pg_port: opts.pg_port,
            ssh_port: known_hosts.map(|_| opts.ssh_port),
            os_user: os_user(),
            certs: certs.display().to_string(),
            alice: psql(
                "alice",
                &[
                    "SELECT current_user",
                    "INSERT INTO orders (item, quantity) VALUES (2, 5) RETURNING *",
                ],
            ),
            bob: [
                psql("bob", &["SELECT * FROM orders"]),
                psql(
                    "bob",
                    &["INSERT INTO orders (item, quantity) VALUES (1, 1)"],
                ),
            ]
            .join("\n  "),
            ssh,
            pg_log: sandbox.pg_dir.join("postgres.log").display().to_string(),
            audit: {
                let exe = std::env::current_exe()
                    .map_err(|e| DemoError::Internal(format!("finding the jitgate binary: {e}")))?;
                format!(
                    "{} audit --config {}",
                    sh_quote(&exe.display().to_string()),
                    sh_quote(&sandbox.config_path.display().to_string())
                )
            },
        })
    }
}

impl fmt::Display for Instructions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\n{READY}: the gateway listens on 127.0.0.1:{} (PostgreSQL)",
            self.pg_port
        )?;
        if let Some(port) = self.ssh_port {
            write!(f, " and 127.0.0.1:{port} (SSH)")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "\nPaste these into another terminal, as {} (the private keys in {} are that user's, mode 0600):\n",
            self.os_user, self.certs
        )?;
        writeln!(
            f,
            "  # alice (group dba) reads and writes orders, as a role jitgate creates for this session only:\n  {}\n",
            self.alice
        )?;
        writeln!(
            f,
            "  # bob (group analyst) only reads: the SELECT works, the INSERT is refused (permission denied):\n  {}\n",
            self.bob
        )?;
        match &self.ssh {
            Some(ssh) => writeln!(
                f,
                "  # alice on {SSH_TARGET}, through jitgate's SSH bastion, as a Linux account made for this connection\n  \
                 # (add a command such as `id -un` at the end to run just that):\n  {ssh}\n"
            )?,
            None => writeln!(
                f,
                "  # (no SSH target: it needs root, to create Linux users; run the demo as root for it)\n"
            )?,
        }
        writeln!(
            f,
            "  # then review what they did: every session, one session's queries and commands, \
             a terminal replayed,\n  # and the hash chain checked:\n  {a} sessions\n  {a} show <session>\n  \
             {a} replay <session>\n  {a} verify\n",
            a = self.audit
        )?;
        writeln!(
            f,
            "Leave out the -c '…' parts for an interactive psql. The gateway logs each session and \
             account below; the target's side (every statement) is in {}.",
            self.pg_log
        )?;
        write!(
            f,
            "Ctrl-C stops the demo: it ends every session, drops every account it created, then stops \
             PostgreSQL{}.",
            if self.ssh.is_some() { " and sshd" } else { "" }
        )
    }
}

/// The name of the user running the demo, for "paste as …".
fn os_user() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "the user running this demo".to_string())
}

/// A word for a POSIX shell: as is when it has nothing special in it, else single-quoted.
pub fn sh_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// One word for ssh's option tokenizer (OpenSSH `argv_split`: whitespace separates words,
/// several files may be given): double-quoted, with `\` and `"` escaped, when needed.
fn ssh_quote(word: &str) -> String {
    if !word.is_empty() && !word.contains(|c: char| c.is_whitespace() || "'\"\\#".contains(c)) {
        word.to_string()
    } else {
        format!("\"{}\"", word.replace('\\', r"\\").replace('"', "\\\""))
    }
}

/// A value in a libpq connection string: quoted (`'…'`, with `\'` and `\\`) when it has
/// spaces, quotes or backslashes (PostgreSQL docs, 34.1.1.1 "Keyword/Value Connection Strings").
fn libpq_value(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\\', r"\\").replace('\'', r"\'"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// What `sh -c 'printf %s <quoted>'` makes of a quoted word.
    fn through_sh(quoted: &str) -> String {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf %s {quoted}"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn shell_words_survive_the_shell() {
        for word in [
            "/tmp/jitgate-demo/certs/alice.crt",
            "/tmp/my demo/it's here",
            "host=127.0.0.1 port=6432 sslkey='/a b'",
            "$HOME `x` \\ \"q\"",
            "",
        ] {
            assert_eq!(through_sh(&sh_quote(word)), word);
        }
        assert_eq!(sh_quote("/tmp/x/alice.key"), "/tmp/x/alice.key");
    }

    #[test]
    fn ssh_option_words_are_double_quoted_only_when_needed() {
        assert_eq!(ssh_quote("/tmp/x/known_hosts"), "/tmp/x/known_hosts");
        assert_eq!(ssh_quote("/tmp/a b/k"), r#""/tmp/a b/k""#);
        assert_eq!(ssh_quote(r#"/it's "q"\x"#), r#""/it's \"q\"\\x""#);
    }

    #[test]
    fn libpq_values_are_quoted_only_when_needed() {
        assert_eq!(libpq_value("/tmp/x/ca.crt"), "/tmp/x/ca.crt");
        assert_eq!(libpq_value("/tmp/my demo/ca.crt"), "'/tmp/my demo/ca.crt'");
        assert_eq!(libpq_value(r"/it's\here"), r"'/it\'s\\here'");
    }
}
