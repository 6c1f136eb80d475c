//! The `storepulse` command line: argument parsing and dispatch to the subcommands.
//!
//! Every option also reads an environment variable (`STOREPULSE_…`), listed in `--help` and
//! in the README. Parsing is pure; `run` is the only part that does anything.

use crate::app;
use crate::checkpoint::CheckpointStore;
use crate::config::Settings;
use crate::events::{Codec, ConfluentIds};
use crate::kafka::{self, KafkaSettings, Topics};
use crate::simulate::scenario::{FlashSale, Popularity, ScenarioConfig};
use crate::simulate::{self, SimulateOptions};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// storepulse: live e-commerce operations from Kafka event streams.
#[derive(Debug, Parser)]
#[command(name = "storepulse", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The `service.name` of this process's traces (unless `OTEL_SERVICE_NAME` says).
    pub fn service_name(&self) -> &'static str {
        match self.command {
            Command::Simulate(_) => "storepulse-simulate",
            Command::Serve(_) => "storepulse",
            Command::Aggregator(_) => "storepulse-aggregator",
            Command::Edge(_) => "storepulse-edge",
            Command::Replay(_) => "storepulse-replay",
            Command::Route(_) => "storepulse-route",
            Command::Schemas(_) | Command::Migrate(_) | Command::Config(_) | Command::Token(_) => {
                "storepulse-cli"
            }
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Produce realistic flash-sale traffic (orders, stock, sessions) to Kafka.
    Simulate(Box<SimulateArgs>),
    /// List the event schemas with their wire fingerprints and Confluent registry ids.
    Schemas(SchemasArgs),
    /// Consume the topics into live aggregates, checkpoint them, serve the HTTP API.
    Serve(ConfigArgs),
    /// A cluster's aggregator: owns slices of whole stores through a Kafka consumer group
    /// and publishes their frames in transactions (docs/operations.md, "Scaling out").
    Aggregator(ConfigArgs),
    /// A cluster's edge: serves dashboards from the frames the aggregators publish; any
    /// edge resumes any event id.
    Edge(ConfigArgs),
    /// Apply the checkpoint store's database migrations.
    Migrate(ConfigArgs),
    /// Sign a bearer token with the configured HS256 secret (auth.hs256_secret), for a
    /// dashboard user or an API client.
    Token(TokenArgs),
    /// Print the effective configuration (defaults, file, environment) as TOML, secrets
    /// masked, and which variable set what.
    Config(ConfigArgs),
    /// Read the topics again (read-only) through serve's own decode and apply: a snapshot as
    /// of a time or position, or a timeline of the numbers.
    Replay(Box<ReplayArgs>),
    /// A cluster's re-keying stage: copies three source topics into the configured ones
    /// keyed by store id, exactly once (docs/operations.md, "Scaling out").
    Route(Box<RouteArgs>),
}

/// Options of `storepulse route`.
#[derive(Debug, Args)]
pub struct RouteArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The source of the orders topic (records keyed any way).
    #[arg(long, env = "STOREPULSE_ROUTE_ORDERS_FROM")]
    orders_from: String,
    /// The source of the inventory topic.
    #[arg(long, env = "STOREPULSE_ROUTE_INVENTORY_FROM")]
    inventory_from: String,
    /// The source of the activity topic.
    #[arg(long, env = "STOREPULSE_ROUTE_ACTIVITY_FROM")]
    activity_from: String,
    /// The routes' consumer group (their committed offsets).
    #[arg(
        long,
        env = "STOREPULSE_ROUTE_GROUP",
        default_value = "storepulse-route"
    )]
    group: String,
    /// This instance's transactional id: one per instance, the same across its restarts
    /// (e.g. a StatefulSet pod's name).
    #[arg(
        long,
        env = "STOREPULSE_ROUTE_TRANSACTIONAL_ID",
        default_value = "storepulse-route-0"
    )]
    transactional_id: String,
    /// Most records in one transaction.
    #[arg(long, env = "STOREPULSE_ROUTE_BATCH", default_value_t = 5_000)]
    batch: usize,
}

