//! The provisioning scripts `jit::linux` runs on a target: one POSIX `sh` script per operation,
//! sent on stdin to `sh -s` (so no value shows in the target's process list or sudo log).
//!
//! Each script is a header of `name='value'` assignments, every value escaped by
//! [`shell_quote`], followed by a constant body that only ever uses those variables. The whole
//! body is one `{ … } </dev/null` group: the shell parses it completely before running it, and
//! no command in it can read (eat) the rest of the script from stdin.

use std::fmt::Write as _;

/// Exit status of the removal script when the account is not this lease's (outside group
/// `jitgate`, another marker, another UID): nothing was changed.
pub(crate) const NOT_OURS: u32 = 3;

/// `value` as one single-quoted shell word: `'…'`, with each `'` written as `'\''`. Inside
/// single quotes the shell interprets nothing (POSIX.1-2017 XCU 2.2.2), so the word is `value`
/// byte for byte. NUL cannot be part of a shell word (nor a C string) and is dropped.
pub fn shell_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("'\\''"),
            '\0' => {}
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Variables for a script header, in order.
#[derive(Default)]
pub(crate) struct Vars(Vec<(&'static str, String)>);

impl Vars {
    pub(crate) fn set(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.0.push((name, value.into()));
        self
    }

    /// The complete script: the assignments, then `body`.
    pub(crate) fn script(&self, body: &str) -> String {
        let mut out = String::from("# jitgate provisioning script\n");
        for (name, value) in &self.0 {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{name}={}", shell_quote(value));
        }
        out.push_str(body);
        out
    }
}

/// Shared start of every body: strict mode, no globbing, a known PATH, `fail`.
const PRELUDE: &str = r#"{
set -euf
umask 022
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
fail() { echo "jitgate: $*" >&2; exit 1; }
# Prints `process PID (COMM)` for a process whose working directory, root or an open file is
# $1 or below it, and succeeds; fails when there is none. A home is walked (chowned) only
# while this finds nothing and its top directory is root-owned 0700: then no process but
# root's can reach inside it, so no path can be swapped under the walk.
in_use() {
    pat=$(printf '%s' "$1" | sed 's/[][*?\\]/\\&/g')
    hit=$(find /proc -mindepth 1 -maxdepth 3 -regextype posix-extended \
        ! -regex '/proc/[0-9]+(/(cwd|root|fd(/[0-9]+)?))?' -prune -o \
        -regex '/proc/[0-9]+/(cwd|root|fd/[0-9]+)' \
        \( -lname "$pat" -o -lname "$pat/*" -o -lname "$pat (deleted)" \) -print 2>/dev/null |
        head -n 1)
    [ -n "$hit" ] || return 1
    pid=$(printf '%s\n' "$hit" | cut -d/ -f3)
    printf 'process %s (%s)\n' "$pid" "$(cat "/proc/$pid/comm" 2>/dev/null || echo gone)"
}
# Gives the home's contents to $2 (uid:gid): `-execdir` runs chown from inside each
# directory find has opened (never re-resolving a parent path) and `-h` changes a symlink,
# never what it points to. Hard-linked files (link count > 1) are left alone: chown would
# also give away whatever other name they have. The top directory is the caller's.
chown_contents() {
    find "$1" -xdev -mindepth 1 \( -type d -o -links 1 \) -execdir chown -h "$2" {} +
}
"#;

/// Creates a JIT account. Needs: state, account, person, home_mode, uid_lo, uid_hi, groups
/// (comma-separated, may be empty), expire (YYYY-MM-DD), marker, pubkey, sudo (0/1).
/// Prints `uid=`, `home=`, `home_mode=` and maybe `note=` lines. On any failure everything it
/// did is undone (EXIT trap), so a failed mint leaves nothing behind.
pub(crate) const MINT: &str = r#"
# sshd's StrictModes refuses a home below a directory that is not root-owned or is group- or
# world-writable: check every existing ancestor of the state directory.
d=$(dirname "$state")
while :; do
    if [ -e "$d" ]; then
        [ -d "$d" ] || fail "$d is not a directory"
        [ "$(stat -L -c %u "$d")" = 0 ] || fail "$d is not owned by root (sshd StrictModes would refuse homes below it)"
        mode=$(stat -L -c %a "$d")
        case $mode in *[2367]?|*[2367]) fail "$d is group- or world-writable (mode $mode); sshd StrictModes would refuse homes below it" ;; esac
    fi
    [ "$d" = / ] && break
    d=$(dirname "$d")
done
for d in "$state" "$state/home" "$state/tmp-home"; do
    [ -L "$d" ] && fail "$d is a symbolic link"
    mkdir -p "$d"
    chown 0:0 "$d"
    chmod 0711 "$d"
done

exec 9>>"$state/lock"
chmod 0600 "$state/lock"
flock -w 60 9 || fail "timed out after 60s waiting for $state/lock"

created=0
group_made=0
home_made=
lent=
sudoers=
sudoers_tmp=
uid=
undo() {
    set +e
    [ -z "$sudoers_tmp" ] || rm -f "$sudoers_tmp"
    [ -z "$sudoers" ] || rm -f "$sudoers"
    if [ "$created" = 1 ]; then
        pkill -KILL -u "$account"
        userdel "$account"
    fi
    if [ "$group_made" = 1 ] && getent group "$account" >/dev/null; then
        groupdel "$account"
    fi
    if [ -n "$lent" ]; then
        chown 0:0 "$lent"
        chmod 0700 "$lent"
        find "$lent" -xdev -mindepth 1 \( -uid "$uid" -o -gid "$uid" \) -execdir chown -h 0:0 {} +
    fi
    [ -z "$home_made" ] || rm -rf "$home_made"
}
trap 'rc=$?; if [ "$rc" != 0 ]; then undo; fi; exit "$rc"' EXIT

groupadd -f jitgate
if [ -n "$groups" ]; then
    IFS=,
    for g in $groups; do
        getent group "$g" >/dev/null || fail "group $g (given by the policy) does not exist on the target"
    done
    IFS=' '
fi
if [ "$sudo" = 1 ]; then
    command -v visudo >/dev/null || fail "the grant allows sudo but visudo (sudo) is not installed on the target"
    [ -d /etc/sudoers.d ] || fail "the grant allows sudo but /etc/sudoers.d does not exist on the target"
fi
getent passwd "$account" >/dev/null && fail "account $account exists already"
getent group "$account" >/dev/null && fail "group $account exists already"
if [ -x /bin/bash ]; then shell=/bin/bash; else shell=/bin/sh; fi

note=
if [ "$home_mode" = persistent ]; then
    home="$state/home/$person"
    if [ -L "$home" ] || { [ -e "$home" ] && [ ! -d "$home" ]; }; then
        fail "$home is not a directory"
    fi
    if [ -d "$home" ]; then
        owner=$(stat -c %u "$home")
        # Root-owned: locked away, free to lend. Owned by an existing account: lent to
        # another connection of this person right now. Owned by a UID that no longer exists:
        # left by a crash; lent anew below.
        if [ "$owner" != 0 ] && holder=$(getent passwd "$owner"); then
            note="persistent home $home is in use by ${holder%%:*} (another connection of the same person); this connection gets an ephemeral home"
            home_mode=ephemeral
        else
            # Locked (again: a crash may have left it owned by a removed UID) before it is
            # looked into, so nothing outside can enter it from here on.
            chown 0:0 "$home"
            chmod 0700 "$home"
            if busy=$(in_use "$home"); then
                note="persistent home $home is held open by $busy; it is not lent while anything runs inside it, so this connection gets an ephemeral home"
                home_mode=ephemeral
            fi
        fi
    else
        mkdir -m 0700 "$home"
    fi
fi
if [ "$home_mode" = ephemeral ]; then
    home="$state/tmp-home/$account"
    mkdir -m 0700 "$home"
    home_made=$home
fi

# UIDs: a counter walks the range once before any UID is used twice; after it has wrapped, a
# UID is taken only if nothing under the homes, /tmp, /var/tmp or /dev/shm is owned by it.
owns_files() {
    for where in "$state/home" "$state/tmp-home" /tmp /var/tmp /dev/shm; do
        [ -d "$where" ] || continue
        if [ -n "$(find "$where" -xdev \( -uid "$1" -o -gid "$1" \) -print 2>/dev/null | head -n 1)" ]; then
            return 0
        fi
    done
    return 1
}
next=$(cat "$state/next-uid" 2>/dev/null || true)
case $next in ''|*[!0-9]*) next=$uid_lo ;; esac
if [ "$next" -lt "$uid_lo" ] || [ "$next" -gt "$uid_hi" ]; then next=$uid_lo; fi
span=$((uid_hi - uid_lo + 1))
tries=0
all_groups=jitgate${groups:+,$groups}
while [ "$created" = 0 ]; do
    [ "$tries" -lt "$span" ] || fail "no free UID left in $uid_lo-$uid_hi"
    tries=$((tries + 1))
    cand=$next
    if [ "$next" -ge "$uid_hi" ]; then
        next=$uid_lo
        : >"$state/uid-wrapped"
    else
        next=$((next + 1))
    fi
    getent passwd "$cand" >/dev/null && continue
    getent group "$cand" >/dev/null && continue
    if [ -e "$state/uid-wrapped" ] && owns_files "$cand"; then continue; fi
    # The private group gets GID = UID: `useradd -U` would take a GID from the system's
    # ordinary range, which is reused freely, and hand the group's files to a later group.
    # Exit status 4 is "ID taken" (by someone who does not use our lock): try the next.
    rc=0
    groupadd -g "$cand" "$account" || rc=$?
    case $rc in
        0) group_made=1 ;;
        4) continue ;;
        *) fail "groupadd $account failed (exit $rc)" ;;
    esac
    # Password field `*`: no password login, but not locked (`!`), which sshd without PAM
    # refuses even for key logins.
    rc=0
    useradd -u "$cand" -g "$cand" -G "$all_groups" -d "$home" -M -s "$shell" -c "$marker" \
        -e "$expire" -p '*' "$account" || rc=$?
    case $rc in
        0) created=1; uid=$cand ;;
        4) groupdel "$account"; group_made=0 ;;
        *) fail "useradd $account failed (exit $rc)" ;;
    esac
