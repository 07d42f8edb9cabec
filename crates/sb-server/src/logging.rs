//! Structured JSON logs on stderr, with a filter that can change at runtime. Console
//! output meant for a person (the first start's token) goes to stdout, never here.

use std::sync::Arc;

use sb_api::LogLevelControl;
use std::sync::Mutex;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// The variable that sets the initial filter (`info` by default).
pub const LOG_ENV: &str = "SWITCHBOARD_LOG";

pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
    /// Flushes the background log writer when the last holder drops it.
    _writer: tracing_appender::non_blocking::WorkerGuard,
}

impl LogLevelControl for LogControl {
    fn set(&self, directive: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directive).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())?;
        *self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = directive.to_owned();
        tracing::info!(filter = directive, "log filter changed");
        Ok(())
    }

    fn current(&self) -> String {
        self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// How many log lines wait for the writer thread at most (then lines are dropped and
/// counted). At the default level the access log keeps only failures and slow requests;
/// each slot is resident memory (4k lines: 128 KiB).
const LOG_QUEUE_LINES: usize = 4_096;

/// Installs the JSON subscriber for `serve`. Returns `None` if one was installed already.
pub fn init_json_logging() -> Option<Arc<LogControl>> {
    let directive = std::env::var(LOG_ENV).unwrap_or_else(|_| "info".to_owned());
    let (directive, filter) = match EnvFilter::try_new(&directive) {
        Ok(filter) => (directive, filter),
        Err(_) => ("info".to_owned(), EnvFilter::new("info")),
    };
    let (filter_layer, handle) = reload::Layer::new(filter);
    // One access-log line per request must not cost a write syscall on the request path:
    // lines go through a bounded queue (lossy when full, counted by the appender) to a
    // writer thread. The queue's slots are allocated up front: the appender's default of
    // 128k lines cost 4 MiB of resident memory on an idle node.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(std::io::stderr());
    let format = tracing_subscriber::fmt::layer().json().with_writer(writer);
    tracing_subscriber::registry().with(filter_layer).with(format).try_init().ok()?;
    Some(Arc::new(LogControl { handle, current: Mutex::new(directive), _writer: guard }))
}
