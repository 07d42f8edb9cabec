//! Wiring of the ID services: options from flags, the wall clock (with the debug-only
//! test clock), and their metrics.

use std::sync::{Arc, Weak};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sb_api::ApiMetrics;
use sb_ids::snowflake::Layout;
use sb_ids::{SegmentOptions, SegmentService, SnowflakeOptions, SnowflakeService, WallClock};

use crate::config::IdArgs;

pub fn snowflake_options(args: &IdArgs, node_id: &str) -> SnowflakeOptions {
    let mut options = SnowflakeOptions::new(node_id);
    options.layout = Layout { epoch_ms: args.ids_epoch_ms };
    options.workers = args.ids_workers;
    options.worker_ttl_secs = args.ids_worker_ttl_secs;
    options.watermark_ahead_ms = args.ids_watermark_ahead_ms;
    options
}

pub fn segment_options(args: &IdArgs) -> SegmentOptions {
    SegmentOptions {
        default_step: args.ids_segment_step,
        max_step: args.ids_segment_max_step.max(args.ids_segment_step),
        auto_create: args.ids_segment_auto_create,
        ..SegmentOptions::default()
    }
}

/// The test-only clock: in debug builds, `SWITCHBOARD_TEST_CLOCK_OFFSET_FILE` names a file
/// holding a millisecond offset (for example `-10000`) that is added to the system clock
/// of the ID generators, re-read every 10 ms. Release builds do not contain this code.
#[cfg(debug_assertions)]
pub const TEST_CLOCK_ENV: &str = "SWITCHBOARD_TEST_CLOCK_OFFSET_FILE";

pub fn wall_clock() -> Arc<dyn WallClock> {
    #[cfg(debug_assertions)]
    if let Some(path) = std::env::var_os(TEST_CLOCK_ENV) {
        let clock = sb_ids::OffsetClock::new();
        let handle = clock.clone();
        let path = std::path::PathBuf::from(path);
        tracing::warn!(file = %path.display(), "test clock enabled: the ID generators' clock follows an offset file");
        let read = move || {
            let offset = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<i64>().ok());
            handle.set_offset_ms(offset.unwrap_or(0));
        };
        read();
        std::thread::Builder::new()
            .name("test-clock".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(10));
                read();
            })
            .ok();
        return Arc::new(clock);
    }
    Arc::new(sb_ids::SystemClock)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Snowflake and segment counters, read from the services at each scrape.
pub fn register_metrics(
    metrics: &mut ApiMetrics,
    snowflake: Weak<SnowflakeService>,
    segments: Weak<SegmentService>,
) {
    let registry = metrics.registry_mut();
    let issued = Counter::<u64>::default();
    registry.register(
        "switchboard_ids_snowflake_issued",
        "Snowflake IDs issued by this node",
        issued.clone(),
    );
    let waits = Counter::<u64>::default();
    registry.register(
        "switchboard_ids_snowflake_clock_waits",
        "Clock steps backwards of at most 5 ms that were waited out",
        waits.clone(),
    );
    let switches = Counter::<u64>::default();
    registry.register(
        "switchboard_ids_snowflake_worker_switches",
        "Fresh worker ids taken after a larger clock step backwards",
        switches.clone(),
    );
    let refusals = Family::<ReasonLabels, Counter>::default();
    registry.register(
        "switchboard_ids_snowflake_refusals",
        "Snowflake requests refused with an explicit error, by reason",
        refusals.clone(),
    );
    let marks = Counter::<u64>::default();
    registry.register(
        "switchboard_ids_snowflake_watermark_writes",
        "High-water marks persisted ahead of use",
        marks.clone(),
    );
    let worker = Gauge::<i64>::default();
    registry.register(
        "switchboard_ids_snowflake_worker",
        "The worker id this node holds (-1: none)",
        worker.clone(),
    );
    let segment_issued = Counter::<u64>::default();
    registry.register(
        "switchboard_ids_segment_issued",
        "Segment IDs issued by this node",
        segment_issued.clone(),
    );
    let allocations = Counter::<u64>::default();
    registry.register(
        "switchboard_ids_segment_allocations",
        "Segments allocated by this node (compare-and-swap transactions that won)",
        allocations.clone(),
    );
    let conflicts = Counter::<u64>::default();
    registry.register(
        "switchboard_ids_segment_allocation_conflicts",
        "Segment allocations that lost to another node and were retried",
        conflicts.clone(),
    );
    let tags = Gauge::<i64>::default();
    registry.register(
        "switchboard_ids_segment_buffered_tags",
        "Segment tags this node buffers",
        tags.clone(),
    );
    metrics.add_scrape_hook(Box::new(move || {
        if let Some(segments) = segments.upgrade() {
            let now = segments.stats();
            let follow = |counter: &Counter, value: u64| counter.inc_by(value.saturating_sub(counter.get()));
            follow(&segment_issued, now.issued);
            follow(&allocations, now.allocations);
            follow(&conflicts, now.allocation_conflicts);
            tags.set(now.buffered_tags as i64);
        }
        let Some(snowflake) = snowflake.upgrade() else { return };
        let now = snowflake.stats();
        let follow = |counter: &Counter, value: u64| counter.inc_by(value.saturating_sub(counter.get()));
        follow(&issued, now.issued);
        follow(&waits, now.clock_waits);
        follow(&switches, now.worker_switches);
        follow(&marks, now.watermark_writes);
        for (reason, value) in [
            ("no_free_worker", now.refused_no_free_worker),
            ("lease_unconfirmed", now.refused_lease_unconfirmed),
            ("other", now.refused_other),
        ] {
            follow(&refusals.get_or_create(&ReasonLabels { reason }), value);
        }
        worker.set(now.worker.map_or(-1, i64::from));
    }));
}
