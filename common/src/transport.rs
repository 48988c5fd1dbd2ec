//! QUIC with TLS 1.3 and mutual certificates, one bidirectional stream per request.
//!
//! Both ends present a certificate signed by the cluster CA; a peer without one never gets a
//! stream. The protocol version travels in ALPN (`cairn/<version>`). Each side also offers the
//! bare `cairn` protocol as a fallback: when the versions differ the handshake settles on the
//! fallback, the server closes at once with its version as the reason, and the client reports
//! a mismatch that names both versions instead of an opaque TLS alert.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use crate::cert::{peer_identity, Role};
use crate::codec::{read_frame, write_frame};
use crate::error::{FsError, FsResult};
use crate::proto::Rpc;

/// The protocol version this build speaks. Bump it on any incompatible wire change.
pub const PROTOCOL_VERSION: u32 = 28;
const ALPN_FALLBACK: &[u8] = b"cairn";
/// Longest wait for a handshake; peers are on a LAN, so a handshake takes milliseconds.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a peer that could not be reached is not dialled again.
const UNREACHABLE_BACKOFF: Duration = Duration::from_secs(2);
/// Application close code: the peer speaks another protocol version.
const CLOSE_VERSION_MISMATCH: u32 = 0x76;
/// Application close code: the endpoint is shutting down.
const CLOSE_SHUTDOWN: u32 = 0x0;
/// Application close code: the peer's certificate was revoked.
const CLOSE_REVOKED: u32 = 0x72;

pub fn alpn(version: u32) -> Vec<u8> {
    format!("cairn/{version}").into_bytes()
}

/// A certificate, its key, and the CA that every peer's certificate must chain to.
pub struct TlsIdentity {
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The CA's revocation lists: a server whose certificate they name is refused when this
    /// side connects to it.
    pub crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            crls: self.crls.clone(),
        }
    }
}

impl TlsIdentity {
    /// Loads PEM files: the CA certificate, this peer's certificate and its private key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<TlsIdentity> {
        let ca = CertificateDer::from_pem_file(ca)
            .with_context(|| format!("reading CA certificate {}", ca.display()))?;
        let chain = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("reading certificate {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing certificate {}", cert.display()))?;
        if chain.is_empty() {
            anyhow::bail!("{} holds no certificate", cert.display());
        }
        crate::cert::check_expiry(&chain[0], cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading private key {}", key.display()))?;
        Ok(TlsIdentity {
            ca,
            chain,
            key,
            crls: Vec::new(),
        })
    }

    /// This identity, refusing servers the revocation list at `path` (PEM, `cairn cert
    /// revoke` writes it) names.
    pub fn with_crl(mut self, path: Option<&Path>) -> anyhow::Result<TlsIdentity> {
        if let Some(path) = path {
            let crls = rustls::pki_types::CertificateRevocationListDer::pem_file_iter(path)
                .with_context(|| format!("reading the revocation list {}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing the revocation list {}", path.display()))?;
            self.crls.extend(crls);
        }
        Ok(self)
    }
}

/// Knobs of the transport; the defaults are what the daemons use.
#[derive(Clone, Debug)]
pub struct TransportOptions {
    /// Version announced in ALPN. Only tests set another one.
    pub protocol_version: u32,
    /// Per-stream flow-control window: one 4 MiB block in flight per stream needs at least that.
    pub stream_window: u32,
    /// Per-connection flow-control window: several concurrent block transfers.
    pub connection_window: u32,
    /// Upper bound for MTU discovery on network paths (Ethernet: 1472).
    pub mtu_upper_bound: u16,
    /// Upper bound for MTU discovery on loopback, which carries ~64 KiB datagrams. Such
    /// paths also send without segmentation offload: with GSO, datagrams this large are lost
    /// and quinn falls back to 1200 bytes (docs/BENCHMARKS.md has the figures).
    pub loopback_mtu: u16,
    /// Kernel send and receive buffer of the UDP socket, in bytes.
    pub socket_buffer: usize,
    pub idle_timeout: Duration,
}

