//! Work requests and scatter/gather entries, the C structures themselves, built once and
//! re-posted. A post links WRs through `next` in place; see [`link_slots`].

use super::sys::{self, ibv_recv_wr, ibv_send_wr, ibv_sge};
use super::{Error, Result};

/// `struct ibv_sge`: one local buffer (address, length, lkey). Make it with [`Mr::sge`](super::Mr::sge).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Sge(ibv_sge);

impl Sge {
    pub(crate) fn new(addr: u64, length: u32, lkey: u32) -> Sge {
        Sge(ibv_sge { addr, length, lkey })
    }

    pub fn addr(&self) -> u64 {
        self.0.addr
    }

    pub fn len(&self) -> u32 {
        self.0.length
    }

    pub fn is_empty(&self) -> bool {
        self.0.length == 0
    }

    pub fn lkey(&self) -> u32 {
        self.0.lkey
    }

    /// Shortens the SGE (a reused buffer carrying less this time). Never lengthens it: that
    /// could leave its region.
    /// Point the SGE somewhere else (the transport re-aims a pre-built WR at each command's
    /// buffer instead of building one).
    pub(crate) fn set(&mut self, addr: u64, length: u32, lkey: u32) {
        self.0 = ibv_sge { addr, length, lkey };
    }

    pub fn set_len(&mut self, len: u32) -> Result<()> {
        if len > self.0.length {
            return Err(Error::Invalid("an SGE can only be shortened"));
        }
        self.0.length = len;
        Ok(())
    }
}

/// `struct ibv_recv_wr`. Its SGE list is the caller's, by raw pointer: see the posting
/// functions' safety rules.
#[repr(transparent)]
pub struct RecvWr(pub(crate) ibv_recv_wr);

impl RecvWr {
    /// A receive into `sges` (which must outlive every post of this WR and not move).
    pub fn new(wr_id: u64, sges: &mut [Sge]) -> RecvWr {
        RecvWr(ibv_recv_wr {
            wr_id,
            next: std::ptr::null_mut(),
            sg_list: sges.as_mut_ptr().cast(),
            num_sge: sges.len() as i32,
        })
    }

    pub fn wr_id(&self) -> u64 {
        self.0.wr_id
    }
}

/// `struct ibv_send_wr`. Its SGE list is the caller's, by raw pointer.
#[repr(transparent)]
pub struct SendWr(pub(crate) ibv_send_wr);

// SAFETY: the raw pointers inside are only dereferenced by a post, whose caller vouches for
// them; moving the WR between threads changes nothing.
unsafe impl Send for SendWr {}
// SAFETY: see Send.
unsafe impl Send for RecvWr {}

impl SendWr {
    fn base(wr_id: u64, opcode: u32, sges: &mut [Sge], signaled: bool) -> SendWr {
        // SAFETY: ibv_send_wr is plain data (integers, pointers, unions of those): all-zero is
        // a valid value (NULL pointers, opcode 0).
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = sges.as_mut_ptr().cast();
        wr.num_sge = sges.len() as i32;
        wr.opcode = opcode;
        wr.send_flags = if signaled { sys::IBV_SEND_SIGNALED } else { 0 };
        SendWr(wr)
    }

    /// SEND of `sges`.
    pub fn send(wr_id: u64, sges: &mut [Sge], signaled: bool) -> SendWr {
        Self::base(wr_id, sys::IBV_WR_SEND, sges, signaled)
    }

    /// SEND of `sges` that invalidates `rkey` at the peer (NVMe/RDMA's response to a command
    /// whose host asked for remote invalidation).
    pub fn send_with_inv(wr_id: u64, sges: &mut [Sge], rkey: u32, signaled: bool) -> SendWr {
        let mut wr = Self::base(wr_id, sys::IBV_WR_SEND_WITH_INV, sges, signaled);
        wr.0.imm_or_invalidate = rkey;
        wr
    }

