//! Connections live in a slab addressed by token: the low 32 bits are the index,
//! the high bits a generation that changes every time the entry is reused, so an
//! event or timer left over from a closed connection never reaches its successor.

/// Tokens at or above this value are not slab tokens (listeners, signals).
pub const RESERVED_TOKENS: u64 = 1 << 63;
/// Set in the token of a connection's upstream socket: the same slab entry,
/// the other side.
pub const UPSTREAM_SIDE: u64 = 1 << 62;

pub struct Slab<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    len: usize,
}

struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { entries: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<T> Slab<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` and returns its token.
    pub fn insert(&mut self, value: T) -> u64 {
        self.insert_with(|_| value)
    }

    /// Stores the value `make` builds from the token it will have.
    pub fn insert_with(&mut self, make: impl FnOnce(u64) -> T) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(Entry { generation: 0, value: None });
                (self.entries.len() - 1) as u32
            }
        };
        let entry = &mut self.entries[index as usize];
        // Generations stay below 2^30 so no token has UPSTREAM_SIDE or
        // RESERVED_TOKENS set.
        entry.generation = (entry.generation + 1) & 0x3fff_ffff;
        let token = token(entry.generation, index);
        entry.value = Some(make(token));
        self.len += 1;
        token
    }

    pub fn get_mut(&mut self, token: u64) -> Option<&mut T> {
        let (generation, index) = split(token);
        self.entries
            .get_mut(index as usize)
            .filter(|e| e.generation == generation)
            .and_then(|e| e.value.as_mut())
    }

    pub fn remove(&mut self, token: u64) -> Option<T> {
        let (generation, index) = split(token);
        let entry = self.entries.get_mut(index as usize).filter(|e| e.generation == generation)?;
        let value = entry.value.take()?;
        self.free.push(index);
        self.len -= 1;
        Some(value)
    }

    /// Tokens of every live entry.
    pub fn tokens(&self) -> Vec<u64> {
        self.iter().map(|(t, _)| t).collect()
    }

    /// Every live entry with its token.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.value.as_ref().map(|v| (token(e.generation, i as u32), v)))
    }
}

fn token(generation: u32, index: u32) -> u64 {
    ((generation as u64) << 32) | index as u64
}

fn split(token: u64) -> (u32, u32) {
    ((token >> 32) as u32, token as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_tokens_miss() {
        let mut s = Slab::default();
        let a = s.insert("a");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_ne!(a, b, "same index, new generation");
        assert!(s.get_mut(a).is_none());
        assert_eq!(s.get_mut(b), Some(&mut "b"));
        assert_eq!(s.len(), 1);
        assert!(b < UPSTREAM_SIDE);
    }
}
