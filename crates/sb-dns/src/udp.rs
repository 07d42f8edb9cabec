//! The UDP side of the DNS interface, with its flood bounds.
//!
//! hickory-server spawns a task for every datagram it receives, so a flood turns into
//! unbounded work on every core. Here a fixed number of worker loops share the socket;
//! each receives, checks the source's token bucket (sb-ratelimit's local GCRA tier) before
//! parsing anything, answers from the registry view and sends, all in the loop. So UDP DNS
//! uses at most `workers` cores whatever arrives; a flooding source's excess is dropped
//! after one table lookup (no answer: no amplification, no extra work), and other sources'
//! queries still get their turn. What the kernel cannot queue is dropped by the kernel.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hickory_server::proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use ipnet::IpNet;
use sb_ratelimit::{Limit, LocalTier};
use tokio::net::UdpSocket;
use tracing::warn;

use crate::Handler;

/// The largest UDP answer we send, whatever EDNS size a client offers (the DNS flag day
/// 2020 value, which avoids IP fragmentation).
const MAX_UDP_PAYLOAD: u16 = 1232;

/// Counters of the DNS interface, read by the node's metrics.
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Queries answered (any response code), UDP and TCP.
    pub answered: AtomicU64,
    /// Queries dropped (UDP) or refused (TCP) because their source was over its rate.
    pub rate_limited: AtomicU64,
    /// Queries refused because their source is outside `--dns-allow`.
    pub refused: AtomicU64,
}

/// Which sources may query, and how fast each may.
pub(crate) struct Gate {
    allow: Vec<IpNet>,
    limit_opt: Option<Limit>,
    buckets: LocalTier,
    pub(crate) stats: Arc<DnsStats>,
}

pub(crate) enum Admit {
    Yes,
    Refuse,
    OverRate,
}

impl Gate {
    /// `per_source_qps` 0 means no per-source limit.
    pub(crate) fn new(allow: Vec<IpNet>, per_source_qps: u32, burst: u32, stats: Arc<DnsStats>) -> Gate {
        let limit_opt = (per_source_qps > 0).then(|| Limit::Gcra {
            interval_ns: 1_000_000_000 / u64::from(per_source_qps),
            burst: u64::from(burst.max(1)),
        });
        Gate { allow, limit_opt, buckets: LocalTier::new(), stats }
    }

    /// The rate comes first, so even refusals to a network outside the allow list are
    /// bounded per source (a spoofed flood gets no stream of REFUSED back).
    pub(crate) fn admit(&self, ip: IpAddr) -> Admit {
        if let Some(limit) = self.limit_opt {
            let mut key = [0u8; 40];
            let key = ip_key(ip, &mut key);
            if !self.buckets.check(key, limit, 1).allowed {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Admit::OverRate;
            }
        }
        if !self.allow.iter().any(|net| net.contains(&ip)) {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Admit::Refuse;
        }
        Admit::Yes
    }

    /// Forgets the buckets of sources that went quiet.
    pub(crate) fn sweep(&self) {
        self.buckets.sweep();
    }
}

/// The source address as a table key, formatted without allocating.
fn ip_key(ip: IpAddr, buf: &mut [u8; 40]) -> &str {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{ip}");
    let len = cursor.position() as usize;
    std::str::from_utf8(&buf[..len]).unwrap_or("?")
}

/// One worker loop: receive, admit, answer, send.
pub(crate) async fn serve(socket: Arc<UdpSocket>, handler: Arc<Handler>, gate: Arc<Gate>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, src) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                // ICMP port-unreachable from an earlier send shows up here on some systems;
                // a short pause keeps a persistent error from spinning a core.
                warn!(%error, "receiving a DNS datagram");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let refuse = match gate.admit(src.ip()) {
            Admit::OverRate => continue,
            Admit::Refuse => true,
            Admit::Yes => false,
        };
        if let Some(response) = respond(&handler, &buf[..len], refuse) {
            if !refuse {
                gate.stats.answered.fetch_add(1, Ordering::Relaxed);
            }
            send(&socket, &response, src).await;
        }
    }
}

async fn send(socket: &UdpSocket, response: &[u8], to: SocketAddr) {
    if let Err(error) = socket.send_to(response, to).await {
        tracing::debug!(%error, %to, "sending a DNS answer");
    }
}

/// The wire answer to one datagram; `None` for what deserves no answer (not a query, or
/// too short to carry an id).
fn respond(handler: &Handler, datagram: &[u8], refuse: bool) -> Option<Vec<u8>> {
    let request = match Message::from_vec(datagram) {
        Ok(request) => request,
        Err(_) if datagram.len() >= 12 => {
            let id = u16::from_be_bytes([datagram[0], datagram[1]]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr).to_vec().ok();
        }
        Err(_) => return None,
    };
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata = Metadata::response_from_request(&request.metadata);
    let payload_limit = request.max_payload().min(MAX_UDP_PAYLOAD);
    if request.edns.is_some() {
        let mut answer_edns = Edns::new();
        answer_edns.set_max_payload(MAX_UDP_PAYLOAD);
        response.set_edns(answer_edns);
    }
    response.add_queries(request.queries.iter().cloned());
    if refuse {
        response.metadata.response_code = ResponseCode::Refused;
    } else if request.metadata.op_code != OpCode::Query {
        response.metadata.response_code = ResponseCode::NotImp;
    } else if request.queries.len() != 1 {
        response.metadata.response_code = ResponseCode::FormErr;
    } else {
        let query = &request.queries[0];
        let answer = handler.answer(query.name(), query.query_type());
        response.metadata.authoritative = answer.code != Some(ResponseCode::Refused);
        response.metadata.response_code = answer.code.unwrap_or(ResponseCode::NoError);
        response.add_answers(answer.answers);
        response.add_additionals(answer.additionals);
    }
    let bytes = response.to_vec().ok()?;
    if bytes.len() <= usize::from(payload_limit) {
        return Some(bytes);
    }
    // Too big for this client over UDP: the question alone with TC set, so it retries on TCP.
    response.truncate().to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_over_their_rate_are_held_back_and_others_are_not() {
        let allow: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        let stats = Arc::new(DnsStats::default());
        let gate = Gate::new(allow, 10, 5, stats.clone());
        let flooder: IpAddr = "127.0.0.2".parse().unwrap();
        let quiet: IpAddr = "127.0.0.3".parse().unwrap();
        let admitted = (0..100).filter(|_| matches!(gate.admit(flooder), Admit::Yes)).count();
        assert!((5..=6).contains(&admitted), "the burst, then the rate: {admitted}");
        assert!(matches!(gate.admit(quiet), Admit::Yes));
        let outsider: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(matches!(gate.admit(outsider), Admit::Refuse));
        // Refusals are rate-limited too.
        let refused = (0..100).filter(|_| matches!(gate.admit(outsider), Admit::Refuse)).count();
        assert!(refused <= 5, "{refused}");
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1 + refused as u64);
        assert_eq!(stats.rate_limited.load(Ordering::Relaxed), 200 - admitted as u64 - refused as u64);
        let mut buf = [0u8; 40];
        assert_eq!(ip_key("fd00::7".parse().unwrap(), &mut buf), "fd00::7");
    }
}
