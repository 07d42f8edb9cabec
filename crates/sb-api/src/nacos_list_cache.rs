//! Rendered `instance/list` answers, per service and query, valid for one revision of the
//! service. A list of a hundred instances is tens of KiB of JSON; rendering it once per
//! change instead of once per request keeps the hottest Nacos read near the HTTP ceiling.
//! Only `lastRefTime` differs between requests: it is spliced in.

use std::collections::HashMap;
use std::sync::Arc;

use crate::nacos::shared_bytes;
use axum::body::Bytes;
use parking_lot::RwLock;
use sb_registry::ServiceId;
use sb_store::Revision;

/// Beyond this many cached answers the cache starts over (bounded memory).
const MAX_ENTRIES: usize = 10_000;
/// What the rendering puts where `lastRefTime` goes.
const MARKER: &str = "\"lastRefTime\":0";

/// What a list answer depends on besides the service's revision.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ListKey {
    pub id: ServiceId,
    pub clusters: String,
    pub healthy_only: bool,
    pub cache_millis: u64,
}

struct Rendered {
    revision: (u64, Revision),
    head: Arc<str>,
    tail: Arc<str>,
}

#[derive(Default)]
pub struct NacosListCache {
    entries: RwLock<HashMap<ListKey, Rendered>>,
}

/// A cached answer: the rendering before and after `lastRefTime`'s value.
#[derive(Clone, Debug)]
pub enum ListParts {
    Spliced {
        head: Arc<str>,
        tail: Arc<str>,
    },
    /// A rendering without the marker, sent as it is.
    Whole(String),
}

impl ListParts {
    /// The answer as one string (a UDP push packs and gzips it).
    pub fn to_text(&self, now_ms: u64) -> String {
        match self {
            ListParts::Spliced { head, tail } => {
                let mut body = String::with_capacity(head.len() + tail.len() + 16);
                body.push_str(head);
                body.push_str(&now_ms.to_string());
                body.push_str(tail);
                body
            }
            ListParts::Whole(text) => text.clone(),
        }
    }

    /// The answer as an HTTP body that sends the cached parts without copying them.
    pub fn into_body(self, now_ms: u64) -> axum::body::Body {
        match self {
            ListParts::Spliced { head, tail } => axum::body::Body::new(SplicedBody {
                parts: [shared_bytes(head), Bytes::from(now_ms.to_string()), shared_bytes(tail)],
                next: 0,
            }),
            ListParts::Whole(text) => axum::body::Body::from(text),
        }
    }
}

/// Three chunks with an exact length, so the answer keeps its `Content-Length`.
struct SplicedBody {
    parts: [Bytes; 3],
    next: usize,
}

impl http_body::Body for SplicedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        while this.next < this.parts.len() {
            let part = std::mem::take(&mut this.parts[this.next]);
            this.next += 1;
            if !part.is_empty() {
                return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(part))));
            }
        }
        std::task::Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.parts[self.next.min(self.parts.len())..].iter().all(Bytes::is_empty)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let remaining = self.parts[self.next.min(self.parts.len())..].iter().map(Bytes::len).sum::<usize>();
        http_body::SizeHint::with_exact(remaining as u64)
    }
}

impl NacosListCache {
    /// The answer for the service at `revision`; `render` (which must put `"lastRefTime":0`
    /// in the JSON) runs only when the cached one is older.
    /// `revision`: the registry state's generation and the service's last-change revision.
    pub fn answer(
        &self,
        key: &ListKey,
        revision: (u64, Revision),
        render: impl FnOnce() -> String,
    ) -> ListParts {
        let cached = self
            .entries
            .read()
            .get(key)
            .filter(|r| r.revision == revision)
            .map(|r| ListParts::Spliced { head: r.head.clone(), tail: r.tail.clone() });
        if let Some(parts) = cached {
            return parts;
        }
        let rendered = render();
        let Some(at) = rendered.find(MARKER) else { return ListParts::Whole(rendered) };
        let head: Arc<str> = Arc::from(&rendered[..at + MARKER.len() - 1]);
        let tail: Arc<str> = Arc::from(&rendered[at + MARKER.len()..]);
        let mut entries = self.entries.write();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key.clone(), Rendered { revision, head: head.clone(), tail: tail.clone() });
        ListParts::Spliced { head, tail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_once_per_revision_and_splices_the_time() {
        let cache = NacosListCache::default();
        let id = ServiceId::new("", "", "svc").unwrap();
        let key = ListKey { id, clusters: String::new(), healthy_only: false, cache_millis: 3000 };
        let render = || r#"{"hosts":[],"lastRefTime":0,"valid":true}"#.to_owned();
        assert_eq!(
            cache.answer(&key, (1, 5), render).to_text(42),
            r#"{"hosts":[],"lastRefTime":42,"valid":true}"#
        );
        let again = cache.answer(&key, (1, 5), || panic!("rendered twice"));
        assert_eq!(again.to_text(43), r#"{"hosts":[],"lastRefTime":43,"valid":true}"#);
        let newer = cache.answer(&key, (1, 6), || r#"{"lastRefTime":0,"n":1}"#.to_owned());
        assert_eq!(newer.to_text(44), r#"{"lastRefTime":44,"n":1}"#);
    }

    #[tokio::test]
    async fn the_http_body_is_the_spliced_text_with_its_exact_length() {
        use http_body::Body as _;
        use http_body_util::BodyExt;
        let cache = NacosListCache::default();
        let id = ServiceId::new("", "", "svc").unwrap();
        let key = ListKey { id, clusters: String::new(), healthy_only: false, cache_millis: 3000 };
        let parts = cache.answer(&key, (1, 5), || r#"{"hosts":[],"lastRefTime":0,"valid":true}"#.to_owned());
        let expected = parts.to_text(1234567);
        let body = parts.into_body(1234567);
        assert_eq!(body.size_hint().exact(), Some(expected.len() as u64));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, expected.as_bytes());
        let whole = cache.answer(&key, (1, 6), || "no marker".to_owned());
        assert_eq!(whole.clone().into_body(9).collect().await.unwrap().to_bytes(), "no marker".as_bytes());
    }
}