impl Default for TransportOptions {
    /// The tuned defaults. For benchmarking the knobs, `CAIRN_QUIC_STREAM_WINDOW`,
    /// `CAIRN_QUIC_CONNECTION_WINDOW`, `CAIRN_QUIC_MTU`, `CAIRN_QUIC_LOOPBACK_MTU` and
    /// `CAIRN_UDP_BUFFER` (bytes) override them.
    fn default() -> Self {
        let env = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        TransportOptions {
            protocol_version: PROTOCOL_VERSION,
            stream_window: env("CAIRN_QUIC_STREAM_WINDOW", 8 << 20) as u32,
            connection_window: env("CAIRN_QUIC_CONNECTION_WINDOW", 64 << 20) as u32,
            mtu_upper_bound: env("CAIRN_QUIC_MTU", 1472).clamp(1200, 65_000) as u16,
            loopback_mtu: env("CAIRN_QUIC_LOOPBACK_MTU", 65_000).clamp(1200, 65_000) as u16,
            socket_buffer: env("CAIRN_UDP_BUFFER", 16 << 20) as usize,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Whether a path is loopback (one machine) or a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathKind {
    Network,
    Loopback,
}

impl PathKind {
    fn of(addr: SocketAddr) -> PathKind {
        if addr.ip().is_loopback() {
            PathKind::Loopback
        } else {
            PathKind::Network
        }
    }
}

/// Datagrams a loopback connection may have in flight before its first acknowledgement.
const LOOPBACK_INITIAL_WINDOW_DATAGRAMS: u64 = 16;

fn transport_config(
    opts: &TransportOptions,
    path: PathKind,
) -> anyhow::Result<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(4096))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(opts.stream_window))
        .receive_window(VarInt::from_u32(opts.connection_window))
        .send_window(opts.connection_window as u64)
        .max_idle_timeout(Some(
            opts.idle_timeout
                .try_into()
                .context("idle timeout out of range")?,
        ))
        .keep_alive_interval(Some(opts.idle_timeout / 4));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    match path {
        PathKind::Network => {
            mtu.upper_bound(opts.mtu_upper_bound);
        }
        PathKind::Loopback => {
            t.enable_segmentation_offload(false);
            mtu.upper_bound(opts.loopback_mtu);
            // A window of a few full-size loopback datagrams from the start, or the first
            // such datagram would not fit in it (QUIC's default is ~10 Ethernet packets).
            let mut cubic = quinn::congestion::CubicConfig::default();
            cubic.initial_window(LOOPBACK_INITIAL_WINDOW_DATAGRAMS * opts.loopback_mtu as u64);
            t.congestion_controller_factory(Arc::new(cubic));
        }
    }
    t.mtu_discovery_config(Some(mtu));
    Ok(t)
}

/// TLS with AES-128-GCM preferred: as safe here as AES-256 and ~40% cheaper per byte, and
/// every block is encrypted once per hop of its pipeline.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

fn roots(identity: &TlsIdentity) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(identity.ca.clone())
        .context("the CA certificate is not usable as a trust anchor")?;
    Ok(roots)
}

fn client_config(
    identity: &TlsIdentity,
    opts: &TransportOptions,
    path: PathKind,
) -> anyhow::Result<quinn::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = if identity.crls.is_empty() {
        builder.with_root_certificates(roots(identity)?)
    } else {
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(identity)?),
            provider(),
        )
        .with_crls(identity.crls.clone())
        .build()
        .context("building the server certificate verifier with the revocation list")?;
        builder.with_webpki_verifier(verifier)
    };
    let mut tls = builder
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .context("loading client certificate")?;
    tls.alpn_protocols = vec![alpn(opts.protocol_version), ALPN_FALLBACK.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let mut transport = transport_config(opts, path)?;
    if path == PathKind::Loopback {
        // Loopback carries the largest datagrams from the first packet: a writer need not
        // spend its connection's first seconds discovering that in 1200-byte packets. Only
        // the client may: a server starting this large could send nothing before the
        // client's address is validated (QUIC's anti-amplification limit).
        transport.initial_mtu(opts.loopback_mtu);
    }
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn server_config(
    identity: &TlsIdentity,
    opts: &TransportOptions,
    path: PathKind,
) -> anyhow::Result<quinn::ServerConfig> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(identity)?),
        provider(),
    )
    .build()
    .context("building client certificate verifier")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .context("loading server certificate")?;
    tls.alpn_protocols = vec![alpn(opts.protocol_version), ALPN_FALLBACK.to_vec()];
    tls.max_early_data_size = 0;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport_config(opts, path)?));
    Ok(config)
}

/// An endpoint that accepts connections on `bind` and can also open them.
pub fn server_endpoint(
    bind: SocketAddr,
    identity: &TlsIdentity,
    opts: &TransportOptions,
) -> anyhow::Result<Endpoint> {
    // A server bound to loopback only ever talks over loopback.
    let path = PathKind::of(bind);
    let restart_key = blake3::derive_key(RESTART_KEY_CONTEXT, identity.key.secret_der());
    let mut endpoint = make_endpoint(
        bind,
        Some((server_config(identity, opts, path)?, restart_key)),
        opts,
    )?;
    endpoint.set_default_client_config(client_config(identity, opts, path)?);
    Ok(endpoint)
}

