//! The store conformance suite: one set of tests that states the port's semantics and runs
//! unchanged against every adapter (the quickwit `metastore_test_suite!` pattern).
//!
//! An adapter's `tests/conformance.rs` provides an `async fn() -> TestStore` that returns
//! a fresh, empty store, and instantiates the suite with
//! `sb_store::store_conformance_suite!(that_fn);`. A semantic that only one adapter
//! passes does not exist.
//!
//! Every assertion holds on real etcd 3.4. There each test gets a fresh namespace of a
//! shared cluster, so absolute revisions are unknown and the tests assert only revisions
//! relative to one another (`r2 == r1 + 1`). Those, and compaction, assume that nothing
//! else writes to the same backing store while a test runs: the etcd suite runs serially
//! (see `.config/nextest.toml`), and every test revokes the leases it grants.
//!
//! Tests are grouped by concept: `kv` (keys and ranges), `revision` (revisions, past
//! reads, compaction), `txn` (compares and branches), `concurrency`, `lease`, `watch` and
//! `limits`. Each waits on a watch with a deadline, so a bug fails instead of hanging.

use std::any::Any;

use crate::store::SharedStore;

mod concurrency;
mod harness;
mod kv;
mod lease;
mod limits;
mod revision;
mod state;
mod txn;
mod watch;

pub use concurrency::*;
pub use kv::*;
pub use lease::*;
pub use limits::*;
pub use revision::*;
pub use state::*;
pub use txn::*;
pub use watch::*;

/// A fresh, empty store for one test, and whatever must live as long as it (a temp dir).
pub struct TestStore {
    pub store: SharedStore,
    pub guard: Box<dyn Any + Send + Sync>,
}

impl TestStore {
    pub fn new(store: SharedStore, guard: impl Any + Send + Sync) -> Self {
        TestStore { store, guard: Box::new(guard) }
    }
}

/// Instantiates every conformance test for one adapter. `$factory` is a path to an
/// `async fn() -> TestStore`.
#[macro_export]
macro_rules! store_conformance_suite {
    ($factory:path) => {
        $crate::store_conformance_suite!(@tests $factory;
            // The suite's tests, by name; each is `pub async fn name(store: &TestStore)` in
            // `sb_store::conformance`.
            // kv
            put_and_get_roundtrip,
            version_counts_puts_and_restarts_after_delete,
            prefix_range_returns_matching_keys_in_order,
            range_limit_reports_count_and_more,
            count_only_and_keys_only,
            between_and_from_ranges,
            empty_prefix_reads_the_whole_store,
            paging_at_a_fixed_revision_sees_each_key_once,
            // revision
            one_revision_per_writing_txn,
            deleting_an_absent_key_does_not_advance_the_revision,
            reads_at_past_revisions_see_old_values,
            reads_above_the_current_revision_are_refused,
            compaction_keeps_the_compacted_revision_readable,
            compacting_again_or_ahead_is_refused,
            // txn
            compare_value,
            compare_value_of_an_absent_key_is_always_false,
            compare_version,
            compare_create_revision,
            compare_mod_revision,
            compare_lease,
            txn_success_branch_answers_each_op,
            txn_failure_branch_runs_when_a_compare_fails,
            txn_range_sees_earlier_ops_of_its_branch,
            txn_is_all_or_nothing,
            txn_may_write_one_key_in_both_branches,
            // concurrency
            cas_increments_lose_no_update,
            concurrent_txns_fail_alone,
            concurrent_create_if_absent_has_one_winner,
            // lease
            lease_grant_raises_ttl_to_the_minimum,
            lease_grant_keep_alive_time_to_live_and_revoke,
            lease_revoke_deletes_keys_at_one_revision,
            lease_expiry_deletes_keys_with_events,
            lease_keep_alive_postpones_expiry,
            put_with_an_unknown_lease_is_refused,
            unknown_lease_in_the_branch_not_taken_is_ignored,
            unknown_lease_operations_are_refused,
            overwriting_a_key_without_a_lease_detaches_it,
            putting_a_key_with_another_lease_moves_it,
            // watch
            watch_replays_history_then_live_changes,
            watch_of_one_key_sees_only_that_key,
            watch_of_a_range_sees_only_its_keys,
            watch_without_a_start_revision_sees_only_new_changes,
            watch_resumes_without_gaps,
            watch_from_below_the_compacted_revision_fails,
            watch_progress_request_yields_a_progress_batch,
            watch_delivers_a_large_revision_as_one_batch,
            // limits
            txn_op_limit_applies_to_each_list,
            request_size_limit_is_etcds,
            duplicate_keys_in_one_branch_are_refused,
            empty_key_is_refused,
            // state layer built on the port
            view_loads_then_follows_its_range,
            view_wait_for_a_revision_outside_its_range,
            view_wait_for_times_out_with_an_error,
            view_survives_compaction,
            membership_lists_live_nodes_and_drops_stopped_ones,
            backup_restore_roundtrip,
            restore_refuses_a_damaged_file_and_writes_nothing,
        );
    };
    (@tests $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = $factory().await;
                $crate::conformance::$name(&store).await;
            }
        )*
    };
}
