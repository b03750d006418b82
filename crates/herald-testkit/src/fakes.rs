//! Test doubles for the seams Herald owns: a transport that fails on
//! demand and records what it was asked to send, and a broadcast sink that
//! records realtime events.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald_core::channel::Receipt;
use herald_core::realtime::{Broadcast, RealtimeEvent};
use herald_core::{Channel, ChannelError, ChannelKind, RenderedMessage};
use tokio::sync::Notify;

/// What the next send does.
#[derive(Debug, Clone)]
pub enum Step {
    Succeed,
    Transient {
        retry_after: Option<Duration>,
    },
    Permanent,
    /// Never returns, as a worker killed mid-send; `started` is notified.
    Hang,
}

#[derive(Debug, Default)]
struct State {
    script: VecDeque<Step>,
    sent: Vec<RenderedMessage>,
    calls: usize,
}

/// A transport for one channel kind. Sends succeed unless a scripted step
/// says otherwise; every accepted message is kept.
#[derive(Debug, Clone)]
pub struct FakeChannel {
    kind: ChannelKind,
    state: Arc<Mutex<State>>,
    /// Notified (one permit) whenever a send starts.
    pub started: Arc<Notify>,
}

impl FakeChannel {
    pub fn new(kind: ChannelKind) -> Self {
        FakeChannel {
            kind,
            state: Arc::default(),
            started: Arc::new(Notify::new()),
        }
    }

    /// Queues the outcomes of the next sends, in order.
    pub fn script(&self, steps: impl IntoIterator<Item = Step>) {
        self.state.lock().unwrap().script.extend(steps);
    }

    /// Every message accepted so far.
    pub fn sent(&self) -> Vec<RenderedMessage> {
        self.state.lock().unwrap().sent.clone()
    }

    /// Every send attempted so far, failed ones included.
    pub fn calls(&self) -> usize {
        self.state.lock().unwrap().calls
    }
}

#[async_trait]
impl Channel for FakeChannel {
    fn kind(&self) -> ChannelKind {
        self.kind
    }

    fn provider(&self) -> &str {
        "fake"
    }

    async fn send(&self, message: &RenderedMessage) -> Result<Receipt, ChannelError> {
        let step = {
            let mut state = self.state.lock().unwrap();
            state.calls += 1;
            state.script.pop_front().unwrap_or(Step::Succeed)
        };
        self.started.notify_one();
        match step {
            Step::Succeed => {
                let mut state = self.state.lock().unwrap();
                state.sent.push(message.clone());
                Ok(Receipt {
                    provider_message_id: Some(format!("fake-{}", state.sent.len())),
                })
            }
            Step::Transient { retry_after } => Err(ChannelError::Transient {
                reason: "provider returned 503".into(),
                retry_after,
            }),
            Step::Permanent => Err(ChannelError::permanent("provider rejected the address")),
            Step::Hang => std::future::pending().await,
        }
    }
}

/// Records every realtime event instead of sending it to sockets.
#[derive(Debug, Default, Clone)]
pub struct RecordingBroadcast(Arc<Mutex<Vec<RealtimeEvent>>>);

impl RecordingBroadcast {
    pub fn events(&self) -> Vec<RealtimeEvent> {
        self.0.lock().unwrap().clone()
    }
}

impl Broadcast for RecordingBroadcast {
    fn broadcast(&self, event: RealtimeEvent) {
        self.0.lock().unwrap().push(event);
    }
}
