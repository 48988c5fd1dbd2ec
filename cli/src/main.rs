//! `cairn`: one binary for the daemons, the development cluster, certificates and files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cairn_cli::devcluster::{DevCluster, DevOptions};
use cairn_cli::fs_cmd::{self, FsArgs};
use cairn_cli::mount_cmd;
use cairn_common::cert::{self, Role};
use cairn_common::transport::{self, TransportOptions};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Cairn: a distributed file system with end-to-end BLAKE3 verification and mutual TLS.
#[derive(Parser)]
#[command(name = "cairn", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a namenode (the metadata master).
    Namenode {
        /// TOML configuration file (see examples/namenode.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a datanode (block storage).
    Datanode {
        /// TOML configuration file (see examples/datanode.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a whole cluster in this process: a namenode and N datanodes, data under one
    /// directory, certificates generated. Stops on Ctrl-C; restarts with its data.
    Dev {
        /// Directory for all data, certificates and configs.
        #[arg(long, default_value = "cairn-dev")]
        dir: PathBuf,
        /// Number of datanodes.
        #[arg(long, default_value_t = 3)]
        datanodes: usize,
        /// Namenode address (a group's members take the ports after it).
        #[arg(long, default_value = "127.0.0.1:7070")]
        namenode: SocketAddr,
        /// Namenodes: 1, or a group of 3 or 5 that keeps serving when one (or two) fail.
        #[arg(long, default_value_t = 1)]
        namenodes: usize,
        /// Replicas per block.
        #[arg(long, default_value_t = 3)]
        replication: u8,
        /// Also mount the cluster on this directory.
        #[arg(long)]
        mount: Option<PathBuf>,
        /// Options of that mount, as `cairn mount -o` takes them (wsync, noatime,
        /// read_ahead_kb=N…).
        #[arg(short = 'o', value_delimiter = ',', requires = "mount")]
        options: Vec<String>,
    },
    /// Manage the cluster certificate authority and certificates.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Work with files in the cluster (like `hdfs dfs`).
    Fs(FsArgs),
    /// The cluster's health and the operator's levers (like `hdfs dfsadmin` and `hdfs fsck`).
    Admin(cairn_cli::admin_cmd::AdminArgs),
    /// Mount the cluster as a local file system (FUSE). Runs until Ctrl-C, SIGTERM or
    /// `umount MOUNTPOINT`.
    Mount {
        mountpoint: PathBuf,
        /// Client configuration file (default: $CAIRN_CONFIG, then ./cairn-client.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Namenode address, overriding the configuration's.
        #[arg(long)]
        namenode: Option<SocketAddr>,
        /// Threads reading kernel requests.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Mount options, comma-separated: noatime, relatime (default), ro, rw, wsync, suid and
        /// dev (nosuid and nodev by default), exec (default), noexec; the generic fstab ones
        /// (defaults, _netdev, nofail…) are accepted and ignored.
        #[arg(short = 'o', value_delimiter = ',')]
        options: Vec<String>,
        /// Return once mounted and serve from the background (as `mount.cairn` does).
        #[arg(long)]
        daemon: bool,
        /// With --daemon: where the background process logs (default: the temp directory).
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// Measure throughput on a cluster started in this process.
    Bench {
        /// Where the benchmark cluster keeps its data (default: the system temp directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: cairn_cli::bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Create a new cluster CA (ca.pem, ca.key) in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = cert::CA_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Issue a certificate signed by the CA in DIR, written to OUT/NAME.pem and OUT/NAME.key.
    Issue {
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// namenode, datanode, admin (runs `cairn admin`), mount (a host mounting for its
        /// users, within its export rule) or user (one person, as --uid/--gid/--groups).
        #[arg(long)]
        role: Role,
        /// Name of the holder, e.g. the host name, or the person's login.
        #[arg(long)]
        name: String,
        /// The uid a user certificate acts as, whatever its requests claim.
        #[arg(long, required_if_eq("role", "user"))]
        uid: Option<u32>,
        /// The gid a user certificate acts as.
        #[arg(long, required_if_eq("role", "user"))]
        gid: Option<u32>,
        /// A user certificate's supplementary groups, e.g. 27,100.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<u32>,
        /// Where to write the files (default: DIR).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days the certificate is valid (renew it with `cairn cert renew` before then).
        #[arg(long, default_value_t = cert::CERT_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Issue the certificate CERT again (same role and name, a new key beside it, .key),
    /// valid for DAYS from now; restart the daemon or mount that uses it.
    Renew {
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        cert: PathBuf,
        #[arg(long, default_value_t = cert::CERT_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Show a certificate's role, name and when it expires.
    Show { cert: PathBuf },
    /// Revoke every unexpired certificate issued for NAME, and write the CA's revocation list
    /// (DIR/revoked.pem) again. Point the namenode's `crl` at it and send the namenode
    /// SIGHUP: it and every datanode then refuse those certificates, and close their
    /// connections at their next request. A certificate issued for NAME later is good.
    Revoke {
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        name: String,
    },
}

fn main() -> ExitCode {
    // Called as mount.cairn by mount(8) for an fstab line: translate its arguments.
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match mount_cmd::helper_args(&argv) {
        Some(Ok(mount_cmd::HelperCall::Mount(translated))) => argv = translated,
        Some(Ok(mount_cmd::HelperCall::Remount { dir, read_only })) => {
            return match mount_cmd::remount(&dir, read_only) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mount.cairn: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
        Some(Err(e)) => {
            eprintln!("mount.cairn: {e:#}");
            return ExitCode::from(1);
        }
        None => {}
    }
    let cli = Cli::parse_from(&argv);
    let quiet = matches!(
        cli.command,
        Command::Fs(_) | Command::Admin(_) | Command::Cert { .. } | Command::Bench { .. }
    );
    if quiet {
        // A command whose output is cut short (`cairn admin report | head`) ends quietly,
        // as other tools do, instead of panicking on the closed pipe. Daemons keep SIGPIPE
        // ignored: a closed log pipe must not kill them.
        // SAFETY: called before any thread is started; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // Raft's own warnings are its routine (a vote answered late, a message from an old
    // term); what matters to an operator Cairn says itself. CAIRN_LOG shows them.
    init_tracing(if quiet {
        "warn,openraft=error"
    } else {
        "info,openraft=error"
    });
    // A benchmark runs a whole cluster and its clients in one process: what would be
    // many processes, each with its runtime, gets every core.
    let whole_cluster = matches!(cli.command, Command::Bench { .. });
    let threads = match runtime_threads(whole_cluster) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("cairn: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, &argv)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cairn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to standard error; in colour only when that is a terminal (a log file or journald
/// gets plain text).
fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn run(command: Command, argv: &[std::ffi::OsString]) -> anyhow::Result<ExitCode> {
    match command {
        Command::Namenode { config } => {
            let config = cairn_namenode::NamenodeConfig::load(&config)?;
            let identity = config.tls.load()?;
            let opts = config.transport_options();
            let endpoint = transport::server_endpoint(config.listen, &identity, &opts)?;
            let shutdown = shutdown_on_signal();
            cairn_namenode::run(config, endpoint, shutdown).await?;
        }
        Command::Datanode { config } => {
            let config = cairn_datanode::DatanodeConfig::load(&config)?;
            let identity = config.tls.load()?;
            let endpoint =
                transport::server_endpoint(config.listen, &identity, &TransportOptions::default())?;
            let shutdown = shutdown_on_signal();
            cairn_datanode::run(config, endpoint, shutdown).await?;
        }
        Command::Dev {
            dir,
            datanodes,
            namenode,
            namenodes,
            replication,
            mount,
            options,
        } => {
            // Bad options fail before anything starts.
            let opts = mount_cmd::mount_options(&options, 4)?;
            let mut cluster = DevOptions::new(&dir, datanodes);
            cluster.namenode_addr = namenode;
            cluster.namenodes = namenodes;
            cluster.replication = replication;
            dev(cluster, mount, opts).await?
        }
        Command::Cert { command } => match command {
            CertCommand::Init { dir, days } => {
                cert::init_ca(&dir, days)?;
                println!(
                    "created the cluster CA in {} (keep ca.key secret)",
                    dir.display()
                );
            }
            CertCommand::Issue {
                dir,
                role,
                name,
                uid,
                gid,
                groups,
                out,
                days,
            } => {
                let out = out.unwrap_or_else(|| dir.clone());
                let who = match (uid, gid) {
                    (Some(uid), Some(gid)) => cert::CertIdentity::user(&name, cert::UserIds { uid, gid, groups }),
                    (None, None) if groups.is_empty() => cert::CertIdentity::new(role, &name),
                    _ => anyhow::bail!("--uid, --gid and --groups name a user certificate's identity: give --uid and --gid, with --role user"),
                };
                if (who.role == Role::User) != (role == Role::User) {
                    anyhow::bail!(
                        "--uid, --gid and --groups go with --role user, and only with it"
                    );
                }
                let paths = cert::issue_as(&dir, &who, &out, days)?;
                println!(
                    "issued certificate {} for {who} with key {}, valid for {days} days",
                    paths.cert.display(),
                    paths.key.display()
                );
            }
            CertCommand::Renew {
                dir,
                cert: path,
                days,
            } => {
                let who = cert::renew(&dir, &path, days)?;
                println!(
                    "renewed the certificate of {who} in {}, valid for {days} days; restart what uses it",
                    path.display()
                );
            }
            CertCommand::Revoke { dir, name } => {
                let revoked = cert::revoke(&dir, &name)?;
                println!(
                    "revoked {revoked} certificate(s) of {name:?}; the revocation list is {}: \
                     set `crl` to it in the namenode's configuration and send the namenode SIGHUP",
                    dir.join(cert::CRL_FILE).display()
                );
            }
            CertCommand::Show { cert: path } => {
                let (who, not_after) = cert::read_identity(&path)?;
                println!("{who}: {}", cert::expiry_text(not_after));
            }
        },
        Command::Fs(args) => return fs_cmd::run(args).await,
        Command::Admin(args) => return cairn_cli::admin_cmd::run(args).await,
        Command::Mount {
            mountpoint,
            config,
            namenode,
            threads,
            options,
            daemon,
            log,
        } => {
            // Bad options fail here, before a background mount would hide the message.
            let opts = mount_cmd::mount_options(&options, threads)?;
            if daemon {
                let daemon = mount_cmd::daemonize(&argv[1..], &mountpoint, log.as_deref())?;
                // What an operator needs to stop it or read why it failed.
                println!(
                    "cairn: mounted on {} (pid {}; log {})",
                    mountpoint.display(),
                    daemon.pid,
                    daemon.log.display()
                );
            } else {
                let shutdown = shutdown_on_signal();
                mount_cmd::run(mountpoint, config, namenode, opts, shutdown).await?;
            }
        }
        Command::Bench { dir, json, command } => cairn_cli::bench::run(command, dir, json).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn dev(
    mut opts: DevOptions,
    mountpoint: Option<PathBuf>,
    mount_opts: cairn_fuse::MountOptions,
) -> anyhow::Result<()> {
    anyhow::ensure!(opts.datanodes >= 1, "a cluster needs at least one datanode");
    anyhow::ensure!(
        opts.namenodes % 2 == 1,
        "--namenodes {}: a group needs an odd number of namenodes (1, 3 or 5); an even one \
         survives no more failures than the odd number below it",
        opts.namenodes
    );
    // The mount point is made, or refused, before anything starts: a cluster started for a
    // mount that then fails is a cluster nobody asked for.
    if let Some(m) = &mountpoint {
        if !m.exists() {
            std::fs::create_dir_all(m)
                .with_context(|| format!("making the mount point {}", m.display()))?;
            println!("made the mount point {}", m.display());
        }
        cairn_fuse::prepare_mountpoint(m)
            .with_context(|| format!("mounting on {}", m.display()))?;
    }
    let dir = opts.dir.clone();
    opts.min_replicas = opts.min_replicas.min(opts.replication);
    // As a real namenode does: removed files wait a day in the trash.
    opts.trash_retention_secs = 86_400;
    let shutdown = shutdown_on_signal();
    let cluster = DevCluster::start(opts)
        .await
        .with_context(|| format!("starting the dev cluster in {}", dir.display()))?;
    let d = cluster.dir().display().to_string();
    println!("Cairn dev cluster is running; all its data is under {d}");
    match &cluster.namenodes[..] {
        [alone] => println!("  namenode    {}", alone.addr()),
        members => {
            for (i, nn) in members.iter().enumerate() {
                println!(
                    "  namenode {}  {}  metadata in {}",
                    i + 1,
                    nn.addr(),
                    nn.config.meta_dir.display()
                );
            }
            println!("  (a group: `cairn admin namenodes` says which leads)");
        }
    }
    for dn in &cluster.datanodes {
        if let Some(addr) = dn.addr {
            println!(
                "  {:<11} {addr}  blocks in {}",
                dn.config.name,
                dn.config.data_dir.display()
            );
        }
    }
    println!();
    println!("Try it from another terminal:");
    println!("  cd {d} && cairn fs put /etc/services /services && cairn fs ls /");
    println!("or from anywhere:");
    println!(
        "  export CAIRN_CONFIG={}",
        cluster.client_config_path.display()
    );
    let mounted = match &mountpoint {
        Some(m) => {
            let mut config = cairn_client::ClientConfig::load(&cluster.mount_config_path)?;
            config.wsync |= mount_opts.wsync;
            let client = cairn_client::Client::connect(config).await?;
            cairn_fuse::admitted(&client, &mount_opts).await?;
            let mounted =
                cairn_fuse::mount(client, tokio::runtime::Handle::current(), m, &mount_opts)
                    .with_context(|| format!("mounting on {}", m.display()))?;
            println!(
                "  mounted on  {} (every local user may use it)",
                m.display()
            );
            Some(mounted)
        }
        None => None,
    };
    println!();
    let again = match cluster.namenodes.len() {
        1 => format!("cairn dev --dir {d}"),
        n => format!("cairn dev --dir {d} --namenodes {n}"),
    };
    println!("Ctrl-C stops the cluster; `{again}` starts it again with its data.");
    shutdown.cancelled().await;
    println!("stopping…");
    if let Some(m) = mounted {
        // Unmount first: the mount's last writes need the cluster.
        tokio::task::spawn_blocking(move || m.unmount()).await??;
    }
    cluster.stop().await
}

/// A token cancelled on Ctrl-C or SIGTERM: the one cancellation every daemon task follows.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot listen for SIGTERM: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    t.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}

/// Threads of the async runtime: `CAIRN_RUNTIME_THREADS`, else half the cores (at least
/// one), or every core for `whole_cluster`.
/// The other half is left to the threads that are not the runtime's — a mount's FUSE
/// threads, hashing and disk work on the blocking pool, RocksDB's, the kernel's network
/// stack — and fewer runtime threads wake each other less: on two cores one thread took
/// random 4 KiB reads on a mount from ~6,500 to ~8,900 a second (docs/BENCHMARKS.md).
fn runtime_threads(whole_cluster: bool) -> Result<usize, String> {
    if let Ok(v) = std::env::var("CAIRN_RUNTIME_THREADS") {
        return match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "CAIRN_RUNTIME_THREADS must be a number of threads (1 or more), not {v:?}"
            )),
        };
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Ok(match whole_cluster {
        true => cores,
        false => (cores / 2).max(1),
    })
}
