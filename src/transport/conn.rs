//! A served connection: its slot under the cap, and the HTTP/2 frames it sends
//! watched (resets and GOAWAYs counted); a request's peer address and certificates.

use super::*;

/// An accepted connection: its preface (already read) is replayed to hyper, and the
/// frames the server writes are watched for resets.
pub struct Conn<IO> {
    pub(super) io: IO,
    pub(super) replayed: usize,
    pub(super) frames: FrameWatch,
    pub(super) slot: Slot,
}

impl<IO> Conn<IO> {
    pub(super) fn new(io: IO, slot: Slot) -> Self {
        Conn {
            io,
            replayed: 0,
            frames: FrameWatch::default(),
            slot,
        }
    }
}

impl<IO: Connected> Connected for Conn<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replayed < PREFACE.len() {
            let rest = &PREFACE[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            let listener = this.slot.listener;
            this.frames
                .watch(&buf[..n], |kind, code| count_sent(listener, kind, code));
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = written {
            for buf in bufs {
                if n == 0 {
                    break;
                }
                let part = buf.len().min(n);
                let listener = this.slot.listener;
                this.frames
                    .watch(&buf[..part], |kind, code| count_sent(listener, kind, code));
                n -= part;
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Follows the HTTP/2 frames the server writes (from the first byte: a server has
/// no preface) and counts the RST_STREAM and GOAWAY frames among them, by error code.
#[derive(Debug, Default)]
pub(super) struct FrameWatch {
    pub(super) header: [u8; 9],
    /// Bytes of the current frame header seen so far (9 = in the payload).
    pub(super) have: usize,
    /// Payload bytes of the current frame still to come.
    pub(super) remaining: usize,
    /// The first payload bytes of a RST_STREAM or GOAWAY (where their error code is).
    pub(super) start: [u8; 8],
    pub(super) seen: usize,
}

pub(super) const RST_STREAM: u8 = 0x3;
pub(super) const GOAWAY: u8 = 0x7;

impl FrameWatch {
    /// Follows `bytes`, calling `sent` with the kind and error code of every
    /// RST_STREAM and GOAWAY frame completed in them.
    pub(super) fn watch(&mut self, mut bytes: &[u8], mut sent: impl FnMut(u8, u32)) {
        while !bytes.is_empty() {
            if self.have < 9 {
                let n = (9 - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == 9 {
                    let [a, b, c, ..] = self.header;
                    self.remaining = u32::from_be_bytes([0, a, b, c]) as usize;
                    self.seen = 0;
                    if self.remaining == 0 {
                        self.have = 0;
                    }
                }
                continue;
            }
            let n = self.remaining.min(bytes.len());
            if self.seen < self.start.len() {
                let k = n.min(self.start.len() - self.seen);
                self.start[self.seen..self.seen + k].copy_from_slice(&bytes[..k]);
                self.seen += k;
            }
            self.remaining -= n;
            bytes = &bytes[n..];
            if self.remaining == 0 {
                self.have = 0;
                // RST_STREAM: the error code is the payload; GOAWAY: after the last stream id.
                let at = match self.header[3] {
                    RST_STREAM => 0,
                    GOAWAY => 4,
                    _ => continue,
                };
                if self.seen >= at + 4 {
                    let s = &self.start;
                    sent(
                        self.header[3],
                        u32::from_be_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]]),
                    );
                }
            }
        }
    }
}

/// Counts a RST_STREAM or GOAWAY the server sent.
pub(super) fn count_sent(listener: &'static str, kind: u8, code: u32) {
    if kind == GOAWAY {
        metrics::http2_goaway_sent(listener, http2_error_name(code));
    } else {
        metrics::http2_reset_sent(listener, http2_error_name(code));
    }
}

/// The name of an HTTP/2 error code (RFC 9113, 7).
pub fn http2_error_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "UNKNOWN",
    }
}

/// The peer address of a request, as the connection info of [`Conn`] records it.
pub fn peer_addr<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let ext = request.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<tonic::transport::server::TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

/// The client certificate chain of a request over mutual TLS, leaf first.
pub fn peer_certs<B>(
    request: &http::Request<B>,
) -> Option<Arc<Vec<rustls::pki_types::CertificateDer<'static>>>> {
    request
        .extensions()
        .get::<tonic::transport::server::TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs())
}
