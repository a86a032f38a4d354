//! A byte stream that is plain TCP or TLS on either side, so the session code
//! is written once. Plain TCP is the common case and costs one branch.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub enum Stream {
    Plain(TcpStream),
    /// TLS towards a client (the proxy is the TLS server).
    FromClientTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS towards a PostgreSQL server (the proxy is the TLS client).
    ToServerTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Moved out (while a TCP stream becomes a TLS session); I/O fails.
    Closed,
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::FromClientTls(_) | Stream::ToServerTls(_))
    }

    /// Waits until a read would not block (plain TCP), so an idle client
    /// needs no read buffer. TLS streams return at once (the caller reads).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.readable().await,
            _ => Ok(()),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::FromClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::ToServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::FromClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::ToServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::FromClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::ToServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::FromClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::ToServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "stream moved into a TLS session",
    )
}
