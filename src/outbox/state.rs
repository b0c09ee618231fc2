//! The state table: small durable state of other stages, read by exact key or key range.

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};

impl Store {
    /// A state value, if set.
    pub fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM state WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    /// All state entries whose key starts with `prefix`: a range of the key index
    /// (`prefix <= key < successor(prefix)`), so the cost follows the entries found, not the
    /// table.
    pub fn scan_state(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows: rusqlite::Result<Vec<(String, Vec<u8>)>> = match successor(prefix) {
            Some(end) => self
                .conn
                .prepare_cached(
                    "SELECT key, value FROM state WHERE key >= ?1 AND key < ?2 ORDER BY key",
                )?
                .query_map(params![prefix, end], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect(),
            None => self
                .conn
                .prepare_cached("SELECT key, value FROM state WHERE key >= ?1 ORDER BY key")?
                .query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect(),
        };
        Ok(rows?)
    }

    /// How many state entries there are (for the retention tests and the bench).
    pub fn state_len(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM state", [], |r| r.get(0))?;
        Ok(n as u64)
    }
}

/// The smallest string greater than every string starting with `prefix`, if there is one:
/// the prefix with its last character replaced by the next one (dropping trailing characters
/// that have no next). Keys compare by bytes (SQLite's BINARY collation), and in UTF-8 the byte
/// order is the code point order, so the range holds exactly the keys under the prefix.
pub(super) fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // The next scalar value (skipping the surrogate gap); none after char::MAX.
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}
