//! Controllers: the part every queue of a controller shares (lock-free atomics), and the registry
//! that hands out controller IDs and lets I/O queues find their controller at Connect time.
//!
//! The admin queue and the I/O queues of one controller may live on different reactors. They meet
//! only here, through atomics read at most once per command (`ready`, `epoch`) and a few touched at
//! connect, disconnect, reset and shutdown (the QID slots): no lock on the I/O path.

use super::SubsysRef;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// One I/O queue ID of a controller.
#[derive(Debug, Default)]
struct QidSlot {
    /// The controller epoch of the queue holding this QID; 0 = free. A slot held by an older
    /// epoch belongs to a queue of a controller that was reset since: it is as good as free.
    owner: AtomicU32,
    /// The last shutdown sequence number this queue acknowledged: set once the queue has no
    /// command in flight on a block device after the host asked for a shutdown.
    drained: AtomicU32,
}

/// Asynchronous events the core can raise (NVMe base 2.0, 5.2 Asynchronous Event Request; the
/// completion's dword 0 is event type | information << 8 | log page << 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncEvent {
    /// Notice (type 2h), Namespace Attribute Changed (00h), Changed Namespace List log (04h).
    NamespaceAttributeChanged,
    /// Notice (type 2h), Discovery Log Page Change (F0h), Discovery log (70h).
    DiscoveryLogChanged,
}

impl AsyncEvent {
    pub(super) const ALL: [AsyncEvent; 2] = [
        AsyncEvent::NamespaceAttributeChanged,
        AsyncEvent::DiscoveryLogChanged,
    ];

    /// This event's bit in the pending and masked sets (its Asynchronous Event Configuration bit,
    /// Get/Set Features FID 0Bh: bit 8 namespace attribute notices, bit 31 discovery log changes).
    pub(super) fn bit(self) -> u32 {
        match self {
            AsyncEvent::NamespaceAttributeChanged => 1 << 8,
            AsyncEvent::DiscoveryLogChanged => 1 << 31,
        }
    }

    /// The log page whose reading (with RAE cleared) unmasks the event.
    pub(super) fn log_page(self) -> u8 {
        match self {
            AsyncEvent::NamespaceAttributeChanged => 0x04,
            AsyncEvent::DiscoveryLogChanged => 0x70,
        }
    }

    /// Dword 0 of the AER completion.
    pub(super) fn dw0(self) -> u32 {
        let info: u32 = match self {
            AsyncEvent::NamespaceAttributeChanged => 0x00,
            AsyncEvent::DiscoveryLogChanged => 0xf0,
        };
        0x2 | (info << 8) | ((self.log_page() as u32) << 16)
    }
}

/// What the queues of one controller share. The admin queue owns the controller's mutable state;
/// I/O queues (possibly on other reactors) see only these atomics.
#[derive(Debug)]
pub struct CtrlShared {
    pub cntlid: u16,
    pub subsys: SubsysRef,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// CC.EN = 1 and CSTS.RDY = 1 (and no shutdown asked): I/O queues may connect and I/O may run.
    pub ready: AtomicBool,
    /// Bumped at every controller reset (CC.EN 1 → 0) and when the controller is destroyed. An
    /// I/O queue remembers the epoch it connected in; once it differs the queue is gone (its
    /// commands are aborted and the connection is closed) and its QID is free again.
    pub(super) epoch: AtomicU32,
    /// The controller is gone (keep-alive expired, admin queue lost): its I/O queues must be
    /// torn down.
    pub failed: AtomicBool,
    /// I/O queues granted by Set Features (Number of Queues); 1-based count.
    pub io_queues: AtomicU16,
    /// An I/O queue was created since the last reset (Set Features Number of Queues is then a
    /// Command Sequence Error: NVMe base 2.0, Set Features, Number of Queues, FID 07h).
    pub(super) queues_created: AtomicBool,
    /// Shutdown sequence number (0 = never): bumped when the host sets CC.SHN. Each I/O queue
    /// acknowledges it in its QID slot once nothing of it is in flight.
    pub(super) shutdown_seq: AtomicU32,
    /// Asynchronous events raised from outside the admin queue's reactor (bits of
    /// [`AsyncEvent::bit`]); the admin queue takes them at its next poll.
    pub(super) raised: AtomicU32,
    /// The maximum I/O queue count (Number of Queues default).
    pub(super) max_io_queues: u16,
    /// Index = QID (slot 0 unused).
    qids: Vec<QidSlot>,
    /// Volatile Write Cache feature (FID 06h) WCE: set by the admin queue, read by every I/O of
    /// this controller's I/O queues (on any reactor) to decide whether writes need FUA.
    write_cache: AtomicBool,
}

