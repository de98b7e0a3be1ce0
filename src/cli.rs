//! The command line (SPEC §1). Flags become a `Config`, or overrides of the one read from
//! `--config`; the overrides are kept and applied again on every reload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{
    self, BackendConfig, BackendUrl, Config, DEFAULT_UPSTREAM, HashKey, HealthConfig,
    ListenerConfig, MAX_WEIGHT, StrategyKind, UpstreamConfig,
};
use crate::telemetry::LogFormat;

/// Default listener when there is no config file.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "An HTTP load-balancing reverse proxy",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a configuration file: exit 0, or 1 with FILE:LINE:COL: message per error
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Start local demo backends, the balancer and the admin dashboard
    Demo {
        /// Number of demo backends
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
        backends: u16,
        /// Balancer address
        #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
        listen: SocketAddr,
        /// Admin API and dashboard address
        #[arg(long, default_value = "127.0.0.1:9901", value_name = "ADDR")]
        admin: SocketAddr,
        /// One log line per request; off: one summary line per second of traffic
        #[arg(long, value_enum, default_value_t = OnOff::Off)]
        access_log: OnOff,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// TOML configuration file
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Plain-HTTP listener, repeatable (default 127.0.0.1:8080 without a config file)
    #[arg(short, long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Backend of the default upstream, repeatable: host:port, http://host:port or
    /// https://host:port, optionally followed by ",weight=N" and/or ",backup"
    #[arg(short, long, value_name = "URL[,weight=N]", value_parser = parse_backend)]
    pub backend: Vec<BackendConfig>,
    /// Balancing strategy of the default upstream
    #[arg(short, long, value_name = "NAME", value_parser = strategy_parser())]
    pub strategy: Option<StrategyKind>,
    /// Key for consistent_hash: client_ip, header:NAME, cookie:NAME, path, query:NAME
    #[arg(long, value_name = "KEY", value_parser = HashKey::parse)]
    pub hash_key: Option<HashKey>,
    /// Turn on active HTTP health checks at PATH
    #[arg(long, value_name = "PATH", value_parser = parse_health_path)]
    pub health_path: Option<String>,
    /// Interval of the health checks (default 5s)
    #[arg(long, value_name = "DURATION", value_parser = config::units::parse_duration)]
    pub health_interval: Option<Duration>,
    /// Serve the admin API and dashboard at ADDR
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Worker threads (default: number of CPU cores)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Access and event log format on stdout
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// One log line per request
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub access_log: OnOff,

    /// Unix socket for handing the listeners to a new process (SPEC §7)
    #[arg(long, value_name = "PATH")]
    pub upgrade_socket: Option<PathBuf>,

    /// Take over the listeners of the sluice running on the upgrade socket
    #[arg(long)]
    pub upgrade: bool,
}

/// The strategy names as clap's possible values, so `--help` and errors list them.
fn strategy_parser() -> impl clap::builder::TypedValueParser<Value = StrategyKind> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(StrategyKind::ALL.map(|k| k.as_str())).try_map(
        |s: String| StrategyKind::parse(&s).ok_or_else(|| format!("unknown strategy \"{s}\"")),
    )
}

fn parse_health_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        Ok(s.to_owned())
    } else {
        Err("the health check path must start with '/'".into())
    }
}

/// `URL[,weight=N][,backup]`
pub fn parse_backend(s: &str) -> Result<BackendConfig, String> {
    let mut parts = s.split(',');
    let url = BackendUrl::parse(parts.next().unwrap_or_default().trim())?;
    let mut b = BackendConfig {
        url,
        weight: 1,
        backup: false,
    };
    for opt in parts {
        match opt.trim().split_once('=') {
            Some(("weight", w)) => {
                b.weight = w
                    .parse::<u32>()
                    .ok()
                    .filter(|w| (1..=MAX_WEIGHT).contains(w))
                    .ok_or_else(|| {
                        format!("weight \"{w}\" is not a whole number from 1 to {MAX_WEIGHT}")
                    })?;
            }
            None if opt.trim() == "backup" => b.backup = true,
            _ => {
                return Err(format!(
                    "unknown backend option \"{opt}\"; expected weight=N or backup"
                ));
            }
        }
    }
    Ok(b)
}

