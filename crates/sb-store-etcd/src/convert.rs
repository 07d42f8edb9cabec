//! Port types to etcd-client's and back. Every key crosses the namespace here.

use etcd_client::proto::{PbKeyValue, PbTxnOpResponse};
use etcd_client::{DeleteOptions, GetOptions, PutOptions};
use sb_store::{
    Compare, CompareOp, CompareTarget, KeyValue, LeaseId, OpResponse, RangeRequest, RangeResponse, Txn, TxnOp,
};

use crate::namespace::Namespace;

pub(crate) fn key_value(ns: &Namespace, kv: PbKeyValue) -> KeyValue {
    KeyValue {
        key: ns.strip(kv.key),
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: lease_opt(kv.lease),
    }
}

pub(crate) fn lease_opt(id: i64) -> Option<LeaseId> {
    (id != 0).then_some(LeaseId(id))
}

/// The get options of a port range read (the key itself goes next to them).
pub(crate) fn get_options(
    ns: &Namespace,
    request: &RangeRequest,
    limit: Option<u64>,
) -> (Vec<u8>, GetOptions) {
    let raw = ns.range(&request.range);
    let mut options = GetOptions::new().with_range(raw.end);
    if let Some(limit) = limit.filter(|l| *l > 0) {
        options = options.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
    }
    if let Some(revision) = request.revision {
        options = options.with_revision(revision);
    }
    if request.count_only {
        options = options.with_count_only();
    }
    if request.keys_only {
        options = options.with_keys_only();
    }
    (raw.start, options)
}

fn compare(ns: &Namespace, compare: &Compare) -> etcd_client::Compare {
    let op = match compare.op {
        CompareOp::Equal => etcd_client::CompareOp::Equal,
        CompareOp::NotEqual => etcd_client::CompareOp::NotEqual,
        CompareOp::Greater => etcd_client::CompareOp::Greater,
        CompareOp::Less => etcd_client::CompareOp::Less,
    };
    let key = ns.key(&compare.key);
    match &compare.target {
        CompareTarget::Value(value) => etcd_client::Compare::value(key, op, value.clone()),
        CompareTarget::Version(version) => etcd_client::Compare::version(key, op, *version),
        CompareTarget::CreateRevision(rev) => etcd_client::Compare::create_revision(key, op, *rev),
        CompareTarget::ModRevision(rev) => etcd_client::Compare::mod_revision(key, op, *rev),
        CompareTarget::Lease(lease) => etcd_client::Compare::lease(key, op, lease.map_or(0, |l| l.0)),
    }
}

fn op(ns: &Namespace, op: &TxnOp) -> etcd_client::TxnOp {
    match op {
        TxnOp::Put { key, value, lease } => etcd_client::TxnOp::put(
            ns.key(key),
            value.clone(),
            lease.map(|lease| PutOptions::new().with_lease(lease.0)),
        ),
        TxnOp::Delete(range) => {
            let raw = ns.range(range);
            etcd_client::TxnOp::delete(raw.start, Some(DeleteOptions::new().with_range(raw.end)))
        }
        TxnOp::Range(request) => {
            let (key, options) = get_options(ns, request, request.effective_limit());
            etcd_client::TxnOp::get(key, Some(options))
        }
    }
}

pub(crate) fn txn(ns: &Namespace, txn: &Txn) -> etcd_client::Txn {
    etcd_client::Txn::new()
        .when(txn.compares.iter().map(|c| compare(ns, c)).collect::<Vec<_>>())
        .and_then(txn.success.iter().map(|o| op(ns, o)).collect::<Vec<_>>())
        .or_else(txn.failure.iter().map(|o| op(ns, o)).collect::<Vec<_>>())
}

/// The same transaction with every key in the namespace: what etcd really receives, so
/// the size check counts the namespace bytes too.
pub(crate) fn namespaced_txn(ns: &Namespace, txn: &Txn) -> Txn {
    if ns.prefix().is_empty() {
        return txn.clone();
    }
    let range = |range: &sb_store::KeyRange| {
        let raw = ns.range(range);
        sb_store::KeyRange::Between { start: raw.start, end: raw.end }
    };
    let op = |op: &TxnOp| match op {
        TxnOp::Put { key, value, lease } => {
            TxnOp::Put { key: ns.key(key), value: value.clone(), lease: *lease }
        }
        TxnOp::Delete(r) => TxnOp::Delete(range(r)),
        TxnOp::Range(request) => {
            TxnOp::Range(RangeRequest { range: range(&request.range), ..request.clone() })
        }
    };
    Txn {
        compares: txn
            .compares
            .iter()
            .map(|c| Compare { key: ns.key(&c.key), target: c.target.clone(), op: c.op })
            .collect(),
        success: txn.success.iter().map(op).collect(),
        failure: txn.failure.iter().map(op).collect(),
    }
}

pub(crate) fn op_response(ns: &Namespace, revision: i64, response: Option<PbTxnOpResponse>) -> OpResponse {
    match response {
        Some(PbTxnOpResponse::ResponsePut(_)) => OpResponse::Put,
        Some(PbTxnOpResponse::ResponseDeleteRange(delete)) => {
            OpResponse::Delete { deleted: u64::try_from(delete.deleted).unwrap_or(0) }
        }
        Some(PbTxnOpResponse::ResponseRange(range)) => OpResponse::Range(RangeResponse {
            revision,
            kvs: range.kvs.into_iter().map(|kv| key_value(ns, kv)).collect(),
            more: range.more,
            count: u64::try_from(range.count).unwrap_or(0),
        }),
        // Nested transactions are never sent, so never answered.
        Some(PbTxnOpResponse::ResponseTxn(_)) | None => OpResponse::Put,
    }
}