done
printf '%s\n' "$next" >"$state/next-uid.tmp"
chmod 0600 "$state/next-uid.tmp"
mv -f "$state/next-uid.tmp" "$state/next-uid"
gid=$uid

# The key, written while only root can reach the home (no process of this person runs, so
# nothing can swap a path under us); symlinks left in .ssh are replaced, never followed.
if [ -L "$home/.ssh" ] || { [ -e "$home/.ssh" ] && [ ! -d "$home/.ssh" ]; }; then
    rm -f "$home/.ssh"
fi
mkdir -p "$home/.ssh"
chmod 0700 "$home/.ssh"
rm -f "$home/.ssh/authorized_keys" "$home/.ssh/authorized_keys2"
printf '%s\n' "$pubkey" >"$home/.ssh/authorized_keys"
chmod 0600 "$home/.ssh/authorized_keys"

# Lend the home: its contents while the top is still root-owned 0700 and nothing runs
# inside (checked above), then the top itself.
[ "$home_mode" = persistent ] && lent=$home
chown_contents "$home" "$uid:$gid"
chown "$uid:$gid" "$home"
chmod 0700 "$home"

if [ "$sudo" = 1 ]; then
    # sudo skips files in sudoers.d whose name contains a `.`: the temporary one is inert.
    sudoers="/etc/sudoers.d/jitgate-$account"
    sudoers_tmp="/etc/sudoers.d/.jitgate-$account.tmp"
    printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$account" >"$sudoers_tmp"
    chmod 0440 "$sudoers_tmp"
    visudo -cf "$sudoers_tmp" >/dev/null || fail "the sudoers file for $account does not pass visudo -cf"
    mv -f "$sudoers_tmp" "$sudoers"
    sudoers_tmp=
