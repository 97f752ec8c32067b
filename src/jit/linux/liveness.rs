//! This instance's liveness lock on an SSH target, and the target's watchdog for it: one
//! long-lived admin exec ([`script::WATCHDOG`]) on an SSH connection of its own holds `flock`
//! on `<state_dir>/instances/<instance>` for as long as that connection lives. When it ends
//! (the gateway killed, the host lost) the exec lets the lock go, waits `watchdog_grace` for a
//! reconnecting gateway to take it back, and if none did, removes the instance's accounts on
//! the target itself — so a gateway that never comes back leaves nothing running there.
//! Other instances' reapers ask about the lock with [`script::PROBE`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use russh::client::{Handle, Msg};
use russh::{Channel, ChannelMsg};

use super::script::{self, Vars};
use super::{admin_shell, LinuxProvisioner};
use crate::jit::liveness::{hold, LivenessSender, LockHolder, Owner, Release, PROBE_TIMEOUT};
use crate::jit::provisioner::Provisioner;
use crate::ssh_client::{connect_pinned, PinnedHost};

/// How long a clean stop waits for the watchdog to acknowledge `bye` (its channel closing).
const BYE_WAIT: Duration = Duration::from_secs(3);

/// The exec holding the lock, and the connection it lives on.
struct Holder {
    _handle: Handle<PinnedHost>,
    channel: Channel<Msg>,
}

impl LinuxProvisioner {
    /// Holds this instance's liveness lock on the target until `release` says stop, and tells
    /// `held` whenever that changes; `grace` is the watchdog's. Runs for the gateway's life.
    pub async fn hold_liveness(
        self: Arc<Self>,
        grace: Duration,
        held: LivenessSender,
        release: Release,
    ) {
        let watchdog = Watchdog {
            provisioner: &self,
            grace,
        };
        hold(&watchdog, held, release).await;
    }

    /// Whether the target shows no account of this instance (checked within
    /// [`PROBE_TIMEOUT`]); only then may the watchdog stand down at once.
    async fn none_left(&self) -> bool {
        match tokio::time::timeout(PROBE_TIMEOUT, self.managed()).await {
            Ok(Ok(accounts)) => !accounts
                .iter()
                .any(|a| a.marker.instance == self.instance_id),
            Ok(Err(_)) | Err(_) => false,
        }
    }

    /// A new admin connection whose exec holds the lock, or why not.
    async fn take_liveness_lock(&self, grace: Duration) -> Result<Holder, String> {
        let handle = connect_pinned(
            &self.target,
            &self.target.admin.user,
            self.admin_key.expose(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let text = script::build(
            &Vars::default()
                .set("state", self.target.state_dir.as_str())
                .set("instance", self.instance_id.as_str())
                .set("grace", sleep_seconds(grace))
                .set("remove", script::remove_without_header()),
            script::WATCHDOG,
        );
        let mut channel = handle
            .channel_open_session()
            .await
            .map_err(|e| format!("cannot open an SSH channel: {e}"))?;
        channel
            .exec(true, admin_shell(&self.target))
            .await
            .map_err(|e| format!("exec request: {e}"))?;
        // The script, and no EOF: the end of its stdin is the end of this connection.
        channel
            .data(text.as_bytes())
            .await
            .map_err(|e| format!("sending the watchdog script: {e}"))?;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    stdout.extend_from_slice(&data);
                    let text = String::from_utf8_lossy(&stdout);
                    if text.lines().any(|l| l == "locked") {
                        return Ok(Holder {
                            _handle: handle,
                            channel,
                        });
                    }
                    if text.lines().any(|l| l == "busy") {
                        return Err(format!(
                            "{}/instances/{} is locked by another process: another gateway \
                             runs with this instance_id, or this instance's previous \
                             connection has not ended on the target yet",
                            self.target.state_dir, self.instance_id
                        ));
                    }
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => stderr.extend_from_slice(&data),
                Some(ChannelMsg::Failure) => return Err("exec request refused".to_string()),
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    return Err(format!(
                        "the watchdog script exited (status {exit_status}): {}",
                        one_line(&stderr)
                    ))
                }
                Some(ChannelMsg::Close) | None => {
                    return Err(format!(
                        "the channel closed before the lock was taken: {}",
                        one_line(&stderr)
                    ))
                }
                Some(_) => {}
            }
        }
    }

    /// Asks the target, for each of `instances` (never this instance's own), whether its
    /// liveness lock is free. One exec for all of them, within [`PROBE_TIMEOUT`]; anything
    /// that goes wrong makes the answers [`Owner::Unknown`].
    pub(super) async fn probe_locks(&self, instances: &[&str]) -> HashMap<String, Owner> {
        let mut answers: HashMap<String, Owner> = instances
            .iter()
            .map(|i| (i.to_string(), Owner::Unknown))
            .collect();
        // Only ids a config accepts reach the script: a marker may say anything.
        let asked: Vec<&str> = instances
            .iter()
            .copied()
            .filter(|i| *i != self.instance_id && crate::config::is_instance_id(i))
            .collect();
        if asked.is_empty() {
            return answers;
        }
        const OP: &str = "asking about other instances' liveness locks";
        let text = script::build(
            &Vars::default()
                .set("state", self.target.state_dir.as_str())
                .set("instances", asked.join(" ")),
            script::PROBE,
        );
        let out = match tokio::time::timeout(PROBE_TIMEOUT, self.run_script(OP, text)).await {
            Ok(Ok(out)) if out.success() => out,
            Ok(Ok(out)) => {
                let e = self.script_error(OP, &out);
                tracing::warn!(target_name = %self.target.name, error = %crate::logsafe::diagnostic(&e.to_string()), "liveness probe failed");
                return answers;
            }
            Ok(Err(e)) => {
                tracing::warn!(target_name = %self.target.name, error = %crate::logsafe::diagnostic(&e.to_string()), "liveness probe failed");
                return answers;
            }
            Err(_) => {
                tracing::warn!(target_name = %self.target.name, "liveness probe did not finish within {}s", PROBE_TIMEOUT.as_secs());
                return answers;
            }
        };
        for (instance, owner) in parse_probe(&out.stdout_text()) {
            if let Some(answer) = answers.get_mut(instance) {
                *answer = owner;
            }
        }
        answers
    }
}

