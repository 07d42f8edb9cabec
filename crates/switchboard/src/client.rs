//! The HTTP side of the client subcommands: where the server is, which token to send, and
//! how the API's answers and `{"error":{…}}` envelopes become values or error messages.
//!
//! It knows the API's paths and JSON shapes, and nothing about stores.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

/// The file a first start writes the admin token to, inside the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Plain calls; watches and backups stream for as long as they need.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the server is and who we are to it.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectArgs {
    /// The server's base URL.
    #[arg(long, env = "SWITCHBOARD_ENDPOINT", default_value = "http://127.0.0.1:8848", global = true)]
    pub endpoint: String,
    /// The bearer token; without it, `<data-dir>/admin-token` when it is readable.
    #[arg(long, env = "SWITCHBOARD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// For an https:// endpoint: the PEM CA bundle that signed the server's certificate.
    #[arg(long = "cacert", id = "client_cacert", env = "SWITCHBOARD_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// A PEM client certificate to present (for a server with --tls-client-ca); needs --key.
    #[arg(
        long = "cert",
        id = "client_cert",
        env = "SWITCHBOARD_CERT",
        global = true,
        requires = "client_key"
    )]
    pub cert: Option<PathBuf>,
    /// The PEM private key of --cert.
    #[arg(long = "key", id = "client_key", env = "SWITCHBOARD_KEY", global = true, requires = "client_cert")]
    pub key: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// The API's JSON (one object per line for a watch).
    Json,
}

/// The options every `kv` and `lease` subcommand takes.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Where to look for `admin-token` when no token is given.
    #[arg(long, env = "SWITCHBOARD_DATA_DIR", default_value = "./switchboard-data", global = true)]
    pub data_dir: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

/// Where the token came from, so a 401 can say what to fix.
#[derive(Clone, Debug)]
enum TokenSource {
    Given,
    File(PathBuf),
    None(PathBuf),
}

/// The client's TLS: rustls with ring, trusting only `--cacert` (this build carries no
/// system roots), presenting `--cert`/`--key` when given.
pub fn tls_config(connect: &ConnectArgs) -> anyhow::Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let Some(cacert) = &connect.cacert else {
        bail!("an https:// endpoint needs --cacert <the CA bundle that signed the server's certificate>");
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(cacert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading --cacert {}", cacert.display()))?;
    if certs.is_empty() {
        bail!("--cacert {} holds no PEM certificate", cacert.display());
    }
    for cert in certs {
        roots
            .add(cert)
            .with_context(|| format!("--cacert {}: a certificate is unusable", cacert.display()))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("configuring TLS")?
        .with_root_certificates(roots);
    let mut config = match (&connect.cert, &connect.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading --cert {}", cert.display()))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading --key {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .with_context(|| format!("--cert {} with --key {}", cert.display(), key.display()))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Nothing listens at the endpoint (as opposed to a server that answered with an error).
#[derive(Debug, thiserror::Error)]
#[error("no server answers at {endpoint} (start one with `switchboard serve`, or pass --endpoint): {source}")]
pub struct NoServer {
    endpoint: String,
    source: reqwest::Error,
}

pub struct ApiClient {
    http: reqwest::Client,
    endpoint: String,
    token: Option<String>,
    token_source: TokenSource,
}

impl ApiClient {
    pub fn new(connect: &ConnectArgs, data_dir: &Path) -> anyhow::Result<Self> {
        let endpoint = connect.endpoint.trim_end_matches('/').to_owned();
        let https = endpoint.starts_with("https://");
        if !https && !endpoint.starts_with("http://") {
            bail!("--endpoint is {endpoint:?}, expected a URL such as http://127.0.0.1:8848 or https://…");
        }
        let file = data_dir.join(ADMIN_TOKEN_FILE);
        let (token, token_source) = match &connect.token {
            Some(token) => (Some(token.trim().to_owned()), TokenSource::Given),
            None => match std::fs::read_to_string(&file) {
                Ok(text) if !text.trim().is_empty() => {
                    (Some(text.trim().to_owned()), TokenSource::File(file))
                }
                _ => (None, TokenSource::None(file)),
            },
        };
        let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
        if https {
            builder = builder.use_preconfigured_tls(tls_config(connect)?);
        } else if connect.cacert.is_some() || connect.cert.is_some() {
            bail!("--cacert and --cert need an https:// --endpoint (it is {endpoint:?})");
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(ApiClient { http, endpoint, token, token_source })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A request to `path` (which starts with `/`), authenticated when there is a token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.endpoint));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends a plain call and returns its JSON, or the server's error message.
    pub async fn call(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = self.send(request.timeout(REQUEST_TIMEOUT)).await?;
        let text = response.text().await.context("reading the server's answer")?;
        serde_json::from_str(&text).with_context(|| format!("the server's answer is not JSON: {text:.200}"))
    }

    /// Sends a request and returns a successful response (for streams), or the error.
    pub async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request.send().await.map_err(|error| self.transport_error(error))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.api_error(response).await)
    }

    fn transport_error(&self, error: reqwest::Error) -> anyhow::Error {
        if error.is_connect() {
            anyhow::Error::new(NoServer { endpoint: self.endpoint.clone(), source: error })
        } else if error.is_timeout() {
            anyhow!("the server at {} did not answer in time: {error}", self.endpoint)
        } else {
            anyhow!("talking to {}: {error}", self.endpoint)
        }
    }

    /// The server's message from the error envelope, with the status and code after it.
    async fn api_error(&self, response: Response) -> anyhow::Error {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let envelope: Option<Value> = serde_json::from_str(&text).ok();
        let error = envelope.as_ref().map(|e| &e["error"]);
        let message = error.and_then(|e| e["message"].as_str()).unwrap_or(text.trim());
        let code = error.and_then(|e| e["code"].as_str()).unwrap_or("");
        let mut line = format!("{message} ({} {code})", status.as_u16());
        if status == StatusCode::UNAUTHORIZED {
            line.push_str(&match &self.token_source {
                TokenSource::Given => "; check --token or SWITCHBOARD_TOKEN".to_owned(),
                TokenSource::File(file) => format!("; the token came from {}", file.display()),
                TokenSource::None(file) => format!(
                    "; no token: pass --token, set SWITCHBOARD_TOKEN, or point --data-dir at the server's \
                     data dir ({} is not readable)",
                    file.display()
                ),
            });
        }
        anyhow!(line.trim_end().to_owned())
    }
}

/// A key as a URL path: each segment percent-encoded, the slashes kept (the route takes
/// the rest of the path as the key).
pub fn key_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// A query parameter value, percent-encoded.
pub fn query_value(value: &str) -> String {
    key_path(value).replace('/', "%2F")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_slashes_and_escape_the_rest() {
        assert_eq!(key_path("app/greeting"), "app/greeting");
        assert_eq!(key_path("a b?c#d%"), "a%20b%3Fc%23d%25");
        assert_eq!(key_path("é"), "%C3%A9");
        assert_eq!(query_value("app/x y"), "app%2Fx%20y");
    }
}
