//! The connection under a session: plain TCP, or TLS after STARTTLS or on an
//! implicit-TLS listener.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while being upgraded, or after a failed handshake.
    Closed,
}

impl Conn {
    pub async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
            Conn::Closed => Ok(0),
        }
    }

    pub async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(data).await,
            Conn::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Conn::Closed => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    pub async fn shutdown(&mut self) {
        let _ = match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
            Conn::Closed => Ok(()),
        };
    }

    /// "TLSv1_3 with TLS13_AES_256_GCM_SHA384" for the Received header.
    pub fn tls_description(&self) -> Option<String> {
        let Conn::Tls(s) = self else { return None };
        let c = s.get_ref().1;
        Some(format!(
            "{:?} with {:?}",
            c.protocol_version()?,
            c.negotiated_cipher_suite()?.suite()
        ))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }
}