impl RunArgs {
    /// The configuration to run: the file's (if any) with these flags applied.
    pub fn to_config(&self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => config::load(path).map_err(|e| match e {
                config::LoadError::Invalid(errs) => first_problem(&errs),
                other => other.to_string(),
            })?,
            None => {
                if self.backend.is_empty() {
                    return Err(
                        "no backends: pass --backend HOST:PORT (repeatable) or --config FILE"
                            .into(),
                    );
                }
                Config {
                    server: Default::default(),
                    listeners: vec![ListenerConfig::plain(
                        DEFAULT_LISTEN.parse().map_err(|_| "bad default listener")?,
                    )],
                    admin: None,
                    limits: Default::default(),
                    routes: Vec::new(),
                    upstreams: Vec::new(),
                    telemetry: Default::default(),
                }
            }
        };
        self.apply(&mut config).map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// Applies these flags to `config` (also after every reload).
    pub fn apply(&self, config: &mut Config) -> Result<(), FlagError> {
        if !self.listen.is_empty() {
            config.listeners = self
                .listen
                .iter()
                .map(|&address| ListenerConfig::plain(address))
                .collect();
        }
        if let Some(address) = self.admin {
            let (token, debug_from) = config
                .admin
                .take()
                .map(|a| (a.token, a.debug_from))
                .unwrap_or_default();
            config.admin = Some(config::AdminConfig {
                address,
                token,
                debug_from,
            });
        }
        if let Some(w) = self.workers {
            config.server.workers = Some(usize::from(w));
        }
        if let Some(path) = &self.upgrade_socket {
            config.server.upgrade_socket = Some(path.clone());
        }
        let touches_upstream = !self.backend.is_empty()
            || self.strategy.is_some()
            || self.hash_key.is_some()
            || self.health_path.is_some()
            || self.health_interval.is_some();
        if !touches_upstream {
            return Ok(());
        }
        let i = match config
            .upstreams
            .iter()
            .position(|u| u.name == DEFAULT_UPSTREAM)
        {
            Some(i) => i,
            None if config.upstreams.len() == 1 => 0,
            None if config.upstreams.is_empty() => {
                config
                    .upstreams
                    .push(UpstreamConfig::with_defaults(DEFAULT_UPSTREAM, Vec::new()));
                0
            }
            None => return Err(FlagError::NoDefaultUpstream),
        };
        let up = &mut config.upstreams[i];
        // The admin API refuses a backend it already has (409); so do the flags.
        for (i, b) in self.backend.iter().enumerate() {
            let id = b.url.id();
            if self.backend[..i].iter().any(|a| a.url.id() == id) {
                return Err(FlagError::DuplicateBackend(id));
            }
        }
        if !self.backend.is_empty() {
            up.backends = self.backend.clone();
        }
        if let Some(s) = self.strategy {
            up.strategy = s;
        }
        if let Some(k) = &self.hash_key {
            up.hash_key = k.clone();
        }
        if let Some(p) = &self.health_path {
            let h = up.health.get_or_insert_with(HealthConfig::default);
            h.path = Some(p.clone());
        }
        if let Some(d) = self.health_interval {
            match up.health.as_mut() {
                Some(h) => h.interval = d,
                None => return Err(FlagError::IntervalWithoutChecks),
            }
        }
        Ok(())
    }
}

/// Flags that cannot apply to the configuration.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error(
        "--backend, --strategy, --hash-key and --health-* apply to the upstream named \"{DEFAULT_UPSTREAM}\", and the config has several upstreams but none of that name"
    )]
    NoDefaultUpstream,
    #[error(
        "--backend {0} is given twice; each backend may be named once (use weight=N for a larger share)"
    )]
    DuplicateBackend(String),
    #[error("--health-interval needs --health-path or a [upstream.X.health] section")]
    IntervalWithoutChecks,
}

