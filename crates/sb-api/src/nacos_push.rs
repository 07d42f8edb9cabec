//! Nacos 1.x UDP push: a subscriber that passes `clientIP` and `udpPort` to
//! `instance/list` is sent the service's new list as soon as it changes, instead of
//! waiting for its next poll.
//!
//! A packet is `{"type":"dom","data":"<the instance/list JSON>","lastRefTime":<n>}`,
//! gzipped when it is over 1 KiB (the client checks the gzip magic). The client answers
//! `{"type":"push-ack","lastRefTime":"<n>","data":""}`; a push not acknowledged is sent
//! again (at most `MAX_ATTEMPTS` times). A subscriber that stops polling is forgotten
//! after `SUBSCRIBER_TTL` (Nacos clients poll every `cacheMillis`). Tables are bounded.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sb_registry::names::{parse_key, RegistryKey};
use sb_registry::{Registry, ServiceId};
use sb_store::ViewChange;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::nacos_naming::{list_query, service_info_json, PUSH_CACHE_MILLIS};

const GZIP_ABOVE_BYTES: usize = 1024;
const SUBSCRIBER_TTL: Duration = Duration::from_secs(30);
const MAX_SUBSCRIBERS: usize = 100_000;
const MAX_PENDING: usize = 100_000;
const MAX_ATTEMPTS: u32 = 3;
const RETRY_AFTER: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
struct Subscriber {
    clusters: String,
    healthy_only: bool,
    last_seen: Instant,
}

struct Pending {
    target: SocketAddr,
    packet: Arc<Vec<u8>>,
    attempts: u32,
    sent_at: Instant,
}

pub struct NamingPush {
    socket: Arc<UdpSocket>,
    subscribers: Mutex<HashMap<ServiceId, HashMap<SocketAddr, Subscriber>>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_ref: AtomicU64,
    /// How many subscribers the table holds (kept beside it, so a poll never sums it).
    subscriber_count: std::sync::atomic::AtomicUsize,
    pushes: AtomicU64,
    acks: AtomicU64,
}

