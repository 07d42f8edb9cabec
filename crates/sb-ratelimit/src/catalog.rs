//! Rules in the store: written with one put or delete, read through a watch-fed view.
//!
//! Writes answer once this node's view has applied them (read-your-writes); checks read
//! the view only, never the store.

use std::sync::Arc;
use std::time::Duration;

use sb_audit::Audit;
use sb_store::codec::encode;
use sb_store::view::{DecodedMap, Entry};
use sb_store::{Compare, CompareOp, KeyRange, Revision, SharedStore, StoreError, Txn, TxnOp, View};

use crate::error::{RateLimitError, RateLimitResult};
use crate::rule::{namespace_prefix, rule_key, validate_name, Rule, RuleSpec, RULES_PREFIX};

pub type RuleView = View<DecodedMap<Rule>>;

/// A rule with the revision it was last written at (its version).
#[derive(Clone, Debug)]
pub struct StoredRule {
    pub namespace: String,
    pub rule: Rule,
    pub revision: Revision,
}

pub struct RuleCatalog {
    store: SharedStore,
    view: RuleView,
    read_your_writes_timeout: Duration,
}

impl RuleCatalog {
    /// Loads every rule and follows changes.
    pub async fn start(
        store: SharedStore,
        read_your_writes_timeout: Duration,
    ) -> RateLimitResult<RuleCatalog> {
        let view = View::start(store.clone(), KeyRange::prefix(RULES_PREFIX), "ratelimit-rules").await?;
        Ok(RuleCatalog { store, view, read_your_writes_timeout })
    }

    pub fn view(&self) -> &RuleView {
        &self.view
    }

    /// The rule as the view has it (no store access).
    pub fn lookup(&self, namespace: &str, name: &str) -> Option<Arc<Entry<Rule>>> {
        self.view.snapshot().entries.get(&rule_key(namespace, name)).cloned()
    }

    pub fn get(&self, namespace: &str, name: &str) -> RateLimitResult<StoredRule> {
        validate_name("namespace", namespace)?;
        validate_name("name", name)?;
        let entry = self.lookup(namespace, name).ok_or_else(|| RateLimitError::RuleNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })?;
        Ok(StoredRule {
            namespace: namespace.to_owned(),
            rule: entry.value.clone(),
            revision: entry.mod_revision,
        })
    }

    /// Every rule of a namespace, by name, and the revision the view reflects.
    pub fn list(&self, namespace: &str) -> RateLimitResult<(Vec<StoredRule>, Revision)> {
        validate_name("namespace", namespace)?;
        let revision = self.view.revision();
        let snapshot = self.view.snapshot();
        let prefix = namespace_prefix(namespace);
        let rules = snapshot
            .entries
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .map(|(_, entry)| StoredRule {
                namespace: namespace.to_owned(),
                rule: entry.value.clone(),
                revision: entry.mod_revision,
            })
            .collect();
        Ok((rules, revision))
    }

    /// Creates or replaces a rule. Counters start afresh when a rule changes (they are
    /// keyed by its revision).
    pub async fn put(
        &self,
        namespace: &str,
        name: &str,
        spec: RuleSpec,
        audit: &Audit,
    ) -> RateLimitResult<StoredRule> {
        validate_name("namespace", namespace)?;
        let rule = spec.into_rule(name)?;
        let value = encode(&rule).map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        let key = rule_key(namespace, name);
        let before = self.encoded(namespace, name);
        let resource = String::from_utf8_lossy(&key).into_owned();
        let audited = audit.op("ratelimit.rule.put", resource, before.as_deref(), Some(&value));
        let revision = self.store.txn(Txn::new().and_then([TxnOp::put(key, value), audited])).await?.revision;
        self.view.wait_for(revision, self.read_your_writes_timeout).await?;
        Ok(StoredRule { namespace: namespace.to_owned(), rule, revision })
    }

    /// The rule as this node's view holds it, encoded (for the audit record's digest).
    fn encoded(&self, namespace: &str, name: &str) -> Option<Vec<u8>> {
        self.get(namespace, name).ok().and_then(|stored| encode(&stored.rule).ok())
    }

    /// Deletes a rule; its counters are forgotten as they go idle.
    pub async fn delete(&self, namespace: &str, name: &str, audit: &Audit) -> RateLimitResult<Revision> {
        validate_name("namespace", namespace)?;
        validate_name("name", name)?;
        let key = rule_key(namespace, name);
        let before = self.encoded(namespace, name);
        // Recorded only when there was a rule to delete.
        let txn = Txn::new().when([Compare::version(key.clone(), CompareOp::Greater, 0)]).and_then([
            TxnOp::delete(key.clone()),
            audit.op("ratelimit.rule.delete", String::from_utf8_lossy(&key), before.as_deref(), None),
        ]);
        let response = self.store.txn(txn).await?;
        if !response.succeeded {
            return Err(RateLimitError::RuleNotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            });
        }
        self.view.wait_for(response.revision, self.read_your_writes_timeout).await?;
        Ok(response.revision)
    }
}
