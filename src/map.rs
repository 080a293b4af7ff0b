//! `ferry map ...`: edit and inspect the cluster LUN map, and file
//! migration requests the serving node executes.
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use ferry_map::state::{MigrationAction, MigrationRequest};
use ferry_map::{
    edit, CacheMode, ChapCredential, ClusterMap, Frontend, Initiator, Kind, Lun, MapError,
    MapStore, Node, Snapshot, Target,
};

use crate::units::{human, parse_rate};

/// Where the map is and how to reach it.
#[derive(Args, Clone)]
pub struct MapArgs {
    /// The map: `zk://host:port[,host:port...][/root]` or
    /// `file:/dir` (the embedded single-node store).
    #[arg(
        long,
        env = "FERRY_MAP",
        default_value = "file:/var/lib/ferry/map",
        global = true
    )]
    pub map: String,
    /// A file holding `user:password` for ZooKeeper's digest scheme; the
    /// map's znodes are then readable and writable with it only.
    #[arg(long, env = "FERRY_ZK_AUTH_FILE", global = true)]
    pub zk_auth_file: Option<PathBuf>,
    /// How long to wait for the store, e.g. 5s.
    #[arg(long, default_value = "5s", global = true)]
    pub timeout: String,
    /// ZooKeeper session timeout (how long a dead node keeps its LUNs
    /// before another takes them), e.g. 10s.
    #[arg(long, default_value = "10s", global = true)]
    pub session_timeout: String,
}

pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| anyhow!("invalid duration {s:?} (e.g. 500ms, 5s, 2m)"))?;
    if !(v.is_finite() && v >= 0.0 && v * mult < 86400.0) {
        bail!("invalid duration {s:?}");
    }
    Ok(Duration::from_secs_f64(v * mult))
}

impl MapArgs {
    /// Connects to the map.
    pub fn open(&self) -> Result<Box<dyn MapStore>> {
        if let Some(dir) = self.map.strip_prefix("file:") {
            let s = ferry_map::FileStore::open(std::path::Path::new(dir))?;
            return Ok(Box::new(s));
        }
        if self.map.starts_with("zk://") {
            let mut cfg = ferry_zk::ZkConfig::parse(&self.map)?;
            cfg.connect_timeout = parse_duration(&self.timeout)?;
            cfg.session_timeout = parse_duration(&self.session_timeout)?;
            if let Some(f) = &self.zk_auth_file {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading ZooKeeper credentials {}", f.display()))?;
                let cred = text.trim();
                if !cred.contains(':') || cred.starts_with(':') {
                    bail!("{}: expected one line user:password", f.display());
                }
                cfg.auth = Some(cred.to_string());
            }
            return Ok(Box::new(ferry_zk::ZkStore::connect(cfg)?));
        }
        bail!(
            "invalid map {:?}: expected zk://host:port[/root] or file:/dir",
            self.map
        )
    }
}

#[derive(Subcommand)]
pub enum MapCmd {
    /// Show the map, live nodes, who serves what, and node status.
    Show(JsonArg),
    /// Targets (iSCSI names initiators log in to).
    #[command(subcommand)]
    Target(TargetCmd),
    /// LUNs (volumes exported under a target).
    #[command(subcommand)]
    Lun(LunCmd),
    /// Initiators and the LUNs they may use.
    #[command(subcommand)]
    Initiator(InitiatorCmd),
    /// Gateway nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Migrations executed by the node serving the LUN.
    #[command(subcommand)]
    Migrate(MapMigrateCmd),
}

