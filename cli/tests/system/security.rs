//! Who gets in, and what junk from the network gets: refusals and errors, while the daemons
//! go on serving everyone else.

use cairn_client::Owner;
use std::sync::Arc;

use cairn_common::cert::{self, Role};
use cairn_common::proto::{self, Rpc};
use cairn_common::transport::{self, TlsIdentity, TransportOptions};
use cairn_common::{BlockId, FsError, Ino};
use rustls::pki_types::pem::PemObject;

use crate::support::*;

/// The namenode still answers a well-behaved client.
async fn still_serving(cluster: &cairn_cli::devcluster::DevCluster) {
    let client = cluster.client().await.unwrap();
    let root = client
        .getattr(Ino::ROOT)
        .await
        .expect("namenode still serves");
    assert_eq!(root.ino, Ino::ROOT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_cluster_certificate_get_no_stream() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 1).await;
    let addr = cluster.namenode_addr();
    let certs = cluster.dir().join("certs");

    tracing::info!("--- a client presenting no certificate");
    let ca = rustls::pki_types::CertificateDer::from(
        std::fs::read(certs.join("ca.pem"))
            .map(|pem| pem_to_der(&pem))
            .unwrap(),
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![transport::alpn(transport::PROTOCOL_VERSION)];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let outcome = async {
        let conn = transport::connect(&endpoint, addr, Role::Namenode, transport::PROTOCOL_VERSION)
            .await?;
        getattr_root(&conn).await
    }
    .await;
    assert!(
        outcome.is_err(),
        "a client without a certificate was served"
    );

    tracing::info!("--- a client whose certificate another CA signed");
    let other = tempfile::tempdir().unwrap();
    cert::init_ca(other.path(), cert::CA_DAYS).unwrap();
    let paths = cert::issue(
        other.path(),
        Role::Mount,
        "mallory",
        other.path(),
        cert::CERT_DAYS,
    )
    .unwrap();
    // It trusts our CA (so it would accept the server) but presents the other CA's cert.
    let identity = TlsIdentity::load(&certs.join("ca.pem"), &paths.cert, &paths.key).unwrap();
    let outcome = getattr_root_as(&identity, addr).await;
    let err = outcome.expect_err("a client of another CA was served");
    assert!(
        err.to_string()
            .contains("the peer refused this side's certificate: it is signed by another CA"),
        "the client is told why: {err}"
    );
    // No retry helps: a client says so at once instead of trying again.
    assert!(matches!(err, FsError::WrongRole(_)), "{err:?}");

    tracing::info!("--- a client whose certificate has expired");
    let expired = tempfile::tempdir().unwrap();
    let paths = cert::issue(&certs, Role::Mount, "lapsed", expired.path(), 0).unwrap();
    let err = TlsIdentity::load(&certs.join("ca.pem"), &paths.cert, &paths.key)
        .err()
        .expect("an expired certificate loaded");
    assert!(
        format!("{err:#}").contains("expired on")
            && format!("{err:#}").contains("cairn cert renew"),
        "the holder is told what to do: {err:#}"
    );
    // Presented anyway, by a client that does not look: the namenode refuses it (once its
    // last second of validity has passed too).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let identity = TlsIdentity {
        ca: rustls::pki_types::CertificateDer::from_pem_file(certs.join("ca.pem")).unwrap(),
        chain: vec![rustls::pki_types::CertificateDer::from_pem_file(&paths.cert).unwrap()],
        key: rustls::pki_types::PrivateKeyDer::from_pem_file(&paths.key).unwrap(),
        crls: Vec::new(),
    };
    let outcome = getattr_root_as(&identity, addr).await;
    let err = outcome.expect_err("a client with an expired certificate was served");
    assert!(err.to_string().contains("it has expired"), "{err}");

    tracing::info!("--- a client certificate cannot act as a datanode");
    let client = cluster.client().await.unwrap();
    let err = client
        .namenode(proto::Heartbeat {
            id: cairn_common::DatanodeId(1),
            capacity: 0,
            used: 0,
            available: 0,
            blocks: 0,
            active_transfers: 0,
            copies_failed: Vec::new(),
            scrub: Default::default(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FsError::WrongRole(why) if why.contains("Heartbeat needs a certificate of role datanode")),
        "{err}"
    );

    still_serving(&cluster).await;
    cluster.stop().await.unwrap();
}

/// Asks the namenode on `conn` for the root's attributes, as root.
/// Connects to the namenode at `addr` as `identity` and asks for `/`'s attributes.
async fn getattr_root_as(
    identity: &TlsIdentity,
    addr: std::net::SocketAddr,
) -> Result<cairn_common::attr::InodeAttr, FsError> {
    let endpoint = transport::client_endpoint(identity, &TransportOptions::default()).unwrap();
    let conn =
        transport::connect(&endpoint, addr, Role::Namenode, transport::PROTOCOL_VERSION).await?;
    getattr_root(&conn).await
}

async fn getattr_root(conn: &quinn::Connection) -> Result<cairn_common::attr::InodeAttr, FsError> {
    let envelope = proto::NamenodeEnvelope {
        caller: cairn_common::attr::Caller::ROOT,
        req: proto::GetAttr { ino: Ino::ROOT }.into_service(),
        request: None,
    };
    transport::call_enveloped(conn, &envelope).await
}

fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem)
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_protocol_version_is_told_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 1).await;
    let identity = client_identity(&cluster);
    let opts = TransportOptions {
        protocol_version: transport::PROTOCOL_VERSION + 1,
        ..TransportOptions::default()
    };
    let endpoint = transport::client_endpoint(&identity, &opts).unwrap();
    let err = transport::connect(
        &endpoint,
        cluster.namenode_addr(),
        Role::Namenode,
        opts.protocol_version,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    let ours = format!("cairn/{}", transport::PROTOCOL_VERSION + 1);
    let theirs = format!("cairn/{}", transport::PROTOCOL_VERSION);
    assert!(
        msg.contains("version mismatch") && msg.contains(&ours) && msg.contains(&theirs),
        "{msg}"
    );
    still_serving(&cluster).await;
    cluster.stop().await.unwrap();
}

