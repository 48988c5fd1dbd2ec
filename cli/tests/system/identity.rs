//! Identity proven by certificates, not claimed by requests: a user certificate acts as its
//! own uid whatever its process or its requests say; a mount's root is squashed unless its
//! export rule says otherwise; a read-only export changes nothing; only an administrator's
//! certificate administers. Each case checks the refusal and that the target is untouched.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_cli::devcluster::DevCluster;
use cairn_client::{Client, Owner};
use cairn_common::attr::{Caller, SetAttr};
use cairn_common::cert::{CertIdentity, Role, UserIds};
use cairn_common::exports::ANON_ID;
use cairn_common::proto::{self, Rpc};
use cairn_common::transport;
use cairn_common::{FsError, Ino};

use crate::mount::unmount;
use crate::support::*;

async fn mount_as(client: Client, dir: &Path) -> cairn_fuse::Mount {
    cairn_fuse::mount(
        client,
        tokio::runtime::Handle::current(),
        dir,
        &cairn_fuse::MountOptions::default(),
    )
    .expect("mount (needs root and /dev/fuse)")
}

/// Sends `req` on a connection made with `who`'s certificate, naming `caller` as its caller.
async fn raw_as<R: Rpc<Service = proto::NamenodeRequest>>(
    cluster: &DevCluster,
    who: &CertIdentity,
    caller: Caller,
    req: R,
) -> Result<R::Response, FsError>
where
    R::Response: serde::de::DeserializeOwned,
{
    let conn = namenode_connection_as(cluster, &who.name).await;
    raw_on(&conn, caller, req).await
}

const SECRET: &[u8] = b"root's eyes only";

/// `/secret` (root's, 0600, holding [`SECRET`]) and `/shared` (0777), made by the admin.
async fn secret_and_shared(admin: &Client) -> (Ino, Ino) {
    let secret = put(admin, "secret", SECRET, 1024).await.ino;
    let chmod = |perm| SetAttr {
        perm: Some(perm),
        ..SetAttr::default()
    };
    admin.setattr(secret, chmod(0o600)).await.unwrap();
    let shared = admin
        .mkdir(Ino::ROOT, b"shared", 0o777, Owner { uid: 0, gid: 0 })
        .await
        .unwrap()
        .ino;
    admin.setattr(shared, chmod(0o777)).await.unwrap();
    (secret, shared)
}

/// The secret is as the admin left it.
async fn secret_untouched(admin: &Client, secret: Ino) {
    let attr = admin.getattr(secret).await.unwrap();
    assert_eq!((attr.perm, attr.uid, attr.gid), (0o600, 0, 0), "{attr:?}");
    assert_eq!(get(admin, secret, 4096).await, SECRET);
}

fn open_claim() -> proto::OpenClaim {
    proto::OpenClaim {
        session: rand::random(),
        gen: 1,
    }
}