/// An endpoint that only opens connections.
pub fn client_endpoint(
    identity: &TlsIdentity,
    opts: &TransportOptions,
) -> anyhow::Result<Endpoint> {
    let bind: SocketAddr = "0.0.0.0:0".parse().expect("literal address");
    let mut endpoint = make_endpoint(bind, None, opts)?;
    endpoint.set_default_client_config(client_config(identity, opts, PathKind::Network)?);
    Ok(endpoint)
}

/// A UDP socket with large kernel buffers: a burst of full-size datagrams overflows the
/// default ~200 KiB receive buffer, and every drop there is a loss QUIC backs off for.
fn udp_socket(bind: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel caps SO_RCVBUF/SO_SNDBUF at net.core.rmem_max/wmem_max; a process with
    // CAP_NET_ADMIN (a daemon run as root) may go past them with the FORCE variants.
    use std::os::fd::AsRawFd;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let value = buffer.min(i32::MAX as usize) as libc::c_int;
        let set = |opt| {
            // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int on a
            // socket this function owns.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &value as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) != 0 && set(plain) != 0 {
            debug!(
                "cannot size UDP socket buffer to {buffer}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    socket.bind(&bind.into())?;
    Ok(socket.into())
}

/// A server's endpoint with a key that stays the same across its restarts (see
/// [`RestartKey`]) when `server` comes with one.
fn make_endpoint(
    bind: SocketAddr,
    server: Option<(quinn::ServerConfig, [u8; 32])>,
    opts: &TransportOptions,
) -> anyhow::Result<Endpoint> {
    let (server, mut config) = match server {
        Some((server, key)) => {
            let key = RestartKey(key);
            let mut config = quinn::EndpointConfig::new(Arc::new(key.clone()));
            let cid_key =
                u64::from_le_bytes(key.tag(b"connection ids").as_bytes()[..8].try_into()?);
            config.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            });
            // Every client of a restarted server asks at about the same moment.
            config.min_reset_interval(Duration::from_millis(1));
            (Some(server), config)
        }
        None => (None, quinn::EndpointConfig::default()),
    };
    // The largest datagram this endpoint accepts bounds what MTU discovery may reach; quinn's
    // default (1472, Ethernet) would cap loopback and jumbo-frame paths.
    config
        .max_udp_payload_size(opts.mtu_upper_bound.max(opts.loopback_mtu))
        .context("max UDP payload size")?;
    let socket =
        udp_socket(bind, opts.socket_buffer).with_context(|| format!("binding UDP {bind}"))?;
    let runtime = quinn::default_runtime().context("no async runtime to drive QUIC")?;
    Endpoint::new(config, server, socket, runtime).with_context(|| format!("binding UDP {bind}"))
}

const RESTART_KEY_CONTEXT: &str = "cairn 2026-12 QUIC stateless reset and connection ids";

/// A server's key for its QUIC stateless resets and connection ids (those it accepts are
/// those it could have made, see `HashedConnectionIdGenerator`), derived from its
/// private key so that every run of the daemon has the same one. A peer whose connection
/// outlived the server's process (killed, restarted) sends its next packet to the new
/// process, which knows no such connection: it recognizes the connection id as one of its
/// own and answers with a stateless reset whose token the peer was given by the old
/// process. The peer drops the connection at once and dials again, instead of waiting out
/// the idle timeout with its requests in flight.
#[derive(Clone)]
struct RestartKey([u8; 32]);

impl RestartKey {
    fn tag(&self, data: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.0, data)
    }
}

