//! Zero heap allocations per I/O on the data path: a counting global allocator attributes every
//! allocation made on a reactor thread, and 100 000 4 KiB reads and writes at queue depth 32 must
//! add none after a warm-up (which fills the per-slot buffers and grows the send buffer once).

use nvmfd_bench::host::{read_sqe, write_sqe};
use nvmfd_bench::{Host, HostOptions};
use nvmfd_target::daemon::Daemon;
use nvmfd_transport::proto::status::Status;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

struct Counting;

static REACTOR_ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if nvmfd_target::reactor::is_reactor_thread() {
            REACTOR_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if nvmfd_target::reactor::is_reactor_thread() {
            REACTOR_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn run(q: &mut nvmfd_bench::IoQueue, ios: u64, data: &[u8]) {
    let mut submitted = 0u64;
    let mut done = 0u64;
    while done < ios {
        while submitted < ios && q.outstanding() < 32 {
            let lba = (submitted * 7919) % 16384;
            if submitted.is_multiple_of(2) {
                q.submit(write_sqe(1, lba, 1), Some(data), 0).unwrap();
            } else {
                q.submit(read_sqe(1, lba, 1), None, 4096).unwrap();
            }
            submitted += 1;
        }
        for c in q.poll_completions(1).unwrap() {
            assert_eq!(c.status(), Status::SUCCESS);
            q.recycle_buffer(c.data);
            done += 1;
        }
    }
}

#[test]
fn no_allocation_per_io_on_reactors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        "reactors: {{ cores: [0] }}\nbdevs: [ {{ name: r, malloc: {{ size: 64MiB }} }} ]\n\
         subsystems: [ {{ nqn: nqn.2026-11.io.nvmfd:alloc, serial: ALLOC0001, namespaces: [ {{ nsid: 1, bdev: r }} ],\n\
         listeners: [ {{ transport: tcp, address: 127.0.0.1, port: {port} }} ] }} ]\n"
    );
    let cfg = nvmfd_config::parse_str(&yaml, "alloc.yaml").unwrap();
    let mut d = Daemon::start(&cfg).unwrap();
    // With the metrics endpoint served the reactors count every command (and latency): that
    // must not allocate either. (A scrape does allocate on reactors, once per scrape: none here.)
    d.serve_metrics("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut o = HostOptions::new("nqn.2026-11.io.nvmfd:alloc");
    o.io_timeout = Duration::from_secs(30);
    // No keep-alive: the admin queue is idle while 110k I/Os run, which on a loaded machine (debug
    // build) can take longer than any timeout; this test counts allocations, not keep-alives.
    o.kato_ms = 0;
    let mut c = Host::connect_admin(d.listen_addrs[0], &o).unwrap();
    let mut q = c.connect_io(1, 64).unwrap();
    let data = vec![0x5au8; 4096];
    run(&mut q, 10_000, &data);
    let before = REACTOR_ALLOCS.load(Ordering::Relaxed);
    assert!(
        before > 0,
        "the counter sees reactor allocations (buffers made during warm-up)"
    );
    run(&mut q, 100_000, &data);
    let per_io = REACTOR_ALLOCS.load(Ordering::Relaxed) - before;
    assert_eq!(
        per_io, 0,
        "reactor allocated {per_io} times during 100 000 I/Os"
    );
    d.shutdown();
}