fi

trap - EXIT
echo "uid=$uid"
echo "home=$home"
echo "home_mode=$home_mode"
[ -z "$note" ] || echo "note=$note"
} </dev/null
"#;

/// Removes a JIT account. Needs: state, account, uid, home, home_kind
/// (persistent | ephemeral | other), instance, lease. Refuses (exit [`NOT_OURS`]) an account
/// outside group `jitgate`, without this lease's marker, or with another UID. An account that
/// is already gone is success (its sudoers file and home are still cleaned up). Prints
/// `removed=` or `gone=`, and `note=` lines for what the operator should know.
pub(crate) const REMOVE: &str = r#"
# The state lock serialises what another account's creation touches too: a persistent home's
# hand-back and the account's UID and name going free. What is the account's alone (its
# processes, jobs, IPC objects, set-id files) is done before taking it: its UID stays its own
# until userdel, which runs under the lock, and UIDs are not reused before the counter wraps.
lock_state() {
    if [ -d "$state" ] && [ ! -L "$state" ]; then
        exec 9>>"$state/lock"
        flock -w 60 9 || fail "timed out after 60s waiting for $state/lock"
    fi
}
not_ours() { echo "jitgate: $account $*; left untouched" >&2; exit 3; }
# The account's GIDs (its own, jitgate, the granted ones), read while it still exists.
gids=$uid

