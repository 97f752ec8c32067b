//! The documentation and packaging stay true: every policy and config example in the README
//! validates, the shipped policies and configs load, the Dockerfile only names files and
//! commands that exist, and every subcommand the README uses has help.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{jitgate, jitgate_bin};

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The ```yaml blocks of the README.
fn readme_yaml_blocks() -> Vec<String> {
    let readme = fs::read_to_string(repo("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```yaml") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn shipped_policies_pass_policy_check() {
    let out = jitgate(&["policy", "check", repo("policies").to_str().unwrap()]);
    assert!(out.contains("all valid"), "{out}");
}

#[test]
fn every_policy_example_in_the_readme_passes_policy_check() {
    let examples: Vec<String> = readme_yaml_blocks()
        .into_iter()
        .filter(|b| b.starts_with("grants:"))
        .collect();
    assert!(!examples.is_empty(), "the README shows no policy");
    for (i, example) in examples.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(format!("readme-{i}.yaml")), example).unwrap();
        let out = Command::new(jitgate_bin())
            .args(["policy", "check"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README policy example {i} is invalid:\n{}\n{example}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_config_example_loads() {
    let examples: Vec<String> = readme_yaml_blocks()
        .into_iter()
        .filter(|b| b.contains("instance_id:"))
        .collect();
    assert!(!examples.is_empty(), "the README shows no config");
    for example in &examples {
        let config = jitgate::config::Config::from_yaml(&repo("README.md"), example);
        assert!(
            config.is_ok(),
            "README config example is invalid: {}\n{example}",
            config.err().unwrap()
        );
    }
    for file in ["jitgate.yaml", "docker/jitgate.yaml"] {
        let config = jitgate::config::Config::load(&repo(file));
        assert!(config.is_ok(), "{file}: {}", config.err().unwrap());
    }
}

#[test]
fn dockerfile_names_only_what_exists() {
    let dockerfile = fs::read_to_string(repo("Dockerfile")).unwrap();
    let mut copies = 0;
    for line in dockerfile.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("COPY ") {
            if rest.starts_with("--from=") {
                assert!(rest.contains("/target/release/jitgate "), "{line}");
                continue;
            }
            let words: Vec<&str> = rest.split_whitespace().collect();
            for source in &words[..words.len() - 1] {
                assert!(
                    repo(source).exists(),
                    "Dockerfile copies {source}, which is not in the repository"
                );
                copies += 1;
            }
        }
    }
    assert!(copies >= 5, "the Dockerfile copies too little: {copies}");
    let manifest = fs::read_to_string(repo("Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"jitgate\""));
    assert!(dockerfile.contains("--bin jitgate"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["jitgate"]"#));
    assert!(dockerfile.contains("USER jitgate"));
    // The commands it runs exist and take those arguments.
    for args in [&["serve", "--help"][..], &["probe", "--help"][..]] {
        let out = Command::new(jitgate_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "jitgate {args:?}");
    }
    assert!(dockerfile.contains(r#"CMD ["serve", "--config", "/etc/jitgate/jitgate.yaml"]"#));
    assert!(dockerfile.contains("COPY docker/jitgate.yaml /etc/jitgate/jitgate.yaml"));
    assert!(dockerfile.contains("EXPOSE 6432 2222"));
    let config = fs::read_to_string(repo("docker/jitgate.yaml")).unwrap();
    assert!(config.contains("0.0.0.0:6432") && config.contains("0.0.0.0:2222"));
}

#[test]
fn every_subcommand_has_help_and_the_readme_names_only_real_ones() {
    let help = jitgate(&["--help"]);
    let readme = fs::read_to_string(repo("README.md")).unwrap();
    for sub in [
        "serve",
        "tunnel",
        "ssh-config",
        "certs",
        "policy",
        "reap",
        "probe",
        "demo",
        "doctor",
    ] {
        assert!(help.contains(sub), "jitgate --help does not list {sub}");
        let out = Command::new(jitgate_bin())
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "jitgate {sub} --help");
    }
    let mut in_shell = false;
    for line in readme.lines().map(str::trim_start) {
        if line.starts_with("```") {
            in_shell = line == "```sh";
            continue;
        }
        if !in_shell {
            continue;
        }
        if let Some(rest) = line.strip_prefix("jitgate ") {
            let sub = rest.split_whitespace().next().unwrap_or("");
            if sub.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !sub.is_empty() {
                let out = Command::new(jitgate_bin())
                    .args([sub, "--help"])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "README runs `jitgate {sub}`, which does not exist"
                );
            }
        }
    }
}

#[test]
fn mistakes_get_one_line_errors() {
    let out = Command::new(jitgate_bin())
        .args(["serve", "--config", "/nonexistent/jitgate.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/jitgate.yaml"), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));

    let out = Command::new(jitgate_bin())
        .args(["certs", "issue", "--dir", "/nonexistent", "--user", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("jitgate certs init"),
        "says what to do: {stderr}"
    );

    let out = Command::new(jitgate_bin())
        .args(["serve", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error: unexpected argument '--bogus'")
    );
}

/// The `jitgate certs|policy|ssh-config` lines of the README, run as written (certificates
/// first, in a scratch directory with the shipped policies; `>> ~/.ssh/config` becomes a file
/// there).
#[test]
fn readme_certs_policy_and_ssh_config_commands_run_as_written() {
    let readme = fs::read_to_string(repo("README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo("policies"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let mut commands = Vec::new();
    let mut in_shell = false;
    for line in readme.lines().map(str::trim) {
        if line.starts_with("```") {
            in_shell = line == "```sh";
            continue;
        }
        let Some(rest) = line.strip_prefix("jitgate ") else {
            continue;
        };
        if !in_shell
            || !["certs ", "policy ", "ssh-config "]
                .iter()
                .any(|p| rest.starts_with(p))
        {
            continue;
        }
        commands.push(
            rest.split(" # ")
                .next()
                .unwrap()
                .replace("~/.ssh/config", "ssh_config"),
        );
    }
    // The README explains ssh before certificates; the certificates have to exist first.
    commands.sort_by_key(|c| !c.starts_with("certs "));
    let mut ran = 0;
    for command in commands {
        let script = format!("'{}' {command}", jitgate_bin().display());
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README: `jitgate {command}` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 8, "only {ran} README commands found");
    let block = fs::read_to_string(dir.path().join("ssh_config")).unwrap();
    assert!(
        block.contains("Host web-1 web-*") && block.contains("ProxyCommand"),
        "{block}"
    );
    assert!(dir.path().join("bob-certs/bob.crt").exists());
}

/// `policy check` warns where `sftp: false` / `port_forwards` promise more than they hold, and
/// `policy explain` says which kind of target a grant is for.
#[test]
fn policy_check_warns_and_explain_names_the_kind() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    fs::create_dir(&policies).unwrap();
    fs::write(
        policies.join("p.yaml"),
        "grants:\n  - name: web-locked\n    subjects: {users: [bob]}\n    targets: [\"*\"]\n    \
         ssh: {sftp: false, port_forwards: []}\n  - name: db\n    subjects: {users: [bob]}\n    \
         targets: [\"*\"]\n    postgres: {}\n",
    )
    .unwrap();
    let out = Command::new(jitgate_bin())
        .args(["policy", "check"])
        .arg(&policies)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "warning: {}:2:11: grant web-locked: sftp: false and port_forwards hold only \
             against clients that ask for them",
            policies.join("p.yaml").display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("a shell or exec on the target can still move files"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 grants, all valid"));

    let explain = |extra: &[&str]| {
        let out = Command::new(jitgate_bin())
            .args(["policy", "explain", "--policies"])
            .arg(&policies)
            .args(["--user", "bob", "--target", "web-1"])
            .args(extra)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ssh = explain(&["--kind", "ssh"]);
    assert!(
        ssh.contains("grant db (") && ssh.contains("  kind:     skipped: no ssh: section"),
        "{ssh}"
    );
    assert!(
        ssh.contains("     note: sftp: false and port_forwards"),
        "{ssh}"
    );
    assert!(
        ssh.ends_with("verdict: user=bob gets grant web-locked\n"),
        "{ssh}"
    );
    let pg = explain(&["--kind", "postgres"]);
    assert!(pg.ends_with("verdict: user=bob gets grant db\n"), "{pg}");
    // No --kind and no config here: both.
    let both = explain(&[]);
    assert!(
        both.contains("== as a postgres target") && both.contains("== as a ssh target"),
        "{both}"
    );
    // With the config, its entry decides.
    fs::write(
        dir.path().join("jitgate.yaml"),
        fs::read_to_string(repo("jitgate.yaml")).unwrap(),
    )
    .unwrap();
    let out = Command::new(jitgate_bin())
        .args(["policy", "explain", "--policies"])
        .arg(&policies)
        .args(["--user", "bob", "--target", "orders"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("target orders (postgres)"), "{text}");
    assert!(!text.contains("== as"), "{text}");
}