/// Options of `storepulse token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The stores it may read: comma-separated ids, or * for every store and the rollup.
    #[arg(long)]
    stores: String,
    /// viewer (snapshots and streams), analyst (also replays) or operator (also /metrics).
    #[arg(long, default_value = "viewer", value_parser = ["viewer", "analyst", "operator"])]
    role: String,
    /// How long it is valid (e.g. 8h, 30m).
    #[arg(long, default_value = "8h", value_parser = parse_duration)]
    ttl: Duration,
    /// Its subject (`sub`): who it is for; per-subject stream limits count by it. Default:
    /// `token-` and 16 random hex digits, a subject of its own.
    #[arg(long, default_value = "")]
    subject: String,
}

/// Options of `storepulse replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Start of the rows, by record time: RFC 3339 (2026-11-27T14:00:00Z), a duration back
    /// from now (-2h), or now. Required: the state before it is rebuilt (warm-up), not
    /// printed.
    #[arg(
        long,
        allow_hyphen_values = true,
        required_unless_present = "from_position",
        conflicts_with = "from_position"
    )]
    from: Option<String>,
    /// Start of the rows at a position instead: an SSE event id or a snapshot's
    /// `position`; the first row is exactly there, later steps count from the time of the
    /// newest record before it.
    #[arg(long)]
    from_position: Option<String>,
    /// End of the range, by record time (records before it) [default: now].
    #[arg(long, allow_hyphen_values = true, conflicts_with = "to_position")]
    to: Option<String>,
    /// End of the range as a position: an SSE event id or a snapshot's `position`.
    #[arg(long)]
    to_position: Option<String>,
    /// One snapshot, the JSON of /api/snapshot, as of this time: the same as --to with no
    /// --every.
    #[arg(long, allow_hyphen_values = true, conflicts_with_all = ["to", "to_position", "every"])]
    as_of: Option<String>,
    /// A timeline: the rows of every store and the rollup at --from, every this long
    /// (e.g. 1m), and at --to.
    #[arg(long, value_parser = parse_duration)]
    every: Option<Duration>,
    /// Only this store (no rollup rows).
    #[arg(long)]
    store: Option<String>,
    /// Timeline format: csv or jsonl.
    #[arg(long, default_value = "csv", value_parser = ["csv", "jsonl"])]
    format: String,
    /// Write to this file instead of stdout.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Print the resolved offsets and what would be read, then stop.
    #[arg(long)]
    dry_run: bool,
    /// No progress bar and no summary on stderr.
    #[arg(long)]
    quiet: bool,
    /// Instead of rows: every alert raised or cleared, at the first step it was (no longer)
    /// active, with the exact event time that started it (steps as --every, or --from
    /// and --to).
    #[arg(long)]
    alerts: bool,
    /// What-if: run the range again with this aggregate setting (repeatable), e.g.
    /// `aggregate.low_stock_threshold=25`, and print only what differs.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// A time for replay: `now`, `-2h` (back from now) or RFC 3339.
fn parse_time(s: &str, now_ms: i64) -> anyhow::Result<i64> {
    if let Some(back) = s.strip_prefix('-') {
        let back = parse_duration(back).map_err(anyhow::Error::msg)?;
        return Ok(now_ms - back.as_millis() as i64);
    }
    if s == "now" {
        return Ok(now_ms);
    }
    parse_start(s).map_err(anyhow::Error::msg)
}

/// A config file's name and text (if one is given), and the environment.
type Sources = (Option<(String, String)>, HashMap<String, String>);

/// Where the settings of `serve` and `migrate` come from.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// A TOML file overriding config/default.toml; environment variables override both.
    #[arg(long, env = "STOREPULSE_CONFIG")]
    config: Option<std::path::PathBuf>,
}