fn caller(uid: u32, gid: u32) -> Caller {
    Caller {
        uid,
        gid,
        groups: vec![0],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_certificate_acts_as_its_own_uid_whatever_its_requests_claim() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 2).await;
    let admin = cluster.client().await.unwrap();
    let (secret, shared) = secret_and_shared(&admin).await;
    let alice = CertIdentity::user(
        "alice",
        UserIds {
            uid: 1000,
            gid: 1000,
            groups: vec![27],
        },
    );

    tracing::info!("--- the library, in a process running as root");
    let client = client_for(&cluster, &alice).await;
    assert_eq!(client.caller().uid, 0, "this test runs as root");
    assert_eq!(client.open(secret).await.err(), Some(FsError::AccessDenied));
    assert_eq!(
        client.open_as(secret, true).await.err(),
        Some(FsError::AccessDenied)
    );
    let chmod = SetAttr {
        perm: Some(0o666),
        ..SetAttr::default()
    };
    assert_eq!(
        client.setattr(secret, chmod.clone()).await.err(),
        Some(FsError::NotPermitted)
    );
    assert_eq!(
        client.unlink(Ino::ROOT, b"secret").await.err(),
        Some(FsError::AccessDenied)
    );
    // What it makes is its own, whatever owner the request names.
    let made = client
        .create(
            shared,
            b"mine",
            0o644,
            true,
            false,
            Owner { uid: 0, gid: 0 },
        )
        .await
        .unwrap();
    assert_eq!((made.attr.uid, made.attr.gid), (1000, 1000));

    tracing::info!("--- raw requests naming root, and another user");
    for (i, claimed) in [Caller::ROOT, caller(0, 0), caller(1001, 1001)]
        .into_iter()
        .enumerate()
    {
        let opened = raw_as(
            &cluster,
            &alice,
            claimed.clone(),
            proto::Open {
                ino: secret,
                claim: open_claim(),
                write: false,
            },
        )
        .await;
        assert_eq!(opened.err(), Some(FsError::AccessDenied), "as {claimed:?}");
        let made = raw_as(
            &cluster,
            &alice,
            claimed.clone(),
            proto::Mknod {
                parent: shared,
                name: format!("node-{i}").into_bytes(),
                kind: cairn_common::attr::FileKind::File,
                perm: 0o4755,
                rdev: 0,
                uid: 0,
                gid: 0,
            },
        )
        .await
        .unwrap();
        assert_eq!((made.reply.uid, made.reply.gid), (1000, 1000));
    }

    tracing::info!("--- through a mount, by root");
    let point = tempfile::tempdir().unwrap();
    let mounted = mount_as(client_for(&cluster, &alice).await, point.path()).await;
    let root = point.path().to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        let refused = fs::read(root.join("secret")).unwrap_err().kind();
        fs::write(root.join("shared/by-mount"), b"x").unwrap();
        let owner = fs::metadata(root.join("shared/by-mount")).unwrap().uid();
        (refused, owner)
    })
    .await
    .unwrap();
    assert_eq!(read, (ErrorKind::PermissionDenied, 1000));
    unmount(mounted).await;

    secret_untouched(&admin, secret).await;
    cluster.stop().await.unwrap();
}