# Processes that belong to the account whatever UID they run as now: the real or saved UID
# (for `kill -1` run as the account), the audit login UID that sshd's pam_loginuid set (kept
# across sudo and setsid), and SUDO_UID in the environment sudo gave its command (for a
# target whose sshd runs without PAM).
escaped_pids() {
    ps -e -o pid= -o luid= -o stat= | awk -v u="$uid" '$2 == u && $3 !~ /^Z/ { print $1 }'
    set +f
    grep -lsxzF -e "SUDO_UID=$uid" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 || true
    set -f
}
# A zombie is already dead (it only waits for its parent, often init, to reap it; some
# inits take seconds): it is not waited for, which is also why userdel gets --force.
alive() {
    ps -e -o uid= -o ruid= -o stat= |
        awk -v u="$uid" '($1 == u || $2 == u) && $3 !~ /^Z/ { found = 1 } END { exit !found }' && return 0
    [ -n "$(escaped_pids)" ]
}
kill_all() {
    # On systemd hosts the account's slice holds its sessions, sudo'ed children included.
    if [ -d /run/systemd/system ] && command -v loginctl >/dev/null; then
        loginctl terminate-user "$uid" >/dev/null 2>&1 || true
    fi
    i=0
    while alive; do
        # kill(-1) as the account signals every process it could signal, in one system call,
        # so a fork storm cannot outrun it (kill(2): -1 is all but the caller).
        setpriv --reuid="$uid" --regid="$uid" --clear-groups -- kill -KILL -1 >/dev/null 2>&1 || true
        for p in $(escaped_pids); do kill -s KILL "$p" 2>/dev/null || true; done
        i=$((i + 1))
        [ "$i" -le 50 ] || fail "processes of $account survive SIGKILL after 5s"
        sleep 0.1
    done
}
# What outlives processes: cron and at jobs, SysV IPC objects it created or owns, its mail.
remove_leftovers() {
    if command -v crontab >/dev/null; then crontab -r -u "$account" >/dev/null 2>&1 || true; fi
    if command -v atq >/dev/null && command -v atrm >/dev/null; then
        atq 2>/dev/null | awk -v a="$account" '$NF == a { print $1 }' |
            while read -r job; do atrm "$job" 2>/dev/null || true; done
    fi
    if command -v ipcs >/dev/null && command -v ipcrm >/dev/null; then
        for kind in m q s; do
            ipcs "-$kind" -c 2>/dev/null |
                awk -v a="$account" -v u="$uid" '$1 ~ /^[0-9]+$/ && ($3 == a || $3 == u || $5 == a || $5 == u) { print $1 }' |
                while read -r id; do ipcrm "-$kind" "$id" 2>/dev/null || true; done
        done
    fi
    rm -f "/var/mail/$account" "/var/spool/mail/$account"
}
# Set-id files the account could leave behind, owned by its UID or carrying one of its
# groups (`chgrp <granted group> f; chmod g+s f`), wherever a JIT account can write on a
# stock Debian host. Each one is opened without following a symlink, checked to be the very
# file find saw (device and inode) and still set-id and ours, and changed through that
# descriptor: a live account that swaps a path cannot point the change elsewhere.
strip_setid() {
    set --
    for where in "$home" /tmp /var/tmp /dev/shm "/run/user/$uid" /var/mail; do
        if [ -d "$where" ] && [ ! -L "$where" ]; then set -- "$@" "$where"; fi
    done
    [ $# -gt 0 ] || return 0
    set -- "$@" -xdev -type f -perm /6000 \( -uid "$uid"
    for g in $gids; do set -- "$@" -o -gid "$g"; done
    set -- "$@" \) -printf '%D %i %p\0'
    if command -v perl >/dev/null; then
        find "$@" 2>/dev/null | perl -e '
            use strict; use Fcntl qw(O_RDONLY O_NOFOLLOW O_NONBLOCK O_NOCTTY);
            my ($uid, @gids) = @ARGV; my %ours = map { $_ => 1 } @gids; my $n = 0;
            local $/ = "\0";
            while (my $rec = <STDIN>) {
                chomp $rec;
                my ($dev, $ino, $path) = split / /, $rec, 3;
                sysopen(my $fh, $path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY) or next;
                my @st = stat($fh) or next;
                next unless -f _ && $st[0] == $dev && $st[1] == $ino;
                next unless $st[4] == $uid || $ours{$st[5]};
                next unless $st[2] & 06000;
                $n++ if chmod($st[2] & 01777, $fh);
            }
            print "setid_stripped=$n\n";' "$uid" $gids || true
    else
        # No perl (not a stock Debian/Ubuntu host): by path, from inside each directory.
        find "$@" -execdir chmod ug-s {} + 2>/dev/null || true
        echo "note=perl is missing on this target: set-id bits were stripped by path"
    fi
}
# Locks a persistent home away (root-owned 0700, nothing in it owned by the account) or
# removes an ephemeral one. Runs once the account's processes are gone and before the
# account is deleted, so that "the account is gone" always means "its home is locked".
release_home() {
    case $home_kind in
        persistent)
            if [ -d "$home" ] && [ ! -L "$home" ]; then
                # Lent since to another live account of the person (this removal runs again
                # for an account already gone: a retried drop, the reaper): it is theirs now.
                owner=$(stat -c %u "$home")
                if [ "$owner" != 0 ] && [ "$owner" != "$uid" ] && getent passwd "$owner" >/dev/null; then
                    echo "note=persistent home $home is lent to another account now; left to it"
                    return 0
                fi
                chown 0:0 "$home"
                chmod 0700 "$home"
                if busy=$(in_use "$home"); then
                    # Locked, but not walked while something could swap paths inside it; the
                    # next lend (which also checks) hands its contents on.
                    echo "note=persistent home $home is locked but its contents were not taken back: $busy has it open"
                    return 0
                fi
                if [ -d "$home/.ssh" ] && [ ! -L "$home/.ssh" ]; then
                    rm -f "$home/.ssh/authorized_keys" "$home/.ssh/authorized_keys2"
                fi
                find "$home" -xdev -mindepth 1 \( -uid "$uid" -o -gid "$uid" \) -execdir chown -h 0:0 {} +
                find "$home" -xdev -mindepth 1 -type d -perm /022 -execdir chmod go-w {} +
            fi
            ;;
        ephemeral)
            rm -rf "$home"
            ;;
        other) ;;
    esac
}