impl ConfigArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        self.settings_with(&[])
    }

    fn settings_with(&self, overrides: &[(String, String)]) -> anyhow::Result<Settings> {
        let (file, environment) = self.sources()?;
        Ok(Settings::load_with(
            file.as_ref()
                .map(|(name, text)| (name.as_str(), text.as_str())),
            &environment,
            overrides,
        )?)
    }

    /// The effective configuration, secrets masked (`storepulse config`).
    fn effective(&self) -> anyhow::Result<String> {
        let (file, environment) = self.sources()?;
        Ok(Settings::effective(
            file.as_ref()
                .map(|(name, text)| (name.as_str(), text.as_str())),
            &environment,
        )?)
    }

    /// The config file (name and text, if one is given) and the process environment.
    fn sources(&self) -> anyhow::Result<Sources> {
        Ok((self.file_text()?, std::env::vars().collect()))
    }

    /// The config file's name and text, if one is given.
    fn file_text(&self) -> anyhow::Result<Option<(String, String)>> {
        Ok(match &self.config {
            Some(path) => Some((
                path.display().to_string(),
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            )),
            None => None,
        })
    }
}

/// Options of `storepulse schemas`.
#[derive(Debug, Args)]
pub struct SchemasArgs {
    /// Confluent Schema Registry ids mapped to schema versions: `17=order_placed.v1,...`.
    #[arg(long, env = "STOREPULSE_CONFLUENT_IDS", default_value = "")]
    confluent_ids: ConfluentIds,
    #[command(subcommand)]
    action: Option<SchemasAction>,
}

/// What `storepulse schemas` does besides listing.
#[derive(Debug, Subcommand)]
pub enum SchemasAction {
    /// Register storepulse's schemas in a schema registry under the topic-name subjects
    /// (`<topic>-value`; the orders topic's as a union of its two records) with BACKWARD
    /// compatibility, and print each subject's id. Registering again gives the same ids.
    Register(RegisterArgs),
}

/// Options of `storepulse schemas register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The registry's Confluent-compatible API [default: schema_registry.url].
    #[arg(long)]
    registry: Option<String>,
    #[command(flatten)]
    kafka: KafkaArgs,
}

/// Broker and topic names, shared by every subcommand that talks to Kafka. Each one not
/// given falls back to `config/default.toml` (`kafka.brokers`, `kafka.topics.*`).
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers [default: kafka.brokers of config/default.toml].
    #[arg(long, env = "STOREPULSE_KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// Topic of OrderPlaced and OrderCancelled [default: kafka.topics.orders].
    #[arg(long, env = "STOREPULSE_TOPIC_ORDERS")]
    pub orders_topic: Option<String>,
    /// Topic of StockChanged [default: kafka.topics.inventory].
    #[arg(long, env = "STOREPULSE_TOPIC_INVENTORY")]
    pub inventory_topic: Option<String>,
    /// Topic of SessionSeen [default: kafka.topics.activity].
    #[arg(long, env = "STOREPULSE_TOPIC_ACTIVITY")]
    pub activity_topic: Option<String>,
}

impl KafkaArgs {
    /// The typed settings.
    pub fn settings(&self) -> KafkaSettings {
        let defaults = KafkaSettings::default();
        let or = |given: &Option<String>, default: String| given.clone().unwrap_or(default);
        KafkaSettings {
            brokers: or(&self.brokers, defaults.brokers),
            topics: Topics {
                orders: or(&self.orders_topic, defaults.topics.orders),
                inventory: or(&self.inventory_topic, defaults.topics.inventory),
                activity: or(&self.activity_topic, defaults.topics.activity),
            },
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (examples: 90s, 5m, 1h30m)"))
}

fn parse_start(s: &str) -> Result<i64, String> {
    if s == "now" {
        return Ok(crate::wall_clock::unix_ms());
    }
    let time = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?}: {e} (expected \"now\" or e.g. 2026-11-27T10:00:00Z)"))?;
    if time < UNIX_EPOCH {
        return Err(format!("{s:?} is before the Unix epoch"));
    }
    match crate::wall_clock::unix_ms_of(time) {
        i64::MAX => Err(format!("{s:?} is too far in the future")),
        millis => Ok(millis),
    }
}