impl quinn::crypto::HmacKey for RestartKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let tag = self.tag(data);
        let n = signature_out.len().min(32);
        signature_out[..n].copy_from_slice(&tag.as_bytes()[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let expected: [u8; 32] = signature
            .try_into()
            .map_err(|_| quinn::crypto::CryptoError)?;
        // `Hash`'s equality is constant-time.
        if self.tag(data) == blake3::Hash::from_bytes(expected) {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

fn negotiated_protocol(conn: &Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<HandshakeData>()
        .ok()?
        .protocol
}

/// Connects to the `role` server at `addr`. The server's certificate must carry that role.
/// `protocol_version` is the one `endpoint` was made with, for the mismatch message.
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    role: Role,
    protocol_version: u32,
) -> FsResult<Connection> {
    connect_with(endpoint, None, addr, role, protocol_version).await
}

/// [`connect`] with a client configuration other than the endpoint's default.
async fn connect_with(
    endpoint: &Endpoint,
    config: Option<&quinn::ClientConfig>,
    addr: SocketAddr,
    role: Role,
    protocol_version: u32,
) -> FsResult<Connection> {
    let connecting = match config {
        Some(c) => endpoint.connect_with(c.clone(), addr, &role.server_name()),
        None => endpoint.connect(addr, &role.server_name()),
    }
    .map_err(|e| FsError::unavailable(format!("cannot connect to {role} {addr}: {e}")))?;
    // QUIC ignores ICMP "port unreachable": without this bound a dead peer would cost a
    // whole idle timeout per attempt.
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| {
            FsError::unavailable(format!(
                "cannot connect to {role} {addr}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| connection_lost(format_args!("cannot connect to {role} {addr}"), &e))?;
    if negotiated_protocol(&conn).as_deref() == Some(ALPN_FALLBACK) {
        let ours = String::from_utf8_lossy(&alpn(protocol_version)).into_owned();
        let theirs = match conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                String::from_utf8_lossy(&close.reason).into_owned()
            }
            other => format!("an unknown version ({other})"),
        };
        return Err(FsError::unavailable(format!(
            "protocol version mismatch: this side speaks {ours}, {role} {addr} speaks {theirs}"
        )));
    }
    Ok(conn)
}

/// Sends `header` (a request in some envelope) and waits for a `Resp`.
pub async fn call_enveloped<H: Serialize, Resp: DeserializeOwned>(
    conn: &Connection,
    header: &H,
) -> FsResult<Resp> {
    let (mut send, mut recv) = open(conn).await?;
    write_frame(&mut send, header).await?;
    let _ = send.finish();
    let resp = read_frame::<Result<Resp, FsError>>(&mut recv).await?;
    read_end(&mut recv).await?;
    resp
}

/// Reads the end of a stream whose last frame has been read. A stream dropped before its
/// end has been seen makes QUIC tell the peer to stop sending: one more packet per call.
async fn read_end(recv: &mut RecvStream) -> FsResult<()> {
    match recv.read_chunk(usize::MAX, true).await {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err(FsError::protocol("bytes after the response")),
        Err(e) => Err(read_chunk_error("a response", e)),
    }
}

/// Sends `req` followed by `body` as raw bytes, and waits for the response. The body is
/// handed to QUIC without a copy.
pub async fn call_with_body<R: Rpc>(
    conn: &Connection,
    req: R,
    body: bytes::Bytes,
) -> FsResult<R::Response> {
    let (mut send, mut recv) = open(conn).await?;
    write_frame(&mut send, &req.into_service()).await?;
    if let Err(e) = send.write_chunk(body).await {
        // A peer refusing the request stops reading its body: its answer says why.
        if let quinn::WriteError::Stopped(_) = e {
            if let Ok(Ok(Err(why))) = tokio::time::timeout(
                CONNECT_TIMEOUT,
                read_frame::<Result<R::Response, FsError>>(&mut recv),
            )
            .await
            {
                return Err(why);
            }
        }
        return Err(crate::codec::write_error("a block", e));
    }
    let _ = send.finish();
    let resp = read_frame::<Result<R::Response, FsError>>(&mut recv).await?;
    read_end(&mut recv).await?;
    resp
}

/// Sends `req` and returns its response header with the stream the raw bytes follow on.
pub async fn call_streaming<R: Rpc>(
    conn: &Connection,
    req: R,
) -> FsResult<(R::Response, RecvStream)> {
    let (mut send, mut recv) = open(conn).await?;
    write_frame(&mut send, &req.into_service()).await?;
    let _ = send.finish();
    let resp = read_frame::<Result<R::Response, FsError>>(&mut recv).await??;
    Ok((resp, recv))
}

async fn open(conn: &Connection) -> FsResult<(SendStream, RecvStream)> {
    conn.open_bi().await.map_err(|e| {
        connection_lost(
            format_args!("connection to {} lost", conn.remote_address()),
            &e,
        )
    })
}

/// Why a connection ended, in words an operator can act on. A peer that refuses this side's
/// certificate does so after the handshake seemed done (TLS 1.3 checks the client's
/// certificate last), and says why only in a TLS alert: named here.
pub fn why_closed(e: &quinn::ConnectionError) -> String {
    let Some(alert) = tls_alert(e) else {
        return e.to_string();
    };
    let by_peer = matches!(e, quinn::ConnectionError::ConnectionClosed(_));
    let (whose, fix) = if by_peer {
        (
            "the peer refused this side's certificate",
            "issue this side a certificate with `cairn cert issue` from the cluster's CA",
        )
    } else {
        (
            "this side refused the peer's certificate",
            "the peer needs a certificate from this cluster's CA (`cairn cert issue`), or \
             this side's `ca_cert` is not the cluster's CA",
        )
    };
    let cause = match Some(alert) {
        Some(48) => "it is signed by another CA than the cluster's (unknown_ca)",
        // What rustls answers when the issuer's name matches but its key does not: another
        // cluster's CA of the same name.
        Some(51) => "it is signed by another CA than the cluster's (its signature does not verify)",
        Some(45) => "it has expired (certificate_expired)",
        Some(44) => "it has been revoked (certificate_revoked)",
        Some(42) | Some(43) | Some(46) => "it is not valid for this cluster (bad_certificate)",
        Some(116) => "none was presented (certificate_required)",
        _ => return e.to_string(),
    };
    format!("{whose}: {cause}; {fix}")
}

/// The TLS alert a connection was closed with, by either side, if any: TLS alerts travel as
/// QUIC crypto errors, 0x100 + the alert number (RFC 9001 §4.8).
fn tls_alert(e: &quinn::ConnectionError) -> Option<u64> {
    let code = match e {
        quinn::ConnectionError::ConnectionClosed(close) => u64::from(close.error_code),
        quinn::ConnectionError::TransportError(t) => u64::from(t.code),
        _ => return None,
    };
    code.checked_sub(0x100).filter(|alert| *alert < 0x100)
}

/// The error for a connection that ended, `what` saying what was under way: a certificate
/// either side refused is [`FsError::WrongRole`], since no retry helps until the
/// certificates change; anything else is [`FsError::Unavailable`].
pub fn connection_lost(what: impl std::fmt::Display, e: &quinn::ConnectionError) -> FsError {
    let why = format!("{what}: {}", why_closed(e));
    match tls_alert(e) {
        Some(42..=46 | 48 | 51 | 116) => FsError::WrongRole(why),
        _ => FsError::unavailable(why),
    }
}

/// Maps a failed read of a stream's bytes, naming why a lost connection closed.
fn read_chunk_error(what: &str, e: quinn::ReadError) -> FsError {
    match e {
        quinn::ReadError::ConnectionLost(e) => {
            connection_lost(format_args!("connection lost while reading {what}"), &e)
        }
        e => FsError::unavailable(format!("connection lost while reading {what}: {e}")),
    }
}

/// Reads a body of exactly `len` bytes that ends the stream, without zeroing a buffer first.
pub async fn read_body_exact(recv: &mut RecvStream, len: usize) -> FsResult<Vec<u8>> {
    Ok(read_body_pieces(recv, len).await?.concat())
}

/// Reads a body of exactly `len` bytes that ends the stream, as the pieces it arrived in
/// (no copy): the caller joins them where a copy costs least, with whatever else it does
/// to every byte.
pub async fn read_body_pieces(recv: &mut RecvStream, len: usize) -> FsResult<Vec<bytes::Bytes>> {
    let (mut pieces, mut got) = (Vec::new(), 0);
    loop {
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) if got + chunk.bytes.len() <= len => {
                got += chunk.bytes.len();
                pieces.push(chunk.bytes);
            }
            Ok(Some(_)) => {
                return Err(FsError::protocol(format!(
                    "more than the {len} bytes of block data announced"
                )))
            }
            Ok(None) if got == len => return Ok(pieces),
            Ok(None) => {
                return Err(FsError::protocol(format!(
                    "stream ended after {got} of {len} bytes of block data"
                )))
            }
            Err(e) => return Err(read_chunk_error("block data", e)),
        }
    }
}

/// The next connection's `Peer::serial`.
static NEXT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Who is on the other end of a connection, from its certificate.
#[derive(Clone, Debug)]
pub struct Peer {
    pub role: Role,
    pub name: String,
    /// What a user certificate acts as.
    pub ids: Option<crate::cert::UserIds>,
    /// The certificate's serial number, as revocation lists name it.
    pub cert_serial: Vec<u8>,
    pub addr: SocketAddr,
    /// Identifies the connection among all this endpoint has open.
    pub connection: usize,
    /// Identifies the connection among all this process ever accepted (never 0, never
    /// reused, unlike `connection`).
    pub serial: u64,
}

impl Peer {
    /// Why a revoked peer is refused, in the words it is told.
    pub fn revoked(&self) -> String {
        format!(
            "the certificate of {} {:?} is revoked",
            self.role, self.name
        )
    }

    /// Refuses the request unless the peer has `role`.
    pub fn require(&self, role: Role) -> FsResult<()> {
        if self.role == role {
            Ok(())
        } else {
            Err(FsError::WrongRole(format!(
                "this request needs a {role} certificate, and {:?} is a {} certificate; \
                 issue one with `cairn cert issue --role {role}`",
                self.name, self.role
            )))
        }
    }
}

/// One request's stream, handed to a service with the decoded header.
pub struct Exchange {
    pub send: SendStream,
    pub recv: RecvStream,
}

impl Exchange {
    /// Writes the response header. Raw bytes may follow on `send`.
    pub async fn respond<T: Serialize>(&mut self, resp: &FsResult<T>) -> FsResult<()> {
        write_frame(&mut self.send, resp).await
    }

    /// Ends the response.
    pub fn finish(mut self) {
        let _ = self.send.finish();
    }
}

/// A server: one exhaustive handler of its request enum.
pub trait Service: Send + Sync + 'static {
    type Request: DeserializeOwned + Send + std::fmt::Debug;

    /// Handles one request. The service writes its response on `exchange`; an error it
    /// returns is sent to the peer if no response was written yet.
    fn handle(
        self: Arc<Self>,
        peer: Arc<Peer>,
        req: Self::Request,
        exchange: &mut Exchange,
    ) -> impl Future<Output = FsResult<()>> + Send;

    /// Called once a peer's connection has ended (closed, timed out or lost): state that
    /// lives only as long as the peer's session is dropped here.
    fn disconnected(&self, _peer: &Peer) {}

    /// Why the peer may no longer be served (its certificate was revoked), if so: checked
    /// when it connects and at each request, so a connection made before the revocation
    /// is closed at its next request.
    fn refuses(&self, _peer: &Peer) -> Option<String> {
        None
    }
}