impl RunArgs {
    /// Flags given that have no effect on `config` (the result of `to_config`): worth
    /// a warning, since the user meant something by them.
    pub fn warnings(&self, config: &Config) -> Vec<String> {
        let mut out = Vec::new();
        let hashing = config
            .upstreams
            .iter()
            .any(|u| u.strategy == StrategyKind::ConsistentHash);
        if self.hash_key.is_some() && !hashing {
            out.push(
                "--hash-key has no effect: the upstream's strategy is not consistent_hash (add --strategy consistent_hash)"
                    .to_owned(),
            );
        }
        out
    }
}

/// The one line printed when a config file is invalid at startup.
fn first_problem(errs: &config::ConfigErrors) -> String {
    let lines = errs.lines();
    match lines.len() {
        0 => "invalid configuration".into(),
        1 => lines[0].clone(),
        n => format!(
            "{} ({} more problems; `sluice check -c FILE` lists them all)",
            lines[0],
            n - 1
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_flag_takes_weight_and_backup() {
        let b = parse_backend("127.0.0.1:9000,weight=3").unwrap();
        assert_eq!((b.url.port, b.weight, b.backup), (9000, 3, false));
        let b = parse_backend("http://localhost:80,backup").unwrap();
        assert!(b.backup);
        assert!(parse_backend("127.0.0.1:9000,weight=0").is_err());
        assert!(parse_backend("127.0.0.1:9000,color=red").is_err());
        assert!(parse_backend("ftp://x:1").is_err());
    }

    #[test]
    fn flags_alone_make_a_default_upstream() {
        let cli = Cli::try_parse_from([
            "sluice",
            "-b",
            "127.0.0.1:9001",
            "-b",
            "127.0.0.1:9002,weight=2",
            "-s",
            "least_conn",
        ])
        .unwrap();
        let c = cli.run.to_config().unwrap();
        assert_eq!(c.listeners[0].address.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.upstreams[0].name, DEFAULT_UPSTREAM);
        assert_eq!(c.upstreams[0].strategy, StrategyKind::LeastConn);
        assert_eq!(c.upstreams[0].backends[1].weight, 2);
    }

    #[test]
    fn the_same_backend_twice_is_refused() {
        let cli = Cli::try_parse_from([
            "sluice",
            "-b",
            "127.0.0.1:9001",
            "-b",
            "http://127.0.0.1:9001",
        ])
        .unwrap();
        let e = cli.run.to_config().unwrap_err();
        assert!(e.contains("127.0.0.1:9001 is given twice"), "{e}");
    }

    #[test]
    fn a_hash_key_without_consistent_hash_is_a_warning() {
        let cli =
            Cli::try_parse_from(["sluice", "-b", "127.0.0.1:9001", "--hash-key", "path"]).unwrap();
        let c = cli.run.to_config().unwrap();
        assert_eq!(cli.run.warnings(&c).len(), 1);
        let cli = Cli::try_parse_from([
            "sluice",
            "-b",
            "127.0.0.1:9001",
            "--hash-key",
            "path",
            "-s",
            "consistent_hash",
        ])
        .unwrap();
        let c = cli.run.to_config().unwrap();
        assert!(cli.run.warnings(&c).is_empty());
    }

    #[test]
    fn help_lists_the_strategies() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for k in StrategyKind::ALL {
            assert!(help.contains(k.as_str()), "{}: {help}", k.as_str());
        }
        let e = Cli::try_parse_from(["sluice", "-s", "fastest"]).unwrap_err();
        assert!(e.to_string().contains("least_conn"), "{e}");
    }

    #[test]
    fn no_backend_and_no_config_is_an_error() {
        let cli = Cli::try_parse_from(["sluice"]).unwrap();
        assert!(cli.run.to_config().unwrap_err().contains("--backend"));
    }
}