/// Options of `storepulse simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Target records per second; 0 means as fast as the broker accepts.
    #[arg(long, env = "STOREPULSE_SIM_RATE", default_value_t = 1000.0)]
    rate: f64,
    /// Records per second of event time (default: --rate, or 1000 when --rate is 0). With
    /// --rate 0, a low value writes history fast: `--count 3600 --event-rate 1` is an hour.
    #[arg(long, env = "STOREPULSE_SIM_EVENT_RATE")]
    event_rate: Option<f64>,
    /// Stop after this many records.
    #[arg(long, env = "STOREPULSE_SIM_COUNT")]
    count: Option<u64>,
    /// Stop after this long (e.g. 90s, 5m); without --count or --duration, runs until Ctrl-C.
    #[arg(long, env = "STOREPULSE_SIM_DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Number of stores (1 to 10 000: eight named ones, then store-00009, …).
    #[arg(long, env = "STOREPULSE_SIM_STORES", default_value_t = 3)]
    stores: usize,
    /// SKUs in each store's catalog (up to 100 000).
    #[arg(long, env = "STOREPULSE_SIM_SKUS", default_value_t = 40)]
    skus: usize,
    /// How orders pick SKUs: uniform, or skewed (a few SKUs sell most, as in a real
    /// catalog).
    #[arg(long, env = "STOREPULSE_SIM_POPULARITY", default_value = "uniform", value_parser = ["uniform", "skewed"])]
    popularity: String,
    /// A buggy producer: this many records in a thousand carry a random store id, an order
    /// total of 2^63 − 1, or a date ten years ahead without a Kafka timestamp.
    #[arg(long, env = "STOREPULSE_SIM_JUNK_PER_MILLE", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    junk_per_mille: u32,
    /// Record keys: `event` (order id, SKU or session id) or `store` (the store id, placed
    /// by murmur2 as Kafka's default partitioner does: what a cluster needs).
    #[arg(long, env = "STOREPULSE_SIM_KEY", default_value = "event", value_parser = ["event", "store"])]
    key: String,
    /// Partitions of topics this run creates.
    #[arg(long, env = "STOREPULSE_SIM_PARTITIONS", default_value_t = 4)]
    partitions: i32,
    /// Random seed: the same seed (and start time and settings) gives the same records.
    #[arg(long, env = "STOREPULSE_SIM_SEED", default_value_t = 1)]
    seed: u64,
    /// Event time of the first record: "now" or an RFC 3339 time.
    #[arg(long, env = "STOREPULSE_SIM_START", default_value = "now", value_parser = parse_start)]
    start: i64,
    /// When the flash sale starts, in event time from the start.
    #[arg(long, env = "STOREPULSE_SIM_FLASH_AT", default_value = "30s", value_parser = parse_duration)]
    flash_sale_at: Duration,
    /// How long the flash sale lasts, in event time.
    #[arg(long, env = "STOREPULSE_SIM_FLASH_FOR", default_value = "2m", value_parser = parse_duration)]
    flash_sale_for: Duration,
    /// Discounted SKUs per store in the flash sale; 0 disables the sale.
    #[arg(long, env = "STOREPULSE_SIM_FLASH_SKUS", default_value_t = 3)]
    flash_skus: usize,
    /// Let flash-sale SKUs be sold past zero stock (oversold).
    #[arg(long, env = "STOREPULSE_SIM_OVERSELL")]
    oversell: bool,
    /// Do not create missing topics (production to a missing topic then fails).
    #[arg(long)]
    no_create_topics: bool,
    /// How long a record may wait for delivery before it counts as failed.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    message_timeout: Duration,
    /// No progress lines, only the final report.
    #[arg(long, short)]
    quiet: bool,
    /// Produce in the Confluent framing under this schema registry's ids (its
    /// Confluent-compatible API, e.g. Apicurio's `http://…/apis/ccompat/v7`), registering
    /// storepulse's schemas under the topic-name subjects first (`storepulse schemas register`).
    #[arg(long, env = "STOREPULSE_SIM_SCHEMA_REGISTRY")]
    schema_registry: Option<String>,
    /// With --schema-registry: after this many records, register the orders subject's next
    /// version (`OrderPlaced` with a field added, with a default) and write orders under it.
    #[arg(long, requires = "schema_registry")]
    evolve_schema_at: Option<u64>,
}