# Whether the account exists now as this lease's: 0 yes, 1 gone; one by that name that is not
# ours exits (NOT_OURS) untouched. Asked again once the lock is held: another removal of it (a
# retried drop, a reaper, the watchdog) may have finished meanwhile.
ours() {
    entry=$(getent passwd "$account") || return 1
    found_uid=$(printf '%s\n' "$entry" | cut -d: -f3)
    gecos=$(printf '%s\n' "$entry" | cut -d: -f5)
    members=$(getent group jitgate | cut -d: -f4 || true)
    case ",$members," in *",$account,"*) ;; *) not_ours "is not a member of group jitgate" ;; esac
    case $gecos in
        "jitgate-managed instance=$instance lease=$lease "*) ;;
        *) not_ours "does not carry the marker of lease $lease" ;;
    esac
    [ "$found_uid" = "$uid" ] || not_ours "has UID $found_uid, not $uid"
}

if ours; then
    gids=$(id -G "$account" 2>/dev/null || echo "$uid")
    # No new sudo, no new login (`!` in the password field and an expiry date in the past),
    # then kill until nothing of the account runs. Nothing inside the home is touched while
    # its processes live: they could swap a path for a symlink.
    rm -f "/etc/sudoers.d/jitgate-$account"
    usermod -L -e 1970-01-02 "$account" >/dev/null 2>&1 || true
    kill_all
    remove_leftovers
    strip_setid
