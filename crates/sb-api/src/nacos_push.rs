//! Nacos 1.x UDP push: a subscriber that passes `clientIP` and `udpPort` to
//! `instance/list` is sent the service's new list as soon as it changes, instead of
//! waiting for its next poll.
//!
//! A packet is `{"type":"dom","data":"<the instance/list JSON>","lastRefTime":<n>}`,
//! gzipped when it is over 1 KiB (the client checks the gzip magic). The client answers
//! `{"type":"push-ack","lastRefTime":"<n>","data":""}` from its UDP socket; a push not
//! acknowledged is sent again (at most `MAX_ATTEMPTS` times). A subscriber that stops
//! polling is forgotten after `SUBSCRIBER_TTL` (Nacos clients poll every `cacheMillis`).
//! Tables are bounded.
//!
//! Latency: one change is rendered once per distinct query of its subscribers (the list
//! comes from the same per-revision cache as polls), packed and gzipped once, and the
//! same packet (one `lastRefTime`) goes to every subscriber of that query; acks are
//! matched by `lastRefTime` and sender, as Nacos does. The push loop runs on its own
//! thread (a current-thread runtime), so a push does not queue behind the HTTP
//! connections on the server's worker threads: it is sent as soon as the view applies
//! the change, at about the time the write is answered.

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

use crate::nacos_list_cache::{ListKey, NacosListCache};
use crate::nacos_naming::{list_parts, PUSH_CACHE_MILLIS};

const GZIP_ABOVE_BYTES: usize = 1024;
const SUBSCRIBER_TTL: Duration = Duration::from_secs(30);
const MAX_SUBSCRIBERS: usize = 100_000;
/// Packets awaiting acknowledgement (each to one or more subscribers).
const MAX_PENDING: usize = 100_000;
const MAX_ATTEMPTS: u32 = 3;
const RETRY_AFTER: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
struct Subscriber {
    clusters: String,
    healthy_only: bool,
    last_seen: Instant,
}

/// One packet sent to the subscribers of one query, until each acknowledges it.
struct Pending {
    packet: Arc<Vec<u8>>,
    /// Those that have not acknowledged yet.
    targets: Vec<SocketAddr>,
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
    /// push, ack and retry tasks on the push thread; they end when `shutdown` turns true.
    /// `lists` is the rendered-list cache the `instance/list` handler uses.
    pub async fn start(
        registry: Arc<Registry>,
        lists: Arc<NacosListCache>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Arc<NamingPush>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let bound = std::net::UdpSocket::bind("0.0.0.0:0")?;
        bound.set_nonblocking(true)?;
        let socket = {
            // The socket belongs to the push thread's runtime (its reactor drives it).
            let _context = runtime.enter();
            Arc::new(UdpSocket::from_std(bound)?)
        };
        let push = Arc::new(NamingPush {
            socket,
            subscribers: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_ref: AtomicU64::new(crate::nacos_naming::now_ms() * 1_000_000),
            subscriber_count: std::sync::atomic::AtomicUsize::new(0),
            pushes: AtomicU64::new(0),
            acks: AtomicU64::new(0),
        });
        // Subscribe here, so no change after `start` returns is missed.
        let changes = registry.view().subscribe();
        let tasks = {
            let push = push.clone();
            async move {
                tokio::join!(
                    until_shutdown(shutdown.clone(), push.clone().push_changes(registry, lists, changes)),
                    until_shutdown(shutdown.clone(), push.clone().receive_acks()),
                    until_shutdown(shutdown, push.retry()),
                );
            }
        };
        std::thread::Builder::new().name("nacos-push".into()).spawn(move || runtime.block_on(tasks))?;
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

    async fn push_changes(
        self: Arc<Self>,
        registry: Arc<Registry>,
        lists: Arc<NacosListCache>,
        mut changes: tokio::sync::broadcast::Receiver<ViewChange>,
    ) {
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
                self.push_service(&registry, &lists, &id).await;
            }
        }
    }

    async fn push_service(&self, registry: &Registry, lists: &NacosListCache, id: &ServiceId) {
        let now = Instant::now();
        // The service's live subscribers, by the query they poll with.
        let mut queries: HashMap<(String, bool), Vec<SocketAddr>> = HashMap::new();
        {
            let mut subscribers = self.subscribers.lock();
            let Some(entry) = subscribers.get_mut(id) else { return };
            let before = entry.len();
            entry.retain(|_, s| now.saturating_duration_since(s.last_seen) < SUBSCRIBER_TTL);
            self.subscriber_count.fetch_sub(before - entry.len(), Ordering::Relaxed);
            for (target, s) in entry.iter() {
                queries.entry((s.clusters.clone(), s.healthy_only)).or_default().push(*target);
            }
            if entry.is_empty() {
                subscribers.remove(id);
            }
        }
        for ((clusters, healthy_only), targets) in queries {
            let key = ListKey { id: id.clone(), clusters, healthy_only, cache_millis: PUSH_CACHE_MILLIS };
            let data = list_parts(registry, lists, &key).to_text(crate::nacos_naming::now_ms());
            let last_ref = self.next_ref.fetch_add(1, Ordering::Relaxed);
            let packet = Arc::new(encode_packet(dom_packet(data, last_ref).into_bytes()));
            {
                let mut pending = self.pending.lock();
                if pending.len() < MAX_PENDING {
                    let waiting = Pending {
                        packet: packet.clone(),
                        targets: targets.clone(),
                        attempts: 1,
                        sent_at: now,
                    };
                    pending.insert(last_ref, waiting);
                }
            }
            self.pushes.fetch_add(targets.len() as u64, Ordering::Relaxed);
            for target in targets {
                if let Err(error) = self.socket.send_to(&packet, target).await {
                    debug!(%target, %error, "UDP push failed");
                }
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
            let Some(last_ref) = last_ref else { continue };
            if self.acknowledge(last_ref, from) {
                self.acks.fetch_add(1, Ordering::Relaxed);
                debug!(%from, last_ref, "UDP push acknowledged");
            }
        }
    }

    /// Marks the packet `last_ref` as received by the subscriber that answered from `from`:
    /// the subscriber with that address, else (a client behind another address than the
    /// `clientIP` it gave) one with that port. True if one was waiting.
    fn acknowledge(&self, last_ref: u64, from: SocketAddr) -> bool {
        let mut pending = self.pending.lock();
        let Some(waiting) = pending.get_mut(&last_ref) else { return false };
        let at = waiting
            .targets
            .iter()
            .position(|t| *t == from)
            .or_else(|| waiting.targets.iter().position(|t| t.port() == from.port()));
        let Some(at) = at else { return false };
        waiting.targets.swap_remove(at);
        if waiting.targets.is_empty() {
            pending.remove(&last_ref);
        }
        true
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
            let resend: Vec<(Vec<SocketAddr>, Arc<Vec<u8>>)> = {
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
                        (p.targets.clone(), p.packet.clone())
                    })
                    .collect()
            };
            for (targets, packet) in resend {
                for target in targets {
                    let _ = self.socket.send_to(&packet, target).await;
                }
            }
        }
    }
}

/// The push packet around a rendered list (`data` is the list's JSON as a JSON string).
fn dom_packet(data: String, last_ref: u64) -> String {
    let data = serde_json::Value::String(data);
    format!("{{\"type\":\"dom\",\"data\":{data},\"lastRefTime\":{last_ref}}}")
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

/// Gzips a packet over 1 KiB, as Nacos's push service does. The fastest level: a push is
/// on the latency path, and lists (repeated field names) compress well at any level.
fn encode_packet(bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() <= GZIP_ABOVE_BYTES {
        return bytes;
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
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
