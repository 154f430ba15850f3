//! The operations endpoint of `herd run` and `herd agent`: `GET /metrics` (Prometheus
//! text format), `/healthz` (live: the main loop turns) and `/readyz` (ready: what the
//! process needs to do its job holds; the body names what does not). Binds to loopback
//! unless configured otherwise (`[http] listen`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::metrics::Health;

/// `[http]`: the operations endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`; empty disables the endpoint.
    /// Loopback by default: exposing it is a decision (`0.0.0.0:9720` in a pod).
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9720".into(),
        }
    }
}

impl HttpConfig {
    /// The address to bind, if enabled; the error names the field.
    pub fn addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("http.listen: {:?} is not an address: {e}", self.listen))
    }
}

/// What the endpoint serves.
pub trait Ops: Send + Sync + 'static {
    /// The Prometheus text of every series (brought up to date first).
    fn metrics(&self) -> String;
    /// Liveness and readiness.
    fn health(&self) -> &Health;
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn route(ops: &dyn Ops, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    let check = |r: Result<(), String>| match r {
        Ok(()) => reply(StatusCode::OK, TEXT, "ok\n".into()),
        Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
    };
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            ops.metrics(),
        ),
        "/healthz" => check(ops.health().live()),
        "/readyz" => check(ops.health().ready()),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "herd serves /metrics, /healthz and /readyz\n".into(),
        ),
    }
}

/// Binds the endpoint; serve it with [`serve`]. Binding first lets a caller fail at
/// start-up on a taken port, and lets tests ask for port 0.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("http.listen: binding {addr}: {e}"))
}

/// Serves connections until `stop` turns true. One task per connection (scrapes and
/// probes are few); a connection that errs is dropped alone.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ops: Arc<dyn Ops>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, "serving /metrics, /healthz, /readyz");
    }
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an http connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ops = Arc::clone(&ops);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = route(&*ops, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}

/// `herd probe`: one GET to a plain-http URL; `Ok` on status 200. Blocking, bounded by
/// `timeout` for connecting, writing and reading.
pub fn probe(url: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let u = url::Url::parse(url).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    anyhow::ensure!(u.scheme() == "http", "{url}: only http:// is probed");
    let host = u.host_str().unwrap_or("127.0.0.1");
    let port = u.port_or_known_default().unwrap_or(80);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{url}: no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        u.path()
    )?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head)?;
    let status = std::str::from_utf8(&head[..n])
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    anyhow::ensure!(status == "200", "{url}: HTTP {status}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_binds_to_loopback_unless_configured() {
        let default = HttpConfig::default().addr().ok().flatten();
        assert!(default.is_some_and(|a| a.ip().is_loopback()), "{default:?}");
        // Both workers and agents read `[http]`.
        let cfg = crate::config::HerdConfig::default();
        assert_eq!(cfg.http, HttpConfig::default());
        let off = HttpConfig {
            listen: String::new(),
        };
        assert!(off.addr().ok().flatten().is_none());
    }
}
