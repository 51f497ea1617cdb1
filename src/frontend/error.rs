//! Errors the frontend reports to a client as an `ErrorResponse`.

use crate::backend::BackendError;
use crate::protocol::messages::error_response;
use crate::protocol::{sqlstate, Frame, ProtocolError};

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// A statement the router refuses; the session goes on.
    #[error("{message}")]
    Route {
        code: &'static str,
        message: String,
        hint: String,
    },
    /// A node failed; the statement is lost but the session goes on.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The client broke the protocol; the session ends.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The client went away.
    #[error("client connection: {0}")]
    ClientIo(#[from] std::io::Error),
    /// A write met a partition in cut-over (held), or a node fenced it
    /// (moved): the caller waits for a newer routing table and runs the
    /// unit of work again; nothing of it reached the client.
    #[error("partition {partition} is moving; the write waits for its new home")]
    Moved { partition: u32 },
}

impl FrontendError {
    pub fn route(code: &'static str, message: String, hint: String) -> Self {
        FrontendError::Route {
            code,
            message,
            hint,
        }
    }

    pub fn sqlstate(&self) -> &'static str {
        match self {
            FrontendError::Route { code, .. } => code,
            FrontendError::Backend(BackendError::PoolTimeout { .. }) => {
                sqlstate::TOO_MANY_CONNECTIONS
            }
            FrontendError::Backend(_) => sqlstate::CONNECTION_FAILURE,
            FrontendError::Protocol(_) => sqlstate::PROTOCOL_VIOLATION,
            FrontendError::ClientIo(_) => sqlstate::CONNECTION_FAILURE,
            FrontendError::Moved { .. } => sqlstate::SERIALIZATION_FAILURE,
        }
    }

    /// The ErrorResponse a client should see.
    pub fn to_frame(&self) -> Frame {
        match self {
            FrontendError::Route {
                code,
                message,
                hint,
            } => error_response("ERROR", code, message, Some(hint)),
            FrontendError::Backend(e) => error_response(
                "ERROR",
                self.sqlstate(),
                &e.to_string(),
                Some("the statement did not run; retry when the node is back"),
            ),
            FrontendError::Protocol(e) => {
                error_response("FATAL", self.sqlstate(), &e.to_string(), None)
            }
            FrontendError::ClientIo(e) => {
                error_response("FATAL", self.sqlstate(), &e.to_string(), None)
            }
            FrontendError::Moved { partition } => error_response(
                "ERROR",
                self.sqlstate(),
                &format!("partition {partition} is moving to another node and its cut-over has not finished"),
                Some("retry the statement (GET /api/migrations shows the move)"),
            ),
        }
    }

    /// Whether the session can go on after this error.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            FrontendError::Protocol(_) | FrontendError::ClientIo(_)
        )
    }
}
