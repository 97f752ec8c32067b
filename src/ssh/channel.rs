//! One client channel spliced to one upstream channel. Session channels keep every message
//! kind apart — data, stderr as extended data, EOF, exit-status, exit-signal, close — and
//! direct-tcpip channels are plain byte streams. Writes go through window-aware channel
//! writers and russh's bounded channel queues, so a fast side waits for a slow one.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::{client, server, Channel, ChannelMsg, ChannelWriteHalf};

use super::audit::ChannelAudit;
use tokio::sync::oneshot;

/// How long a forwarded channel request may wait for the target's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers the upstream owes for requests sent with want-reply. SSH answers them in order
/// per channel (RFC 4254 §5.4), so a queue is enough.
#[derive(Default, Clone)]
struct PendingReplies(Arc<Mutex<VecDeque<oneshot::Sender<bool>>>>);

impl PendingReplies {
    fn push(&self, tx: oneshot::Sender<bool>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(tx);
    }

    fn fail_all(&self) {
        for tx in self.0.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = tx.send(false);
        }
    }

    fn answer(&self, ok: bool) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
            let _ = tx.send(ok);
        }
    }
}

/// The handler's side of a spliced session channel: where to send the client's requests.
pub struct SplicedChannel {
    upstream: Arc<ChannelWriteHalf<client::Msg>>,
    pending: PendingReplies,
}

impl SplicedChannel {
    /// Sends a want-reply request upstream and waits for its answer, so the handler can
    /// answer the client only once the target has (russh keeps one want-reply flag per channel).
    pub async fn request<F, Fut>(&self, send: F) -> bool
    where
        F: FnOnce(Arc<ChannelWriteHalf<client::Msg>>) -> Fut,
        Fut: Future<Output = Result<(), russh::Error>>,
    {
        let (tx, rx) = oneshot::channel();
        self.pending.push(tx);
        if send(self.upstream.clone()).await.is_err() {
            return false;
        }
        matches!(tokio::time::timeout(REPLY_TIMEOUT, rx).await, Ok(Ok(true)))
    }

    /// For requests without a reply (window-change, signal).
    pub fn upstream(&self) -> &ChannelWriteHalf<client::Msg> {
        &self.upstream
    }
}

/// What a session channel's upstream reported at its end, for the audit.
#[derive(Debug, Default, Clone)]
pub struct ChannelOutcome {
    pub exit_status: Option<u32>,
    pub exit_signal: Option<String>,
}

/// Starts the two pumps of a session channel and returns the handler's side. Every data
/// message is shown to `tap` (the channel's audit) as it passes; when the upstream side
/// closes, `on_end` is called once with the outcome and the tap finishes.
pub fn splice_session(
    client: Channel<server::Msg>,
    upstream: Channel<client::Msg>,
    client_handle: server::Handle,
    tap: Arc<ChannelAudit>,
    on_end: impl FnOnce(ChannelOutcome) + Send + 'static,
) -> SplicedChannel {
    let client_id = client.id();
    let (mut client_read, client_write) = client.split();
    let (mut upstream_read, upstream_write) = upstream.split();
    let upstream_write = Arc::new(upstream_write);
    let pending = PendingReplies::default();

    let up = upstream_write.clone();
    let input_tap = tap.clone();
    tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(msg) = client_read.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => {
                    input_tap.input(&data, &mut events);
                    emit_all(&input_tap, &mut events).await;
                    up.data_bytes(data).await
                }
                ChannelMsg::ExtendedData { data, ext } => up.extended_data_bytes(ext, data).await,
                ChannelMsg::Eof => up.eof().await,
                ChannelMsg::Close => break,
                // Requests arrive here too, but the handler forwards them and answers them.
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = up.close().await;
    });

    let answers = pending.clone();
    tokio::spawn(async move {
        let mut outcome = ChannelOutcome::default();
        let mut events = Vec::new();
        // The target's EOF is passed on only once its exit status (or the close) is there: a
        // client that has sent its own EOF may close the channel as soon as it sees ours —
        // OpenSSH's ControlMaster does — and an exit status sent after that is lost. sshd
        // sends EOF and exit status close together, so holding EOF back costs a client nothing.
        let mut eof_held = false;
        while let Some(msg) = upstream_read.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => {
                    tap.output(&data, &mut events);
                    emit_all(&tap, &mut events).await;
                    client_write.data_bytes(data).await.is_ok()
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    tap.output(&data, &mut events);
                    client_write.extended_data_bytes(ext, data).await.is_ok()
                }
                ChannelMsg::Eof => {
                    eof_held = true;
                    true
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    outcome.exit_status = Some(exit_status);
                    client_write.exit_status(exit_status).await.is_ok()
                        && release_eof(&client_write, &mut eof_held).await
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => {
                    outcome.exit_signal = Some(format!("{signal_name:?}"));
                    client_handle
                        .exit_signal_request(
                            client_id,
                            signal_name,
                            core_dumped,
                            error_message,
                            lang_tag,
                        )
                        .await
                        .is_ok()
                        && release_eof(&client_write, &mut eof_held).await
                }
                ChannelMsg::Success => {
                    answers.answer(true);
                    true
                }
                ChannelMsg::Failure => {
                    answers.answer(false);
                    true
                }
                ChannelMsg::Close => break,
                _ => true,
            };
            if !sent {
                break;
            }
        }
        answers.fail_all();
        release_eof(&client_write, &mut eof_held).await;
        let _ = client_write.close().await;
        tap.finish(&outcome).await;
        on_end(outcome);
    });

    SplicedChannel {
        upstream: upstream_write,
        pending,
    }
}

/// Sends an EOF held back by the pump, if any; false if the client side is gone.
async fn release_eof(client: &ChannelWriteHalf<server::Msg>, held: &mut bool) -> bool {
    !std::mem::take(held) || client.eof().await.is_ok()
}

async fn emit_all(tap: &ChannelAudit, events: &mut Vec<crate::audit::sftp::SftpEvent>) {
    for event in events.drain(..) {
        tap.audit().emit(event).await;
    }
}

/// Splices a direct-tcpip channel (ssh -L) as a byte stream until either side closes;
/// `on_end` gets the bytes relayed (from the client, to the client).
pub fn splice_stream<F>(
    client: Channel<server::Msg>,
    upstream: Channel<client::Msg>,
    on_end: impl FnOnce(u64, u64) -> F + Send + 'static,
) where
    F: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut client = client.into_stream();
        let mut upstream = upstream.into_stream();
        let (from_client, to_client) = tokio::io::copy_bidirectional(&mut client, &mut upstream)
            .await
            .unwrap_or_default();
        on_end(from_client, to_client).await;
    });
}
