//! [`Piece`]: one piece of a vectored write, laid out as the kernel's `struct iovec`, and
//! [`Transmit`], a stream written with pieces.
//!
//! A piece is made from a byte slice the sender owns (PDU headers, a command's buffer) or from
//! data a block device lent ([`Lent`]). Lent memory is not the holder's: another reactor may be
//! writing it, so it is described from its raw pointer and length and never becomes a `&[u8]`
//! (design.md, "Memory"). This module is the only place in the crate that reads through a piece.

use nvmfd_p2p::mem::Lent;
use std::marker::PhantomData;
use std::mem::{align_of, offset_of, size_of};

/// Address and length of bytes to send, valid for `'a` (the borrow of what they came from).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Piece<'a> {
    base: *const u8,
    len: usize,
    _from: PhantomData<&'a ()>,
}

// `writev` is handed a `&[Piece]` as `*const iovec`: the layouts must agree.
const _: () = {
    assert!(size_of::<Piece<'static>>() == size_of::<libc::iovec>());
    assert!(align_of::<Piece<'static>>() == align_of::<libc::iovec>());
    assert!(offset_of!(Piece<'static>, base) == offset_of!(libc::iovec, iov_base));
    assert!(offset_of!(Piece<'static>, len) == offset_of!(libc::iovec, iov_len));
};

impl<'a> Piece<'a> {
    pub const EMPTY: Piece<'static> = Piece {
        base: std::ptr::NonNull::<u8>::dangling().as_ptr() as *const u8,
        len: 0,
        _from: PhantomData,
    };

    /// Bytes the sender owns.
    pub fn bytes(b: &'a [u8]) -> Self {
        Piece {
            base: b.as_ptr(),
            len: b.len(),
            _from: PhantomData,
        }
    }

    /// Bytes `from..to` (clamped) of lent data, from its raw parts.
    pub fn lent(l: &'a Lent, from: usize, to: usize) -> Self {
        let (base, len) = l.raw(from, to);
        Piece {
            base,
            len,
            _from: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces as the `iovec` array `writev(2)` takes (valid while `pieces` is borrowed).
    pub fn as_iovecs(pieces: &[Piece<'_>]) -> *const libc::iovec {
        pieces.as_ptr().cast()
    }

    /// Append at most `max` of the piece's first bytes to `out` and return how many: a copy,
    /// like the kernel's, for streams that are not sockets (tests, fuzzing). No reference is
    /// made over the piece's bytes.
    pub fn copy_to(&self, out: &mut Vec<u8>, max: usize) -> usize {
        let n = self.len.min(max);
        if n == 0 {
            return 0;
        }
        out.reserve(n);
        let at = out.len();
        // SAFETY: base..base + len is readable for 'a (a borrowed slice, or lent data its Lent
        // keeps mapped), and `self` cannot outlive 'a; the destination is `n` bytes of spare
        // capacity just reserved in `out`, which the source (not ours to borrow) cannot overlap.
        // The bytes are initialised once copied, so the new length is sound.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base, out.as_mut_ptr().add(at), n);
            out.set_len(at + n);
        }
        n
    }
}

impl std::fmt::Debug for Piece<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Piece").field("len", &self.len).finish()
    }
}

/// A stream the transport writes with [`Piece`]s.
pub trait Transmit {
    /// Write the pieces in order, as `writev(2)` does: Ok(bytes written) (possibly fewer than
    /// all, a piece cut anywhere), or an error (`WouldBlock` when nothing could be written now).
    fn transmit(&mut self, pieces: &[Piece<'_>]) -> std::io::Result<usize>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr::NonNull;
    use std::sync::Arc;

    #[test]
    fn pieces_of_owned_and_lent_bytes_copy_out_in_order() {
        let disk: Arc<Vec<u8>> = Arc::new((0..100u8).collect());
        let ptr = NonNull::new(disk.as_ptr().cast_mut()).unwrap();
        // SAFETY: the Vec's heap block stays allocated while the Lent holds `disk`.
        let lent = unsafe { Lent::new(ptr, disk.len(), disk.clone()) };
        let head = [0xaa_u8; 3];
        let pieces = [
            Piece::bytes(&head),
            Piece::lent(&lent, 10, 15),
            Piece::EMPTY,
            Piece::lent(&lent, 98, 1000),
        ];
        let mut out = Vec::new();
        let mut left = 8;
        for p in &pieces {
            left -= p.copy_to(&mut out, left);
        }
        assert_eq!(out, [0xaa, 0xaa, 0xaa, 10, 11, 12, 13, 14]);
        assert_eq!(pieces[3].len(), 2);
        assert_eq!(pieces[3].copy_to(&mut out, 99), 2);
        assert_eq!(&out[8..], [98, 99]);
    }

    #[test]
    fn pieces_are_iovecs_to_the_kernel() {
        let disk: Arc<Vec<u8>> = Arc::new(b"lent bytes".to_vec());
        let ptr = NonNull::new(disk.as_ptr().cast_mut()).unwrap();
        // SAFETY: as above.
        let lent = unsafe { Lent::new(ptr, disk.len(), disk.clone()) };
        let pieces = [Piece::bytes(b"owned, "), Piece::lent(&lent, 0, 4)];
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe(2) writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the iovecs describe readable memory borrowed for the call; fds[1] is ours.
        let n = unsafe { libc::writev(fds[1], Piece::as_iovecs(&pieces), 2) };
        assert_eq!(n, 11);
        let mut got = [0u8; 11];
        // SAFETY: got has room for 11 bytes; fds[0] is ours.
        assert_eq!(
            unsafe { libc::read(fds[0], got.as_mut_ptr().cast(), 11) },
            11
        );
        assert_eq!(&got, b"owned, lent");
        // SAFETY: both descriptors are ours, closed once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