#[derive(Args)]
pub struct JsonArg {
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum TargetCmd {
    Add(TargetAdd),
    Remove(NameArg),
    List(JsonArg),
}

#[derive(Args)]
pub struct TargetAdd {
    pub iqn: String,
    /// A portal (address:port) to advertise; repeatable.
    #[arg(long = "portal")]
    pub portals: Vec<String>,
    /// Incoming CHAP user.
    #[arg(long, requires = "chap_secret_file")]
    pub chap_user: Option<String>,
    /// File holding the CHAP secret (never given on the command line).
    #[arg(long, requires = "chap_user")]
    pub chap_secret_file: Option<PathBuf>,
    /// Mutual CHAP: the user the target authenticates to initiators as
    /// (needs --chap-user).
    #[arg(long, requires_all = ["mutual_chap_secret_file", "chap_user"])]
    pub mutual_chap_user: Option<String>,
    /// File holding the target's mutual CHAP secret (another secret than
    /// the CHAP one).
    #[arg(long, requires = "mutual_chap_user")]
    pub mutual_chap_secret_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct NameArg {
    pub name: String,
    /// Fail with a conflict unless the document is at this version.
    #[arg(long)]
    pub expect_version: Option<i32>,
}

#[derive(Subcommand)]
pub enum LunCmd {
    Add(LunAdd),
    /// Change a LUN's settings.
    Set(LunSet),
    /// Move a LUN to the first live node of its order (`--to NODE` puts
    /// NODE first): its owner hands it over, closing the volume before
    /// the new node opens it. A node that comes back after a failure does
    /// not take its LUNs back by itself; this does.
    Move(LunMove),
    Remove(NameArg),
    List(JsonArg),
}

#[derive(Args)]
pub struct LunAdd {
    pub name: String,
    #[arg(long)]
    pub target: String,
    /// SCSI LUN number under the target (1-255).
    #[arg(long)]
    pub lun: u32,
    /// Volume spec (file:/path, rbd:pool/image).
    #[arg(long)]
    pub spec: String,
    #[arg(long, default_value = "writethrough")]
    pub cache_mode: String,
    /// Nodes allowed to serve it, most preferred first (comma-separated;
    /// default: any node).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// IOPS and bandwidth limits, e.g. `read-iops=500,write-bps=20M`
    /// (fields read-iops, write-iops, read-bps, write-bps; default none).
    #[arg(long, value_name = "LIMITS")]
    pub qos: Option<String>,
    /// The size the LUN should have (e.g. 20G); the serving node grows a
    /// smaller volume to it. Default: the volume's own.
    #[arg(long)]
    pub size: Option<String>,
}

#[derive(Args)]
pub struct LunSet {
    pub name: String,
    #[arg(long)]
    pub spec: Option<String>,
    #[arg(long)]
    pub cache_mode: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub nodes: Option<Vec<String>>,
    /// New IOPS and bandwidth limits, replacing the old ones
    /// (`read-iops=500,write-bps=20M`; `unlimited` removes them).
    #[arg(long, value_name = "LIMITS")]
    pub qos: Option<String>,
    /// A new size, at least the old one: the serving node grows a smaller
    /// volume to it online; `none` removes it (the volume's own size).
    #[arg(long)]
    pub size: Option<String>,
    #[arg(long)]
    pub expect_version: Option<i32>,
}

#[derive(Args)]
pub struct LunMove {
    pub name: String,
    /// The node to move it to (must be permitted: in its node list, or
    /// any node when the list is empty).
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long)]
    pub expect_version: Option<i32>,
}

#[derive(Subcommand)]
pub enum InitiatorCmd {
    /// Add an initiator (optionally with LUNs).
    Add(InitiatorAdd),
    /// Let an initiator use a LUN.
    Map(InitiatorLun),
    /// Stop an initiator using a LUN.
    Unmap(InitiatorLun),
    Remove(NameArg),
    List(JsonArg),
}

#[derive(Args)]
pub struct InitiatorAdd {
    pub iqn: String,
    #[arg(long = "lun")]
    pub luns: Vec<String>,
}

#[derive(Args)]
pub struct InitiatorLun {
    pub iqn: String,
    pub lun: String,
}

#[derive(Subcommand)]
pub enum NodeCmd {
    Add(NodeAdd),
    Remove(NameArg),
    List(JsonArg),
}

#[derive(Args)]
pub struct NodeAdd {
    pub name: String,
    /// Where the node's target listens (address:port).
    #[arg(long)]
    pub portal: String,
    #[arg(long, default_value = "tgt")]
    pub frontend: String,
    /// The node's ALUA target port group id (1-65535); by default a hash
    /// of its name. Set it only when two nodes' names collide.
    #[arg(long)]
    pub port_group: Option<u16>,
}

