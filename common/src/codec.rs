//! Frames on a stream: a big-endian `u32` length, then that many bytes of postcard. Headers
//! are small; anything larger than [`MAX_HEADER`] is refused before it is read, so a peer
//! cannot make a daemon allocate what it likes.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::FsError;

/// Largest header accepted, in bytes. Block reports and directory pages are sized to fit.
pub const MAX_HEADER: usize = 1 << 20;

/// Encodes `value` as one frame.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FsError> {
    let mut out = vec![0u8; 4];
    let body = postcard::to_extend(value, Vec::new())
        .map_err(|e| FsError::protocol(format!("cannot encode header: {e}")))?;
    if body.len() > MAX_HEADER {
        return Err(FsError::invalid(format!(
            "header of {} bytes exceeds the limit of {MAX_HEADER}",
            body.len()
        )));
    }
    out[..4].copy_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes the body of a frame (without its length prefix).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FsError> {
    postcard::from_bytes(body).map_err(|e| FsError::protocol(format!("malformed header: {e}")))
}

/// Reads one frame from `recv` and decodes it.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<T, FsError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len)
        .await
        .map_err(|e| read_error("header length", e))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HEADER {
        return Err(FsError::protocol(format!(
            "header of {len} bytes exceeds the limit of {MAX_HEADER}"
        )));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| read_error("header", e))?;
    decode(&body)
}

/// Writes `value` as one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    value: &T,
) -> Result<(), FsError> {
    let frame = encode(value)?;
    send.write_all(&frame)
        .await
        .map_err(|e| FsError::unavailable(format!("cannot send: {e}")))
}

/// Maps a failed exact read to the error a caller should see: a stream that ended early is
/// the peer's protocol error; a lost connection is unavailability.
pub fn read_error(what: &str, e: quinn::ReadExactError) -> FsError {
    match e {
        quinn::ReadExactError::FinishedEarly(got) => FsError::protocol(format!(
            "stream ended after {got} bytes while reading {what}"
        )),
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e)) => {
            FsError::unavailable(format!(
                "connection lost while reading {what}: {}",
                crate::transport::why_closed(&e)
            ))
        }
        quinn::ReadExactError::ReadError(e) => {
            FsError::unavailable(format!("connection lost while reading {what}: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Lookup, NamenodeRequest, Rpc};
    use crate::Ino;

    #[test]
    fn frames_round_trip() {
        let req = Lookup {
            parent: Ino::ROOT,
            name: b"a".to_vec(),
        }
        .into_service();
        let frame = encode(&req).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        match decode::<NamenodeRequest>(&frame[4..]).unwrap() {
            NamenodeRequest::Lookup(l) => assert_eq!(l.name, b"a"),
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let err = decode::<NamenodeRequest>(&[0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap_err();
        assert!(matches!(err, FsError::Protocol(_)), "{err:?}");
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::proto::{DatanodeRequest, NamenodeRequest};

    proptest! {
        /// Whatever bytes arrive, decoding answers Ok or Err and never panics.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<NamenodeRequest>(&bytes);
            let _ = decode::<DatanodeRequest>(&bytes);
            let _ = decode::<Result<crate::proto::PutReply, FsError>>(&bytes);
            let _ = decode::<Result<crate::proto::ChunkMap, FsError>>(&bytes);
        }
    }
}