fi
lock_state
if ours; then
    release_home
    # --force only skips userdel's "user is logged in" check (zombies count there); without
    # --remove it deletes no files.
    userdel --force "$account" || fail "userdel $account failed"
    # userdel removes the private group itself only when USERGROUPS_ENAB is yes.
    if getent group "$account" >/dev/null; then groupdel "$account" || true; fi
    echo "removed=$account"
else
    # Gone already (an earlier removal stopped half-way, or one ran meanwhile): finish the
    # rest all the same.
    rm -f "/etc/sudoers.d/jitgate-$account"
    # The UID is free again only if no account took it since.
    if ! getent passwd "$uid" >/dev/null; then
        kill_all
        strip_setid
    fi
    release_home
    echo "gone=$account"
fi

} </dev/null
"#;

/// Lists the members of group `jitgate`: one line `<1 if it has processes, else 0>:<passwd
/// entry>` each.
pub(crate) const LIST: &str = r#"
members=$(getent group jitgate | cut -d: -f4 || true)
IFS=,
for m in $members; do
    if entry=$(getent passwd "$m"); then
        uid=$(printf '%s\n' "$entry" | cut -d: -f3)
        if pgrep -u "$uid" >/dev/null; then busy=1; else busy=0; fi
        printf '%s:%s\n' "$busy" "$entry"
    fi
done
} </dev/null
"#;

/// Removal as the watchdog runs it for each account: [`PRELUDE`] and [`REMOVE`] without a
/// header; the watchdog passes the values in the environment (see [`WATCHDOG`]).
pub(crate) fn remove_without_header() -> String {
    format!("{PRELUDE}{REMOVE}")
}

