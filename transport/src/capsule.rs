//! The unit of work a transport hands to the target core: one command and its data buffer.

use crate::proto::nvme::{Cqe, Sqe};
use crate::Piece;
use nvmfd_p2p::mem::{IoBuf, Lent};

/// A command capsule as the core sees it, whatever transport carried it.
///
/// For host-to-controller commands the transport has gathered all `data_len` bytes into `buf`
/// before the core sees the capsule; for controller-to-host commands `buf` has room for `data_len`
/// bytes and the core says in its [`Response`] how many of them to send.
#[derive(Debug)]
pub struct Capsule {
    pub sqe: Sqe,
    /// The data buffer; `None` while a block device owns it.
    pub buf: Option<IoBuf>,
    /// Bytes of data the command's SGL describes.
    pub data_len: u32,
    /// Read data a block device lent instead of filling `buf` (sent from there, see
    /// `nvmfd_bdev::Op::ReadLent`; described by raw parts only, see [`Piece`]).
    pub lent: Option<Lent>,
}

impl Capsule {
    /// Bytes of data the command has to send: all of the lent data, or the buffer's capacity.
    pub fn data_room(&self) -> usize {
        match (&self.lent, &self.buf) {
            (Some(l), _) => l.len(),
            (None, Some(b)) => b.capacity(),
            (None, None) => 0,
        }
    }

    /// Bytes `from..to` of that data as a piece of a `writev` (lent data is never read here).
    pub fn data_piece(&self, from: usize, to: usize) -> Piece<'_> {
        match (&self.lent, &self.buf) {
            (Some(l), _) => Piece::lent(l, from, to),
            (None, Some(b)) => Piece::bytes(&b.as_slice()[from..to]),
            (None, None) => Piece::EMPTY,
        }
    }
}

/// What the core answers: the completion and how many bytes of the capsule's buffer go back to the
/// host ahead of it (controller-to-host commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub cqe: Cqe,
    pub data_len: u32,
}
