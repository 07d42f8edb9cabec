//! One probe of one target: TCP connect, a minimal HTTP/1.1 request over that connection,
//! or `grpc.health.v1.Health/Check` through tonic's client (plaintext HTTP/2).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::spec::{CheckKind, CheckSpec};

/// One probe: `Ok(())` when the target is healthy, else why not.
pub async fn probe(addr: SocketAddr, spec: &CheckSpec, node_id: &str) -> Result<(), String> {
    let timeout = Duration::from_millis(spec.timeout_ms);
    let work = async {
        match &spec.kind {
            CheckKind::Tcp => {
                tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
                Ok(())
            }
            CheckKind::Http { method, path, expect_status, headers } => {
                let mut stream =
                    tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
                let mut request = format!(
                    "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: switchboard-health/{node_id}\r\nConnection: close\r\n"
                );
                for (name, value) in headers {
                    request.push_str(&format!("{name}: {value}\r\n"));
                }
                request.push_str("\r\n");
                stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
                let status = read_status(&mut stream).await?;
                if (expect_status[0]..=expect_status[1]).contains(&status) {
                    Ok(())
                } else {
                    Err(format!("status {status}"))
                }
            }
            CheckKind::Grpc { service } => grpc(addr, service, timeout, node_id).await,
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {} ms", spec.timeout_ms))?
}

async fn read_status(stream: &mut tokio::net::TcpStream) -> Result<u16, String> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        let n = stream.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status line: {:?}", line.lines().next().unwrap_or_default()))
}

/// A fresh connection per probe: a probe must see a target that stopped accepting, which a
/// pooled channel would hide until its next reconnect.
async fn grpc(addr: SocketAddr, service: &str, timeout: Duration, node_id: &str) -> Result<(), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("endpoint: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(format!("switchboard-health/{node_id}"))
        .map_err(|e| format!("user agent: {e}"))?;
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e}"))?;
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest { service: service.to_owned() })
        .await
        .map_err(|status| format!("grpc {:?}: {}", status.code(), status.message()))?;
    match response.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("grpc health {}", other.as_str_name())),
    }
}
