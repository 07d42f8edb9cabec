//! The bare-hyper ceiling: the least an HTTP server can do on this machine, a fixed body
//! per request. Read-path scenarios are reported as a fraction of it. It runs as its own
//! process (`sb-bench ceiling`), as the server under test does.

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct CeilingArgs {
    /// Where to listen; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The size of the fixed response body.
    #[arg(long, default_value_t = 256)]
    body_bytes: usize,
}

pub async fn run(args: CeilingArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let body = Bytes::from(vec![b'x'; args.body_bytes]);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_request: Request<hyper::body::Incoming>| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
