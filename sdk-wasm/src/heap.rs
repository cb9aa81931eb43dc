//! The shipped wasm's allocator: free lists by power-of-two size class over
//! memory that only grows.
//!
//! Every block is a power of two of at least [`MIN_BLOCK`] bytes. A freed
//! block goes to the front of its size's list and is handed out again for
//! the next request of that size; a request its list cannot serve takes
//! fresh memory from the top of the heap, which starts where wasm memory
//! ended when the allocator was first used and grows it as needed. Blocks
//! are never split or merged: the SDK's allocations are few kinds of short
//! strings and vectors (messages, parts, batch bodies) that come back in
//! the same sizes, so what a merge would win back is small, and the whole
//! allocator is a few hundred bytes of wasm instead of a general one's
//! kilobytes (this is in every visitor's download). Its cost is small
//! where it was measured: under 1% of the samples of a CPU profile of
//! `track` bursts in Chromium (`alloc` itself; the copies of a string that
//! outgrows its block belong to its caller: reserve enough up front, as the
//! message writer does).
//!
//! The one place of unsafe code in the workspace: a global allocator is an
//! `unsafe` trait, and a free block holds the address of the next one. The
//! size arithmetic is plain, native-tested Rust ([`class`]).

/// The smallest block: room for the free list's link, and the alignment
/// every fresh block has.
pub const MIN_BLOCK: usize = 8;

/// The size class of a request of `size` bytes aligned to `align`: the
/// power of two its block has (`1 << class`), at least [`MIN_BLOCK`] and
/// `align`; `None` when no block can be that big.
pub fn class(size: usize, align: usize) -> Option<u32> {
    let block = size.max(align).max(MIN_BLOCK).checked_next_power_of_two()?;
    Some(block.trailing_zeros())
}

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
pub use wasm::Heap;

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
mod wasm {
    #![allow(
        unsafe_code,
        reason = "a global allocator is an unsafe trait, and free blocks link to each other"
    )]

    use core::alloc::{GlobalAlloc, Layout};
    use core::arch::wasm32::{memory_grow, memory_size};
    use core::ptr::null_mut;
    // Plain loads and stores on wasm32 without the atomics feature: the
    // page's one thread is the only user.
    use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use super::class;

    const PAGE: usize = 65_536;

    /// The heap: the first free block of each class (0: none), and the top
    /// of the memory handed out so far (0: not yet used).
    pub struct Heap {
        free: [AtomicUsize; 32],
        top: AtomicUsize,
    }

    impl Heap {
        /// An empty heap; it takes memory on first use.
        pub const fn new() -> Self {
            Heap {
                free: [const { AtomicUsize::new(0) }; 32],
                top: AtomicUsize::new(0),
            }
        }

        /// A fresh block of `1 << class` bytes aligned to `align` from the
        /// top, growing memory if needed; 0 when memory cannot grow.
        fn fresh(&self, class: u32, align: usize) -> usize {
            let mut top = self.top.load(Relaxed);
            if top == 0 {
                top = memory_size::<0>() * PAGE;
            }
            // `align` is a power of two no larger than the block.
            let start = (top + align - 1) & !(align - 1);
            let Some(end) = start.checked_add(1 << class) else {
                return 0;
            };
            let have = memory_size::<0>() * PAGE;
            if end > have && memory_grow::<0>((end - have).div_ceil(PAGE)) == usize::MAX {
                return 0;
            }
            self.top.store(end, Relaxed);
            start
        }
    }

    impl Default for Heap {
        fn default() -> Self {
            Heap::new()
        }
    }

    // SAFETY: blocks handed out are distinct ranges of wasm memory of at
    // least the layout's size and alignment (fresh ones never overlap: the
    // top only rises; a freed one is handed out again only once it is
    // off its list), and the lists hold only blocks the program freed.
    unsafe impl GlobalAlloc for Heap {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let Some(class) = class(layout.size(), layout.align()) else {
                return null_mut();
            };
            let Some(list) = self.free.get(class as usize) else {
                return null_mut();
            };
            let head = list.load(Relaxed);
            let block = if head != 0 && head % layout.align() == 0 {
                // SAFETY: a block on the list holds the next one's address
                // in its first word (written by `dealloc`).
                list.store(unsafe { *(head as *const usize) }, Relaxed);
                head
            } else {
                self.fresh(class, layout.align())
            };
            block as *mut u8
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // A block's layout is the one it was made with, so its class is.
            if let Some(list) =
                class(layout.size(), layout.align()).and_then(|class| self.free.get(class as usize))
            {
                // SAFETY: the block is at least MIN_BLOCK bytes, aligned to
                // 8, and the caller gives it up.
                unsafe { *(ptr as *mut usize) = list.load(Relaxed) };
                list.store(ptr as usize, Relaxed);
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // Within its block: nothing to do.
            if class(new_size, layout.align()) == class(layout.size(), layout.align()) {
                return ptr;
            }
            // SAFETY: the caller's layout rules hold for the new size too.
            let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            let new = unsafe { self.alloc(new_layout) };
            if !new.is_null() {
                // SAFETY: both blocks hold at least the smaller size, and
                // distinct blocks never overlap.
                unsafe {
                    core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_powers_of_two_that_hold_the_request() {
        for (size, align, block) in [
            (0, 1, 8_usize),
            (1, 1, 8),
            (8, 8, 8),
            (9, 1, 16),
            (16, 4, 16),
            (17, 4, 32),
            (3, 64, 64),
            (1000, 1, 1024),
            (65_536, 1, 65_536),
            (65_537, 8, 131_072),
        ] {
            assert_eq!(class(size, align), Some(block.trailing_zeros()), "{size}");
        }
        assert_eq!(class(usize::MAX, 1), None);
        assert_eq!(class(usize::MAX / 2 + 2, 1), None);
    }
}
