//! Rendered `instance/list` answers, per service and query, valid for one revision of the
//! service. A list of a hundred instances is tens of KiB of JSON; rendering it once per
//! change instead of once per request keeps the hottest Nacos read near the HTTP ceiling.
//! Only `lastRefTime` differs between requests: it is spliced in.

use std::collections::HashMap;
use std::sync::Arc;

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

impl NacosListCache {
    /// The answer for the service at `revision`; `render` (which must put `"lastRefTime":0`
    /// in the JSON) runs only when the cached one is older.
    /// `revision`: the registry state's generation and the service's last-change revision.
    pub fn answer(
        &self,
        key: &ListKey,
        revision: (u64, Revision),
        render: impl FnOnce() -> String,
        now_ms: u64,
    ) -> String {
        let cached = self
            .entries
            .read()
            .get(key)
            .filter(|r| r.revision == revision)
            .map(|r| (r.head.clone(), r.tail.clone()));
        let (head, tail) = match cached {
            Some(parts) => parts,
            None => {
                let rendered = render();
                let Some(at) = rendered.find(MARKER) else { return rendered };
                let head: Arc<str> = Arc::from(&rendered[..at + MARKER.len() - 1]);
                let tail: Arc<str> = Arc::from(&rendered[at + MARKER.len()..]);
                let mut entries = self.entries.write();
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
                entries.insert(key.clone(), Rendered { revision, head: head.clone(), tail: tail.clone() });
                (head, tail)
            }
        };
        let mut body = String::with_capacity(head.len() + tail.len() + 16);
        body.push_str(&head);
        body.push_str(&now_ms.to_string());
        body.push_str(&tail);
        body
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
        assert_eq!(cache.answer(&key, (1, 5), render, 42), r#"{"hosts":[],"lastRefTime":42,"valid":true}"#);
        let again = cache.answer(&key, (1, 5), || panic!("rendered twice"), 43);
        assert_eq!(again, r#"{"hosts":[],"lastRefTime":43,"valid":true}"#);
        let newer = cache.answer(&key, (1, 6), || r#"{"lastRefTime":0,"n":1}"#.to_owned(), 44);
        assert_eq!(newer, r#"{"lastRefTime":44,"n":1}"#);
    }
}