/// Accepts connections on `endpoint` until `shutdown`, serving each stream with `service`.
pub async fn serve<S: Service>(endpoint: Endpoint, service: Arc<S>, shutdown: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let service = service.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    // Peers without a certificate of this cluster end here.
                    warn!(%remote, "refused connection: {e}");
                    return;
                }
            };
            if negotiated_protocol(&conn).as_deref() == Some(ALPN_FALLBACK) {
                warn!(%remote, "refused peer speaking another protocol version than cairn/{PROTOCOL_VERSION}");
                conn.close(
                    VarInt::from_u32(CLOSE_VERSION_MISMATCH),
                    &alpn(PROTOCOL_VERSION),
                );
                return;
            }
            let leaf = conn
                .peer_identity()
                .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
                .and_then(|chain| chain.first().cloned());
            let Some((peer, cert_serial)) =
                leaf.and_then(|c| Some((peer_identity(&c)?, crate::cert::serial_of(&c)?)))
            else {
                warn!(%remote, "refused peer whose certificate names no cairn role");
                conn.close(
                    VarInt::from_u32(CLOSE_SHUTDOWN),
                    b"certificate names no role",
                );
                return;
            };
            let peer = Arc::new(Peer {
                role: peer.role,
                name: peer.name,
                ids: peer.ids,
                cert_serial,
                addr: remote,
                connection: conn.stable_id(),
                serial: NEXT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            });
            if let Some(why) = service.refuses(&peer) {
                warn!(%remote, peer = %peer.name, "refused connection: {why}");
                conn.close(VarInt::from_u32(CLOSE_REVOKED), why.as_bytes());
                return;
            }
            let span = tracing::debug_span!("conn", peer = %peer.name, role = %peer.role, %remote);
            serve_connection(conn, service.clone(), peer.clone(), shutdown)
                .instrument(span)
                .await;
            service.disconnected(&peer);
        });
    }
    endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutting down");
}

