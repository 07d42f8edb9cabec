//! The registry's DNS interface: A, AAAA and SRV answers from the registry view, served by
//! hickory-server over UDP and TCP.
//!
//! - `{service}.{group}.{namespace}.svc.switchboard.` (or `{service}.svc.switchboard.` for
//!   `DEFAULT_GROUP` in `public`): A/AAAA records of the healthy, enabled instances, and SRV
//!   records (priority 0, the instance's port, weight = Nacos weight × 100 rounded, capped at
//!   65535) whose targets are `{ip}.addr.switchboard.`, with their A/AAAA in the additional
//!   section. Instances are chosen by the registry's own selection, so the protection
//!   threshold applies as in queries: once reached, every enabled instance is answered.
//! - `{ip}.addr.switchboard.`: the address itself.
//! - An unknown name is NXDOMAIN; a known name with no record of the asked type answers
//!   NOERROR with no records; a name outside `switchboard.` is REFUSED.
//!
//! - UDP is served by a fixed number of worker loops with a per-source token bucket
//!   (`udp`), so a query flood is bounded in CPU; TCP by hickory-server, behind the same
//!   allow list and buckets.
//!
//! Architecture invariant: this crate sees the registry only through `sb_registry`'s
//! snapshot and selection; it never reads the store, and knows nothing of HTTP.
#![forbid(unsafe_code)]

pub mod names;
mod udp;

pub use udp::DnsStats;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use ipnet::IpNet;
use parking_lot::Mutex;
use sb_registry::{InstanceQuery, Registry, RegistryState, ServiceId};
use tracing::warn;

use crate::names::{Component, Target};

/// The largest SRV weight; Nacos weights are scaled by 100 and capped here.
pub const MAX_SRV_WEIGHT: u16 = u16::MAX;

/// Nacos's float weight (0 to 10000) as an SRV weight: × 100, rounded, capped at 65535.
pub fn srv_weight(weight: f64) -> u16 {
    (weight * 100.0).round().clamp(0.0, f64::from(MAX_SRV_WEIGHT)) as u16
}

#[derive(Clone, Debug)]
pub struct DnsOptions {
    pub listen: SocketAddr,
    /// Networks that may query; everything else is refused.
    pub allow: Vec<IpNet>,
    pub ttl_secs: u32,
    /// How long a TCP connection may sit idle.
    pub tcp_timeout: Duration,
    /// Queries per second one source address may send (0: no limit); over it, UDP queries
    /// are dropped and TCP queries refused.
    pub per_source_qps: u32,
    pub per_source_burst: u32,
    /// UDP worker loops: UDP DNS never uses more cores than this.
    pub udp_workers: usize,
}

/// Services by lowercased (namespace, group, service), rebuilt when the view changes.
type Index = HashMap<(String, String, String), Vec<Arc<ServiceId>>>;

pub(crate) struct Handler {
    registry: Arc<Registry>,
    ttl: u32,
    index: Mutex<Option<(Arc<RegistryState>, Arc<Index>)>>,
}

/// What a query is answered with.
#[derive(Debug, Default)]
pub struct Answer {
    pub code: Option<ResponseCode>,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
}

fn addr_record(name: Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => Record::from_rdata(name, ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => Record::from_rdata(name, ttl, RData::AAAA(AAAA(v6))),
    }
}

fn wants(qtype: RecordType, ip: IpAddr) -> bool {
    matches!(
        (qtype, ip),
        (RecordType::A | RecordType::ANY, IpAddr::V4(_))
            | (RecordType::AAAA | RecordType::ANY, IpAddr::V6(_))
    )
}

impl Handler {
    fn index(&self, state: &Arc<RegistryState>) -> Arc<Index> {
        let mut cached = self.index.lock();
        if let Some((at, index)) = cached.as_ref() {
            if Arc::ptr_eq(at, state) {
                return index.clone();
            }
        }
        let mut index = Index::new();
        for id in state.services.keys() {
            let key = (
                id.namespace.to_ascii_lowercase(),
                id.group.to_ascii_lowercase(),
                id.service.to_ascii_lowercase(),
            );
            index.entry(key).or_default().push(id.clone());
        }
        let index = Arc::new(index);
        *cached = Some((state.clone(), index.clone()));
        index
    }

    fn find(&self, namespace: &Component, group: &Component, service: &Component) -> Option<ServiceId> {
        let state = self.registry.snapshot();
        let index = self.index(&state);
        let candidates = index.get(&(namespace.lower(), group.lower(), service.lower()))?;
        candidates
            .iter()
            .find(|id| {
                namespace.matches(&id.namespace) && group.matches(&id.group) && service.matches(&id.service)
            })
            .map(|id| ServiceId::clone(id))
    }

