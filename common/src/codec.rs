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
        .map_err(|e| write_error("a request", e))
}

/// Maps a failed write to the error a caller should see. A connection the peer closed
/// says why (a refused certificate is only ever told this way).
pub fn write_error(what: &str, e: quinn::WriteError) -> FsError {
    match e {
        quinn::WriteError::ConnectionLost(e) => {
            crate::transport::connection_lost(format_args!("cannot send {what}"), &e)
        }
        e => FsError::unavailable(format!("cannot send {what}: {e}")),
    }
}

/// Maps a failed exact read to the error a caller should see: a stream that ended early is
/// the peer's protocol error; a lost connection is unavailability.
pub fn read_error(what: &str, e: quinn::ReadExactError) -> FsError {
    match e {
        quinn::ReadExactError::FinishedEarly(got) => FsError::protocol(format!(
            "stream ended after {got} bytes while reading {what}"
        )),
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e)) => {
            crate::transport::connection_lost(
                format_args!("connection lost while reading {what}"),
                &e,
            )
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

    /// Every decoder of bytes from the network or a disk, fed `bytes`.
    fn decode_everything(bytes: &[u8]) {
        use crate::proto::*;
        let _ = decode::<NamenodeRequest>(bytes);
        let _ = decode::<NamenodeEnvelope>(bytes);
        let _ = decode::<DatanodeRequest>(bytes);
        let _ = decode::<Result<PutReply, FsError>>(bytes);
        let _ = decode::<Result<ChunkMap, FsError>>(bytes);
        let _ = decode::<Result<HeartbeatReply, FsError>>(bytes);
        let _ = decode::<Result<RegisterReply, FsError>>(bytes);
        let _ = decode::<Result<crate::token::BlockToken, FsError>>(bytes);
        let _ = decode::<Result<ChangesReply, FsError>>(bytes);
        let _ = decode::<Result<Identity, FsError>>(bytes);
        let _ = decode::<Result<Vec<crate::exports::ExportRule>, FsError>>(bytes);
        let _ = decode::<Result<Vec<QueuedDone>, FsError>>(bytes);
        let _ = TrashOrigin::decode(bytes);
        let _ = crate::cert::peer_identity(bytes);
        let _ = crate::cert::serial_of(bytes);
        let _ = crate::cert::read_crl(bytes, bytes);
        let text = String::from_utf8_lossy(bytes);
        let _ = toml::from_str::<crate::exports::ExportRule>(&text);
        let _ = text.parse::<crate::exports::IdRange>();
        let id = crate::BlockId(*blake3::hash(bytes).as_bytes());
        let n = bytes.first().copied().unwrap_or(0) as u64;
        let _ = crate::verified::decode(&id, n << 12, n, n << 4, bytes);
    }

    /// Cases per property: a few hundred in the suite, `CAIRN_FUZZ_CASES=1000000` by hand.
    fn cases() -> u32 {
        crate::fuzz_cases(256)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]
        /// Whatever bytes arrive, decoding answers Ok or Err and never panics.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            decode_everything(&bytes);
        }

        /// Nor do frames that were valid until some of their bytes changed, were cut short
        /// or grew: the shapes a decoder meets from a buggy or hostile peer.
        #[test]
        fn valid_frames_changed_never_panic(
            which in 0usize..4,
            changes in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
            grow in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            use crate::proto::*;
            let caller = crate::attr::Caller { uid: 1000, gid: 100, groups: vec![27, 44] };
            let valid = [
                encode(&NamenodeEnvelope {
                    caller: caller.clone(),
                    req: NamenodeRequest::Lookup(Lookup { parent: crate::Ino(1), name: b"name".to_vec() }),
                    request: None,
                }),
                encode(&NamenodeEnvelope {
                    caller: caller.clone(),
                    req: NamenodeRequest::ReadChunks(ReadChunks { ino: crate::Ino(9), first: 3, count: 64 }),
                    request: None,
                }),
                encode(&NamenodeEnvelope {
                    caller,
                    req: NamenodeRequest::Seek(Seek { ino: crate::Ino(9), offset: u64::MAX, hole: true }),
                    request: Some(RequestId { session: u64::MAX, seq: 7, forget: vec![3, 5] }),
                }),
                encode(&Ok::<_, FsError>(vec![crate::exports::ExportRule::default_for("web-*")])),
            ];
            let mut bytes = valid[which].as_ref().unwrap()[4..].to_vec();
            for (at, byte) in changes {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] = byte;
                }
            }
            bytes.truncate(cut % (bytes.len() + 1));
            bytes.extend(grow);
            decode_everything(&bytes);
        }
    }
}