impl CtrlShared {
    fn new(
        cntlid: u16,
        subsys: SubsysRef,
        hostnqn: &str,
        hostid: [u8; 16],
        max_io_queues: u16,
    ) -> Self {
        CtrlShared {
            cntlid,
            subsys,
            hostnqn: hostnqn.to_string(),
            hostid,
            ready: AtomicBool::new(false),
            epoch: AtomicU32::new(1),
            failed: AtomicBool::new(false),
            io_queues: AtomicU16::new(max_io_queues),
            queues_created: AtomicBool::new(false),
            shutdown_seq: AtomicU32::new(0),
            raised: AtomicU32::new(0),
            max_io_queues,
            qids: (0..=max_io_queues).map(|_| QidSlot::default()).collect(),
            write_cache: AtomicBool::new(true),
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

    /// The current controller epoch (see [`CtrlShared::epoch`]).
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Claim `qid` for a new I/O queue of `epoch`; false if it is out of range, held by a live
    /// queue of this epoch, or `epoch` is no longer current (a reset raced the Connect).
    pub fn claim_qid(&self, qid: u16, epoch: u32) -> bool {
        let Some(slot) = self.qids.get(qid as usize).filter(|_| qid != 0) else {
            return false;
        };
        let mut cur = slot.owner.load(Ordering::Acquire);
        loop {
            // Free, or held by a queue of an older epoch (a reset deleted it). Epochs only grow;
            // the comparison tolerates wrap-around.
            let takeable = cur == 0 || (epoch.wrapping_sub(cur) as i32) > 0;
            if !takeable {
                return false;
            }
            match slot
                .owner
                .compare_exchange(cur, epoch, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if self.epoch() != epoch {
            // Reset while we claimed: the new epoch's queues own the QIDs.
            self.release_qid(qid, epoch);
            return false;
        }
        slot.drained.store(0, Ordering::Release);
        self.queues_created.store(true, Ordering::Release);
        true
    }

    /// Give `qid` back, if the queue of `epoch` still holds it (a reset may have handed it on).
    pub fn release_qid(&self, qid: u16, epoch: u32) {
        if let Some(slot) = self.qids.get(qid as usize) {
            let _ = slot
                .owner
                .compare_exchange(epoch, 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// An I/O queue of `epoch` holding `qid` has nothing in flight after shutdown `seq` began.
    pub(super) fn ack_shutdown(&self, qid: u16, epoch: u32, seq: u32) {
        if let Some(slot) = self.qids.get(qid as usize) {
            if slot.owner.load(Ordering::Acquire) == epoch {
                slot.drained.store(seq, Ordering::Release);
            }
        }
    }

    /// Whether every live I/O queue of the current epoch acknowledged shutdown `seq`.
    pub(super) fn io_queues_drained(&self, seq: u32) -> bool {
        let epoch = self.epoch();
        self.qids.iter().skip(1).all(|s| {
            s.owner.load(Ordering::Acquire) != epoch || s.drained.load(Ordering::Acquire) == seq
        })
    }

    /// Live I/O queues of the current epoch (for tests and reports).
    pub fn live_io_queues(&self) -> usize {
        let epoch = self.epoch();
        self.qids
            .iter()
            .skip(1)
            .filter(|s| s.owner.load(Ordering::Acquire) == epoch)
            .count()
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Raise an asynchronous event for this controller from any thread; its admin queue
    /// completes a held Asynchronous Event Request with it at its next poll (if the host enabled
    /// the event and one is held).
    pub fn raise(&self, event: AsyncEvent) {
        self.raised.fetch_or(event.bit(), Ordering::AcqRel);
    }
}

/// Live controllers by (subsystem, controller ID): controller IDs are unique within an NVM
/// subsystem (NVMe base 2.0, 3.1.1), each subsystem handing out its own configured range.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    by_id: HashMap<(SubsysRef, u16), Arc<CtrlShared>>,
    /// The last ID handed out per subsystem (IDs are not reused at once: a host that lost its
    /// association should not see its old controller ID on a new one right away).
    last: HashMap<SubsysRef, u16>,
}

impl Registry {
    /// Create a controller with a fresh ID from `ids` (inclusive), or None if every ID in the
    /// range is in use.
    pub fn create(
        &self,
        subsys: SubsysRef,
        ids: (u16, u16),
        hostnqn: &str,
        hostid: [u8; 16],
        max_io_queues: u16,
    ) -> Option<Arc<CtrlShared>> {
        let (lo, hi) = ids;
        if lo == 0 || lo > hi {
            return None;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut id = g.last.get(&subsys).copied().unwrap_or(hi);
        for _ in 0..=(hi - lo) {
            id = if id >= hi || id < lo { lo } else { id + 1 };
            if g.by_id.contains_key(&(subsys, id)) {
                continue;
            }
            let ctrl = Arc::new(CtrlShared::new(id, subsys, hostnqn, hostid, max_io_queues));
            g.by_id.insert((subsys, id), ctrl.clone());
            g.last.insert(subsys, id);
            return Some(ctrl);
        }
        None
    }

    pub fn get(&self, subsys: SubsysRef, cntlid: u16) -> Option<Arc<CtrlShared>> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .get(&(subsys, cntlid))
            .cloned()
    }

    /// Remove a controller and mark it failed so its I/O queues tear down.
    pub fn destroy(&self, ctrl: &CtrlShared) {
        ctrl.failed.store(true, Ordering::Release);
        ctrl.ready.store(false, Ordering::Release);
        ctrl.epoch.fetch_add(1, Ordering::AcqRel);
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .remove(&(ctrl.subsys, ctrl.cntlid));
    }

    /// Every live controller of `subsys` (control-plane use: raising events).
    pub fn of_subsystem(&self, subsys: SubsysRef) -> Vec<Arc<CtrlShared>> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .iter()
            .filter(|((s, _), _)| *s == subsys)
            .map(|(_, c)| c.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .len()
    }
}