    /// Answers one question from the registry view.
    pub fn answer(&self, qname: &Name, qtype: RecordType) -> Answer {
        let labels: Vec<String> = qname.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
        let ttl = self.ttl;
        match names::parse(&labels) {
            Target::Foreign => Answer { code: Some(ResponseCode::Refused), ..Default::default() },
            Target::Unknown => Answer { code: Some(ResponseCode::NXDomain), ..Default::default() },
            Target::Addr(ip) => {
                let answers =
                    if wants(qtype, ip) { vec![addr_record(qname.clone(), ttl, ip)] } else { vec![] };
                Answer { code: None, answers, additionals: vec![] }
            }
            Target::Service { namespace, group, service } => {
                let Some(id) = self.find(&namespace, &group, &service) else {
                    return Answer { code: Some(ResponseCode::NXDomain), ..Default::default() };
                };
                let query = InstanceQuery { clusters: vec![], healthy_only: true, enabled_only: true };
                let selection = self.registry.instances(&id, &query);
                let mut answer = Answer::default();
                for selected in &selection.instances {
                    let instance = &selected.entry;
                    let ip = instance.addr.ip;
                    if qtype == RecordType::SRV || qtype == RecordType::ANY {
                        let Ok(target) = Name::from_ascii(names::addr_name(ip)) else { continue };
                        let srv = SRV::new(
                            0,
                            srv_weight(instance.record.weight),
                            instance.addr.port,
                            target.clone(),
                        );
                        answer.answers.push(Record::from_rdata(qname.clone(), ttl, RData::SRV(srv)));
                        answer.additionals.push(addr_record(target, ttl, ip));
                    }
                    let record = addr_record(qname.clone(), ttl, ip);
                    // One A/AAAA per address, even when several instances share it.
                    if wants(qtype, ip) && !answer.answers.contains(&record) {
                        answer.answers.push(record);
                    }
                }
                answer.additionals.sort_by_key(|r| r.name.to_string());
                answer.additionals.dedup();
                answer
            }
        }
    }
}

/// hickory-server's side (TCP): the same answers behind the same gate.
struct TcpHandler {
    handler: Arc<Handler>,
    gate: Arc<udp::Gate>,
}

#[async_trait::async_trait]
impl RequestHandler for TcpHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        // Outside the allow list or over its rate: refused (TCP has no cheap drop).
        let admitted = matches!(self.gate.admit(request.src().ip()), udp::Admit::Yes);
        let result = match request.request_info() {
            _ if !admitted => {
                let response = builder.error_msg(&request.metadata, ResponseCode::Refused);
                response_handle.send_response(response).await
            }
            Err(_) => {
                let response = builder.error_msg(&request.metadata, ResponseCode::FormErr);
                response_handle.send_response(response).await
            }
            Ok(info) => {
                let query = info.query.original();
                let answer = self.handler.answer(query.name(), query.query_type());
                self.gate.stats.answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                metadata.authoritative = answer.code != Some(ResponseCode::Refused);
                metadata.response_code = answer.code.unwrap_or(ResponseCode::NoError);
                let response =
                    builder.build(metadata, answer.answers.iter(), [], [], answer.additionals.iter());
                response_handle.send_response(response).await
            }
        };
        match result {
            Ok(info) => info,
            Err(error) => {
                warn!(%error, "sending a DNS response failed");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_server::proto::op::Header { metadata, counts: Default::default() })
            }
        }
    }
}

/// The running DNS server; stopped when dropped.
pub struct DnsServer {
    server: Server<TcpHandler>,
    udp_tasks: Vec<tokio::task::JoinHandle<()>>,
    pub local_addr: SocketAddr,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.udp_tasks {
            task.abort();
        }
    }
}

/// How often idle per-source buckets are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

impl DnsServer {
    /// Binds UDP and TCP on the same address (with port 0, TCP takes the port UDP got) and
    /// starts serving; `stats` counts what it does.
    pub async fn start(
        registry: Arc<Registry>,
        options: DnsOptions,
        stats: Arc<DnsStats>,
    ) -> std::io::Result<DnsServer> {
        let (udp, tcp) = bind_pair(options.listen).await?;
        let local_addr = udp.local_addr()?;
        let handler = Arc::new(Handler { registry, ttl: options.ttl_secs, index: Mutex::new(None) });
        let gate = Arc::new(udp::Gate::new(
            options.allow.clone(),
            options.per_source_qps,
            options.per_source_burst,
            stats,
        ));
        let udp = Arc::new(udp);
        let mut udp_tasks: Vec<_> = (0..options.udp_workers.max(1))
            .map(|_| tokio::spawn(udp::serve(udp.clone(), handler.clone(), gate.clone())))
            .collect();
        let sweeper = gate.clone();
        udp_tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            loop {
                every.tick().await;
                sweeper.sweep();
            }
        }));
        // The gate applies the allow list; hickory's own access control lets everything in.
        let mut server = Server::new(TcpHandler { handler, gate });
        server.register_listener(tcp, options.tcp_timeout, 64);
        Ok(DnsServer { server, udp_tasks, local_addr })
    }

    pub async fn stop(mut self) {
        for task in &self.udp_tasks {
            task.abort();
        }
        if let Err(error) = self.server.shutdown_gracefully().await {
            warn!(%error, "stopping the DNS server");
        }
    }
}

async fn bind_pair(listen: SocketAddr) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut last_error = None;
    for _ in 0..10 {
        let udp = tokio::net::UdpSocket::bind(listen).await?;
        let addr = udp.local_addr()?;
        match tokio::net::TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) if listen.port() == 0 => last_error = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free port for UDP and TCP")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_map_to_srv_weights() {
        assert_eq!(srv_weight(1.0), 100);
        assert_eq!(srv_weight(0.0), 0);
        assert_eq!(srv_weight(0.015), 2);
        assert_eq!(srv_weight(655.35), 65535);
        assert_eq!(srv_weight(10_000.0), 65535);
    }
}
