//! Per-thread reuse of the scratch vectors a `fuzzy_match` call needs.
//!
//! One call builds a dozen or more short-lived vectors (processed strings, bit masks, encoded
//! texts, window scores); on short inputs, allocating and freeing them costs more than the
//! scoring itself. A [`Buf`] takes a vector from a small per-thread free list and puts it back,
//! cleared, when dropped. Only a few vectors of moderate capacity are kept, so the memory held
//! per thread stays bounded.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Vectors kept per element type and thread.
const MAX_POOLED: usize = 16;
/// Vectors with a larger capacity (in elements) are freed rather than kept.
const MAX_KEPT_CAPACITY: usize = 4096;

/// An element type with its own per-thread free list.
pub(super) trait Poolable: Copy + 'static {
    /// Runs `f` on this type's free list; `None` once the thread is shutting down.
    fn with_pool<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> Option<R>;
}

macro_rules! poolable {
    ($ty:ty, $pool:ident) => {
        thread_local! {
            static $pool: RefCell<Vec<Vec<$ty>>> = const { RefCell::new(Vec::new()) };
        }

        impl Poolable for $ty {
            fn with_pool<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> Option<R> {
                $pool
                    .try_with(|pool| pool.try_borrow_mut().ok().map(|mut pool| f(&mut pool)))
                    .ok()
                    .flatten()
            }
        }
    };
}

poolable!(u32, POOL_U32);
poolable!(u64, POOL_U64);
poolable!(usize, POOL_USIZE);

/// A vector borrowed from the free list of its element type, returned to it on drop.
pub(super) struct Buf<T: Poolable>(Vec<T>);

impl<T: Poolable> Buf<T> {
    /// An empty vector.
    pub(super) fn new() -> Self {
        Buf(T::with_pool(|pool| pool.pop())
            .flatten()
            .unwrap_or_default())
    }

    /// A vector of `len` copies of `value`.
    pub(super) fn filled(len: usize, value: T) -> Self {
        let mut buf = Self::new();
        buf.0.resize(len, value);
        buf
    }
}

impl<T: Poolable> Drop for Buf<T> {
    fn drop(&mut self) {
        let capacity = self.0.capacity();
        if capacity == 0 || capacity > MAX_KEPT_CAPACITY {
            return;
        }
        let mut vec = std::mem::take(&mut self.0);
        vec.clear();
        T::with_pool(|pool| {
            if pool.len() < MAX_POOLED {
                pool.push(vec);
            }
        });
    }
}

impl<T: Poolable> Deref for Buf<T> {
    type Target = Vec<T>;

    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T: Poolable> DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_reused() {
        let first_ptr = {
            let mut buf = Buf::<u64>::filled(10, 7);
            assert_eq!(&buf[..], &[7; 10]);
            buf.push(1);
            buf.as_ptr()
        };
        let again = Buf::<u64>::new();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), first_ptr);
    }
}