async fn serve_connection<S: Service>(
    conn: Connection,
    service: Arc<S>,
    peer: Arc<Peer>,
    shutdown: CancellationToken,
) {
    debug!("connected");
    loop {
        let (send, recv) = tokio::select! {
            _ = shutdown.cancelled() => return,
            stream = conn.accept_bi() => match stream {
                Ok(s) => s,
                Err(e) => {
                    debug!("connection ended: {e}");
                    return;
                }
            },
        };
        if let Some(why) = service.refuses(&peer) {
            warn!("closing the connection: {why}");
            let mut exchange = Exchange { send, recv };
            let _ = exchange
                .respond::<()>(&Err(FsError::WrongRole(why.clone())))
                .await;
            exchange.finish();
            // The answer goes out before the connection ends.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            conn.close(VarInt::from_u32(CLOSE_REVOKED), why.as_bytes());
            return;
        }
        let service = service.clone();
        let peer = peer.clone();
        tokio::spawn(
            async move {
                let mut exchange = Exchange { send, recv };
                let req = match read_frame::<S::Request>(&mut exchange.recv).await {
                    Ok(req) => req,
                    Err(e) => {
                        // Junk from the network: tell the peer, keep serving everyone else.
                        warn!("bad request: {e}");
                        let _ = exchange.respond::<()>(&Err(e)).await;
                        exchange.finish();
                        return;
                    }
                };
                // Naming the request costs a Debug format of it: only when debug logs are on.
                let name = if tracing::enabled!(tracing::Level::DEBUG) {
                    request_name(&req)
                } else {
                    String::new()
                };
                let span = tracing::debug_span!("request", req = name);
                async move {
                    if let Err(e) = service.handle(peer, req, &mut exchange).await {
                        debug!("request failed: {e}");
                        let _ = exchange.respond::<()>(&Err(e)).await;
                    }
                    exchange.finish();
                }
                .instrument(span)
                .await
            }
            .in_current_span(),
        );
    }
}

