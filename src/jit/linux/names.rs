//! Names that reach the target: the JIT account name and the person's home directory name.
//! Both are built from the certificate's user name, which may contain anything, so both are
//! reduced to characters that need no quoting anywhere (they are still shell-escaped).

use russh::keys::HashAlg;

use crate::jit::lease::random_suffix;

/// Longest user name `useradd` accepts.
pub(crate) const MAX_ACCOUNT_NAME: usize = 32;
const ACCOUNT_PREFIX: &str = "jit-";
/// 36^8 ≈ 2.8e12 names per person: a collision is an error, not a shared account.
const SUFFIX_LEN: usize = 8;
/// A person directory name kept as given is at most this long.
const PERSON_PLAIN_MAX: usize = 48;
const PERSON_STEM_MAX: usize = 32;

/// `jit-<sanitised user>-<8 random>`: a valid POSIX user name (`[a-z_][a-z0-9_-]*`) of at most
/// 32 characters, whatever the user name is.
pub fn account_name(user: &str) -> String {
    let budget = MAX_ACCOUNT_NAME - ACCOUNT_PREFIX.len() - 1 - SUFFIX_LEN;
    let clean = sanitise(user, budget);
    format!("{ACCOUNT_PREFIX}{clean}-{}", random_suffix(SUFFIX_LEN))
}

/// Whether `name` has the shape [`account_name`] makes (the reaper only considers these).
pub fn is_account_name(name: &str) -> bool {
    name.len() <= MAX_ACCOUNT_NAME
        && name.starts_with(ACCOUNT_PREFIX)
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The directory name of a person's persistent home (`<state_dir>/home/<this>`). One person,
/// one directory, and never two persons in one: a name that is already plain
/// (`[a-z0-9][a-z0-9_-]*`, ≤ 48) is kept; any other becomes `<sanitised>.<16 hex of SHA-256>`,
/// whose `.` no plain name has.
pub fn person_dir_name(user: &str) -> String {
    let plain = !user.is_empty()
        && user.len() <= PERSON_PLAIN_MAX
        && user
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if plain {
        return user.to_string();
    }
    let digest = HashAlg::Sha256.digest(user.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{}.{hex}", sanitise(user, PERSON_STEM_MAX))
}

/// Whether `name` could have come from [`person_dir_name`].
pub fn is_person_dir_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= PERSON_PLAIN_MAX + 1 + 16
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        })
}

fn sanitise(user: &str, max: usize) -> String {
    crate::jit::sanitise_user(user, max)
}

/// What a home directory is, judged by its path (as the removal script must treat it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HomeKind {
    /// `<state_dir>/home/<person>`: locked back (root:root 0700) at removal.
    Persistent,
    /// `<state_dir>/tmp-home/<account>`: removed with the account.
    Ephemeral,
    /// Anything else: not jitgate's to touch.
    Other,
}

impl HomeKind {
    pub(crate) fn of(state_dir: &str, account: &str, home: &str) -> HomeKind {
        if home == format!("{state_dir}/tmp-home/{account}") && is_account_name(account) {
            return HomeKind::Ephemeral;
        }
        match home.strip_prefix(&format!("{state_dir}/home/")) {
            Some(person) if is_person_dir_name(person) => HomeKind::Persistent,
            Some(_) | None => HomeKind::Other,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HomeKind::Persistent => "persistent",
            HomeKind::Ephemeral => "ephemeral",
            HomeKind::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posix(name: &str) -> bool {
        let mut bytes = name.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && name.len() <= 32
    }

    #[test]
    fn account_names_are_posix_bounded_and_random() {
        let alice = account_name("alice");
        assert!(alice.starts_with("jit-alice-"), "{alice}");
        assert_eq!(alice.len(), "jit-alice-".len() + 8);
        assert!(posix(&alice) && is_account_name(&alice), "{alice}");
        assert_ne!(account_name("alice"), account_name("alice"));

        let hostile = account_name("a'; rm -rf / #");
        assert!(hostile.starts_with("jit-a_rm_rf-"), "{hostile}");
        assert!(posix(&hostile), "{hostile}");

        for user in [
            "",
            "'",
            "é",
            "Bob.Smith@Example.COM",
            &"x".repeat(300),
            "$(reboot)",
            "a\nb",
            "-rf",
        ] {
            let name = account_name(user);
            assert!(posix(&name) && is_account_name(&name), "{user:?} -> {name}");
            assert!(name.len() <= 32, "{name}");
        }
        assert!(account_name("").starts_with("jit-user-"));
        assert!(account_name(&"x".repeat(300)).len() == 32);
        assert!(!is_account_name("root"));
        assert!(!is_account_name("jit-Upper"));
    }

    #[test]
    fn person_dirs_are_injective_and_plain() {
        assert_eq!(person_dir_name("alice"), "alice");
        assert_eq!(person_dir_name("svc-report_1"), "svc-report_1");
        let upper = person_dir_name("Alice");
        assert!(upper.starts_with("alice."), "{upper}");
        assert_eq!(upper.len(), "alice.".len() + 16);
        // Different people never share a directory, even when they sanitise alike.
        let names = [
            "Alice", "alice", "ALICE", "a.lice", "a lice", "a_lice", "a'lice",
        ];
        let dirs: std::collections::HashSet<String> =
            names.iter().map(|n| person_dir_name(n)).collect();
        assert_eq!(dirs.len(), names.len(), "{dirs:?}");
        assert_eq!(person_dir_name("Alice"), person_dir_name("Alice"));
        for user in ["", "../../etc", "/", ".hidden", "-x", "a/b", "é"] {
            let dir = person_dir_name(user);
            assert!(is_person_dir_name(&dir), "{user:?} -> {dir}");
            assert!(!dir.contains('/') && dir != "." && dir != "..", "{dir}");
        }
        assert!(!is_person_dir_name(".."));
        assert!(!is_person_dir_name("a/b"));
    }

    #[test]
    fn home_kinds_by_path() {
        let s = "/var/lib/jitgate";
        let a = "jit-alice-abcd1234";
        assert_eq!(
            HomeKind::of(s, a, "/var/lib/jitgate/home/alice"),
            HomeKind::Persistent
        );
        assert_eq!(
            HomeKind::of(s, a, "/var/lib/jitgate/tmp-home/jit-alice-abcd1234"),
            HomeKind::Ephemeral
        );
        for other in [
            "/var/lib/jitgate/tmp-home/jit-bob-abcd1234",
            "/var/lib/jitgate/home/../etc",
            "/var/lib/jitgate/home/a/b",
            "/var/lib/jitgate/home/",
            "/home/alice",
            "/",
        ] {
            assert_eq!(HomeKind::of(s, a, other), HomeKind::Other, "{other}");
        }
    }
}