#[derive(Subcommand)]
pub enum MapMigrateCmd {
    /// Ask the serving node to migrate a LUN's volume to a new one.
    Start(MigrateStart),
    Pause(LunArg),
    Resume(LunArg),
    /// Copier rate limit per second (e.g. 100M) or `unlimited`.
    Rate(MigrateRate),
    Abort(LunArg),
    Commit(MigrateCommit),
    /// Show the serving node's report.
    Status(MigrateStatus),
}

#[derive(Args)]
pub struct LunArg {
    pub lun: String,
}

#[derive(Args)]
pub struct MigrateStart {
    pub lun: String,
    /// The new volume (spec) to create and migrate to.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub rate: Option<String>,
}

#[derive(Args)]
pub struct MigrateRate {
    pub lun: String,
    pub rate: String,
}

#[derive(Args)]
pub struct MigrateCommit {
    pub lun: String,
    #[arg(long)]
    pub remove_source: bool,
}

#[derive(Args)]
pub struct MigrateStatus {
    pub lun: String,
    #[arg(long)]
    pub json: bool,
    /// Wait until the serving node has executed the latest request (and,
    /// with `--until`, until the migration reaches that state).
    #[arg(long)]
    pub wait: bool,
    /// copied, committed or aborted.
    #[arg(long)]
    pub until: Option<String>,
    /// Give up waiting after this long, e.g. 10m.
    #[arg(long, default_value = "1h")]
    pub wait_timeout: String,
}

fn check_expect(
    snap: &Snapshot,
    kind: Kind,
    name: &str,
    expect: Option<i32>,
) -> Result<(), MapError> {
    match (expect, snap.doc_version(kind, name)) {
        (Some(e), Some(a)) if e != a => Err(MapError::Conflict {
            what: format!("{kind} {name}"),
            expected: e,
            actual: a,
        }),
        _ => Ok(()),
    }
}

fn not_found(kind: Kind, name: &str) -> MapError {
    MapError::NotFound {
        kind,
        name: name.to_string(),
    }
}

fn exists(kind: Kind, name: &str) -> MapError {
    MapError::Exists {
        kind,
        name: name.to_string(),
    }
}

/// Runs an edit and prints its outcome.
fn commit(
    store: &dyn MapStore,
    what: &str,
    change: impl FnMut(&Snapshot, &mut ClusterMap) -> Result<(), MapError>,
) -> Result<()> {
    let v = edit(store, change)?;
    println!("{what} (map version {v})");
    Ok(())
}

fn remove_refs(m: &mut ClusterMap, lun: &str) {
    for i in m.initiators.values_mut() {
        i.luns.remove(lun);
    }
}