/// Opens a raw stream to a daemon, writes `bytes`, finishes, and decodes the answer.
async fn raw_exchange(
    conn: &quinn::Connection,
    bytes: &[u8],
) -> Result<Result<(), FsError>, FsError> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let _ = send.finish();
    cairn_common::codec::read_frame::<Result<(), FsError>>(&mut recv).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_the_wire_gets_an_error_and_the_daemons_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 1).await;
    let nn = raw_connection(&cluster, cluster.namenode_addr(), Role::Namenode).await;

    tracing::info!("--- a garbage frame");
    let mut garbage = 16u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 16]);
    let answer = raw_exchange(&nn, &garbage).await.unwrap();
    assert!(matches!(answer, Err(FsError::Protocol(_))), "{answer:?}");

    tracing::info!("--- an oversized header");
    let oversized = (64u32 << 20).to_be_bytes();
    let answer = raw_exchange(&nn, &oversized).await.unwrap();
    match answer {
        Err(FsError::Protocol(m)) => assert!(m.contains("exceeds the limit"), "{m}"),
        other => panic!("oversized header answered {other:?}"),
    }

    tracing::info!("--- a stream that ends inside its header");
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[1, 2, 3]);
    let answer = raw_exchange(&nn, &truncated).await.unwrap();
    assert!(matches!(answer, Err(FsError::Protocol(_))), "{answer:?}");

    tracing::info!("--- the same connection and others still work");
    let root = getattr_root(&nn).await;
    assert!(root.is_ok());
    still_serving(&cluster).await;

    tracing::info!("--- a datanode given a block stream that ends early");
    let dn_addr = cluster.datanodes[0].addr.unwrap();
    let dn = raw_connection(&cluster, dn_addr, Role::Datanode).await;
    let client = cluster.client().await.unwrap();
    let token = client.namenode(proto::GrantWrite {}).await.unwrap();
    let data = random_bytes(1 << 20, 11);
    let header = cairn_common::codec::encode(
        &proto::PutBlock {
            block: BlockId::of(&data),
            len: data.len() as u32,
            downstream: Vec::new(),
            sync: false,
            token: Some(token.clone()),
        }
        .into_service(),
    )
    .unwrap();
    let (mut send, mut recv) = dn.open_bi().await.unwrap();
    send.write_all(&header).await.unwrap();
    send.write_all(&data[..1000]).await.unwrap();
    let _ = send.finish();
    let answer = cairn_common::codec::read_frame::<Result<proto::PutReply, FsError>>(&mut recv)
        .await
        .unwrap();
    match answer {
        Err(FsError::Protocol(m)) => assert!(m.contains("ended after 1000"), "{m}"),
        other => panic!("truncated block answered {other:?}"),
    }

    tracing::info!("--- a block whose bytes do not match its id is refused");
    let wrong = cairn_common::codec::encode(
        &proto::PutBlock {
            block: BlockId::of(b"something else"),
            len: data.len() as u32,
            downstream: Vec::new(),
            sync: false,
            token: Some(token.clone()),
        }
        .into_service(),
    )
    .unwrap();
    let mut frame = wrong.clone();
    frame.extend_from_slice(&data);
    let (mut send, mut recv) = dn.open_bi().await.unwrap();
    send.write_all(&frame).await.unwrap();
    let _ = send.finish();
    let answer = cairn_common::codec::read_frame::<Result<proto::PutReply, FsError>>(&mut recv)
        .await
        .unwrap();
    assert!(matches!(answer, Err(FsError::Io(_))), "{answer:?}");

    tracing::info!("--- and the datanode still stores good blocks");
    let mut two = cluster_with_one_replica(&client).await;
    two.write(0, &data).await.unwrap();
    two.close().await.unwrap();
    cluster.stop().await.unwrap();
}