impl SimulateArgs {
    fn options(&self) -> SimulateOptions {
        let rate = (self.rate > 0.0).then_some(self.rate);
        SimulateOptions {
            scenario: ScenarioConfig {
                popularity: if self.popularity == "skewed" {
                    Popularity::Skewed
                } else {
                    Popularity::Uniform
                },
                seed: self.seed,
                start_ms: self.start,
                // Event time advances at the target rate (1000/s when unpaced), so the
                // stream is the same however fast the broker takes it.
                events_per_second: self.event_rate.or(rate).unwrap_or(1000.0),
                stores: self.stores,
                skus_per_store: self.skus,
                flash_sale: (self.flash_skus > 0).then_some(FlashSale {
                    starts_after_ms: self.flash_sale_at.as_millis() as i64,
                    duration_ms: self.flash_sale_for.as_millis() as i64,
                    skus_per_store: self.flash_skus,
                    oversell: self.oversell,
                    discount_percent: 30,
                }),
            },
            rate,
            count: self.count,
            duration: self.duration,
            partitions: self.partitions,
            create_topics: !self.no_create_topics,
            message_timeout: self.message_timeout,
            progress_every: (!self.quiet).then_some(Duration::from_secs(1)),
            junk_per_mille: self.junk_per_mille,
            key_by_store: self.key == "store",
            registry: None,
        }
    }
}

/// Runs a parsed command line until it finishes or `stop` is cancelled (Ctrl-C).
pub async fn run(cli: Cli, stop: CancellationToken) -> anyhow::Result<()> {
    let unknown = crate::config::unknown_variables(&std::env::vars().collect());
    if !unknown.is_empty() {
        return Err(crate::config::ConfigError::UnknownVariables(unknown).into());
    }
    match cli.command {
        Command::Token(args) => {
            println!("{}", token(&args)?);
            Ok(())
        }
        Command::Config(args) => {
            print!("{}", args.effective()?);
            Ok(())
        }
        Command::Simulate(args) => simulate(*args, stop).await,
        Command::Schemas(SchemasArgs {
            action: Some(SchemasAction::Register(args)),
            ..
        }) => tokio::task::spawn_blocking(move || register_schemas(&args)).await?,
        Command::Schemas(args) => schemas(&args),
        Command::Serve(args) => app::serve(args.settings()?, stop).await,
        Command::Aggregator(args) => crate::cluster::run_aggregator(args.settings()?, stop).await,
        Command::Edge(args) => crate::cluster::run_edge(args.settings()?, stop).await,
        Command::Replay(args) => replay(*args).await,
        Command::Route(args) => route(*args, stop).await,
        Command::Migrate(args) => {
            let settings = args.settings()?;
            CheckpointStore::connect_lazy(
                &settings.checkpoint.database_url,
                &settings.kafka.group_id,
            )?
            .migrate()
            .await
            .context("migrations failed")?;
            println!(
                "migrations applied to {}",
                crate::config::mask_secret(&settings.checkpoint.database_url)
            );
            Ok(())
        }
    }
}