    /// RDMA READ from the peer's (`remote_addr`, `rkey`) into `sges`.
    pub fn rdma_read(
        wr_id: u64,
        sges: &mut [Sge],
        remote_addr: u64,
        rkey: u32,
        signaled: bool,
    ) -> SendWr {
        let mut wr = Self::base(wr_id, sys::IBV_WR_RDMA_READ, sges, signaled);
        wr.set_remote(remote_addr, rkey);
        wr
    }

    /// RDMA WRITE of `sges` to the peer's (`remote_addr`, `rkey`).
    pub fn rdma_write(
        wr_id: u64,
        sges: &mut [Sge],
        remote_addr: u64,
        rkey: u32,
        signaled: bool,
    ) -> SendWr {
        let mut wr = Self::base(wr_id, sys::IBV_WR_RDMA_WRITE, sges, signaled);
        wr.set_remote(remote_addr, rkey);
        wr
    }

    /// Points a READ/WRITE at another remote buffer (reusing the WR).
    pub fn set_remote(&mut self, remote_addr: u64, rkey: u32) {
        self.0.rdma.remote_addr = remote_addr;
        self.0.rdma.rkey = rkey;
    }

    /// Make this WR an RDMA READ (`read`) or WRITE to `remote_addr`/`rkey`.
    pub(crate) fn set_rdma(&mut self, read: bool, remote_addr: u64, rkey: u32, signaled: bool) {
        self.0.opcode = if read {
            sys::IBV_WR_RDMA_READ
        } else {
            sys::IBV_WR_RDMA_WRITE
        };
        self.0.send_flags = if signaled { sys::IBV_SEND_SIGNALED } else { 0 };
        self.set_remote(remote_addr, rkey);
    }

    /// Make this WR a signaled SEND, with Invalidate of `invalidate` if given.
    pub(crate) fn set_send(&mut self, invalidate: Option<u32>) {
        self.0.send_flags = sys::IBV_SEND_SIGNALED;
        match invalidate {
            Some(rkey) => {
                self.0.opcode = sys::IBV_WR_SEND_WITH_INV;
                self.0.imm_or_invalidate = rkey;
            }
            None => {
                self.0.opcode = sys::IBV_WR_SEND;
                self.0.imm_or_invalidate = 0;
            }
        }
    }

    pub fn set_wr_id(&mut self, wr_id: u64) {
        self.0.wr_id = wr_id;
    }

    pub fn wr_id(&self) -> u64 {
        self.0.wr_id
    }
}

/// Something with a `next` pointer to link in place.
pub(crate) trait Linked {
    fn next_mut(&mut self) -> &mut *mut Self;
}

impl Linked for RecvWr {
    fn next_mut(&mut self) -> &mut *mut RecvWr {
        // RecvWr is repr(transparent) over ibv_recv_wr, so the pointer types agree.
        let p: &mut *mut ibv_recv_wr = &mut self.0.next;
        // SAFETY: *mut ibv_recv_wr and *mut RecvWr have the same layout (repr(transparent)).
        unsafe { &mut *(p as *mut *mut ibv_recv_wr as *mut *mut RecvWr) }
    }
}

impl Linked for SendWr {
    fn next_mut(&mut self) -> &mut *mut SendWr {
        let p: &mut *mut ibv_send_wr = &mut self.0.next;
        // SAFETY: *mut ibv_send_wr and *mut SendWr have the same layout (repr(transparent)).
        unsafe { &mut *(p as *mut *mut ibv_send_wr as *mut *mut SendWr) }
    }
}

/// Links every WR of `wrs` in order; returns the head (NULL if empty).
pub(crate) fn link_all<W: Linked>(wrs: &mut [W]) -> *mut W {
    let base = wrs.as_mut_ptr();
    let n = wrs.len();
    for (i, w) in wrs.iter_mut().enumerate() {
        *w.next_mut() = if i + 1 < n {
            // SAFETY: i + 1 < n: inside the slice.
            unsafe { base.add(i + 1) }
        } else {
            std::ptr::null_mut()
        };
    }
    if n == 0 {
        std::ptr::null_mut()
    } else {
        base
    }
}

