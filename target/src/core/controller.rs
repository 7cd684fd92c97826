//! Controllers: the part every queue of a controller shares (lock-free flags), and the registry
//! that hands out controller IDs and lets I/O queues find their controller at Connect time.

use super::SubsysRef;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

/// What the queues of one controller share. The admin queue owns the controller's mutable state;
/// I/O queues (possibly on other reactors) see only these atomics.
#[derive(Debug)]
pub struct CtrlShared {
    pub cntlid: u16,
    pub subsys: SubsysRef,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// CC.EN = 1 and CSTS.RDY = 1: I/O queues may connect and I/O may run.
    pub ready: AtomicBool,
    /// The controller is gone (keep-alive expired, admin queue lost, shut down): its I/O queues
    /// must be torn down.
    pub failed: AtomicBool,
    /// I/O queues granted by Set Features (Number of Queues); 1-based count.
    pub io_queues: AtomicU16,
    /// Which QIDs (index = qid) have a connected queue.
    qids: Vec<AtomicBool>,
    /// Volatile Write Cache feature (FID 06h) WCE: set by the admin queue, read by every I/O of
    /// this controller's I/O queues (on any reactor) to decide whether writes need FUA.
    write_cache: AtomicBool,
}

impl CtrlShared {
    /// Claim `qid` for a new I/O queue; false if it is out of range or taken.
    pub fn claim_qid(&self, qid: u16) -> bool {
        match self.qids.get(qid as usize) {
            Some(slot) => slot
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok(),
            None => false,
        }
    }

    pub fn release_qid(&self, qid: u16) {
        if let Some(slot) = self.qids.get(qid as usize) {
            slot.store(false, Ordering::Release);
        }
    }

    /// Whether the volatile write cache is enabled for this controller (the default).
    pub fn write_cache(&self) -> bool {
        // Acquire pairs with the admin queue's Release store (a plain load on x86).
        self.write_cache.load(Ordering::Acquire)
    }

    pub fn set_write_cache(&self, enabled: bool) {
        self.write_cache.store(enabled, Ordering::Release);
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// Live controllers by controller ID.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    by_id: HashMap<u16, Arc<CtrlShared>>,
    next: u16,
}

/// Controller IDs are 1..=0xFFEF (0xFFF0.. are reserved, 0xFFFF asks for a dynamic controller).
const MAX_CNTLID: u16 = 0xffef;

impl Registry {
    /// Create a controller with a fresh ID, or None if every ID is in use.
    pub fn create(
        &self,
        subsys: SubsysRef,
        hostnqn: &str,
        hostid: [u8; 16],
        max_io_queues: u16,
    ) -> Option<Arc<CtrlShared>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..MAX_CNTLID {
            g.next = if g.next >= MAX_CNTLID { 1 } else { g.next + 1 };
            let id = g.next;
            if g.by_id.contains_key(&id) {
                continue;
            }
            let ctrl = Arc::new(CtrlShared {
                cntlid: id,
                subsys,
                hostnqn: hostnqn.to_string(),
                hostid,
                ready: AtomicBool::new(false),
                failed: AtomicBool::new(false),
                io_queues: AtomicU16::new(max_io_queues),
                write_cache: AtomicBool::new(true),
                qids: (0..=max_io_queues)
                    .map(|_| AtomicBool::new(false))
                    .collect(),
            });
            g.by_id.insert(id, ctrl.clone());
            return Some(ctrl);
        }
        None
    }

    pub fn get(&self, cntlid: u16) -> Option<Arc<CtrlShared>> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .get(&cntlid)
            .cloned()
    }

    /// Remove a controller and mark it failed so its I/O queues tear down.
    pub fn destroy(&self, ctrl: &CtrlShared) {
        ctrl.failed.store(true, Ordering::Release);
        ctrl.ready.store(false, Ordering::Release);
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .remove(&ctrl.cntlid);
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .len()
    }
}