/// `storepulse token`: an HS256 token for the configured secret.
fn token(args: &TokenArgs) -> anyhow::Result<String> {
    use crate::auth::{Grant, Role};
    use secrecy::ExposeSecret;
    let settings = args.config.settings()?;
    anyhow::ensure!(
        !settings.auth.hs256_secret.expose_secret().is_empty(),
        "no auth.hs256_secret (STOREPULSE_AUTH_HS256_SECRET) to sign with; tokens for RS256/ES256 keys come from your identity provider"
    );
    let stores: Vec<String> = args
        .stores
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(!stores.is_empty(), "--stores: at least one store id, or *");
    let role = match args.role.as_str() {
        "analyst" => Role::Analyst,
        "operator" => Role::Operator,
        _ => Role::Viewer,
    };
    let now_s = crate::wall_clock::unix_ms() / 1000;
    let subject = if args.subject.is_empty() {
        format!("token-{:016x}", rand::random::<u64>())
    } else {
        args.subject.clone()
    };
    let grant = Grant {
        subject,
        stores: (!stores.iter().any(|s| s == "*")).then_some(stores),
        role,
        expires_at_s: now_s + args.ttl.as_secs() as i64,
    };
    crate::auth::sign_hs256(&settings.auth.hs256_secret, &grant).map_err(anyhow::Error::msg)
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    use crate::replay::{End, Format, ReplayOptions};
    let settings = args.config.settings()?;
    let now_ms = crate::wall_clock::unix_ms();
    let from_ms = match (&args.from, &args.from_position) {
        (Some(from), _) => parse_time(from, now_ms).context("--from")?,
        (None, Some(position)) => {
            let (settings, position) = (settings.clone(), position.clone());
            tokio::task::spawn_blocking(move || crate::replay::position_time(&settings, &position))
                .await
                .context("replay thread")?
                .context("--from-position")?
        }
        (None, None) => anyhow::bail!("--from or --from-position is required"),
    };
    let end = match (&args.as_of, &args.to, &args.to_position) {
        (Some(at), _, _) => End::Time(parse_time(at, now_ms).context("--as-of")?),
        (None, Some(to), _) => End::Time(parse_time(to, now_ms).context("--to")?),
        (None, None, Some(position)) => End::Position(position.clone()),
        (None, None, None) => End::Time(now_ms),
    };
    let options = ReplayOptions {
        from_ms,
        from_position: args.from_position.clone(),
        end,
        every_ms: args.every.map(|d| d.as_millis() as i64),
        store: args.store.clone().map(crate::events::StoreId),
        format: if args.format == "jsonl" {
            Format::Jsonl
        } else {
            Format::Csv
        },
        alerts: args.alerts,
        progress: !args.quiet && !args.dry_run,
        dry_run: args.dry_run,
    };
    if !args.set.is_empty() {
        return what_if(&args, &settings, options).await;
    }
    let mut options = options;
    if args.alerts && options.every_ms.is_none() {
        let crate::replay::End::Time(to_ms) = options.end else {
            anyhow::bail!("--alerts needs --to (or --as-of) as a time");
        };
        options.every_ms = Some((to_ms - options.from_ms).max(1));
    }
    let out_path = args.out.clone();
    let quiet = args.quiet;
    let summary = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut out: Box<dyn std::io::Write> = match &out_path {
            Some(path) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            )),
            None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        };
        Ok(crate::replay::run(&settings, &options, &mut out)?)
    })
    .await
    .context("replay thread")??;
    if !quiet && !args.dry_run {
        eprintln!("{}", replay_summary(&summary));
    }
    Ok(())
}

/// The line a replay ends with on stderr: records, poison records by reason, speed.
fn replay_summary(summary: &crate::replay::Summary) -> String {
    let reasons: Vec<String> = summary
        .dead_letters_by_reason
        .iter()
        .map(|(reason, count)| format!("{reason} {count}"))
        .collect();
    format!(
        "[replay] {} records ({} poison records skipped, as serve dead-letters them{}) in {:.1} s ({:.0} records/s); {} outputs",
        summary.records,
        summary.dead_letters,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(": {}", reasons.join(", "))
        },
        summary.elapsed.as_secs_f64(),
        summary.records as f64 / summary.elapsed.as_secs_f64().max(1e-9),
        summary.outputs
    )
}