/// Polls `f` until it returns true, for up to ten seconds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mounts_root_is_squashed_unless_its_export_says_otherwise() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path(), 2).await;
    cluster.stop_namenode().await.unwrap();
    let config = cluster.dir().join("namenode.toml");
    let namenode = ChildNamenode::start(&config, &cluster.dir().join("namenode.log"));
    cluster.wait_for_datanodes(2).await.unwrap();
    let admin = cluster.client().await.unwrap();
    let (secret, shared) = secret_and_shared(&admin).await;

    tracing::info!("--- a mount certificate no rule names: root is nobody");
    let lab = CertIdentity::new(Role::Mount, "lab-1");
    let point = tempfile::tempdir().unwrap();
    let mounted = mount_as(client_for(&cluster, &lab).await, point.path()).await;
    let root = point.path().to_path_buf();
    let (read, made, mkdir) = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || {
            let read = fs::read(root.join("secret")).map_err(|e| e.kind());
            fs::write(root.join("shared/squashed"), b"x").unwrap();
            let made = fs::metadata(root.join("shared/squashed")).unwrap();
            let mkdir = fs::create_dir(root.join("top")).map_err(|e| e.kind());
            (read, (made.uid(), made.gid()), mkdir)
        })
        .await
        .unwrap()
    };
    assert_eq!(read, Err(ErrorKind::PermissionDenied));
    assert_eq!(made, (ANON_ID, ANON_ID));
    assert_eq!(mkdir, Err(ErrorKind::PermissionDenied));
    let raw = raw_as(
        &cluster,
        &lab,
        Caller::ROOT,
        proto::Open {
            ino: secret,
            claim: open_claim(),
            write: true,
        },
    )
    .await;
    assert_eq!(raw.err(), Some(FsError::AccessDenied));

    tracing::info!("--- rules reloaded on SIGHUP: root is root there, others read only");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[[exports]]\nname = \"lab-*\"\nroot_squash = false\nuids = [\"0\", \"1000-1999\"]\n\
         \n[[exports]]\nname = \"ro-*\"\naccess = \"ro\"\n",
    );
    fs::write(&config, text).unwrap();
    namenode.hangup();
    {
        let root = root.clone();
        eventually("root reads the secret through the mount", move || {
            fs::read(root.join("secret")).is_ok_and(|b| b == SECRET)
        })
        .await;
    }
    // A uid the rule does not allow is refused, one it allows acts as itself.
    let named = |name: &str| proto::Create::file(shared, name.as_bytes().to_vec());
    let refused = raw_as(&cluster, &lab, caller(5, 5), named("as-5")).await;
    assert_eq!(refused.err(), Some(FsError::NotPermitted));
    let allowed = raw_as(&cluster, &lab, caller(1500, 1500), named("as-1500"))
        .await
        .unwrap();
    assert_eq!(
        (allowed.reply.attr.uid, allowed.reply.attr.gid),
        (1500, 1500)
    );
    unmount(mounted).await;

    let ro = CertIdentity::new(Role::Mount, "ro-1");
    let point = tempfile::tempdir().unwrap();
    let mounted = mount_as(client_for(&cluster, &ro).await, point.path()).await;
    let root = point.path().to_path_buf();
    let errors = tokio::task::spawn_blocking(move || {
        assert_eq!(fs::read(root.join("shared/squashed")).unwrap(), b"x");
        let rofs = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
        [
            rofs(fs::write(root.join("shared/new"), b"y")),
            rofs(fs::write(root.join("shared/squashed"), b"y")),
            rofs(fs::create_dir(root.join("shared/dir"))),
            rofs(fs::remove_file(root.join("shared/squashed"))),
            rofs(fs::rename(
                root.join("shared/squashed"),
                root.join("shared/moved"),
            )),
        ]
    })
    .await
    .unwrap();
    assert_eq!(errors, [Some(libc::EROFS); 5]);
    unmount(mounted).await;
    assert_eq!(
        get(
            &admin,
            admin.resolve("/shared/squashed").await.unwrap().ino,
            64
        )
        .await,
        b"x"
    );

    tracing::info!("--- the rules, as an administrator lists them");
    let (code, rules) = crate::support::admin(&cluster, &["exports"]);
    assert_eq!(code, 0, "{}", admin_text(&cluster, &["exports"]));
    let names: Vec<&str> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dev-mount", "lab-*", "ro-*"]);

    secret_untouched(&admin, secret).await;
    drop(namenode);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_certificate_administers() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 1).await;
    let mount = config_for(&cluster, &CertIdentity::new(Role::Mount, "host-1"));
    let run = |config: &Path, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("admin")
            .args(args)
            .arg("--config")
            .arg(config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [
        &["safemode", "enter"][..],
        &["mounts"],
        &["exports"],
        &["forget", "datanode-1"],
        &["balance", "--no-wait"],
    ] {
        let (code, err) = run(&mount, args);
        assert_ne!(
            code,
            Some(0),
            "cairn admin {args:?} with a mount certificate"
        );
        assert!(
            err.contains("needs a certificate of role admin")
                && err.contains("\"host-1\" is a mount certificate"),
            "cairn admin {args:?}: {err}"
        );
    }
    // Reading the cluster's health is anyone's.
    assert_eq!(run(&mount, &["safemode"]).0, Some(0));
    // Nothing changed: not in safe mode, the datanode still listed.
    let (code, status) = admin(&cluster, &["safemode"]);
    assert_eq!(
        (code, &status["manual"]),
        (0, &serde_json::Value::Bool(false))
    );
    assert_eq!(
        cluster
            .client()
            .await
            .unwrap()
            .datanodes()
            .await
            .unwrap()
            .len(),
        1
    );
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_certificate_is_refused_at_once_also_on_a_connection_it_already_had() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path(), 2).await;
    let admin = cluster.client().await.unwrap();
    let attr = put(&admin, "data", &random_bytes(1 << 16, 3), 1 << 16).await;
    let block = file_blocks(&admin, attr.ino).await[0];
    let stolen = CertIdentity::new(Role::Mount, "laptop");
    config_for(&cluster, &stolen);
    // The certificate's own read token, with the file's map, from the namenode before it
    // restarts: tokens outlive a restart (their keys derive from the namenode's key).
    let envelope = proto::NamenodeEnvelope {
        caller: Caller::ROOT,
        req: proto::ReadChunks {
            ino: attr.ino,
            first: 0,
            count: 1,
        }
        .into_service(),
        request: None,
    };
    let before = namenode_connection_as(&cluster, "laptop").await;
    let map: proto::ChunkMap = transport::call_enveloped(&before, &envelope).await.unwrap();
    let token = map.tokens.into_iter().find(|t| t.block == Some(block));
    cluster.stop_namenode().await.unwrap();
    let config = cluster.dir().join("namenode.toml");
    let namenode = ChildNamenode::start(&config, &cluster.dir().join("namenode.log"));
    cluster.wait_for_datanodes(2).await.unwrap();

    let to_namenode = namenode_connection_as(&cluster, "laptop").await;
    let datanode = cluster.datanodes[0].addr.unwrap();
    let to_datanode = connection_as(&cluster, "laptop", datanode, Role::Datanode)
        .await
        .unwrap();
    let getattr = |conn: quinn::Connection| async move {
        let envelope = proto::NamenodeEnvelope {
            caller: Caller::ROOT,
            req: proto::GetAttr { ino: Ino::ROOT }.into_service(),
            request: None,
        };
        transport::call_enveloped::<_, cairn_common::attr::InodeAttr>(&conn, &envelope).await
    };
    let get_block = |conn: quinn::Connection| {
        let token = token.clone();
        async move {
            let req = proto::GetBlock {
                block,
                offset: 0,
                len: None,
                token,
            };
            transport::call_streaming(&conn, req).await.map(|_| ())
        }
    };
    getattr(to_namenode.clone()).await.unwrap();
    get_block(to_datanode.clone()).await.unwrap();

    tracing::info!("--- revoked, and the namenode told");
    let certs = cluster.dir().join("certs");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["cert", "revoke", "--dir"])
        .arg(&certs)
        .arg("laptop")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("revoked 1 certificate"),
        "{said}"
    );
    let text = fs::read_to_string(&config).unwrap();
    let crl = certs.join("revoked.pem");
    fs::write(
        &config,
        format!("crl = {:?}\n{text}", crl.display().to_string()),
    )
    .unwrap();
    namenode.hangup();

    let revoked = |r: Result<(), FsError>| {
        matches!(&r, Err(FsError::WrongRole(why)) if why.contains("revoked"))
            || matches!(&r, Err(FsError::Unavailable(why)) if why.contains("revoked"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !revoked(getattr(to_namenode.clone()).await.map(|_| ())) {
        assert!(
            Instant::now() < deadline,
            "the namenode refuses within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A new connection is refused as well.
    let again = connection_as(&cluster, "laptop", cluster.namenode_addr(), Role::Namenode).await;
    match again {
        Ok(conn) => assert!(revoked(getattr(conn).await.map(|_| ()))),
        Err(e) => assert!(e.to_string().contains("revoked"), "{e}"),
    }
    // Datanodes hear of it at their next heartbeat.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !revoked(get_block(to_datanode.clone()).await) {
        assert!(
            Instant::now() < deadline,
            "the datanode refuses within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    tracing::info!("--- others, and a certificate issued for the name anew, are served");
    assert!(admin.getattr(attr.ino).await.is_ok());
    config_for(&cluster, &stolen);
    getattr(namenode_connection_as(&cluster, "laptop").await)
        .await
        .unwrap();
    drop(namenode);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_files_data_is_reached_only_through_its_mode_or_an_open_of_it() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 2).await;
    let admin = cluster.client().await.unwrap();
    let (secret, _) = secret_and_shared(&admin).await;
    let ids = UserIds {
        uid: 1000,
        gid: 1000,
        groups: vec![],
    };
    let alice = CertIdentity::user("alice", ids.clone());
    config_for(&cluster, &alice);
    // Another certificate of the same person: the same uid, not the same opens.
    let tablet = CertIdentity::user("alice-tablet", ids);
    config_for(&cluster, &tablet);
    let root = Caller::ROOT;

    tracing::info!("--- raw requests for the data of root's 0600 file, naming root");
    let denied = |r: Result<(), FsError>, what: &str| {
        assert_eq!(r, Err(FsError::AccessDenied), "{what}");
    };
    let read_chunks = proto::ReadChunks {
        ino: secret,
        first: 0,
        count: 1,
    };
    denied(
        raw_as(&cluster, &alice, root.clone(), read_chunks.clone())
            .await
            .map(|_| ()),
        "reading its map",
    );
    let seek = proto::Seek {
        ino: secret,
        offset: 0,
        hole: false,
    };
    denied(
        raw_as(&cluster, &alice, root.clone(), seek)
            .await
            .map(|_| ()),
        "seeking its data",
    );
    let commit = proto::CommitSlices {
        ino: secret,
        slices: Vec::new(),
        size: 0,
        mtime: cairn_common::attr::Timestamp::now(),
    };
    denied(
        raw_as(&cluster, &alice, root.clone(), commit)
            .await
            .map(|_| ()),
        "truncating it by a commit",
    );
    let punch = proto::Punch {
        ino: secret,
        offset: 0,
        len: 4,
        keep_size: true,
    };
    denied(
        raw_as(&cluster, &alice, root.clone(), punch)
            .await
            .map(|_| ()),
        "punching a hole in it",
    );
    let mine = client_for(&cluster, &alice)
        .await
        .create(Ino::ROOT, b"x", 0o644, true, false, Owner::current())
        .await;
    // Alice may not create in root's `/`: copy into a file of hers in /shared instead.
    assert_eq!(mine.err(), Some(FsError::AccessDenied));
    let hers = client_for(&cluster, &alice)
        .await
        .create(
            admin.resolve("/shared").await.unwrap().ino,
            b"hers",
            0o600,
            true,
            false,
            Owner::current(),
        )
        .await
        .unwrap()
        .attr
        .ino;
    let copy = proto::CopyRange {
        src: secret,
        src_off: 0,
        dst: hers,
        dst_off: 0,
        len: SECRET.len() as u64,
    };
    denied(
        raw_as(&cluster, &alice, root.clone(), copy)
            .await
            .map(|_| ()),
        "copying it into a file of hers",
    );
    secret_untouched(&admin, secret).await;

    tracing::info!("--- her own file, opened and then made unreadable, reads on");
    let conn = namenode_connection_as(&cluster, "alice").await;
    let session = rand::random();
    let opened = raw_on(
        &conn,
        Caller::ROOT,
        proto::Open {
            ino: hers,
            claim: proto::OpenClaim { session, gen: 1 },
            write: false,
        },
    )
    .await;
    assert!(opened.is_ok(), "{:?}", opened.err());
    let chmod = proto::SetAttrReq {
        ino: hers,
        set: SetAttr {
            perm: Some(0o000),
            ..SetAttr::default()
        },
        open_for_write: false,
    };
    raw_on(&conn, Caller::ROOT, chmod).await.unwrap();
    let on_its_open = proto::ReadChunks {
        ino: hers,
        first: 0,
        count: 1,
    };
    assert!(raw_on(&conn, Caller::ROOT, on_its_open.clone())
        .await
        .is_ok());
    // The same uid through another certificate holds no open of it.
    denied(
        raw_as(&cluster, &tablet, root.clone(), on_its_open)
            .await
            .map(|_| ()),
        "the same uid without the open",
    );
    cluster.stop().await.unwrap();
}

/// Sends `req` on `conn`, naming `caller` as its caller.
async fn raw_on<R: Rpc<Service = proto::NamenodeRequest>>(
    conn: &quinn::Connection,
    caller: Caller,
    req: R,
) -> Result<R::Response, FsError>
where
    R::Response: serde::de::DeserializeOwned,
{
    let envelope = proto::NamenodeEnvelope {
        caller,
        req: req.into_service(),
        request: None,
    };
    transport::call_enveloped(conn, &envelope).await
}

/// Writes `data` to a new file `name` in `dir`, as the admin.
async fn put_in(admin: &Client, dir: Ino, name: &str, data: &[u8]) -> Ino {
    let made = admin
        .create(
            dir,
            name.as_bytes(),
            0o644,
            true,
            false,
            Owner { uid: 0, gid: 0 },
        )
        .await
        .unwrap();
    let mut f = admin.open(made.attr.ino).await.unwrap();
    f.write(0, data).await.unwrap();
    f.close().await.unwrap();
    made.attr.ino
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subtree_export_sees_its_directory_as_root_and_reaches_nothing_outside() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path(), 2).await;
    let admin = cluster.client().await.unwrap();
    let (secret, _) = secret_and_shared(&admin).await;
    let mkdir = |parent, name: &'static str| {
        let admin = admin.clone();
        async move {
            let made = admin
                .mkdir(parent, name.as_bytes(), 0o777, Owner { uid: 0, gid: 0 })
                .await
                .unwrap()
                .ino;
            let all = SetAttr {
                perm: Some(0o777),
                ..SetAttr::default()
            };
            admin.setattr(made, all).await.unwrap();
            made
        }
    };
    let proj = mkdir(Ino::ROOT, "proj").await;
    let sub = mkdir(proj, "sub").await;
    let other = mkdir(Ino::ROOT, "other").await;
    put_in(&admin, proj, "in.txt", b"inside").await;
    put_in(&admin, sub, "deep.txt", b"deep inside").await;
    // Readable by anyone: only the export keeps it out of reach.
    let outside = put_in(&admin, other, "outside.txt", b"outside").await;

    tracing::info!("--- proj-* confined to /proj, root not squashed; bad-* to nothing");
    cluster.stop_namenode().await.unwrap();
    let config = cluster.dir().join("namenode.toml");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[[exports]]\nname = \"proj-*\"\nroot = \"/proj\"\nroot_squash = false\n\
         \n[[exports]]\nname = \"bad-*\"\nroot = \"/proj/in.txt\"\n",
    );
    fs::write(&config, text).unwrap();
    let namenode = ChildNamenode::start(&config, &cluster.dir().join("namenode.log"));
    cluster.wait_for_datanodes(2).await.unwrap();
    let admin = cluster.client().await.unwrap();

    let confined = CertIdentity::new(Role::Mount, "proj-1");
    let point = tempfile::tempdir().unwrap();
    let mounted = mount_as(client_for(&cluster, &confined).await, point.path()).await;
    let root = point.path().to_path_buf();
    let (names, read, deep_after_unlink) = tokio::task::spawn_blocking(move || {
        let mut names: Vec<String> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let read = fs::read(root.join("in.txt")).unwrap();
        fs::write(root.join("new.txt"), b"made inside").unwrap();
        fs::create_dir(root.join("made")).unwrap();
        fs::rename(root.join("new.txt"), root.join("made/moved.txt")).unwrap();
        assert_eq!(
            fs::canonicalize(root.join("sub/..")).unwrap(),
            fs::canonicalize(&root).unwrap()
        );
        // A file open when it is unlinked (it leaves the subtree: for the trash, or for
        // nowhere) reads on through the open.
        let mut open = fs::File::open(root.join("sub/deep.txt")).unwrap();
        fs::remove_file(root.join("sub/deep.txt")).unwrap();
        let mut after = Vec::new();
        std::io::Read::read_to_end(&mut open, &mut after).unwrap();
        (names, read, after)
    })
    .await
    .unwrap();
    assert_eq!(names, ["in.txt", "sub"]);
    assert_eq!(read, b"inside");
    assert_eq!(deep_after_unlink, b"deep inside");
    let moved = admin.resolve("/proj/made/moved.txt").await.unwrap();
    assert_eq!(get(&admin, moved.ino, 64).await, b"made inside");
    unmount(mounted).await;

    tracing::info!("--- raw requests naming inodes outside the subtree");
    let conn = namenode_connection_as(&cluster, "proj-1").await;
    let root_attr = raw_on(&conn, Caller::ROOT, proto::GetAttr { ino: Ino::ROOT })
        .await
        .unwrap();
    assert_eq!(root_attr.ino, Ino::ROOT);
    assert_eq!(root_attr.mtime, admin.getattr(proj).await.unwrap().mtime);
    let in_txt = raw_on(
        &conn,
        Caller::ROOT,
        proto::Lookup {
            parent: Ino::ROOT,
            name: b"in.txt".to_vec(),
        },
    )
    .await
    .unwrap();
    let refused = [
        raw_on(&conn, Caller::ROOT, proto::GetAttr { ino: outside })
            .await
            .err(),
        raw_on(&conn, Caller::ROOT, proto::GetAttr { ino: secret })
            .await
            .err(),
        // The subtree's own number names the namespace's root, outside.
        raw_on(&conn, Caller::ROOT, proto::GetAttr { ino: proj })
            .await
            .err(),
        raw_on(
            &conn,
            Caller::ROOT,
            proto::Lookup {
                parent: other,
                name: b"outside.txt".to_vec(),
            },
        )
        .await
        .err(),
        raw_on(
            &conn,
            Caller::ROOT,
            proto::Open {
                ino: outside,
                claim: open_claim(),
                write: false,
            },
        )
        .await
        .err(),
        raw_on(
            &conn,
            Caller::ROOT,
            proto::ReadChunks {
                ino: outside,
                first: 0,
                count: 1,
            },
        )
        .await
        .err(),
        raw_on(
            &conn,
            Caller::ROOT,
            proto::Link {
                ino: outside,
                new_parent: Ino::ROOT,
                new_name: b"stolen".to_vec(),
            },
        )
        .await
        .err(),
        raw_on(
            &conn,
            Caller::ROOT,
            proto::Rename {
                parent: Ino::ROOT,
                name: b"in.txt".to_vec(),
                new_parent: other,
                new_name: b"escaped".to_vec(),
                mode: proto::RenameMode::Replace,
            },
        )
        .await
        .err(),
    ];
    assert_eq!(refused, [const { Some(FsError::AccessDenied) }; 8]);
    let dotdot = raw_on(
        &conn,
        Caller::ROOT,
        proto::Lookup {
            parent: Ino::ROOT,
            name: b"..".to_vec(),
        },
    )
    .await;
    // No request resolves "..": the kernel does, from what the mount told it.
    assert_eq!(dotdot.err(), Some(FsError::NotFound));
    let trash = raw_on(
        &conn,
        Caller::ROOT,
        proto::ListTrash {
            all: false,
            after: None,
            limit: 10,
        },
    )
    .await;
    assert!(matches!(trash, Err(FsError::Invalid(_))), "{trash:?}");
    // Nothing moved: in.txt is where it was, nothing new outside.
    assert_eq!(admin.resolve("/proj/in.txt").await.unwrap().ino, in_txt.ino);
    assert_eq!(
        admin.resolve("/proj/stolen").await.err(),
        Some(FsError::NotFound)
    );
    assert_eq!(
        admin.resolve("/other/escaped").await.err(),
        Some(FsError::NotFound)
    );
    assert_eq!(get(&admin, outside, 64).await, b"outside");

    tracing::info!("--- an export whose root is not a directory serves nothing");
    let bad = CertIdentity::new(Role::Mount, "bad-1");
    config_for(&cluster, &bad);
    let bad = raw_as(
        &cluster,
        &bad,
        Caller::ROOT,
        proto::GetAttr { ino: Ino::ROOT },
    )
    .await;
    match bad {
        Err(FsError::Invalid(why)) => assert!(why.contains("/proj/in.txt"), "{why}"),
        other => panic!("{other:?}"),
    }

    tracing::info!("--- the rules, as an administrator lists them");
    let (code, rules) = crate::support::admin(&cluster, &["exports"]);
    assert_eq!(code, 0);
    assert_eq!(rules[1]["root"], "/proj");
    secret_untouched(&admin, secret).await;
    drop(namenode);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_squashed_root_gets_eacces_at_once_also_where_the_mount_answers_changes() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 2).await;
    let admin = cluster.client().await.unwrap();
    let only = admin
        .mkdir(Ino::ROOT, b"only", 0o755, Owner { uid: 0, gid: 0 })
        .await
        .unwrap()
        .ino;
    let kept = put_in(&admin, only, "kept", b"root's").await;

    // No rule names it: root is squashed to nobody, who may not change root's 0755
    // directory. The kernel checks as root, so only the mount's own check stands between:
    // what it answers under a delegation of the directory must be refused as the namenode
    // refuses it, at once, not at close.
    let lab = CertIdentity::new(Role::Mount, "lab-2");
    let point = tempfile::tempdir().unwrap();
    let mounted = mount_as(client_for(&cluster, &lab).await, point.path()).await;
    let root = point.path().to_path_buf();
    let errors = tokio::task::spawn_blocking(move || {
        let only = root.join("only");
        let mut errors = Vec::new();
        for round in 0..5 {
            // Listing it (again) is what makes the mount ask for its delegation.
            assert_eq!(fs::read_dir(&only).unwrap().count(), 1);
            std::thread::sleep(Duration::from_millis(100));
            let name = only.join(format!("new-{round}"));
            errors.push(fs::File::create(&name).map(drop).map_err(|e| e.kind()));
            errors.push(fs::remove_file(only.join("kept")).map_err(|e| e.kind()));
        }
        errors
    })
    .await
    .unwrap();
    assert_eq!(errors, vec![Err(ErrorKind::PermissionDenied); 10]);
    unmount(mounted).await;
    let names: Vec<Vec<u8>> = admin
        .readdir(only)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n != b"." && n != b"..")
        .collect();
    assert_eq!(names, [b"kept".to_vec()]);
    assert_eq!(get(&admin, kept, 64).await, b"root's");
    cluster.stop().await.unwrap();
}