pub fn run(args: &MapArgs, cmd: MapCmd) -> Result<()> {
    let store = args.open()?;
    let store = store.as_ref();
    match cmd {
        MapCmd::Show(j) => show(store, j.json),
        MapCmd::Target(TargetCmd::Add(a)) => {
            let credential = |user: &Option<String>, file: &Option<PathBuf>| -> Result<_> {
                Ok(match (user, file) {
                    (Some(user), Some(f)) => Some(ChapCredential {
                        user: user.clone(),
                        password: std::fs::read_to_string(f)
                            .with_context(|| format!("reading CHAP secret {}", f.display()))?
                            .trim()
                            .to_string(),
                    }),
                    _ => None,
                })
            };
            let t = Target {
                iqn: a.iqn.clone(),
                portals: a.portals.clone(),
                chap: credential(&a.chap_user, &a.chap_secret_file)?,
                mutual_chap: credential(&a.mutual_chap_user, &a.mutual_chap_secret_file)?,
            };
            t.validate()?;
            commit(store, &format!("added target {}", a.iqn), |_, m| {
                if m.targets.contains_key(&t.iqn) {
                    return Err(exists(Kind::Target, &t.iqn));
                }
                m.targets.insert(t.iqn.clone(), t.clone());
                Ok(())
            })
        }
        MapCmd::Target(TargetCmd::Remove(n)) => {
            commit(store, &format!("removed target {}", n.name), |s, m| {
                check_expect(s, Kind::Target, &n.name, n.expect_version)?;
                m.targets
                    .remove(&n.name)
                    .ok_or_else(|| not_found(Kind::Target, &n.name))?;
                if let Some(l) = m.luns.values().find(|l| l.target == n.name) {
                    return Err(MapError::invalid(format!(
                        "target {} still exports LUN {}; remove its LUNs first",
                        n.name, l.name
                    )));
                }
                Ok(())
            })
        }
        MapCmd::Lun(LunCmd::Add(a)) => {
            let cache_mode: CacheMode = a.cache_mode.parse().map_err(anyhow::Error::msg)?;
            let spec = ferry_host::VolumeSpec::parse(&a.spec)?.to_string();
            let lun = Lun {
                name: a.name.clone(),
                target: a.target.clone(),
                lun: a.lun,
                spec,
                cache_mode,
                nodes: a.nodes.clone(),
                order_seq: 0,
                qos: a
                    .qos
                    .as_deref()
                    .map(crate::qos::parse_list)
                    .transpose()?
                    .unwrap_or_default(),
                size: a.size.as_deref().map(parse_lun_size).transpose()?.flatten(),
            };
            lun.validate()?;
            commit(store, &format!("added LUN {}", a.name), |_, m| {
                if m.luns.contains_key(&lun.name) {
                    return Err(exists(Kind::Lun, &lun.name));
                }
                m.luns.insert(lun.name.clone(), lun.clone());
                Ok(())
            })
        }
        MapCmd::Lun(LunCmd::Set(a)) => {
            let cache_mode = a
                .cache_mode
                .as_deref()
                .map(|c| c.parse::<CacheMode>().map_err(anyhow::Error::msg))
                .transpose()?;
            let spec = a
                .spec
                .as_deref()
                .map(|s| ferry_host::VolumeSpec::parse(s).map(|s| s.to_string()))
                .transpose()?;
            let qos = a.qos.as_deref().map(crate::qos::parse_list).transpose()?;
            let size = a.size.as_deref().map(parse_lun_size).transpose()?;
            commit(store, &format!("changed LUN {}", a.name), |s, m| {
                check_expect(s, Kind::Lun, &a.name, a.expect_version)?;
                let l = m
                    .luns
                    .get_mut(&a.name)
                    .ok_or_else(|| not_found(Kind::Lun, &a.name))?;
                if let Some(sp) = &spec {
                    l.spec = sp.clone();
                }
                if let Some(c) = cache_mode {
                    l.cache_mode = c;
                }
                if let Some(q) = qos {
                    l.qos = q;
                }
                if let Some(sz) = size {
                    if let (Some(new), Some(was)) = (sz, l.size) {
                        if new < was {
                            return Err(MapError::invalid(format!(
                                "LUN {}: the map only grows a LUN ({new} bytes is less than {was}); \
                                 to shrink it, `--size none`, then `ferry volume resize --force` \
                                 where it is served",
                                l.name
                            )));
                        }
                    }
                    l.size = sz;
                }
                if let Some(n) = a.nodes.as_ref().filter(|n| **n != l.nodes) {
                    l.nodes = n.clone();
                    // A new order: the owner hands the LUN to its first
                    // live node.
                    l.order_seq += 1;
                }
                Ok(())
            })
        }
        MapCmd::Lun(LunCmd::Move(a)) => {
            let to =
                a.to.as_deref()
                    .map(|t| format!(" to {t}"))
                    .unwrap_or_default();
            commit(
                store,
                &format!("asked to move LUN {}{to}", a.name),
                |s, m| {
                    check_expect(s, Kind::Lun, &a.name, a.expect_version)?;
                    let known: Vec<String> = m.nodes.keys().cloned().collect();
                    let l = m
                        .luns
                        .get_mut(&a.name)
                        .ok_or_else(|| not_found(Kind::Lun, &a.name))?;
                    if let Some(to) = &a.to {
                        if l.nodes.is_empty() {
                            if !known.contains(to) {
                                return Err(not_found(Kind::Node, to));
                            }
                            // Any node may serve it: the order becomes `to`
                            // first, then the others by name.
                            l.nodes = known;
                        }
                        let Some(at) = l.nodes.iter().position(|n| n == to) else {
                            return Err(ferry_map::MapError::invalid(format!(
                                "node {to} may not serve LUN {} (its nodes: {})",
                                a.name,
                                l.nodes.join(",")
                            )));
                        };
                        let n = l.nodes.remove(at);
                        l.nodes.insert(0, n);
                    }
                    l.order_seq += 1;
                    Ok(())
                },
            )
        }
        MapCmd::Lun(LunCmd::Remove(n)) => {
            commit(store, &format!("removed LUN {}", n.name), |s, m| {
                check_expect(s, Kind::Lun, &n.name, n.expect_version)?;
                m.luns
                    .remove(&n.name)
                    .ok_or_else(|| not_found(Kind::Lun, &n.name))?;
                remove_refs(m, &n.name);
                Ok(())
            })
        }
        MapCmd::Initiator(InitiatorCmd::Add(a)) => {
            ferry_map::schema::check_iqn(&a.iqn)?;
            commit(store, &format!("added initiator {}", a.iqn), |_, m| {
                if m.initiators.contains_key(&a.iqn) {
                    return Err(exists(Kind::Initiator, &a.iqn));
                }
                m.initiators.insert(
                    a.iqn.clone(),
                    Initiator {
                        iqn: a.iqn.clone(),
                        luns: a.luns.iter().cloned().collect::<BTreeSet<_>>(),
                    },
                );
                Ok(())
            })
        }
        MapCmd::Initiator(InitiatorCmd::Map(a)) => commit(
            store,
            &format!("mapped LUN {} to {}", a.lun, a.iqn),
            |_, m| {
                if !m.luns.contains_key(&a.lun) {
                    return Err(not_found(Kind::Lun, &a.lun));
                }
                let i = m
                    .initiators
                    .get_mut(&a.iqn)
                    .ok_or_else(|| not_found(Kind::Initiator, &a.iqn))?;
                i.luns.insert(a.lun.clone());
                Ok(())
            },
        ),
        MapCmd::Initiator(InitiatorCmd::Unmap(a)) => commit(
            store,
            &format!("unmapped LUN {} from {}", a.lun, a.iqn),
            |_, m| {
                let i = m
                    .initiators
                    .get_mut(&a.iqn)
                    .ok_or_else(|| not_found(Kind::Initiator, &a.iqn))?;
                if !i.luns.remove(&a.lun) {
                    return Err(MapError::invalid(format!(
                        "LUN {} is not mapped to {}",
                        a.lun, a.iqn
                    )));
                }
                Ok(())
            },
        ),
        MapCmd::Initiator(InitiatorCmd::Remove(n)) => {
            commit(store, &format!("removed initiator {}", n.name), |s, m| {
                check_expect(s, Kind::Initiator, &n.name, n.expect_version)?;
                m.initiators
                    .remove(&n.name)
                    .ok_or_else(|| not_found(Kind::Initiator, &n.name))?;
                Ok(())
            })
        }
        MapCmd::Node(NodeCmd::Add(a)) => {
            let frontend = match a.frontend.as_str() {
                "tgt" => Frontend::Tgt,
                "lio" => Frontend::Lio,
                f => bail!("unknown frontend {f:?} (tgt or lio)"),
            };
            let n = Node {
                name: a.name.clone(),
                portal: a.portal.clone(),
                frontend,
                port_group: a.port_group,
            };
            n.validate()?;
            commit(store, &format!("added node {}", a.name), |_, m| {
                if m.nodes.contains_key(&n.name) {
                    return Err(exists(Kind::Node, &n.name));
                }
                m.nodes.insert(n.name.clone(), n.clone());
                Ok(())
            })
        }
        MapCmd::Node(NodeCmd::Remove(n)) => {
            commit(store, &format!("removed node {}", n.name), |s, m| {
                check_expect(s, Kind::Node, &n.name, n.expect_version)?;
                m.nodes
                    .remove(&n.name)
                    .ok_or_else(|| not_found(Kind::Node, &n.name))?;
                Ok(())
            })
        }
        MapCmd::Target(TargetCmd::List(j)) => {
            list(store, j.json, |m| serde_json::to_value(masked(m).targets))
        }
        MapCmd::Lun(LunCmd::List(j)) => list(store, j.json, |m| serde_json::to_value(&m.luns)),
        MapCmd::Initiator(InitiatorCmd::List(j)) => {
            list(store, j.json, |m| serde_json::to_value(&m.initiators))
        }
        MapCmd::Node(NodeCmd::List(j)) => list(store, j.json, |m| serde_json::to_value(&m.nodes)),
        MapCmd::Migrate(c) => migrate(store, c),
    }
}