/// `replay --set`: the range as configured and as set, and what differs at each step.
async fn what_if(
    args: &ReplayArgs,
    settings: &Settings,
    mut options: crate::replay::ReplayOptions,
) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    for set in &args.set {
        let (key, value) = set
            .split_once('=')
            .with_context(|| format!("--set {set:?}: expected KEY=VALUE"))?;
        anyhow::ensure!(
            key.starts_with("aggregate."),
            "--set {key}: only aggregate settings change what a replay computes"
        );
        overrides.push((key.to_owned(), value.to_owned()));
    }
    let changed = args.config.settings_with(&overrides)?;
    // Without --every: one step at the end (and --from), so both runs give rows.
    if options.every_ms.is_none() {
        let crate::replay::End::Time(to_ms) = options.end else {
            anyhow::bail!("--set needs --to (or --as-of) as a time");
        };
        options.every_ms = Some((to_ms - options.from_ms).max(1));
    }
    let base = settings.clone();
    let run_options = options.clone();
    let alerts = args.alerts;
    let (header, lines, compared, summary) = tokio::task::spawn_blocking(move || {
        if alerts {
            let (configured, summary) = crate::replay::collect_alert_lines(&base, &run_options)?;
            let (what_if, _) = crate::replay::collect_alert_lines(&changed, &run_options)?;
            let lines = crate::replay::rows::alert_differences(&configured, &what_if);
            Ok::<_, crate::replay::ReplayError>((
                crate::replay::rows::ALERT_DIFFERENCES_HEADER,
                lines,
                format!("{} and {} alert changes", configured.len(), what_if.len()),
                summary,
            ))
        } else {
            let (configured, summary) = crate::replay::collect_rows(&base, &run_options)?;
            let (what_if, _) = crate::replay::collect_rows(&changed, &run_options)?;
            let lines = crate::replay::rows::differences(&configured, &what_if);
            Ok((
                crate::replay::rows::DIFFERENCES_HEADER,
                lines,
                format!("{} rows", configured.len()),
                summary,
            ))
        }
    })
    .await
    .context("replay thread")??;
    let mut out: Box<dyn std::io::Write> = match &args.out {
        Some(path) => Box::new(std::fs::File::create(path)?),
        None => Box::new(std::io::stdout().lock()),
    };
    writeln!(out, "{header}")?;
    for line in &lines {
        writeln!(out, "{line}")?;
    }
    if !args.quiet {
        eprintln!(
            "[replay] what-if {}: {} differences over {compared} ({} records read twice)",
            args.set.join(" "),
            lines.len(),
            summary.records
        );
    }
    Ok(())
}

fn register_schemas(args: &RegisterArgs) -> anyhow::Result<()> {
    let settings = crate::config::Settings::load(None, &std::env::vars().collect())?;
    let client = crate::registry::client(&settings.schema_registry, args.registry.as_deref())?;
    let topics = args.kafka.settings().topics;
    let (_, subjects) = crate::registry::register(&client, &topics, false)?;
    println!("{:<40} id", "subject (BACKWARD)");
    for (subject, id) in subjects {
        println!("{subject:<40} {id}");
    }
    Ok(())
}

fn schemas(args: &SchemasArgs) -> anyhow::Result<()> {
    let codec = Codec::new(&args.confluent_ids).context("schemas do not load")?;
    println!(
        "{:<20} {:<10} {:<25} confluent id",
        "schema", "topic", "fingerprint (wire, hex)"
    );
    for version in codec.versions() {
        let fingerprint: Vec<String> = version
            .fingerprint
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let registry_ids: Vec<String> = args
            .confluent_ids
            .pairs()
            .iter()
            .filter(|(_, id)| *id == version.id)
            .map(|(registry_id, _)| registry_id.to_string())
            .collect();
        println!(
            "{:<20} {:<10} {:<25} {}",
            version.id.to_string(),
            format!("{:?}", version.id.kind.topic_role()).to_lowercase(),
            fingerprint.join(" "),
            if registry_ids.is_empty() {
                "-".to_owned()
            } else {
                registry_ids.join(",")
            }
        );
    }
    Ok(())
}