/// Links the WRs `pool[slots[0]] -> pool[slots[1]] -> ...` in place (no allocation); returns
/// the head (NULL if `slots` is empty). Every slot must be in range and appear once (a repeated
/// slot would make a cycle the provider would post forever).
pub(crate) fn link_slots<W: Linked>(pool: &mut [W], slots: &[u32]) -> Result<*mut W> {
    let n = pool.len();
    if slots.iter().any(|&s| s as usize >= n) {
        return Err(Error::Invalid("WR slot out of range"));
    }
    let base = pool.as_mut_ptr();
    // Mark: clear every listed slot, then set a sentinel; meeting the sentinel again is a repeat.
    let sentinel = std::ptr::NonNull::<W>::dangling().as_ptr();
    for &s in slots {
        *pool[s as usize].next_mut() = std::ptr::null_mut();
    }
    for &s in slots {
        let next = pool[s as usize].next_mut();
        if *next == sentinel {
            return Err(Error::Invalid("WR slot listed twice"));
        }
        *next = sentinel;
    }
    for (k, &s) in slots.iter().enumerate() {
        *pool[s as usize].next_mut() = match slots.get(k + 1) {
            // SAFETY: every slot was checked to be < pool.len().
            Some(&t) => unsafe { base.add(t as usize) },
            None => std::ptr::null_mut(),
        };
    }
    Ok(match slots.first() {
        // SAFETY: checked in range above.
        Some(&s) => unsafe { base.add(s as usize) },
        None => std::ptr::null_mut(),
    })
}

/// How many WRs of the chain starting at `head` come before `bad` (the one the provider
/// refused); all of them if `bad` is NULL or not in the chain.
///
/// # Safety
/// `head` must be a chain built by [`link_all`]/[`link_slots`] whose WRs are still alive.
pub(crate) unsafe fn posted_before<W: Linked>(head: *mut W, bad: *mut W, total: usize) -> usize {
    let mut p = head;
    let mut k = 0;
    while !p.is_null() && k < total {
        if p == bad {
            return k;
        }
        // SAFETY: p is a live WR of the chain (caller's promise).
        p = unsafe { *(*p).next_mut() };
        k += 1;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, sges: &mut [Sge]) -> Vec<RecvWr> {
        (0..n)
            .map(|i| RecvWr::new(i as u64, &mut sges[i..i + 1]))
            .collect()
    }

    fn chain_ids(head: *mut RecvWr) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut p = head;
        while !p.is_null() {
            // SAFETY: the test's chain points into its live pool.
            unsafe {
                ids.push((*p).wr_id());
                p = (*p).0.next.cast();
            }
        }
        ids
    }

    #[test]
    fn link_slots_chains_in_the_given_order() {
        let mut sges = [Sge::default(); 8];
        let mut p = pool(8, &mut sges);
        let head = link_all(&mut p);
        assert_eq!(chain_ids(head), (0..8).collect::<Vec<_>>());
        let head = link_slots(&mut p, &[5, 2, 7]).unwrap();
        assert_eq!(chain_ids(head), vec![5, 2, 7]);
        // SAFETY: the chain is p's, alive.
        unsafe {
            assert_eq!(posted_before(head, &mut p[2], 3), 1);
            assert_eq!(posted_before(head, std::ptr::null_mut(), 3), 3);
        }
        assert!(link_slots(&mut p, &[]).unwrap().is_null());
    }

    #[test]
    fn link_slots_refuses_repeats_and_out_of_range() {
        let mut sges = [Sge::default(); 4];
        let mut p = pool(4, &mut sges);
        assert!(link_slots(&mut p, &[1, 2, 1]).is_err());
        assert!(link_slots(&mut p, &[4]).is_err());
        assert_eq!(chain_ids(link_slots(&mut p, &[3, 0]).unwrap()), vec![3, 0]);
    }

    #[test]
    fn sge_only_shrinks() {
        let mut s = Sge::new(4096, 100, 7);
        assert!(s.set_len(101).is_err());
        s.set_len(10).unwrap();
        assert_eq!((s.addr(), s.len(), s.lkey()), (4096, 10, 7));
    }
}