/// A map LUN's `--size`: a size, or `none` (the volume's own).
fn parse_lun_size(s: &str) -> Result<Option<u64>> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    crate::units::parse_size(s).map(Some)
}

/// The map with CHAP secrets replaced, for display.
fn masked(m: &ClusterMap) -> ClusterMap {
    let mut m = m.clone();
    for t in m.targets.values_mut() {
        for c in [&mut t.chap, &mut t.mutual_chap].into_iter().flatten() {
            c.password = "********".into();
        }
    }
    m
}

fn list(
    store: &dyn MapStore,
    json: bool,
    pick: impl Fn(&ClusterMap) -> serde_json::Result<serde_json::Value>,
) -> Result<()> {
    let snap = store.snapshot()?;
    let v = pick(&snap.map)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if let Some(o) = v.as_object() {
        for (k, v) in o {
            println!("{k}  {}", serde_json::to_string(v)?);
        }
    }
    Ok(())
}

fn show(store: &dyn MapStore, json: bool) -> Result<()> {
    let s = store.snapshot()?;
    if json {
        let v = serde_json::json!({
            "store": store.describe(),
            "version": s.version,
            "map": masked(&s.map),
            "live": s.live,
            "owners": s.owners,
            "status": s.status,
            "migrations": s.migrations.iter().map(|(k, (r, _))| (k.clone(), r.clone())).collect::<std::collections::BTreeMap<_, _>>(),
            "migration_status": s.migration_status,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("map {} at version {}", store.describe(), s.version);
    for n in s.map.nodes.values() {
        let live = if s.live.contains_key(&n.name) {
            "up"
        } else {
            "DOWN"
        };
        let st = s.status.get(&n.name);
        println!(
            "node {:<12} {:<22} {live:<4} applied v{} serving [{}]{}",
            n.name,
            n.portal,
            st.map_or(-1, |st| st.applied_version),
            st.map(|st| st.serving.join(",")).unwrap_or_default(),
            st.filter(|st| !st.errors.is_empty())
                .map(|st| format!(" errors: {:?}", st.errors))
                .unwrap_or_default()
        );
    }
    for t in s.map.targets.values() {
        println!(
            "target {}{}",
            t.iqn,
            match (&t.chap, &t.mutual_chap) {
                (Some(_), Some(_)) => " (mutual CHAP)",
                (Some(_), None) => " (CHAP)",
                _ => "",
            }
        );
        for l in s.map.luns.values().filter(|l| l.target == t.iqn) {
            println!(
                "  lun {:>3} {:<16} {} cache={} nodes=[{}] served-by={}",
                l.lun,
                l.name,
                l.spec,
                l.cache_mode,
                l.nodes.join(","),
                s.owners.get(&l.name).map(String::as_str).unwrap_or("-")
            );
        }
    }
    for i in s.map.initiators.values() {
        println!(
            "initiator {} -> [{}]",
            i.iqn,
            i.luns.iter().cloned().collect::<Vec<_>>().join(",")
        );
    }
    Ok(())
}

fn migrate(store: &dyn MapStore, cmd: MapMigrateCmd) -> Result<()> {
    let (lun, action) = match cmd {
        MapMigrateCmd::Status(a) => return migrate_status(store, &a),
        MapMigrateCmd::Start(a) => {
            let target = ferry_host::VolumeSpec::parse(&a.to)?.to_string();
            let rate = a.rate.as_deref().map(parse_rate).transpose()?.flatten();
            (a.lun, MigrationAction::Start { target, rate })
        }
        MapMigrateCmd::Pause(a) => (a.lun, MigrationAction::Pause),
        MapMigrateCmd::Resume(a) => (a.lun, MigrationAction::Resume),
        MapMigrateCmd::Rate(a) => (
            a.lun,
            MigrationAction::Rate {
                rate: parse_rate(&a.rate)?,
            },
        ),
        MapMigrateCmd::Abort(a) => (a.lun, MigrationAction::Abort),
        MapMigrateCmd::Commit(a) => (
            a.lun,
            MigrationAction::Commit {
                remove_source: a.remove_source,
            },
        ),
    };
    let snap = store.snapshot()?;
    if !snap.map.luns.contains_key(&lun) {
        return Err(not_found(Kind::Lun, &lun).into());
    }
    let (seq, expect) = match snap.migrations.get(&lun) {
        Some((r, v)) => (r.seq + 1, Some(*v)),
        None => (1, None),
    };
    store.request_migration(
        &lun,
        &MigrationRequest {
            seq,
            action: action.clone(),
        },
        expect,
    )?;
    println!(
        "requested {} for LUN {lun} (request {seq}); served by {}",
        serde_json::to_value(&action)?["action"]
            .as_str()
            .unwrap_or("?"),
        snap.owners
            .get(&lun)
            .map(String::as_str)
            .unwrap_or("no node yet")
    );
    Ok(())
}

fn migrate_status(store: &dyn MapStore, a: &MigrateStatus) -> Result<()> {
    if let Some(u) = &a.until {
        if !["copying", "copied", "committed", "aborting", "aborted"].contains(&u.as_str()) {
            bail!("--until takes copied, committed or aborted, not {u:?}");
        }
    }
    let deadline = Instant::now() + parse_duration(&a.wait_timeout)?;
    loop {
        let s = store.snapshot()?;
        if !s.map.luns.contains_key(&a.lun) {
            return Err(not_found(Kind::Lun, &a.lun).into());
        }
        let req = s.migrations.get(&a.lun).map(|(r, _)| r.clone());
        let st = s.migration_status.get(&a.lun).cloned();
        let executed = match (&req, &st) {
            (Some(r), Some(st)) => st.done_seq >= r.seq,
            (None, _) => true,
            _ => false,
        };
        let state = st.as_ref().and_then(|st| st.state.clone());
        let reached = match &a.until {
            None => true,
            Some(u) => state.as_deref() == Some(u.as_str()),
        };
        if !a.wait
            || (executed && reached)
            || st.as_ref().is_some_and(|s| s.error.is_some() && executed)
        {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "lun": a.lun,
                        "request": req,
                        "status": st,
                        "served_by": s.owners.get(&a.lun),
                    }))?
                );
            } else {
                match (&req, &st) {
                    (None, _) => println!("LUN {}: no migration requested", a.lun),
                    (Some(r), st) => {
                        println!("LUN {}: request {} {:?}", a.lun, r.seq, r.action);
                        if let Some(st) = st {
                            println!(
                                "  executed up to request {} on node {}",
                                st.done_seq, st.node
                            );
                            if let Some(e) = &st.error {
                                println!("  error: {e}");
                            }
                            if let Some(state) = &st.state {
                                println!("  {state}");
                            }
                            if let Some(p) = &st.progress {
                                println!(
                                    "  {} {} of {}",
                                    p["state"].as_str().unwrap_or("?"),
                                    human(p["bytes_done"].as_u64().unwrap_or(0)),
                                    human(p["bytes_total"].as_u64().unwrap_or(0))
                                );
                            }
                        }
                    }
                }
            }
            if let Some(e) = st.and_then(|s| s.error) {
                if executed {
                    bail!("the serving node reported: {e}");
                }
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for the migration of {}", a.lun);
        }
        store.wait(Duration::from_secs(1))?;
    }
}