/// This instance's liveness lock on the target, held by the exec that runs this script, which
/// is also the target's watchdog for the instance. Needs: state, instance, grace (seconds for
/// `sleep`), remove ([`remove_without_header`]). The script is sent on stdin and stdin stays
/// open: the gateway never sends anything more but `bye`, so the end of stdin (fd 8 below) is
/// the end of the gateway's connection (sshd closes the session's pipes when the connection
/// ends, whether the gateway was killed or the host lost; no signal is sent to a session
/// without a pty).
///
/// It takes `flock` on `<state>/instances/<instance>` (waiting up to 10 s for a previous
/// holder to let go), prints `locked` and from then on writes only to
/// `<state>/instances/<instance>.log`. When stdin ends it lets the lock go, so that a
/// reconnecting gateway can take it back, and waits `grace`; if the lock is still free after
/// that, no gateway of this instance came back: it takes the lock and removes every member of
/// group `jitgate` whose marker names this instance, each with the very removal script the
/// gateway runs (marker, UID and group checked again inside it), then lets the lock go.
/// `bye` on stdin (a clean stop that dropped every account) ends it at once.
pub(crate) const WATCHDOG: &str = r#"
[ -L "$state" ] && fail "$state is a symbolic link"
mkdir -p "$state/instances"
[ -L "$state/instances" ] && fail "$state/instances is a symbolic link"
chown 0:0 "$state/instances"
chmod 0700 "$state/instances"
lockfile="$state/instances/$instance"
log="$state/instances/$instance.log"
[ -L "$lockfile" ] && fail "$lockfile is a symbolic link"
[ -L "$log" ] && fail "$log is a symbolic link"
exec 7>>"$lockfile"
chmod 0600 "$lockfile"
note() { printf '%s pid=%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$$" "$*" >>"$log"; }
if ! flock -w 10 7; then
    echo "busy"
    exit 4
fi
note "lock taken; watching the gateway's connection"
echo "locked"
exec >>"$log" 2>&1
# A lost connection closes stdout too: nothing may die of SIGPIPE, nor of a hangup.
trap '' HUP PIPE
said=
while IFS= read -r word <&8; do
    case $word in bye) said=bye; break ;; esac
done
flock -u 7
if [ "$said" = bye ]; then
    note "the gateway stopped cleanly; nothing to do"
    exit 0
fi
note "the gateway's connection ended; waiting ${grace}s for it to take the lock back"
sleep "$grace" 7>&- 8<&-
if ! flock -n 7; then
    note "the lock was taken back within the grace; nothing to do"
    exit 0
fi
note "no gateway took the lock back within ${grace}s: removing this instance's accounts"
removed=0
failed=0
members=$(getent group jitgate | cut -d: -f4 || true)
IFS=,
for m in $members; do
    entry=$(getent passwd "$m") || continue
    name=$(printf '%s\n' "$entry" | cut -d: -f1)
    uid=$(printf '%s\n' "$entry" | cut -d: -f3)
    gecos=$(printf '%s\n' "$entry" | cut -d: -f5)
    home=$(printf '%s\n' "$entry" | cut -d: -f6)
    case $name in jit-*) ;; *) continue ;; esac
    case $name in *[!a-z0-9_-]*) continue ;; esac
    [ "${#name}" -le 32 ] || continue
    case $uid in ''|*[!0-9]*) continue ;; esac
    case $gecos in "jitgate-managed instance=$instance lease="*) ;; *) continue ;; esac
    lease=${gecos#"jitgate-managed instance=$instance lease="}
    lease=${lease%% *}
    case $lease in ''|*[!0-9a-fA-F]*) continue ;; esac
    [ "${#lease}" -eq 16 ] || continue
    kind=other
    if [ "$home" = "$state/tmp-home/$name" ]; then
        kind=ephemeral
    else
        case $home in
            "$state/home/"*)
                person=${home#"$state/home/"}
                case $person in
                    ''|.*|-*|*[!a-z0-9_.-]*) ;;
                    *) if [ "${#person}" -le 65 ]; then kind=persistent; fi ;;
                esac
                ;;
        esac
    fi
    rc=0
    printf '%s' "$remove" | state="$state" account="$name" uid="$uid" home="$home" \
        home_kind="$kind" instance="$instance" lease="$lease" /bin/sh -s 7>&- 8<&- || rc=$?
    if [ "$rc" = 0 ]; then
        removed=$((removed + 1))
        note "removed $name (lease $lease)"
    else
        failed=$((failed + 1))
        note "removing $name (lease $lease) failed (exit status $rc)"
    fi
