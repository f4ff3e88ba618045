//! Read buffers and head buffers come from a per-worker pool and go back to it
//! when a connection goes idle, so idle keep-alive connections hold no buffer.
//! [`FreeList`] is the bounded stack under the pool, also used for other
//! per-request objects, so the steady state allocates nothing.

/// A read buffer: bytes `start..end` are unread.
pub struct ReadBuf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    fn new(size: usize) -> Self {
        ReadBuf { data: vec![0; size].into_boxed_slice(), start: 0, end: 0 }
    }

    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Drops `n` unread bytes (all of them for any `n` past the end).
    pub fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space at the end, after moving unread bytes to the front if that helps.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.data.len());
    }
}

/// Keeps released objects for reuse, up to a bound, so a burst does not pin
/// its peak memory forever.
pub struct FreeList<T> {
    items: Vec<T>,
    keep: usize,
}

impl<T> FreeList<T> {
    pub fn new(keep: usize) -> Self {
        FreeList { items: Vec::new(), keep }
    }

    /// Drops kept items beyond `keep`, freeing their memory.
    pub fn shrink_to(&mut self, keep: usize) {
        self.items.truncate(keep);
        self.items.shrink_to_fit();
    }

    pub fn take(&mut self) -> Option<T> {
        self.items.pop()
    }

    /// Keeps `item` for reuse, or drops it when the list is full.
    pub fn give(&mut self, item: T) {
        if self.items.len() < self.keep {
            self.items.push(item);
        }
    }
}

/// Read buffers of one size and head buffers, kept for reuse.
pub struct BufferPool {
    read_size: usize,
    reads: FreeList<ReadBuf>,
    writes: FreeList<Vec<u8>>,
}

const WRITE_CAPACITY: usize = 1024;
/// Buffers (and pipes) of each kind kept once a burst is over.
pub const KEEP_WHEN_QUIET: usize = 32;

impl BufferPool {
    pub fn new(read_size: usize, keep: usize) -> Self {
        BufferPool { read_size, reads: FreeList::new(keep), writes: FreeList::new(keep) }
    }

    /// Keeps only what steady traffic reuses (the bound is for bursts).
    pub fn shrink(&mut self) {
        self.reads.shrink_to(KEEP_WHEN_QUIET);
        self.writes.shrink_to(KEEP_WHEN_QUIET);
    }

    pub fn read_buf(&mut self) -> ReadBuf {
        self.reads.take().unwrap_or_else(|| ReadBuf::new(self.read_size))
    }

    pub fn put_read(&mut self, mut buf: ReadBuf) {
        buf.start = 0;
        buf.end = 0;
        self.reads.give(buf);
    }

    pub fn write_buf(&mut self) -> Vec<u8> {
        self.writes.take().unwrap_or_else(|| Vec::with_capacity(WRITE_CAPACITY))
    }

    pub fn put_write(&mut self, mut buf: Vec<u8>) {
        // A buffer that grew for a large page is not worth keeping; one that
        // never held anything is not worth a slot.
        if buf.capacity() != 0 && buf.capacity() <= 4 * WRITE_CAPACITY {
            buf.clear();
            self.writes.give(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buf_compacts() {
        let mut b = ReadBuf::new(8);
        b.spare()[..8].copy_from_slice(b"abcdefgh");
        b.commit(8);
        b.consume(6);
        assert_eq!(b.filled(), b"gh");
        assert_eq!(b.spare().len(), 6);
        assert_eq!(b.filled(), b"gh");
    }

    #[test]
    fn consuming_everything_after_a_partial_consume() {
        let mut b = ReadBuf::new(8);
        b.spare()[..4].copy_from_slice(b"abcd");
        b.commit(4);
        b.consume(1);
        b.consume(usize::MAX);
        assert!(b.is_empty());
    }
}
