//! One-shot lease keep-alives over one long-lived etcd keep-alive stream.
//!
//! etcd renews leases only through a bidirectional stream. Opening one per call would
//! cost a stream setup per heartbeat, so one task owns a stream for the whole store and
//! answers each call from the stream's responses (etcd answers every request, in order,
//! with the lease id and its TTL; TTL 0 means the lease is gone). A stream that breaks is
//! reopened for the calls still waiting, and lazily for the next call, so keep-alives
//! survive reconnects.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use etcd_client::{LeaseClient, LeaseKeepAliveStream, LeaseKeeper};
use sb_store::{LeaseId, StoreError, StoreResult};
use tokio::sync::{mpsc, oneshot};

use crate::failure::{timed, Failure};

type Reply = oneshot::Sender<StoreResult<i64>>;

pub(crate) struct KeepAliveMux {
    calls: mpsc::Sender<(LeaseId, Reply)>,
    timeout: Duration,
}

impl KeepAliveMux {
    pub fn spawn(client: LeaseClient, timeout: Duration) -> Self {
        let (calls, rx) = mpsc::channel(1024);
        let task = KeepAliveTask { client, timeout, stream: None, waiters: HashMap::new() };
        tokio::spawn(task.run(rx));
        KeepAliveMux { calls, timeout }
    }

    /// Renews `id` and returns its full TTL.
    pub async fn keep_alive(&self, id: LeaseId) -> StoreResult<i64> {
        let (reply, answer) = oneshot::channel();
        self.calls.send((id, reply)).await.map_err(|_| StoreError::Closed)?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd did not answer the keep-alive of lease {id} within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

struct KeepAliveTask {
    client: LeaseClient,
    timeout: Duration,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// Callers waiting for an answer, per lease, in request order.
    waiters: HashMap<i64, VecDeque<Reply>>,
}

enum Step {
    Call(LeaseId, Reply),
    Answer(i64, i64),
    Broken(String),
    Closed,
}

impl KeepAliveTask {
    async fn run(mut self, mut calls: mpsc::Receiver<(LeaseId, Reply)>) {
        loop {
            let step = match &mut self.stream {
                Some((_, stream)) => tokio::select! {
                    call = calls.recv() => call.map_or(Step::Closed, |(id, reply)| Step::Call(id, reply)),
                    message = stream.message() => match message {
                        Ok(Some(answer)) => Step::Answer(answer.id(), answer.ttl()),
                        Ok(None) => Step::Broken("the stream ended".into()),
                        Err(e) => Step::Broken(e.to_string()),
                    },
                },
                None => calls.recv().await.map_or(Step::Closed, |(id, reply)| Step::Call(id, reply)),
            };
            match step {
                Step::Closed => return,
                Step::Call(id, reply) => {
                    self.waiters.entry(id.0).or_default().push_back(reply);
                    self.send(id.0).await;
                }
                Step::Answer(id, ttl) => self.answer(id, ttl),
                Step::Broken(reason) => {
                    tracing::debug!(%reason, "lease keep-alive stream broke, reopening it");
                    self.stream = None;
                    self.resend_waiting().await;
                }
            }
        }
    }

    fn answer(&mut self, id: i64, ttl: i64) {
        let Some(queue) = self.waiters.get_mut(&id) else {
            return;
        };
        if let Some(reply) = queue.pop_front() {
            let result = if ttl <= 0 { Err(StoreError::LeaseNotFound(LeaseId(id))) } else { Ok(ttl) };
            let _ = reply.send(result);
        }
        if queue.is_empty() {
            self.waiters.remove(&id);
        }
    }

    /// Sends one keep-alive request for `id`, opening the stream first if needed.
    async fn send(&mut self, id: i64) {
        if let Some((keeper, _)) = &mut self.stream {
            keeper.id = id;
            if keeper.keep_alive().await.is_ok() {
                return;
            }
            self.stream = None;
        }
        match timed(self.timeout, self.client.keep_alive(id)).await {
            Ok((mut keeper, stream)) => {
                // Opening renewed the lease, but etcd-client keeps that answer's TTL to
                // itself: ask once more, and answer the caller from that.
                if keeper.keep_alive().await.is_ok() {
                    self.stream = Some((keeper, stream));
                } else {
                    self.fail(id, StoreError::Unavailable("lease keep-alive stream closed".into()));
                }
            }
            Err(failure) => {
                let error = match failure {
                    Failure::LeaseNotFound => StoreError::LeaseNotFound(LeaseId(id)),
                    other => other.into_store_error(),
                };
                self.fail(id, error);
            }
        }
    }

    fn fail(&mut self, id: i64, error: StoreError) {
        for reply in self.waiters.remove(&id).into_iter().flatten() {
            let _ = reply.send(Err(error.clone()));
        }
    }

    /// After a broken stream: one request per caller still waiting, on a new stream.
    async fn resend_waiting(&mut self) {
        self.waiters.retain(|_, queue| {
            queue.retain(|reply| !reply.is_closed());
            !queue.is_empty()
        });
        let pending: Vec<(i64, usize)> = self.waiters.iter().map(|(id, q)| (*id, q.len())).collect();
        for (id, count) in pending {
            for _ in 0..count {
                self.send(id).await;
            }
        }
    }
}