async fn simulate(args: SimulateArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let settings = args.kafka.settings();
    let mut options = args.options();
    if let Some(url) = &args.schema_registry {
        let mut registry =
            crate::config::Settings::load(None, &std::env::vars().collect())?.schema_registry;
        registry.url.clone_from(url);
        options.registry = Some(crate::simulate::RegistryProducer {
            settings: registry,
            evolve_at: args.evolve_schema_at,
        });
    }
    eprintln!(
        "[simulate] {} stores x {} SKUs, seed {}, target {} to {} ({}, {}, {})",
        options.scenario.stores,
        options.scenario.skus_per_store,
        options.scenario.seed,
        options
            .rate
            .map_or("unpaced".to_owned(), |r| format!("{r} records/s")),
        settings.brokers,
        settings.topics.orders,
        settings.topics.inventory,
        settings.topics.activity,
    );
    let result = simulate::run(&settings, options, stop).await;
    let report = match &result {
        Ok(report) => report.clone(),
        Err(simulate::SimulateError::Undelivered { report }) => report.clone(),
        Err(_) => {
            return result
                .map(|_| ())
                .context("simulation failed before producing");
        }
    };
    println!(
        "produced {} records in {:.1} s: {} acknowledged by kafka, {} failed, {:.0} records/s achieved (backpressure waits: {})",
        report.produced,
        report.elapsed.as_secs_f64(),
        report.acked,
        report.failed,
        report.achieved_rate(),
        report.backpressure_waits,
    );
    let watermark_settings = settings.clone();
    if let Ok(totals) = tokio::task::spawn_blocking(move || {
        watermark_settings.topics.all().map(|topic| {
            (
                topic.to_owned(),
                kafka::total_records(&watermark_settings, topic),
            )
        })
    })
    .await
    {
        let line: Vec<String> = totals
            .iter()
            .map(|(topic, total)| match total {
                Ok(n) => format!("{topic}={n}"),
                Err(e) => format!("{topic}=? ({e})"),
            })
            .collect();
        println!("records in kafka now (high watermarks): {}", line.join(" "));
    }
    result
        .map(|_| ())
        .context("simulation did not deliver every record")
}

async fn route(args: RouteArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let settings = args.config.settings()?;
    let codec = crate::events::Codec::new(&settings.confluent_ids()?).context("schemas")?;
    let kafka_settings = settings.kafka();
    let options = crate::route::RouteOptions {
        from: [args.orders_from, args.inventory_from, args.activity_from],
        group: args.group,
        transactional_id: args.transactional_id,
        batch: args.batch.max(1),
    };
    eprintln!(
        "[route] {} -> {}, {} -> {}, {} -> {} (keyed by store, exactly once)",
        options.from[0],
        kafka_settings.topics.orders,
        options.from[1],
        kafka_settings.topics.inventory,
        options.from[2],
        kafka_settings.topics.activity
    );
    let report = tokio::task::spawn_blocking(move || {
        crate::route::run(&kafka_settings, &codec, &options, &stop)
    })
    .await
    .context("the route thread")??;
    eprintln!(
        "[route] {} records routed ({} undecodable, left to the aggregators' dead letters) in {} transactions",
        report.routed, report.undecoded, report.transactions
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every variable an option reads is in the config module's lists, so it is never
    /// taken for a typo.
    #[test]
    fn every_variable_an_option_reads_is_known() {
        fn walk(command: &clap::Command, names: &mut HashMap<String, String>) {
            for arg in command.get_arguments() {
                if let Some(env) = arg.get_env() {
                    names.insert(env.to_string_lossy().into_owned(), String::new());
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, names);
            }
        }
        let mut names = HashMap::new();
        walk(&Cli::command(), &mut names);
        assert!(names.contains_key("STOREPULSE_SIM_RATE"), "{names:?}");
        assert_eq!(crate::config::unknown_variables(&names), vec![]);
    }
}
