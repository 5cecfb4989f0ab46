//! A list of puts and deletes that a store applies atomically.

use std::fmt;

use super::Space;

/// One operation of a [`WriteBatch`].
pub enum BatchOp {
    Put {
        space: Space,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        space: Space,
        key: Vec<u8>,
    },
}

/// Puts and deletes that [`super::KvStore::write`] applies atomically, in order.
#[derive(Default)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

impl WriteBatch {
    pub fn put(&mut self, space: Space, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Put {
            space,
            key: key.into(),
            value: value.into(),
        });
    }

    pub fn delete(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Delete {
            space,
            key: key.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Adds the operations of `other` after those of this batch.
    pub fn append(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Consumes the batch and returns its operations in the order they were
    /// added. Store implementations apply them from this list.
    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }
}

// Keys and values are printed as lengths only, because values can be sealed
// secrets or credential hashes.
impl fmt::Debug for BatchOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchOp::Put { space, key, value } => {
                write!(
                    f,
                    "Put({space}, {}-byte key, {}-byte value)",
                    key.len(),
                    value.len()
                )
            }
            BatchOp::Delete { space, key } => write!(f, "Delete({space}, {}-byte key)", key.len()),
        }
    }
}

impl fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.ops).finish()
    }
}
