//! A message body as delivery sees it: read in pieces from the store, so a
//! large message is never held whole in memory.

use std::sync::Arc;

use tern_core::MessageId;
use tern_store::{Store, StoreError, BODY_CHUNK};

#[derive(Clone)]
pub enum Body {
    /// Read from the store piece by piece.
    Stored {
        store: Arc<dyn Store>,
        id: MessageId,
        size: u64,
    },
    /// Already in memory (small generated messages, tests).
    Memory(Arc<Vec<u8>>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Stored { id, size, .. } => write!(f, "Body::Stored({id}, {size} octets)"),
            Body::Memory(b) => write!(f, "Body::Memory({} octets)", b.len()),
        }
    }
}

impl Body {
    pub fn size(&self) -> u64 {
        match self {
            Body::Stored { size, .. } => *size,
            Body::Memory(b) => b.len() as u64,
        }
    }

    /// Piece `index`, or `None` past the end.
    pub async fn chunk(&self, index: u32) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Body::Stored { store, id, .. } => store.body_chunk(*id, index).await,
            Body::Memory(b) => {
                let start = index as usize * BODY_CHUNK;
                if start >= b.len() && index > 0 {
                    return Ok(None);
                }
                Ok(Some(
                    b[start.min(b.len())..(start + BODY_CHUNK).min(b.len())].to_vec(),
                ))
            }
        }
    }

    /// Whether any octet has the high bit set (needs 8BITMIME, RFC 6152).
    pub async fn has_8bit(&self) -> Result<bool, StoreError> {
        let mut i = 0;
        while let Some(c) = self.chunk(i).await? {
            if c.iter().any(|b| *b >= 0x80) {
                return Ok(true);
            }
            i += 1;
        }
        Ok(false)
    }
}
