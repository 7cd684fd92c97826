//! A log writer that never blocks the thread that logs. Each formatted line goes into a bounded
//! lock-free queue, and one thread of its own writes the queue to stderr. When the queue is full
//! (stderr is a pipe nobody reads, a stalled journal, a slow terminal) the line is dropped and
//! counted, and the count is written ahead of the next line that gets through. A reactor that
//! logs (rate-limited, see `nvmfd_transport::logsafe`) therefore never waits on a write(2).

use crossbeam_queue::ArrayQueue;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;

/// Lines the queue holds before new ones are dropped.
pub const QUEUE_LINES: usize = 4096;

struct Shared {
    queue: ArrayQueue<Vec<u8>>,
    dropped: AtomicU64,
    stop: AtomicBool,
    writer: OnceLock<Thread>,
}

/// The `MakeWriter` for tracing's fmt layer.
#[derive(Clone)]
pub struct NonBlocking {
    shared: Arc<Shared>,
}

/// Keeps the writer thread; dropping it writes what is still queued and stops the thread.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A writer for stderr.
pub fn stderr() -> std::io::Result<(NonBlocking, Guard)> {
    with_sink(std::io::stderr(), QUEUE_LINES)
}

/// A writer for `sink`, holding up to `lines` lines.
pub fn with_sink<W: Write + Send + 'static>(
    mut sink: W,
    lines: usize,
) -> std::io::Result<(NonBlocking, Guard)> {
    let shared = Arc::new(Shared {
        queue: ArrayQueue::new(lines.max(1)),
        dropped: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        writer: OnceLock::new(),
    });
    let s = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || loop {
            while let Some(line) = s.queue.pop() {
                report_dropped(&s, &mut sink);
                let _ = sink.write_all(&line);
            }
            report_dropped(&s, &mut sink);
            let _ = sink.flush();
            if s.stop.load(Ordering::Acquire) && s.queue.is_empty() {
                return;
            }
            std::thread::park_timeout(Duration::from_millis(100));
        })?;
    let _ = shared.writer.set(thread.thread().clone());
    Ok((
        NonBlocking {
            shared: shared.clone(),
        },
        Guard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn report_dropped(s: &Shared, sink: &mut impl Write) {
    let n = s.dropped.swap(0, Ordering::Relaxed);
    if n > 0 {
        let _ = writeln!(
            sink,
            "nvmfd: {n} log lines dropped: the log output could not keep up"
        );
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// One log line being formatted; queued when tracing drops it.
pub struct Line<'a> {
    buf: Vec<u8>,
    shared: &'a Shared,
}

impl Write for Line<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        if self.shared.queue.push(line).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(t) = self.shared.writer.get() {
            t.unpark();
        }
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            buf: Vec::new(),
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Instant;

    /// A sink that blocks every write until `open` is set, then keeps what it is given.
    struct Gate {
        open: Arc<AtomicBool>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            while !self.open.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_sink_never_blocks_the_logger_and_drops_are_counted() {
        let open = Arc::new(AtomicBool::new(false));
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Gate {
            open: open.clone(),
            out: out.clone(),
        };
        let (nb, guard) = with_sink(sink, 8).unwrap();
        let t = Instant::now();
        for i in 0..1000 {
            let mut w = nb.make_writer();
            writeln!(w, "line {i}").unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "logging waited on the sink: {:?}",
            t.elapsed()
        );
        open.store(true, Ordering::Release);
        drop(guard);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // The first line was taken by the (blocked) writer, up to 8 more were queued; the rest
        // dropped, and said so.
        assert!(lines.contains(&"line 0"), "{text}");
        let kept = lines.iter().filter(|l| l.starts_with("line ")).count();
        assert!((1..=9).contains(&kept), "{kept} lines kept: {text}");
        let dropped: u64 = lines
            .iter()
            .filter_map(|l| l.strip_prefix("nvmfd: "))
            .map(|l| l.split(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(kept as u64 + dropped, 1000, "{text}");
    }

    #[test]
    fn lines_come_out_whole_and_in_order() {
        let open = Arc::new(AtomicBool::new(true));
        let out = Arc::new(Mutex::new(Vec::new()));
        let (nb, guard) = with_sink(
            Gate {
                open,
                out: out.clone(),
            },
            QUEUE_LINES,
        )
        .unwrap();
        for i in 0..100 {
            let mut w = nb.make_writer();
            write!(w, "a{i} ").unwrap();
            writeln!(w, "b{i}").unwrap();
        }
        drop(guard);
        let want: String = (0..100).map(|i| format!("a{i} b{i}\n")).collect();
        assert_eq!(
            String::from_utf8(out.lock().unwrap().clone()).unwrap(),
            want
        );
    }
}