/// The variant name of a request, for spans.
fn request_name<T: std::fmt::Debug>(req: &T) -> String {
    let s = format!("{req:?}");
    s.split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Open connections by address, shared by everything in one process that talks to peers.
#[derive(Clone)]
pub struct ConnectionPool {
    endpoint: Endpoint,
    protocol_version: u32,
    /// Used instead of the endpoint's default for peers on loopback.
    loopback: quinn::ClientConfig,
    conns: Arc<Mutex<HashMap<SocketAddr, Connection>>>,
    /// One dial at a time per peer: tasks that want a connection while one is being made
    /// wait for it and share it (a client's delegations are its connection's).
    dialing: Arc<Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>>,
    /// Peers that just failed to connect, with when: asking again at once would only wait
    /// out another connect timeout.
    unreachable: Arc<Mutex<HashMap<SocketAddr, (std::time::Instant, FsError)>>>,
}

impl ConnectionPool {
    pub fn new(
        endpoint: Endpoint,
        identity: &TlsIdentity,
        opts: &TransportOptions,
    ) -> anyhow::Result<ConnectionPool> {
        Ok(ConnectionPool {
            endpoint,
            loopback: client_config(identity, opts, PathKind::Loopback)?,
            protocol_version: opts.protocol_version,
            conns: Arc::default(),
            dialing: Arc::default(),
            unreachable: Arc::default(),
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A live connection to the `role` server at `addr`, opened if needed.
    pub async fn get(&self, addr: SocketAddr, role: Role) -> FsResult<Connection> {
        if let Some(conn) = self.live(addr) {
            return Ok(conn);
        }
        let dial = self
            .dialing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr)
            .or_default()
            .clone();
        let _dialing = dial.lock().await;
        // Made by another task meanwhile.
        if let Some(conn) = self.live(addr) {
            return Ok(conn);
        }
        {
            let mut down = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((since, err)) = down.get(&addr) {
                if since.elapsed() < UNREACHABLE_BACKOFF {
                    return Err(err.clone());
                }
                down.remove(&addr);
            }
        }
        let config = (PathKind::of(addr) == PathKind::Loopback).then_some(&self.loopback);
        let conn =
            match connect_with(&self.endpoint, config, addr, role, self.protocol_version).await {
                Ok(c) => c,
                Err(e) => {
                    if matches!(e, FsError::Unavailable(_)) {
                        self.unreachable
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(addr, (std::time::Instant::now(), e.clone()));
                    }
                    return Err(e);
                }
            };
        self.lock().insert(addr, conn.clone());
        debug!(%addr, %role, "connected");
        Ok(conn)
    }

    fn live(&self, addr: SocketAddr) -> Option<Connection> {
        let conns = self.lock();
        let conn = conns.get(&addr)?;
        conn.close_reason().is_none().then(|| conn.clone())
    }

    /// Lets the next `get` dial `addr` at once even if it just failed.
    pub fn clear_unreachable(&self, addr: SocketAddr) {
        self.unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr);
    }

    /// Forgets the connection to `addr` so the next `get` dials again.
    pub fn forget(&self, addr: SocketAddr) {
        if let Some(conn) = self.lock().remove(&addr) {
            conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"forgotten");
        }
    }

    /// Forgets `conn`, a connection to `addr` a request was lost on, unless another has
    /// replaced it already: a request lost on an old connection does not close the new.
    pub fn forget_lost(&self, addr: SocketAddr, conn: &Connection) {
        let mut conns = self.lock();
        if conns
            .get(&addr)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            conns.remove(&addr);
        }
        drop(conns);
        conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"forgotten");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Connection>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a daemon or client finds its certificate files (a `[tls]` table in every config).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The cluster CA certificate (`ca.pem`); peers must present certificates it signed.
    pub ca_cert: std::path::PathBuf,
    /// This process's certificate, issued by `cairn cert issue`.
    pub cert: std::path::PathBuf,
    /// This process's private key.
    pub key: std::path::PathBuf,
    /// The cluster CA's revocation list (`revoked.pem`, from `cairn cert revoke`): servers
    /// this process connects to whose certificate it names are refused. (The namenode's
    /// own `crl` setting is what refuses revoked clients.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<std::path::PathBuf>,
}