done
IFS=' '
note "done: $removed removed, $failed failed"
flock -u 7
exit 0
} 8<&0 </dev/null
"#;

/// Asks about other instances' liveness locks. Needs: state, instances (space-separated
/// instance ids, each already checked to be one). Prints `<instance>=alive|gone|unknown`:
/// `gone` when its lock file's `flock` is free (taken and let go at once: the prober never
/// keeps it), `unknown` when there is no lock file (that instance never held a lock here).
pub(crate) const PROBE: &str = r#"
IFS=' '
for i in $instances; do
    f="$state/instances/$i"
    if [ -f "$f" ] && [ ! -L "$f" ] && [ ! -L "$state/instances" ]; then
        exec 6<"$f"
        if flock -n 6; then echo "$i=gone"; else echo "$i=alive"; fi
        exec 6<&-
    else
        echo "$i=unknown"
    fi
done
} </dev/null
"#;

/// The full text of a script: header, prelude, body.
pub(crate) fn build(vars: &Vars, body: &str) -> String {
    vars.script(&format!("{PRELUDE}{body}"))
}

/// Every `key=value` line's value for `key`, in order.
pub(crate) fn output_values<'a>(stdout: &'a str, key: &'a str) -> impl Iterator<Item = &'a str> {
    stdout.lines().filter_map(move |line| {
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
    })
}

/// The first `key=value` line's value for `key`.
pub(crate) fn output_value<'a>(stdout: &'a str, key: &'a str) -> Option<&'a str> {
    output_values(stdout, key).next()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::process::{Command, Stdio};

    /// Runs `sh -c 'printf %s <quoted>'` and returns what the shell made of the word.
    fn through_sh(value: &str) -> Vec<u8> {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(value)))
            .stdin(Stdio::null())
            .output()
            .expect("run /bin/sh");
        assert!(out.status.success(), "{out:?}");
        out.stdout
    }

    #[test]
    fn quoting_is_exact_for_hostile_values() {
        assert_eq!(shell_quote("abc"), "'abc'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
        for value in [
            "a'; rm -rf / #",
            "$(touch /tmp/jitgate-pwned)",
            "`id`",
            "\"double\" and 'single'",
            "back\\slash\\",
            "new\nline",
            "tab\tand * glob ? [x]",
            "'''",
            "~root",
            "-n",
            "é ü 中文",
            "${HOME} $PATH !! %s",
        ] {
            assert_eq!(through_sh(value), value.as_bytes(), "{value:?}");
        }
        assert_eq!(shell_quote("a\0b"), "'ab'");
    }

    #[test]
    fn header_assigns_quoted_values() {
        let vars = Vars::default()
            .set("account", "jit-a-1")
            .set("marker", "x'; reboot; '");
        let script = build(&vars, "echo \"$account|$marker\"\n}\n");
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .expect("run /bin/sh");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "jit-a-1|x'; reboot; '\n"
        );
    }

    #[test]
    fn scripts_parse() {
        // `sh -n` reads without running: every body is syntactically valid POSIX sh.
        for (name, body) in [
            ("mint", MINT),
            ("remove", REMOVE),
            ("list", LIST),
            ("watchdog", WATCHDOG),
            ("probe", PROBE),
        ] {
            let script = build(&Vars::default().set("state", "/nonexistent"), body);
            let out = Command::new("/bin/sh")
                .arg("-n")
                .arg("-c")
                .arg(&script)
                .output()
                .expect("run /bin/sh");
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn output_values() {
        let out = "uid=200001\nhome=/var/lib/jitgate/home/alice\nnote=a=b\n";
        assert_eq!(output_value(out, "uid"), Some("200001"));
        assert_eq!(
            output_value(out, "home"),
            Some("/var/lib/jitgate/home/alice")
        );
        assert_eq!(output_value(out, "note"), Some("a=b"));
        assert_eq!(output_value(out, "home_mode"), None);
    }
}