/// The lock as a `flock` held by the watchdog exec, which removes what is left after `grace`
/// once its connection ends.
struct Watchdog<'a> {
    provisioner: &'a LinuxProvisioner,
    grace: Duration,
}

impl LockHolder for Watchdog<'_> {
    type Held = Holder;

    fn target_name(&self) -> &str {
        &self.provisioner.target.name
    }

    fn take(&self) -> impl Future<Output = Result<Holder, String>> + Send {
        self.provisioner.take_liveness_lock(self.grace)
    }

    fn watch(holder: &mut Holder) -> impl Future<Output = String> + Send {
        watch_channel(&mut holder.channel)
    }

    async fn let_go(&self, mut holder: Holder, release: &Release) {
        if release.is_clean() && self.provisioner.none_left().await {
            say_bye(&mut holder.channel).await;
        }
        // Otherwise the connection just closes: the watchdog waits its grace and removes
        // what this instance left on the target.
    }

    fn log_lost(&self, why: &str) {
        tracing::warn!(target_name = %self.provisioner.target.name, reason = %crate::logsafe::diagnostic(why), grace_s = self.grace.as_secs_f64(), "liveness lock lost (its admin exec ended); taking it again — meanwhile other instances may reap this instance's accounts on the target, and its watchdog removes them after the grace");
    }
}

/// Lines `<instance>=alive|gone|unknown` → answers (anything else is skipped).
fn parse_probe(stdout: &str) -> Vec<(&str, Owner)> {
    stdout
        .lines()
        .filter_map(|line| {
            let (instance, state) = line.split_once('=')?;
            let owner = match state {
                "alive" => Owner::Alive,
                "gone" => Owner::Gone,
                "unknown" => Owner::Unknown,
                _ => return None,
            };
            Some((instance, owner))
        })
        .collect()
}

/// Waits until the exec holding the lock ends, or its connection does; why.
async fn watch_channel(channel: &mut Channel<Msg>) -> String {
    loop {
        match channel.wait().await {
            None => return "the admin connection closed".to_string(),
            Some(ChannelMsg::Close) => return "the channel closed".to_string(),
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                return format!("the watchdog exited (status {exit_status})")
            }
            Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                return format!("the watchdog was killed (signal {signal_name:?})")
            }
            // Its stdout ends (EOF) as soon as it writes to its log file instead.
            Some(_) => {}
        }
    }
}

/// Tells the watchdog this instance stopped cleanly (no account left), so it ends at once.
async fn say_bye(channel: &mut Channel<Msg>) {
    if channel.data(&b"bye\n"[..]).await.is_err() || channel.eof().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(BYE_WAIT, async {
        while let Some(msg) = channel.wait().await {
            if matches!(msg, ChannelMsg::Close | ChannelMsg::ExitStatus { .. }) {
                return;
            }
        }
    })
    .await;
}

/// `grace` as `sleep(1)` takes it: whole seconds, or seconds with up to three decimals.
fn sleep_seconds(grace: Duration) -> String {
    let millis = grace.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        format!("{}.{:03}", millis / 1000, millis % 1000)
    }
}

fn one_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        "(no message)".to_string()
    } else {
        crate::yaml::printable(&words.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_answers_are_parsed() {
        let out = "gw-2=gone\ngw-3=alive\ngw-4=unknown\ngw-5=maybe\ngarbage\n";
        assert_eq!(
            parse_probe(out),
            [
                ("gw-2", Owner::Gone),
                ("gw-3", Owner::Alive),
                ("gw-4", Owner::Unknown)
            ]
        );
    }

    #[test]
    fn grace_is_written_for_sleep() {
        assert_eq!(sleep_seconds(Duration::from_secs(30)), "30");
        assert_eq!(sleep_seconds(Duration::from_millis(2500)), "2.500");
        assert_eq!(sleep_seconds(Duration::from_millis(5)), "0.005");
        assert_eq!(sleep_seconds(Duration::ZERO), "0");
    }
}
