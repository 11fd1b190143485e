//! SMTP wire types for Tern: command parsing, replies, the DATA and BDAT
//! readers and SASL decoding. No I/O happens here; the session feeds bytes
//! in and writes replies out.

pub mod bdat;
pub mod command;
pub mod data;
pub mod line;
pub mod reply;
pub mod sasl;
pub mod stuff;

pub use bdat::ChunkChecker;
pub use command::{
    parse_command, Body, Command, ForwardPath, MailParams, Mechanism, RcptParams, Ret, ReversePath,
    RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS,
};
pub use data::{DataError, DataReader};
pub use line::{LineBuffer, LineError};
pub use reply::Reply;
pub use sasl::{
    decode_base64, decode_login_field, decode_plain, is_cancel, PlainCredentials, SaslError,
    LOGIN_PASSWORD_CHALLENGE, LOGIN_USERNAME_CHALLENGE,
};
pub use stuff::{dot_stuff, Stuffer};