/// A file replicated once, so that a one-datanode cluster can store it.
async fn cluster_with_one_replica(client: &cairn_client::Client) -> cairn_client::FileHandle {
    let dir = client
        .mkdir(Ino::ROOT, b"single", 0o755, Owner::current())
        .await
        .unwrap();
    client.set_replication(dir.ino, 1).await.unwrap();
    let created = client
        .create(dir.ino, b"f", 0o644, true, false, Owner::current())
        .await
        .unwrap();
    client.open(created.attr.ino).await.unwrap()
}

/// A default mount honours no setuid bit and opens no device node: a program another client
/// made setuid root runs as its caller, and a device node made there does not open. With
/// `-o suid,dev` both do, as the administrator asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn setuid_programs_and_device_nodes_grant_nothing_on_a_default_mount() {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use crate::mount::{mount_with, unmount};

    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let (safe_point, trusting_point) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let safe = mount_with(&cluster, safe_point.path(), &Default::default()).await;
    let trusting_opts = cairn_fuse::MountOptions {
        suid: true,
        dev: true,
        ..Default::default()
    };
    let trusting = mount_with(&cluster, trusting_point.path(), &trusting_opts).await;
    let (s, t) = (
        safe_point.path().to_path_buf(),
        trusting_point.path().to_path_buf(),
    );
    let checked = tokio::task::spawn_blocking(move || {
        // Made as another client of the cluster could: a setuid-root program, /dev/null.
        std::fs::copy("/usr/bin/id", s.join("id")).unwrap();
        std::fs::set_permissions(s.join("id"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        let node = std::ffi::CString::new(s.join("null").into_os_string().into_encoded_bytes());
        let rc = unsafe {
            libc::mknod(
                node.unwrap().as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(1, 3),
            )
        };
        assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
        // The effective uid of `id` run by nobody.
        let euid = |mount: &Path| {
            let out = std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(mount.join("id"))
                .arg("-u")
                .output()
                .expect("setpriv runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        assert_eq!(
            euid(&s),
            "65534",
            "a setuid bit honoured on a default mount"
        );
        assert_eq!(euid(&t), "0", "the setuid bit with -o suid");
        let open = |mount: &Path| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(mount.join("null"))
        };
        let refused = open(&s).expect_err("a device node opened on a default mount");
        assert_eq!(refused.raw_os_error(), Some(libc::EACCES), "{refused}");
        open(&t).expect("a device node opens with -o dev");
        let flags = cairn_fuse::mount_flags_of(&s)
            .unwrap()
            .expect("a Cairn mount");
        assert!(flags.iter().any(|f| f == "nosuid") && flags.iter().any(|f| f == "nodev"));
    })
    .await;
    tracing::info!("--- suid and dev only where the certificate's export rule allows them");
    let web = cert::CertIdentity::new(Role::Mount, "web1");
    let config = config_for(&cluster, &web);
    let point = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("mount")
        .arg(point.path())
        .arg("--config")
        .arg(&config)
        .args(["-o", "suid,dev"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && said.contains("-o suid,dev is not allowed for certificate \"web1\"")
            && said.contains("suid = true and dev = true"),
        "{said}"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let shown = point.path().display().to_string();
    assert!(!mounts.contains(&shown), "nothing mounted at {shown}");

    unmount(safe).await;
    unmount(trusting).await;
    cluster.stop().await.unwrap();
    if let Err(e) = checked {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Sends one request by hand on `conn`, as root.
async fn call<R: Rpc<Service = proto::NamenodeRequest>>(
    conn: &quinn::Connection,
    req: R,
) -> Result<R::Response, FsError>
where
    R::Response: serde::de::DeserializeOwned,
{
    let envelope = proto::NamenodeEnvelope {
        caller: cairn_common::attr::Caller::ROOT,
        req: req.into_service(),
        request: None,
    };
    transport::call_enveloped(conn, &envelope).await
}

/// A client session belongs to the certificate that first named it: another certificate
/// cannot renew, release, test or take locks under it, and never learns it from the list
/// of mounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_certificate_cannot_act_for_a_mounts_session() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 1).await;
    let client = cluster.client().await.unwrap();
    let file = client
        .create(Ino::ROOT, b"locked", 0o644, true, false, Owner::current())
        .await
        .unwrap()
        .attr
        .ino;
    let point = tempfile::tempdir().unwrap();
    let mounted = crate::mount::mount_at(&cluster, point.path()).await;

    let owner = proto::LockOwnerId {
        session: 4242,
        owner: 1,
    };
    let range = proto::LockRange {
        start: 0,
        end: u64::MAX,
        kind: proto::LockKind::Write,
        pid: 1,
    };
    let victim = raw_connection(&cluster, cluster.namenode_addr(), Role::Namenode).await;
    call(
        &victim,
        proto::SetLock {
            ino: file,
            owner,
            range,
            reclaim: false,
        },
    )
    .await
    .unwrap();

    let certs = cluster.dir().join("certs");
    cert::issue(&certs, Role::Mount, "mallory", &certs, 1).unwrap();
    let mallory = namenode_connection_as(&cluster, "mallory").await;
    let refused = |r: Result<_, FsError>, what: &str| {
        assert!(matches!(r, Err(FsError::NotPermitted)), "{what}: {r:?}");
    };
    refused(
        call(&mallory, proto::ReleaseLocks { ino: file, owner }).await,
        "releasing another's locks",
    );
    let unlock = proto::LockRange {
        kind: proto::LockKind::Unlock,
        ..range
    };
    refused(
        call(
            &mallory,
            proto::SetLock {
                ino: file,
                owner,
                range: unlock,
                reclaim: false,
            },
        )
        .await,
        "unlocking another's lock",
    );
    refused(
        call(
            &mallory,
            proto::GetLock {
                ino: file,
                owner,
                range,
            },
        )
        .await
        .map(|_| ()),
        "testing locks as another",
    );
    refused(
        call(
            &mallory,
            proto::KeepOpen {
                session: owner.session,
                gen: u64::MAX,
                open: Vec::new(),
                writing: Vec::new(),
                uploads: Vec::new(),
            },
        )
        .await,
        "renewing another's open files",
    );
    // Its own session works; and its going away releases nothing of the victim's.
    let own = proto::LockOwnerId {
        session: 77,
        owner: 1,
    };
    let range_b = proto::LockRange {
        start: 0,
        end: 1,
        kind: proto::LockKind::Read,
        pid: 2,
    };
    let conflict = call(
        &mallory,
        proto::GetLock {
            ino: file,
            owner: own,
            range: range_b,
        },
    )
    .await
    .unwrap();
    assert!(conflict.is_some(), "the victim's lock is still held");
    assert!(matches!(
        call(&mallory, proto::ListMounts).await,
        Err(FsError::WrongRole(_))
    ));
    // Nor does an administrator see the session numbers.
    let mounts = call(&victim, proto::ListMounts).await.unwrap();
    assert!(!mounts.is_empty());
    assert!(
        mounts.iter().all(|m| m.info.session == 0),
        "sessions shown: {mounts:?}"
    );
    mallory.close(0u32.into(), b"done");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let other_owner = proto::LockOwnerId {
        session: 4243,
        owner: 1,
    };
    let still = call(
        &victim,
        proto::GetLock {
            ino: file,
            owner: other_owner,
            range: range_b,
        },
    )
    .await
    .unwrap();
    assert!(
        still.is_some(),
        "the victim's lock survives the other certificate"
    );
    crate::mount::unmount(mounted).await;
    cluster.stop().await.unwrap();
}

/// A client's word that a replica is bad evicts nothing: its datanode checks the replica,
/// and a healthy one stays listed and served. (Any client certificate could otherwise hide
/// every replica of any block.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_false_report_of_bad_replicas_evicts_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let client = cluster.client().await.unwrap();
    let data = random_bytes(1 << 20, 11);
    let attr = put(&client, "healthy", &data, 1 << 20).await;
    let sorted = |mut map: std::collections::HashMap<BlockId, Vec<cairn_common::DatanodeId>>| {
        map.values_mut().for_each(|at| at.sort());
        map
    };
    let before = sorted(replicas(&client, attr.ino).await);
    assert!(before.values().all(|at| at.len() == 3), "{before:?}");
    let liar = raw_connection(&cluster, cluster.namenode_addr(), Role::Namenode).await;
    // One replica of each block (of all of them, a reader's map would wait for a report).
    for (block, at) in &before {
        let report = proto::ReportBadReplica {
            block: *block,
            datanode: at[0],
            reason: "it is bad, trust me".into(),
        };
        call(&liar, report).await.unwrap();
    }
    // Still listed at once, and once every datanode has been told at a heartbeat and has
    // checked (and found the replica healthy).
    assert_eq!(sorted(replicas(&client, attr.ino).await), before);
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(sorted(replicas(&client, attr.ino).await), before);
    assert!(get(&cluster.client().await.unwrap(), attr.ino, 1 << 20).await == data);
    cluster.stop().await.unwrap();
}

/// A datanode's certificate is its identity: it cannot register under another datanode's
/// name or id, heartbeat or report blocks for another, or have another's replica evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_datanode_certificate_speaks_only_for_its_own_datanode() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let client = cluster.client().await.unwrap();
    let attr = put(&client, "held", &random_bytes(1 << 20, 12), 1 << 20).await;
    let before = replicas(&client, attr.ino).await;
    let listed = client.datanodes().await.unwrap();
    let id_of = |name: &str| listed.iter().find(|d| d.name == name).unwrap().id;
    let (mine, theirs) = (id_of("datanode-1"), id_of("datanode-2"));

    let conn = namenode_connection_as(&cluster, "datanode-1").await;
    let refused = |r: Result<(), FsError>, what: &str| match r {
        Err(FsError::WrongRole(why)) => assert!(why.contains("datanode-1"), "{what}: {why}"),
        other => panic!("{what}: {other:?}"),
    };
    let theirs_status = listed.iter().find(|d| d.id == theirs).unwrap();
    let register = |id, name: &str| proto::Register {
        id,
        cluster: None,
        name: name.into(),
        rack: String::new(),
        addr: "127.0.0.1:9".parse().unwrap(),
        capacity: 1,
        used: 0,
        available: 1,
    };
    refused(
        call(&conn, register(theirs, "datanode-1"))
            .await
            .map(|_| ()),
        "registering as another's id",
    );
    refused(
        call(&conn, register(cairn_common::DatanodeId(77), "datanode-2"))
            .await
            .map(|_| ()),
        "registering under another's name",
    );
    refused(
        call(
            &conn,
            proto::Heartbeat {
                id: theirs,
                capacity: 1,
                used: 0,
                available: 1,
                blocks: 0,
                active_transfers: 0,
                copies_failed: Vec::new(),
                scrub: Default::default(),
            },
        )
        .await
        .map(|_| ()),
        "a heartbeat for another",
    );
    let (block, _) = before.iter().next().unwrap();
    refused(
        call(
            &conn,
            proto::BlockReceived {
                id: theirs,
                added: Vec::new(),
                removed: vec![*block],
            },
        )
        .await,
        "dropping another's replica from the map",
    );
    // Its own word about another's replica is a reader's: checked, not believed.
    for (block, at) in &before {
        for &holder in at.iter().filter(|&&d| d != mine) {
            let report = proto::ReportBadReplica {
                block: *block,
                datanode: holder,
                reason: "bad, says another datanode".into(),
            };
            call(&conn, report).await.unwrap();
        }
    }
    // Nothing of the other datanode changed.
    let sorted = |mut map: std::collections::HashMap<BlockId, Vec<cairn_common::DatanodeId>>| {
        map.values_mut().for_each(|at| at.sort());
        map
    };
    assert_eq!(sorted(replicas(&client, attr.ino).await), sorted(before));
    let after = client.datanodes().await.unwrap();
    let now = after.iter().find(|d| d.id == theirs).unwrap();
    assert!(now.alive && now.name == "datanode-2" && now.addr == theirs_status.addr);
    assert_eq!(after.len(), 3);
    cluster.stop().await.unwrap();
}

/// Timestamps no `timespec` means, or past what any clock holds, are refused where they come
/// in: never stored for every other mount's `stat` to trip on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timestamps_out_of_range_are_refused_and_stored_ones_stay() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 1).await;
    let client = cluster.client().await.unwrap();
    let file = client
        .create(Ino::ROOT, b"dated", 0o644, true, false, Owner::current())
        .await
        .unwrap()
        .attr;
    let conn = raw_connection(&cluster, cluster.namenode_addr(), Role::Namenode).await;
    let at = |secs, nanos| {
        cairn_common::attr::TimeSet::At(cairn_common::attr::Timestamp { secs, nanos })
    };
    for (secs, nanos) in [
        (0, 1_000_000_000),
        (i64::MAX, 0),
        (i64::MIN, 0),
        (1 << 41, 0),
    ] {
        let set = cairn_common::attr::SetAttr {
            mtime: Some(at(secs, nanos)),
            ..Default::default()
        };
        let res = call(
            &conn,
            proto::SetAttrReq {
                ino: file.ino,
                set,
                open_for_write: false,
            },
        )
        .await;
        assert!(
            matches!(res, Err(FsError::Invalid(_))),
            "{secs}.{nanos}: {res:?}"
        );
    }
    let now = client.getattr(file.ino).await.unwrap();
    assert_eq!(now.mtime, file.mtime, "untouched");
    // A time far in the past or future that clocks hold is kept as given.
    let set = cairn_common::attr::SetAttr {
        mtime: Some(at(-(1 << 35), 999_999_999)),
        ..Default::default()
    };
    let kept = client.setattr(file.ino, set).await.unwrap();
    assert_eq!(kept.mtime.secs, -(1 << 35));
    still_serving(&cluster).await;
    cluster.stop().await.unwrap();
}

/// Datanodes serve a block only with a token the namenode signed for that block, that
/// access and that certificate, until it expires; the client renews expired ones itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn block_access_takes_a_token_the_namenode_signed() {
    use cairn_common::token::{Access, BlockToken, Signer};

    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = cairn_cli::devcluster::DevOptions::new(dir.path(), 2);
    opts.block_token_lifetime_secs = 4;
    let cluster = cairn_cli::devcluster::DevCluster::start(opts)
        .await
        .unwrap();
    let admin = cluster.client().await.unwrap();
    let data = random_bytes(12 << 20, 21);
    let attr = put(&admin, "big", &data, 4 << 20).await;
    let other = put(&admin, "small", &random_bytes(1 << 16, 22), 1 << 16).await;
    let token_of = |map: proto::ChunkMap, block: BlockId| {
        map.tokens
            .into_iter()
            .find(|t| t.block == Some(block))
            .expect("a token for each block of a map")
    };
    let block = file_blocks(&admin, attr.ino).await[0];
    let token = token_of(chunk_map(&admin, attr.ino).await, block);
    let other_block = file_blocks(&admin, other.ino).await[0];
    let other_token = token_of(chunk_map(&admin, other.ino).await, other_block);
    let dn_addr = cluster.datanodes[0].addr.unwrap();
    let dn = raw_connection(&cluster, dn_addr, Role::Datanode).await;
    let get_on = |conn: quinn::Connection, block: BlockId, token: Option<BlockToken>| async move {
        let req = proto::GetBlock {
            block,
            offset: 0,
            len: None,
            token,
        };
        let (header, mut recv) = transport::call_streaming(&conn, req).await?;
        transport::read_body_exact(&mut recv, header.len as usize).await
    };
    let get = |block, token| get_on(dn.clone(), block, token);
    let refused = |r: Result<Vec<u8>, FsError>, why: &str| match r {
        Err(FsError::Token(m)) => assert!(m.contains(why), "refused for {m}, not {why}"),
        other => panic!(
            "served without a valid token ({why}): {:?}",
            other.map(|b| b.len())
        ),
    };

    tracing::info!("--- with its token, a block is served");
    let bytes = get(block, Some(token.clone())).await.unwrap();
    assert_eq!(BlockId::of(&bytes), block);

    tracing::info!("--- without one, or with one for something else, it is not");
    refused(get(block, None).await, "no block access token");
    refused(get(block, Some(other_token.clone())).await, "for block");
    let write = admin.namenode(proto::GrantWrite {}).await.unwrap();
    refused(get(block, Some(write.clone())).await, "allows Write");
    let mut later = token.clone();
    later.expires += 3600;
    refused(get(block, Some(later)).await, "signature");
    // (A fresh one: a slow machine may have let the first expire, which is refused first.)
    let mut moved = token_of(chunk_map(&admin, attr.ino).await, block);
    moved.block = Some(other_block);
    refused(get(other_block, Some(moved)).await, "signature");
    let foreign =
        Signer::new(b"another namenode", 4).sign(Access::Read, Some(block), &token.holder);
    refused(get(block, Some(foreign)).await, "signature");
    let laptop = cert::CertIdentity::new(Role::Mount, "laptop");
    config_for(&cluster, &laptop);
    let stolen = connection_as(&cluster, "laptop", dn_addr, Role::Datanode)
        .await
        .unwrap();
    refused(
        get_on(stolen, block, Some(token.clone())).await,
        "another certificate",
    );

    tracing::info!("--- a block is stored only with a write token");
    let fresh = random_bytes(1 << 16, 23);
    let id = BlockId::of(&fresh);
    let put_raw = |token: Option<BlockToken>| {
        let (dn, fresh) = (dn.clone(), fresh.clone());
        async move {
            let req = proto::PutBlock {
                block: id,
                len: fresh.len() as u32,
                downstream: Vec::new(),
                sync: false,
                token,
            };
            transport::call_with_body(&dn, req, bytes::Bytes::from(fresh)).await
        }
    };
    for (token, why) in [
        (None, "no block access token"),
        (Some(token.clone()), "allows Read"),
    ] {
        match put_raw(token).await {
            Err(FsError::Token(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("stored without a write token: {other:?}"),
        }
    }
    assert!(!block_path(&cluster, 0, &id).exists(), "nothing stored");
    put_raw(Some(write)).await.unwrap();
    assert!(block_path(&cluster, 0, &id).exists());

    tracing::info!("--- an expired token is refused; a reader and a writer renew theirs");
    let mut reader = admin.open(attr.ino).await.unwrap();
    let at = 5 << 20;
    assert_eq!(
        &reader.read(at, 4096).await.unwrap()[..],
        &data[at as usize..][..4096]
    );
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    refused(get(block, Some(token)).await, "expired");
    // Another block, whose token came with the map before it expired.
    let at = 9 << 20;
    assert_eq!(
        &reader.read(at, 4096).await.unwrap()[..],
        &data[at as usize..][..4096]
    );
    let again = random_bytes(1 << 20, 24);
    let written = put(&admin, "after", &again, 1 << 16).await;
    let fresh_client = cluster.client().await.unwrap();
    assert_eq!(
        crate::support::get(&fresh_client, written.ino, 1 << 16).await,
        again
    );

    still_serving(&cluster).await;
    cluster.stop().await.unwrap();
}

/// A client given the CA's revocation list (`[tls] crl`) refuses a server whose
/// certificate it names: a revoked namenode certificate cannot pass for the namenode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_the_revocation_list_refuses_a_revoked_server() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 1).await;
    let certs = cluster.dir().join("certs");
    let paths = transport::TlsPaths {
        ca_cert: certs.join(cert::CA_CERT_FILE),
        cert: certs.join("admin.pem"),
        key: certs.join("admin.key"),
        crl: Some(certs.join(cert::CRL_FILE)),
    };
    let namenode = cluster.namenode_addr();
    let reach = |paths: transport::TlsPaths| async move {
        let identity = paths
            .load()
            .map_err(|e| FsError::invalid(format!("{e:#}")))?;
        let opts = TransportOptions::default();
        let endpoint = transport::client_endpoint(&identity, &opts).unwrap();
        let conn =
            transport::connect(&endpoint, namenode, Role::Namenode, opts.protocol_version).await?;
        getattr_root(&conn).await.map(|_| ())
    };

    tracing::info!("--- a list that names others: served");
    let mate = cert::CertIdentity::new(Role::Mount, "mate");
    config_for(&cluster, &mate);
    cert::revoke(&certs, "mate").unwrap();
    reach(paths.clone()).await.unwrap();

    tracing::info!("--- the namenode's certificate revoked: refused, and told why");
    assert_eq!(cert::revoke(&certs, "namenode").unwrap(), 1);
    let err = reach(paths.clone()).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("revoked"),
        "the client says why: {err}"
    );
    // Without the list it would not know.
    reach(transport::TlsPaths { crl: None, ..paths })
        .await
        .unwrap();
    cluster.stop().await.unwrap();
}