impl TlsPaths {
    pub fn load(&self) -> anyhow::Result<TlsIdentity> {
        TlsIdentity::load(&self.ca_cert, &self.cert, &self.key)?.with_crl(self.crl.as_deref())
    }

    /// Resolves relative paths against `base` (the directory of the config file).
    pub fn relative_to(&mut self, base: &Path) {
        let crl = self.crl.as_mut();
        for p in [&mut self.ca_cert, &mut self.cert, &mut self.key]
            .into_iter()
            .chain(crl)
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// Waits (up to 10 s) for the requests still holding `service` to end, drops it, and waits
/// for `endpoint`'s connections to close, so that the daemon's state (a database lock, a
/// UDP port) is released when this returns.
pub async fn drain<S>(service: Arc<S>, endpoint: &Endpoint) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut service = service;
    loop {
        match Arc::try_unwrap(service) {
            Ok(s) => {
                drop(s);
                break;
            }
            Err(shared) if tokio::time::Instant::now() < deadline => {
                service = shared;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {
                warn!("requests still running after 10 s; shutting down without them");
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{BlockData, GetBlock};

    #[test]
    fn a_refused_certificate_is_no_reason_to_try_again() {
        let closed = |code: quinn::TransportErrorCode| {
            quinn::ConnectionError::TransportError(quinn_proto::TransportError {
                code,
                frame: None,
                reason: String::new(),
            })
        };
        let refused = connection_lost(
            "cannot connect",
            &closed(quinn::TransportErrorCode::crypto(48)),
        );
        match refused {
            FsError::WrongRole(why) => {
                assert!(why.contains("signed by another CA"), "{why}");
                assert!(why.contains("`ca_cert`"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // Any other end, a handshake alert about something else included, may pass.
        for code in [
            quinn::TransportErrorCode::PROTOCOL_VIOLATION,
            quinn::TransportErrorCode::crypto(40),
        ] {
            assert!(matches!(
                connection_lost("x", &closed(code)),
                FsError::Unavailable(_)
            ));
        }
        assert!(matches!(
            connection_lost("x", &quinn::ConnectionError::TimedOut),
            FsError::Unavailable(_)
        ));
    }

    struct Echo;
    impl Service for Echo {
        type Request = crate::proto::DatanodeRequest;
        async fn handle(
            self: Arc<Self>,
            _peer: Arc<Peer>,
            req: Self::Request,
            ex: &mut Exchange,
        ) -> FsResult<()> {
            match req {
                crate::proto::DatanodeRequest::GetBlock(g) => {
                    let len = g.len.unwrap_or(0);
                    ex.respond(&Ok(BlockData { len })).await?;
                    ex.send
                        .write_all(&vec![7u8; len as usize])
                        .await
                        .map_err(FsError::unavailable)
                }
                _ => Err(FsError::invalid("unsupported")),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_transfer_over_mutual_tls() {
        let dir = tempfile::tempdir().unwrap();
        crate::cert::init_ca(dir.path(), 1).unwrap();
        let s = crate::cert::issue(dir.path(), Role::Datanode, "s", dir.path(), 1).unwrap();
        let c = crate::cert::issue(dir.path(), Role::Mount, "c", dir.path(), 1).unwrap();
        let ca = dir.path().join("ca.pem");
        let opts = TransportOptions::default();
        let server = server_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &TlsIdentity::load(&ca, &s.cert, &s.key).unwrap(),
            &opts,
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(server, Arc::new(Echo), shutdown.clone()));
        let identity = TlsIdentity::load(&ca, &c.cert, &c.key).unwrap();
        let client = client_endpoint(&identity, &opts).unwrap();
        let pool = ConnectionPool::new(client, &identity, &opts).unwrap();
        let conn = pool.get(addr, Role::Datanode).await.unwrap();
        for _ in 0..16 {
            let (header, mut recv) = call_streaming(
                &conn,
                GetBlock {
                    block: crate::BlockId([0; 32]),
                    offset: 0,
                    len: Some(4 << 20),
                    token: None,
                },
            )
            .await
            .unwrap();
            let buf = read_body_exact(&mut recv, header.len as usize)
                .await
                .unwrap();
            assert!(buf.len() == 4 << 20 && buf.iter().all(|b| *b == 7));
        }
        // The loopback profile lets MTU discovery go past Ethernet's 1472 bytes.
        assert!(
            conn.stats().path.current_mtu > 1472,
            "{:?}",
            conn.stats().path
        );
        shutdown.cancel();
    }
}
