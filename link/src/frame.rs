//! Fixed-size frames: the packet link carries nothing but whole packets.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Every frame on a packet link is exactly one packet.
pub const FRAME_LEN: usize = bastet_sphinx::PACKET_LEN;

/// Reads one frame into `buf`. `Ok(false)` is a clean end of stream at a frame
/// boundary; a stream that ends inside a frame is an `UnexpectedEof` error.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8; FRAME_LEN],
) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < FRAME_LEN {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(false)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("stream ended {filled} bytes into a {FRAME_LEN}-byte frame"),
                ))
            };
        }
        filled += n;
    }
    Ok(true)
}

/// Writes one frame (the caller flushes, so that several frames share a
/// flush).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> std::io::Result<()> {
    if frame.len() != FRAME_LEN {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "frame of {} bytes, links carry exactly {FRAME_LEN}",
                frame.len()
            ),
        ));
    }
    writer.write_all(frame).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_partial_frames_are_errors() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &[7u8; FRAME_LEN]).await.unwrap();
        write_frame(&mut wire, &[8u8; FRAME_LEN]).await.unwrap();
        assert!(write_frame(&mut wire, &[0u8; 3]).await.is_err());
        wire.extend_from_slice(&[9u8; 10]);

        let mut reader = &wire[..];
        let mut buf = [0u8; FRAME_LEN];
        assert!(read_frame(&mut reader, &mut buf).await.unwrap());
        assert_eq!(buf[0], 7);
        assert!(read_frame(&mut reader, &mut buf).await.unwrap());
        assert_eq!(buf[FRAME_LEN - 1], 8);
        let err = read_frame(&mut reader, &mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);

        let mut empty: &[u8] = &[];
        assert!(!read_frame(&mut empty, &mut buf).await.unwrap());
    }
}
