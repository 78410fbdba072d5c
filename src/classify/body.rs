//! Step two of classification: the JSON body of an inference request.
use super::{Head, RequestClass};

/// Options for body classification.
#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    /// Most prefix blocks to hash.
    pub max_prefix_blocks: usize,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        ClassifyOptions {
            max_prefix_blocks: 256,
        }
    }
}

/// Why a body could not be classified; the client gets a 400 with this text.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// The body is not valid JSON or has the wrong shape.
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
}

/// Parse the body of an inference request. (stub; replaced by the classify work)
pub fn classify_body(
    _head: Head,
    _body: &[u8],
    _opts: &ClassifyOptions,
) -> Result<RequestClass, ClassifyError> {
    todo!("classify_body")
}