impl NamingPush {
    /// Binds the push socket (an ephemeral UDP port on every interface) and starts the
    /// push, ack and retry tasks; they end when `shutdown` turns true.
    pub async fn start(
        registry: Arc<Registry>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Arc<NamingPush>> {
        let socket = Arc::new(UdpSocket::bind("0.0.0.0:0").await?);
        let push = Arc::new(NamingPush {
            socket,
            subscribers: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_ref: AtomicU64::new(crate::nacos_naming::now_ms() * 1_000_000),
            subscriber_count: std::sync::atomic::AtomicUsize::new(0),
            pushes: AtomicU64::new(0),
            acks: AtomicU64::new(0),
        });
        tokio::spawn(until_shutdown(shutdown.clone(), push.clone().push_changes(registry)));
        tokio::spawn(until_shutdown(shutdown.clone(), push.clone().receive_acks()));
        tokio::spawn(until_shutdown(shutdown, push.clone().retry()));
        Ok(push)
    }

    /// Adds or refreshes a subscriber of a service.
    pub fn subscribe(&self, id: ServiceId, clusters: String, healthy_only: bool, target: SocketAddr) {
        let subscriber = Subscriber { clusters, healthy_only, last_seen: Instant::now() };
        let mut subscribers = self.subscribers.lock();
        if let Some(known) = subscribers.get_mut(&id).and_then(|entry| entry.get_mut(&target)) {
            *known = subscriber;
            return;
        }
        if self.subscriber_count.load(Ordering::Relaxed) >= MAX_SUBSCRIBERS {
            warn!(limit = MAX_SUBSCRIBERS, "too many UDP push subscribers; this one polls only");
            return;
        }
        subscribers.entry(id).or_default().insert(target, subscriber);
        self.subscriber_count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn subscriber_count(&self) -> usize {
        self.subscriber_count.load(Ordering::Relaxed)
    }

    /// Pushes sent and acknowledgements received so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.pushes.load(Ordering::Relaxed), self.acks.load(Ordering::Relaxed))
    }

    async fn push_changes(self: Arc<Self>, registry: Arc<Registry>) {
        let mut changes = registry.view().subscribe();
        loop {
            let services: Vec<ServiceId> = match changes.recv().await {
                Ok(ViewChange::Applied { events, .. }) => {
                    let mut ids: Vec<ServiceId> = events
                        .iter()
                        .filter_map(|e| match parse_key(&e.kv.key)? {
                            RegistryKey::Service(id) | RegistryKey::Instance(id, _) => Some(id),
                        })
                        .collect();
                    ids.sort();
                    ids.dedup();
                    ids
                }
                Ok(ViewChange::Reset { .. }) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    self.subscribers.lock().keys().cloned().collect()
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            for id in services {
                self.push_service(&registry, &id).await;
            }
        }
    }

    async fn push_service(&self, registry: &Registry, id: &ServiceId) {
        let now = Instant::now();
        let targets: Vec<(SocketAddr, Subscriber)> = {
            let mut subscribers = self.subscribers.lock();
            let Some(entry) = subscribers.get_mut(id) else { return };
            let before = entry.len();
            entry.retain(|_, s| now.saturating_duration_since(s.last_seen) < SUBSCRIBER_TTL);
            self.subscriber_count.fetch_sub(before - entry.len(), Ordering::Relaxed);
            let targets = entry.iter().map(|(a, s)| (*a, s.clone())).collect();
            if entry.is_empty() {
                subscribers.remove(id);
            }
            targets
        };
        for (target, subscriber) in targets {
            let selection =
                registry.instances(id, &list_query(&subscriber.clusters, subscriber.healthy_only));
            let data = service_info_json(registry, id, &subscriber.clusters, &selection, PUSH_CACHE_MILLIS);
            let last_ref = self.next_ref.fetch_add(1, Ordering::Relaxed);
            let packet =
                serde_json::json!({"type": "dom", "data": data.to_string(), "lastRefTime": last_ref});
            let packet = Arc::new(encode_packet(packet.to_string().into_bytes()));
            {
                let mut pending = self.pending.lock();
                if pending.len() < MAX_PENDING {
                    pending.insert(
                        last_ref,
                        Pending { target, packet: packet.clone(), attempts: 1, sent_at: now },
                    );
                }
            }
            self.pushes.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = self.socket.send_to(&packet, target).await {
                debug!(%target, %error, "UDP push failed");
            }
        }
    }

    async fn receive_acks(self: Arc<Self>) {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let Ok((n, from)) = self.socket.recv_from(&mut buffer).await else { continue };
            let Ok(ack) = serde_json::from_slice::<serde_json::Value>(&buffer[..n]) else { continue };
            if ack.get("type").and_then(|t| t.as_str()) != Some("push-ack") {
                continue;
            }
            let last_ref = match ack.get("lastRefTime") {
                Some(serde_json::Value::String(s)) => s.parse::<u64>().ok(),
                Some(v) => v.as_u64(),
                None => None,
            };
            if let Some(last_ref) = last_ref {
                if self.pending.lock().remove(&last_ref).is_some() {
                    self.acks.fetch_add(1, Ordering::Relaxed);
                    debug!(%from, last_ref, "UDP push acknowledged");
                }
            }
        }
    }

    /// Forgets subscribers that stopped polling, across every service.
    fn sweep_subscribers(&self, now: Instant) {
        let mut subscribers = self.subscribers.lock();
        let mut removed = 0;
        subscribers.retain(|_, entry| {
            let before = entry.len();
            entry.retain(|_, s| now.saturating_duration_since(s.last_seen) < SUBSCRIBER_TTL);
            removed += before - entry.len();
            !entry.is_empty()
        });
        self.subscriber_count.fetch_sub(removed, Ordering::Relaxed);
    }

    async fn retry(self: Arc<Self>) {
        let mut tick: u64 = 0;
        loop {
            tokio::time::sleep(RETRY_AFTER).await;
            let now = Instant::now();
            tick += 1;
            if tick.is_multiple_of(20) {
                self.sweep_subscribers(now);
            }
            let resend: Vec<(SocketAddr, Arc<Vec<u8>>)> = {
                let mut pending = self.pending.lock();
                pending.retain(|_, p| {
                    p.attempts < MAX_ATTEMPTS || now.saturating_duration_since(p.sent_at) < RETRY_AFTER
                });
                pending
                    .values_mut()
                    .filter(|p| now.saturating_duration_since(p.sent_at) >= RETRY_AFTER)
                    .map(|p| {
                        p.attempts += 1;
                        p.sent_at = now;
                        (p.target, p.packet.clone())
                    })
                    .collect()
            };
            for (target, packet) in resend {
                let _ = self.socket.send_to(&packet, target).await;
            }
        }
    }
}

async fn until_shutdown(
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    task: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        _ = task => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
}

/// Gzips a packet over 1 KiB, as Nacos's push service does.
fn encode_packet(bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() <= GZIP_ABOVE_BYTES {
        return bytes;
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    match encoder.write_all(&bytes).and_then(|()| encoder.finish()) {
        Ok(gzipped) => gzipped,
        Err(_) => bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn large_packets_are_gzipped() {
        let small = b"{\"type\":\"dom\"}".to_vec();
        assert_eq!(encode_packet(small.clone()), small);
        let large = vec![b'a'; 4096];
        let packet = encode_packet(large.clone());
        assert_eq!(&packet[..2], &[0x1f, 0x8b]);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&packet[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, large);
    }
}
