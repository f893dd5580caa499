//! Deterministic mock executor for the generated tool catalogue.
//!
//! Every catalogue tool has an implementation: real results where they are
//! computable (arithmetic, statistics, unit and currency conversion with the
//! fixed rates of `fc_data::gen::world`, date arithmetic, great-circle
//! distances) and deterministic fake data elsewhere, seeded from a hash of
//! the tool name and the (key-order independent) arguments. Runtime checks
//! go beyond the JSON Schema (dates must be real dates, ranges, unknown
//! city -> error, empty lists -> error), which is what the `exec` reward
//! component measures.
//!
//! Safety: model text is only ever read as JSON data, never evaluated; every
//! loop is bounded by an operation [`Budget`], so a call cannot run away
//! (e.g. factorizing a huge number stops with [`ExecError::Budget`]).

use std::collections::HashMap;

use fc_data::gen::catalogue::{tool_by_name, Tool};
use fc_data::gen::world::{self as w, City};
use fc_data::{SchemaCache, ToolDef};
use rand::{Rng, RngCore};
use serde_json::{json, Map, Value};

/// Why a call failed at run time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecError {
    #[error("unknown tool {0:?}")]
    UnknownTool(String),
    #[error("invalid argument {param:?}: {reason}")]
    InvalidArgument { param: String, reason: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("arguments do not match the tool schema: {0}")]
    Schema(String),
    #[error("operation budget exhausted")]
    Budget,
}

type R<T> = Result<T, ExecError>;

fn bad(param: &str, reason: impl Into<String>) -> ExecError {
    ExecError::InvalidArgument {
        param: param.to_string(),
        reason: reason.into(),
    }
}

/// Bounded operation counter: every loop in a tool implementation ticks it.
#[derive(Debug, Clone)]
pub struct Budget {
    left: u64,
}

impl Budget {
    /// A budget of `ops` operations.
    pub fn new(ops: u64) -> Self {
        Budget { left: ops }
    }

    /// Spends `n` operations; errors once the budget is gone.
    pub fn tick(&mut self, n: u64) -> R<()> {
        if self.left < n {
            self.left = 0;
            return Err(ExecError::Budget);
        }
        self.left -= n;
        Ok(())
    }
}

/// Default per-call budget: far above what any valid call needs (~1e6
/// cheap operations, well under a millisecond).
pub const DEFAULT_OPS_BUDGET: u64 = 1_000_000;

/// Result lists are paged: at most this many items are materialized (the
/// mock's "first page"), keeping every call cheap.
const PAGE: i64 = 5;

/// Maximum list length any tool accepts.
const MAX_LIST: usize = 10_000;

// ---------------------------------------------------------------------------
// Argument access
// ---------------------------------------------------------------------------

struct Args<'a> {
    m: &'a Map<String, Value>,
}

/// `m.get(k)`; small objects (all tool arguments in practice) are scanned,
/// which beats hashing the key.
pub(crate) fn get<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    if m.len() <= 8 {
        m.iter().find(|(x, _)| x.as_str() == k).map(|(_, v)| v)
    } else {
        m.get(k)
    }
}

fn present(v: Option<&Value>) -> Option<&Value> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(v) => Some(v),
    }
}

impl<'a> Args<'a> {
    fn str(&self, k: &str) -> R<&'a str> {
        match get(self.m, k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim()),
            Some(Value::String(_)) => Err(bad(k, "must not be empty")),
            Some(_) => Err(bad(k, "must be a string")),
            None => Err(bad(k, "is required")),
        }
    }

    fn opt_str(&self, k: &str) -> R<Option<&'a str>> {
        match present(get(self.m, k)) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim())),
            Some(_) => Err(bad(k, "must be a string")),
        }
    }

    fn num(&self, k: &str) -> R<f64> {
        match get(self.m, k) {
            Some(Value::Number(n)) => n.as_f64().filter(|x| x.is_finite()).ok_or_else(|| bad(k, "not a finite number")),
            Some(_) => Err(bad(k, "must be a number")),
            None => Err(bad(k, "is required")),
        }
    }

    fn opt_num(&self, k: &str) -> R<Option<f64>> {
        match present(get(self.m, k)) {
            None => Ok(None),
            Some(_) => self.num(k).map(Some),
        }
    }

    fn int(&self, k: &str) -> R<i64> {
        let x = self.num(k)?;
        if x.fract() != 0.0 || x.abs() > 9.0e15 {
            return Err(bad(k, "must be an integer"));
        }
        Ok(x as i64)
    }

    fn int_in(&self, k: &str, lo: i64, hi: i64) -> R<i64> {
        let x = self.int(k)?;
        if x < lo || x > hi {
            return Err(bad(k, format!("must be between {lo} and {hi}")));
        }
        Ok(x)
    }

    fn opt_int_in(&self, k: &str, lo: i64, hi: i64, default: i64) -> R<i64> {
        match present(get(self.m, k)) {
            None => Ok(default),
            Some(_) => self.int_in(k, lo, hi),
        }
    }

    fn opt_bool(&self, k: &str, default: bool) -> R<bool> {
        match present(get(self.m, k)) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(bad(k, "must be a boolean")),
        }
    }

    fn list(&self, k: &str) -> R<&'a Vec<Value>> {
        match get(self.m, k) {
            Some(Value::Array(a)) if a.is_empty() => Err(bad(k, "must not be empty")),
            Some(Value::Array(a)) if a.len() > MAX_LIST => Err(bad(k, "too many elements")),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(bad(k, "must be a list")),
            None => Err(bad(k, "is required")),
        }
    }

    fn nums(&self, k: &str, b: &mut Budget) -> R<Vec<f64>> {
        let a = self.list(k)?;
        b.tick(a.len() as u64)?;
        a.iter()
            .map(|v| v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| bad(k, "elements must be numbers")))
            .collect()
    }

    fn strs(&self, k: &str, b: &mut Budget) -> R<Vec<&'a str>> {
        let a = self.list(k)?;
        b.tick(a.len() as u64)?;
        a.iter()
            .map(|v| match v {
                Value::String(s) if !s.trim().is_empty() => Ok(s.trim()),
                _ => Err(bad(k, "elements must be non-empty strings")),
            })
            .collect()
    }

    fn city(&self, k: &str) -> R<&'static City> {
        let name = self.str(k)?;
        w::city(name).ok_or_else(|| ExecError::NotFound(format!("unknown city {name:?}")))
    }

    fn date(&self, k: &str) -> R<i64> {
        let s = self.str(k)?;
        w::parse_date(s).ok_or_else(|| bad(k, format!("{s:?} is not a valid YYYY-MM-DD date")))
    }

    fn opt_date(&self, k: &str) -> R<Option<i64>> {
        match present(get(self.m, k)) {
            None => Ok(None),
            Some(_) => self.date(k).map(Some),
        }
    }

    fn time(&self, k: &str) -> R<u32> {
        let s = self.str(k)?;
        w::parse_time(s).ok_or_else(|| bad(k, format!("{s:?} is not a valid HH:MM time")))
    }

    fn opt_time(&self, k: &str, default: u32) -> R<u32> {
        match present(get(self.m, k)) {
            None => Ok(default),
            Some(_) => self.time(k),
        }
    }

    fn one_of(&self, k: &str, options: &[&'static str]) -> R<&'static str> {
        let s = self.str(k)?;
        options
            .iter()
            .find(|o| o.eq_ignore_ascii_case(s))
            .copied()
            .ok_or_else(|| bad(k, format!("must be one of {}", options.join(", "))))
    }

    fn opt_one_of(&self, k: &str, options: &[&'static str], default: &'static str) -> R<&'static str> {
        match present(get(self.m, k)) {
            None => Ok(default),
            Some(_) => self.one_of(k, options),
        }
    }
}

// ---------------------------------------------------------------------------
// Deterministic fake data
// ---------------------------------------------------------------------------

fn fnv(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// Key-order independent hash of a JSON value.
fn hash_value(v: &Value, h: &mut u64, depth: usize) {
    if depth > 64 {
        return;
    }
    match v {
        Value::Null => fnv(h, b"n"),
        Value::Bool(b) => fnv(h, if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            fnv(h, b"#");
            fnv(h, &n.as_f64().unwrap_or(0.0).to_bits().to_le_bytes());
        }
        Value::String(s) => {
            fnv(h, b"s");
            fnv(h, s.as_bytes());
            fnv(h, &[0]);
        }
        Value::Array(a) => {
            fnv(h, b"[");
            for x in a {
                hash_value(x, h, depth + 1);
            }
            fnv(h, b"]");
        }
        Value::Object(o) => {
            // Members in key order (key-order independence) without a heap
            // allocation for the usual small objects.
            const SMALL: usize = 16;
            fnv(h, b"{");
            if o.len() <= SMALL {
                let mut buf: [(&str, &Value); SMALL] = [("", &Value::Null); SMALL];
                for (slot, (k, x)) in buf.iter_mut().zip(o) {
                    *slot = (k.as_str(), x);
                }
                let members = &mut buf[..o.len()];
                members.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (k, x) in members.iter() {
                    fnv(h, k.as_bytes());
                    fnv(h, &[0]);
                    hash_value(x, h, depth + 1);
                }
            } else {
                let mut members: Vec<(&String, &Value)> = o.iter().collect();
                members.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (k, x) in members {
                    fnv(h, k.as_bytes());
                    fnv(h, &[0]);
                    hash_value(x, h, depth + 1);
                }
            }
            fnv(h, b"}");
        }
    }
}

/// Seed for fake data of one call.
pub fn call_seed(name: &str, args: &Value) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    fnv(&mut h, name.as_bytes());
    fnv(&mut h, &[0]);
    hash_value(args, &mut h, 0);
    h
}

/// SplitMix64: a tiny deterministic generator for fake data (quality is
/// irrelevant here; seeding must be cheap because it happens per call).
struct SplitMix(u64);

impl RngCore for SplitMix {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let b = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}

struct Fake(SplitMix);

impl Fake {
    // Empty ranges (possible with user-controlled bounds) return `lo`
    // instead of panicking.
    fn f(&mut self, lo: f64, hi: f64) -> f64 {
        if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
            return lo;
        }
        round(self.0.random_range(lo..hi), 1)
    }
    fn i(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        self.0.random_range(lo..=hi)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.0.random_range(0..xs.len())]
    }
}

/// `obj` with `key` appended (last, as `json!` would place it), moving
/// `items` in: `json!({.., "key": items})` would serialize (deep-copy) it.
fn append(mut obj: Value, key: &str, items: impl Into<Value>) -> Value {
    if let Value::Object(m) = &mut obj {
        m.insert(key.to_string(), items.into());
    }
    obj
}

fn round(x: f64, d: i32) -> f64 {
    let p = 10f64.powi(d);
    (x * p).round() / p
}

fn haversine_km(a: &City, b: &City) -> f64 {
    let (la1, lo1, la2, lo2) = (a.lat.to_radians(), a.lon.to_radians(), b.lat.to_radians(), b.lon.to_radians());
    let h = ((la2 - la1) / 2.0).sin().powi(2) + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

fn fmt_minutes(m: i64) -> String {
    let m = m.rem_euclid(24 * 60);
    format!("{:02}:{:02}", m / 60, m % 60)
}

const CONDITIONS: &[&str] = &["sunny", "partly cloudy", "cloudy", "light rain", "rain", "thunderstorm", "fog", "snow"];

fn climate_temp(c: &City, fk: &mut Fake) -> f64 {
    round(27.0 - c.lat.abs() * 0.35 + fk.f(-6.0, 6.0), 1)
}

fn temp_in(units: &str, c: f64) -> f64 {
    if units == "imperial" {
        round(c * 9.0 / 5.0 + 32.0, 1)
    } else {
        c
    }
}

fn convert(value: f64, from: &str, to: &str, table: &[(&'static str, f64)], param: &str) -> R<f64> {
    let f = |u: &str, p: &str| {
        table
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(u))
            .map(|(_, x)| *x)
            .ok_or_else(|| bad(p, format!("unknown unit {u:?}")))
    };
    let a = f(from, "from_unit")?;
    let b = f(to, "to_unit")?;
    if value < 0.0 {
        return Err(bad(param, "must not be negative"));
    }
    Ok(value * a / b)
}

const LENGTH: &[(&str, f64)] = &[
    ("m", 1.0),
    ("km", 1000.0),
    ("cm", 0.01),
    ("mm", 0.001),
    ("mi", 1609.344),
    ("ft", 0.3048),
    ("in", 0.0254),
    ("yd", 0.9144),
];
const WEIGHT: &[(&str, f64)] = &[("kg", 1.0), ("g", 0.001), ("lb", 0.453_592_37), ("oz", 0.028_349_523_125), ("t", 1000.0)];
const VOLUME: &[(&str, f64)] = &[("l", 1.0), ("ml", 0.001), ("gal", 3.785_411_784), ("qt", 0.946_352_946), ("cup", 0.236_588_236_5)];
const SPEED: &[(&str, f64)] = &[("kmh", 1.0 / 3.6), ("mph", 0.447_04), ("ms", 1.0), ("knots", 0.514_444)];
const AREA: &[(&str, f64)] = &[("m2", 1.0), ("km2", 1.0e6), ("ha", 1.0e4), ("acre", 4_046.856_422_4), ("ft2", 0.092_903_04)];

fn known(list: &[&'static str], k: &str, v: &str) -> R<&'static str> {
    list.iter()
        .find(|x| x.eq_ignore_ascii_case(v))
        .copied()
        .ok_or_else(|| ExecError::NotFound(format!("unknown {k} {v:?}")))
}

fn check_sku(k: &str, s: &str) -> R<()> {
    let ok = s.len() == 9 && s.starts_with("SKU-") && s[4..].bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ExecError::NotFound(format!("{k}: no product {s:?} (ids look like SKU-12345)")))
    }
}

fn check_email(k: &str, s: &str) -> R<()> {
    let mut parts = s.split('@');
    let ok = match (parts.next(), parts.next(), parts.next()) {
        (Some(user), Some(domain), None) => {
            !user.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.') && !s.contains(' ')
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(bad(k, format!("{s:?} is not a valid e-mail address")))
    }
}

fn check_league(s: &str) -> R<&'static str> {
    known(w::LEAGUES, "league", s)
}

fn check_season(a: &Args) -> R<i64> {
    a.int_in("season", 1900, 2030)
}

// ---------------------------------------------------------------------------
// The executor
// ---------------------------------------------------------------------------

/// The mock executor. Cheap to construct; holds the validator cache used
/// by the generic (schema-driven) mock.
pub struct MockExecutor {
    ops_budget: u64,
    cache: &'static SchemaCache,
}

impl Default for MockExecutor {
    fn default() -> Self {
        Self::new(DEFAULT_OPS_BUDGET)
    }
}

/// Signature of one catalogue implementation.
type ToolFn = fn(&Args, &mut Fake, &mut Budget) -> R<Value>;

impl MockExecutor {
    /// An executor with a per-call operation budget.
    pub fn new(ops_budget: u64) -> Self {
        MockExecutor {
            ops_budget,
            cache: SchemaCache::global(),
        }
    }

    /// True when `name` has a dedicated catalogue implementation.
    pub fn has_impl(name: &str) -> bool {
        implementation(name).is_some()
    }

    /// Runs one call. `tool` is the offered definition (used for the
    /// generic mock and to make sure a catalogue implementation is only
    /// used when the offered tool really is the catalogue tool: a
    /// same-named tool with other parameters gets the generic mock).
    pub fn execute(&self, tool: &ToolDef, args: &Value) -> Result<Value, ExecError> {
        self.execute_resolved(tool, Resolved::of(tool), args, None)
    }

    /// [`execute`](Self::execute) with the tool's implementation already
    /// resolved (see [`Resolved::of`]) and, optionally, its compiled
    /// parameter schema (saves the cache lookup of the generic mock).
    pub(crate) fn execute_resolved(
        &self,
        tool: &ToolDef,
        resolved: Resolved,
        args: &Value,
        validator: Option<&jsonschema::Validator>,
    ) -> Result<Value, ExecError> {
        let m = match args {
            Value::Object(m) => m,
            _ => return Err(ExecError::Schema("arguments must be an object".into())),
        };
        let mut budget = Budget::new(self.ops_budget);
        let seed = call_seed(&tool.name, args);
        let mut fake = Fake(SplitMix(seed));
        if let Some(f) = resolved.0 {
            return f(&Args { m }, &mut fake, &mut budget);
        }
        self.generic(tool, args, seed, &mut fake, validator)
    }

    /// Runs a catalogue tool by name only (no offered definition).
    pub fn execute_catalogue(&self, name: &str, args: &Value) -> Result<Value, ExecError> {
        let m = match args {
            Value::Object(m) => m,
            _ => return Err(ExecError::Schema("arguments must be an object".into())),
        };
        let f = implementation(name).ok_or_else(|| ExecError::UnknownTool(name.to_string()))?;
        let mut budget = Budget::new(self.ops_budget);
        let mut fake = Fake(SplitMix(call_seed(name, args)));
        f(&Args { m }, &mut fake, &mut budget)
    }

    /// Schema-driven mock for tools without an implementation: validates
    /// the arguments against the tool's schema and returns a deterministic
    /// fake result object.
    fn generic(&self, tool: &ToolDef, args: &Value, id: u64, fake: &mut Fake, validator: Option<&jsonschema::Validator>) -> R<Value> {
        match validator {
            Some(v) => fc_data::schema::check(v, args).map_err(ExecError::Schema)?,
            None => {
                let v = self.cache.get(&tool.parameters).map_err(ExecError::Schema)?;
                fc_data::schema::check(&v, args).map_err(ExecError::Schema)?
            }
        }
        Ok(json!({
            "status": "ok",
            "tool": tool.name,
            "result_id": format!("{id:016x}"),
            "score": fake.f(0.0, 1.0),
            "items": fake.i(0, 20),
        }))
    }
}

/// Which implementation runs an offered tool: its catalogue implementation
/// when the offered schema is compatible with the catalogue tool of that
/// name, else the generic schema-driven mock. Depends only on the tool
/// definition, so it can be resolved once per tool and reused.
#[derive(Clone, Copy)]
pub struct Resolved(Option<ToolFn>);

impl Resolved {
    /// Resolves the implementation of `tool`.
    pub fn of(tool: &ToolDef) -> Resolved {
        Resolved(implementation_for(tool))
    }
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Resolved(catalogue)" } else { "Resolved(generic)" })
    }
}

/// The catalogue implementation for an offered tool, if the offered schema
/// is compatible with the catalogue tool of that name.
fn implementation_for(tool: &ToolDef) -> Option<ToolFn> {
    let (f, cat) = entry(&tool.name)?;
    catalogue_compatible(tool, cat).then_some(f)
}

/// A catalogue implementation is used only if the offered schema declares
/// no parameter the catalogue tool lacks and requires all of its required
/// parameters.
fn catalogue_compatible(tool: &ToolDef, cat: &Tool) -> bool {
    let props = tool.parameters.get("properties").and_then(|p| p.as_object());
    let Some(props) = props else {
        return cat.params.iter().all(|p| p.optional);
    };
    props.keys().all(|k| cat.params.iter().any(|p| p.name == k))
        && cat.params.iter().filter(|p| !p.optional).all(|p| props.contains_key(p.name))
}

fn implementation(name: &str) -> Option<ToolFn> {
    entry(name).map(|(f, _)| f)
}

fn entry(name: &str) -> Option<(ToolFn, &'static Tool)> {
    use std::sync::OnceLock;
    static MAP: OnceLock<HashMap<&'static str, (ToolFn, &'static Tool)>> = OnceLock::new();
    MAP.get_or_init(|| {
        build_map()
            .into_iter()
            .filter_map(|(k, f)| tool_by_name(k).map(|t| (k, (f, t))))
            .collect()
    })
    .get(name)
    .copied()
}

fn build_map() -> HashMap<&'static str, ToolFn> {
    let list: &[(&'static str, ToolFn)] = &[
        ("get_current_weather", t_current_weather),
        ("get_weather_forecast", t_forecast),
        ("get_air_quality", t_air_quality),
        ("get_uv_index", t_uv),
        ("get_sunrise_sunset", t_sun),
        ("get_historical_weather", t_hist_weather),
        ("get_stock_price", t_stock),
        ("convert_currency", t_convert_currency),
        ("calculate_loan_payment", t_loan),
        ("get_exchange_rate", t_fx),
        ("calculate_compound_interest", t_compound),
        ("get_company_profile", t_company),
        ("calculate_average", t_average),
        ("calculate_standard_deviation", t_stddev),
        ("find_prime_factors", t_prime_factors),
        ("calculate_factorial", t_factorial),
        ("solve_quadratic", t_quadratic),
        ("calculate_gcd", t_gcd),
        ("convert_length", |a, _, _| unit(a, LENGTH)),
        ("convert_temperature", t_temperature),
        ("convert_weight", |a, _, _| unit(a, WEIGHT)),
        ("convert_volume", |a, _, _| unit(a, VOLUME)),
        ("convert_speed", |a, _, _| unit(a, SPEED)),
        ("convert_area", |a, _, _| unit(a, AREA)),
        ("search_flights", t_flights),
        ("search_hotels", t_hotels),
        ("get_flight_status", t_flight_status),
        ("find_car_rentals", t_cars),
        ("get_visa_requirements", t_visa),
        ("get_travel_advisories", t_advisory),
        ("create_calendar_event", t_create_event),
        ("list_calendar_events", t_list_events),
        ("days_between_dates", t_days_between),
        ("add_days_to_date", t_add_days),
        ("get_day_of_week", t_weekday),
        ("get_public_holidays", t_holidays),
        ("search_products", t_search_products),
        ("get_product_details", t_product_details),
        ("add_to_cart", t_add_to_cart),
        ("track_order", t_track_order),
        ("create_order", t_create_order),
        ("get_product_reviews", t_reviews),
        ("get_team_standings", t_standings),
        ("get_match_results", t_match_results),
        ("get_player_stats", t_player_stats),
        ("get_upcoming_fixtures", t_fixtures),
        ("get_live_score", t_live_score),
        ("get_league_top_scorers", t_top_scorers),
        ("search_songs", t_search_songs),
        ("get_artist_info", t_artist),
        ("get_album_tracks", t_album),
        ("create_playlist", t_playlist),
        ("get_song_lyrics", t_lyrics),
        ("get_top_charts", t_charts),
        ("get_directions", t_directions),
        ("calculate_distance", t_distance),
        ("find_nearby_places", t_nearby),
        ("geocode_city", t_geocode),
        ("get_timezone", t_timezone),
        ("estimate_travel_time", t_travel_time),
        ("web_search", t_web_search),
        ("news_search", t_news),
        ("image_search", t_images),
        ("wiki_lookup", t_wiki),
        ("search_recipes", t_recipes),
        ("search_jobs", t_jobs),
        ("send_email", t_email),
        ("send_sms", t_sms),
        ("post_slack_message", t_slack),
        ("translate_text", t_translate),
        ("create_reminder", t_reminder),
        ("schedule_message", t_schedule_message),
    ];
    list.iter().copied().collect()
}

// ---------------- weather ----------------

fn t_current_weather(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let c = a.city("city")?;
    let units = a.opt_one_of("units", &["metric", "imperial"], "metric")?;
    let t = climate_temp(c, fk);
    Ok(json!({"city": c.name, "country": c.country, "temperature": temp_in(units, t), "units": units,
        "condition": fk.pick(CONDITIONS), "humidity": fk.i(20, 95), "wind_speed": fk.f(0.0, 40.0)}))
}

fn t_forecast(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let c = a.city("city")?;
    let days = a.int_in("days", 1, 10)?;
    let units = a.opt_one_of("units", &["metric", "imperial"], "metric")?;
    let mut out = Vec::new();
    for d in 0..days {
        b.tick(1)?;
        let hi = climate_temp(c, fk) + 3.0;
        out.push(json!({"day": d + 1, "high": temp_in(units, hi), "low": temp_in(units, round(hi - fk.f(4.0, 12.0), 1)),
            "condition": fk.pick(CONDITIONS), "precipitation_chance": fk.i(0, 100)}));
    }
    Ok(append(json!({"city": c.name, "units": units}), "forecast", out))
}

fn t_air_quality(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let c = a.city("city")?;
    let p = a.opt_one_of("pollutant", &["pm25", "pm10", "o3", "no2"], "pm25")?;
    Ok(json!({"city": c.name, "aqi": fk.i(10, 180), "pollutant": p, "concentration_ug_m3": fk.f(2.0, 90.0)}))
}

fn t_uv(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let c = a.city("city")?;
    let d = a.date("date")?;
    let base = (12.0 - c.lat.abs() / 8.0).max(1.0);
    Ok(json!({"city": c.name, "date": w::format_date(d), "uv_index": round((base + fk.f(-2.0, 2.0)).max(0.0), 1)}))
}

fn t_sun(a: &Args, _: &mut Fake, _: &mut Budget) -> R<Value> {
    let c = a.city("city")?;
    let d = a.date("date")?;
    let (y, _, _) = w::civil_from_days(d);
    let doy = (d - w::days_from_civil(y, 1, 1) + 1) as f64;
    let decl = (23.44f64).to_radians() * ((2.0 * std::f64::consts::PI * (284.0 + doy) / 365.0).sin());
    let cos_h = -(c.lat.to_radians().tan()) * decl.tan();
    let h = cos_h.clamp(-1.0, 1.0).acos().to_degrees() / 15.0; // hours
    let noon = 12.0 * 60.0 - c.lon * 4.0 + c.utc_offset_min as f64;
    let rise = (noon - h * 60.0).round() as i64;
    let set = (noon + h * 60.0).round() as i64;
    Ok(json!({"city": c.name, "date": w::format_date(d), "sunrise": fmt_minutes(rise), "sunset": fmt_minutes(set),
        "day_length_hours": round(2.0 * h, 2)}))
}

fn t_hist_weather(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let c = a.city("city")?;
    let d = a.date("date")?;
    let hi = climate_temp(c, fk) + 2.0;
    Ok(json!({"city": c.name, "date": w::format_date(d), "high_c": hi, "low_c": round(hi - fk.f(3.0, 11.0), 1),
        "precipitation_mm": fk.f(0.0, 25.0)}))
}

// ---------------- finance ----------------

fn ticker_of(a: &Args) -> R<&'static (&'static str, &'static str, &'static str, f64)> {
    let s = a.str("symbol")?;
    w::ticker(s).ok_or_else(|| ExecError::NotFound(format!("unknown ticker {s:?}")))
}

fn t_stock(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let t = ticker_of(a)?;
    let change = fk.f(-3.0, 3.0);
    Ok(json!({"symbol": t.0, "price": round(t.3 * (1.0 + change / 100.0), 2), "currency": "USD", "change_percent": change}))
}

fn rate(a: &Args, k: &str) -> R<(&'static str, f64)> {
    let s = a.str(k)?;
    w::CURRENCIES
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(s))
        .copied()
        .ok_or_else(|| ExecError::NotFound(format!("unknown currency {s:?}")))
}

fn t_convert_currency(a: &Args, _: &mut Fake, _: &mut Budget) -> R<Value> {
    let amount = a.num("amount")?;
    if amount < 0.0 {
        return Err(bad("amount", "must not be negative"));
    }
    let (f, rf) = rate(a, "from_currency")?;
    let (t, rt) = rate(a, "to_currency")?;
    Ok(json!({"amount": amount, "from": f, "to": t, "rate": round(rt / rf, 6), "converted": round(amount / rf * rt, 2)}))
}

fn t_loan(a: &Args, _: &mut Fake, _: &mut Budget) -> R<Value> {
    let p = a.num("principal")?;
    let r = a.num("annual_rate")?;
    let years = a.int_in("years", 1, 50)?;
    if p <= 0.0 {
        return Err(bad("principal", "must be positive"));
    }
    if !(0.0..=100.0).contains(&r) {
        return Err(bad("annual_rate", "must be between 0 and 100 percent"));
    }
    let n = (years * 12) as f64;
    let i = r / 100.0 / 12.0;
    let pay = if i == 0.0 { p / n } else { p * i / (1.0 - (1.0 + i).powf(-n)) };
    Ok(json!({"monthly_payment": round(pay, 2), "total_paid": round(pay * n, 2), "total_interest": round(pay * n - p, 2)}))
}

fn t_fx(a: &Args, _: &mut Fake, _: &mut Budget) -> R<Value> {
    let (b, rb) = rate(a, "base")?;
    let (t, rt) = rate(a, "target")?;
    Ok(json!({"base": b, "target": t, "rate": round(rt / rb, 6)}))
}

fn t_compound(a: &Args, _: &mut Fake, _: &mut Budget) -> R<Value> {
    let p = a.num("principal")?;
    let r = a.num("rate")?;
    let years = a.int_in("years", 0, 100)?;
    let n = a.opt_int_in("compounds_per_year", 1, 365, 12)?;
    if p <= 0.0 {
        return Err(bad("principal", "must be positive"));
    }
    if !(0.0..=100.0).contains(&r) {
        return Err(bad("rate", "must be between 0 and 100 percent"));
    }
    let fv = p * (1.0 + r / 100.0 / n as f64).powf((n * years) as f64);
    Ok(json!({"future_value": round(fv, 2), "interest_earned": round(fv - p, 2)}))
}

fn t_company(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let t = ticker_of(a)?;
    Ok(json!({"symbol": t.0, "name": t.1, "sector": t.2, "market_cap_billion_usd": fk.f(20.0, 3000.0), "employees": fk.i(5_000, 400_000)}))
}

// ---------------- math ----------------

fn t_average(a: &Args, _: &mut Fake, b: &mut Budget) -> R<Value> {
    let xs = a.nums("numbers", b)?;
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    Ok(json!({"average": round(mean, 6), "count": xs.len()}))
}

fn t_stddev(a: &Args, _: &mut Fake, b: &mut Budget) -> R<Value> {
    let xs = a.nums("numbers", b)?;
    let sample = a.opt_bool("sample", false)?;
    if sample && xs.len() < 2 {
        return Err(bad("numbers", "sample standard deviation needs at least two numbers"));
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let ss: f64 = xs.iter().map(|x| (x - mean).powi(2)).sum();
    let var = ss / if sample { n - 1.0 } else { n };
    Ok(json!({"std_dev": round(var.sqrt(), 6), "mean": round(mean, 6), "sample": sample}))
}

fn t_prime_factors(a: &Args, _: &mut Fake, b: &mut Budget) -> R<Value> {
    let n0 = a.int_in("number", 2, 1_000_000_000_000)?;
    let mut n = n0;
    let mut out = Vec::new();
    let mut p = 2i64;
    while p * p <= n {
        b.tick(1)?;
        while n % p == 0 {
            out.push(p);
            n /= p;
        }
        p += if p == 2 { 1 } else { 2 };
    }
    if n > 1 {
        out.push(n);
    }
    Ok(append(json!({"number": n0}), "factors", out))
}

fn t_factorial(a: &Args, _: &mut Fake, b: &mut Budget) -> R<Value> {
    let n = a.int_in("n", 0, 20)?;
    let mut f: u64 = 1;
    for i in 2..=n as u64 {
        b.tick(1)?;
        f *= i;
    }
    Ok(json!({"n": n, "factorial": f}))
}

fn t_quadratic(a: &Args, _: &mut Fake, _: &mut Budget) -> R<Value> {
    let (qa, qb, qc) = (a.num("a")?, a.num("b")?, a.num("c")?);
    if qa == 0.0 {
        return Err(bad("a", "must be non-zero for a quadratic"));
    }
    let d = qb * qb - 4.0 * qa * qc;
    if d >= 0.0 {
        let s = d.sqrt();
        Ok(json!({"discriminant": d, "roots": [round((-qb + s) / (2.0 * qa), 6), round((-qb - s) / (2.0 * qa), 6)], "complex": false}))
    } else {
        let re = round(-qb / (2.0 * qa), 6);
        let im = round((-d).sqrt() / (2.0 * qa).abs(), 6);
        Ok(json!({"discriminant": d, "roots": [{"re": re, "im": im}, {"re": re, "im": -im}], "complex": true}))
    }
}

fn t_gcd(a: &Args, _: &mut Fake, b: &mut Budget) -> R<Value> {
    let x = a.int_in("a", 1, 1_000_000_000_000)?;
    let y = a.int_in("b", 1, 1_000_000_000_000)?;
    let (mut p, mut q) = (x, y);
    while q != 0 {
        b.tick(1)?;
        let t = p % q;
        p = q;
        q = t;
    }
    Ok(json!({"gcd": p}))
}

// ---------------- units ----------------

fn unit(a: &Args, table: &[(&'static str, f64)]) -> R<Value> {
    let v = a.num("value")?;
    let from = a.str("from_unit")?;
    let to = a.str("to_unit")?;
    let r = convert(v, from, to, table, "value")?;
    Ok(json!({"value": v, "from_unit": from, "to_unit": to, "result": round(r, 6)}))
}

fn t_temperature(a: &Args, _: &mut Fake, _: &mut Budget) -> R<Value> {
    let v = a.num("value")?;
    let from = a.one_of("from_scale", &["celsius", "fahrenheit", "kelvin"])?;
    let to = a.one_of("to_scale", &["celsius", "fahrenheit", "kelvin"])?;
    let k = match from {
        "celsius" => v + 273.15,
        "fahrenheit" => (v - 32.0) * 5.0 / 9.0 + 273.15,
        _ => v,
    };
    if k < 0.0 {
        return Err(bad("value", "below absolute zero"));
    }
    let r = match to {
        "celsius" => k - 273.15,
        "fahrenheit" => (k - 273.15) * 9.0 / 5.0 + 32.0,
        _ => k,
    };
    Ok(json!({"value": v, "from_scale": from, "to_scale": to, "result": round(r, 4)}))
}

// ---------------- travel ----------------

fn two_cities(a: &Args, ka: &str, kb: &str) -> R<(&'static City, &'static City)> {
    let x = a.city(ka)?;
    let y = a.city(kb)?;
    if std::ptr::eq(x, y) {
        return Err(bad(kb, format!("must differ from {ka}")));
    }
    Ok((x, y))
}

fn t_flights(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let (o, d) = two_cities(a, "origin", "destination")?;
    let date = a.date("date")?;
    let pax = a.opt_int_in("passengers", 1, 9, 1)?;
    let cabin = a.opt_one_of("cabin_class", &["economy", "premium_economy", "business", "first"], "economy")?;
    let km = haversine_km(o, d);
    let mult = match cabin {
        "economy" => 1.0,
        "premium_economy" => 1.6,
        "business" => 3.5,
        _ => 6.0,
    };
    let mut flights = Vec::new();
    for _ in 0..3 {
        b.tick(1)?;
        let dep = fk.i(6 * 60, 22 * 60);
        let price = round((60.0 + km * 0.09) * mult * (0.8 + fk.f(0.0, 0.5)) * pax as f64, 2);
        flights.push(json!({"flight_number": format!("{}{}", fk.pick(&["LH", "BA", "AF", "UA", "DL", "EK"]), fk.i(100, 9999)),
            "departure": fmt_minutes(dep), "duration_minutes": (km / 800.0 * 60.0 + 40.0).round() as i64, "price_usd": price}));
    }
    Ok(append(json!({"origin": o.name, "destination": d.name, "date": w::format_date(date), "passengers": pax, "cabin_class": cabin}), "flights", flights))
}

fn t_hotels(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let c = a.city("city")?;
    let ci = a.date("check_in")?;
    let co = a.date("check_out")?;
    if co <= ci {
        return Err(bad("check_out", "must be after check_in"));
    }
    if co - ci > 60 {
        return Err(bad("check_out", "stays longer than 60 nights are not supported"));
    }
    let guests = a.opt_int_in("guests", 1, 10, 2)?;
    let mut hotels = Vec::new();
    for i in 0..3 {
        b.tick(1)?;
        hotels.push(json!({"name": format!("{} {}", c.name, ["Grand Hotel", "City Inn", "Suites"][i]),
            "stars": fk.i(2, 5), "price_per_night_usd": fk.f(60.0, 450.0)}));
    }
    Ok(append(json!({"city": c.name, "nights": co - ci, "guests": guests}), "hotels", hotels))
}

fn t_flight_status(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let f = a.str("flight_number")?;
    let ok = f.len() >= 3
        && f.len() <= 7
        && f.bytes().take(2).all(|c| c.is_ascii_alphanumeric())
        && f.bytes().skip(2).all(|c| c.is_ascii_digit());
    if !ok {
        return Err(bad("flight_number", format!("{f:?} is not a flight number like LH1234")));
    }
    let date = a.opt_date("date")?;
    Ok(json!({"flight_number": f.to_ascii_uppercase(), "date": date.map(w::format_date),
        "status": fk.pick(&["on time", "delayed", "boarding", "landed", "cancelled"]), "delay_minutes": fk.i(0, 90)}))
}

fn t_cars(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let c = a.city("city")?;
    let p = a.date("pickup_date")?;
    let r = a.date("return_date")?;
    if r <= p {
        return Err(bad("return_date", "must be after pickup_date"));
    }
    let t = a.opt_one_of("car_type", &["compact", "suv", "van", "luxury"], "compact")?;
    Ok(json!({"city": c.name, "days": r - p, "car_type": t, "offers": [
        {"company": fk.pick(&["Hertz", "Avis", "Sixt", "Europcar"]), "price_per_day_usd": fk.f(25.0, 180.0)},
        {"company": fk.pick(&["Enterprise", "Budget", "Alamo"]), "price_per_day_usd": fk.f(25.0, 180.0)}]}))
}

fn t_visa(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let p = known(w::COUNTRIES, "passport_country", a.str("passport_country")?)?;
    let d = known(w::COUNTRIES, "destination_country", a.str("destination_country")?)?;
    if p == d {
        return Err(bad("destination_country", "must differ from passport_country"));
    }
    Ok(json!({"passport_country": p, "destination_country": d,
        "requirement": fk.pick(&["visa not required", "visa on arrival", "e-visa required", "visa required"]), "max_stay_days": fk.i(14, 180)}))
}

fn t_advisory(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let c = known(w::COUNTRIES, "country", a.str("country")?)?;
    Ok(json!({"country": c, "level": fk.i(1, 4), "summary": fk.pick(&["Exercise normal precautions", "Exercise increased caution", "Reconsider travel"])}))
}

// ---------------- calendar ----------------

fn t_create_event(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let title = a.str("title")?;
    let d = a.date("date")?;
    let start = a.time("start_time")?;
    let dur = a.opt_int_in("duration_minutes", 1, 1440, 60)?;
    Ok(json!({"event_id": format!("evt_{:08x}", fk.i(0, u32::MAX as i64)), "title": title, "date": w::format_date(d),
        "start_time": fmt_minutes(start as i64), "end_time": fmt_minutes(start as i64 + dur), "duration_minutes": dur}))
}

fn t_list_events(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let s = a.date("start_date")?;
    let e = a.date("end_date")?;
    if e < s {
        return Err(bad("end_date", "must not be before start_date"));
    }
    if e - s > 366 {
        return Err(bad("end_date", "range longer than a year"));
    }
    let n = fk.i(0, 5);
    let mut ev = Vec::new();
    for _ in 0..n {
        b.tick(1)?;
        ev.push(json!({"date": w::format_date(s + fk.i(0, e - s)), "title": fk.pick(w::EVENT_TITLES), "start_time": fmt_minutes(fk.i(8, 18) * 60)}));
    }
    Ok(append(json!({"start_date": w::format_date(s), "end_date": w::format_date(e)}), "events", ev))
}

fn t_days_between(a: &Args, _: &mut Fake, _: &mut Budget) -> R<Value> {
    let s = a.date("start_date")?;
    let e = a.date("end_date")?;
    Ok(json!({"days": e - s}))
}

fn t_add_days(a: &Args, _: &mut Fake, _: &mut Budget) -> R<Value> {
    let d = a.date("date")?;
    let n = a.int_in("days", -100_000, 100_000)?;
    Ok(json!({"date": w::format_date(d + n), "weekday": w::weekday(d + n)}))
}

fn t_weekday(a: &Args, _: &mut Fake, _: &mut Budget) -> R<Value> {
    let d = a.date("date")?;
    Ok(json!({"date": w::format_date(d), "weekday": w::weekday(d)}))
}

fn t_holidays(a: &Args, _: &mut Fake, _: &mut Budget) -> R<Value> {
    let cc = known(w::COUNTRY_CODES, "country_code", a.str("country_code")?)?;
    let y = a.int_in("year", 1900, 2100)?;
    let mut h = vec![json!({"date": format!("{y}-01-01"), "name": "New Year's Day"}), json!({"date": format!("{y}-12-25"), "name": "Christmas Day"})];
    match cc {
        "US" => h.push(json!({"date": format!("{y}-07-04"), "name": "Independence Day"})),
        "FR" => h.push(json!({"date": format!("{y}-07-14"), "name": "Bastille Day"})),
        "DE" => h.push(json!({"date": format!("{y}-10-03"), "name": "German Unity Day"})),
        "ES" => h.push(json!({"date": format!("{y}-10-12"), "name": "Fiesta Nacional"})),
        "IT" => h.push(json!({"date": format!("{y}-06-02"), "name": "Festa della Repubblica"})),
        "JP" => h.push(json!({"date": format!("{y}-02-11"), "name": "National Foundation Day"})),
        "CA" => h.push(json!({"date": format!("{y}-07-01"), "name": "Canada Day"})),
        "AU" => h.push(json!({"date": format!("{y}-01-26"), "name": "Australia Day"})),
        "BR" => h.push(json!({"date": format!("{y}-09-07"), "name": "Independence Day"})),
        _ => h.push(json!({"date": format!("{y}-12-26"), "name": "Boxing Day"})),
    }
    Ok(json!({"country_code": cc, "year": y, "holidays": h}))
}

// ---------------- e-commerce ----------------

fn t_search_products(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let q = a.str("query")?;
    let max = a.opt_num("max_price")?;
    if max.is_some_and(|m| m <= 0.0) {
        return Err(bad("max_price", "must be positive"));
    }
    let sort = a.opt_one_of("sort_by", &["relevance", "price_asc", "price_desc", "rating"], "relevance")?;
    let cap = max.unwrap_or(500.0);
    let mut items = Vec::new();
    for _ in 0..4 {
        b.tick(1)?;
        items.push(json!({"product_id": format!("SKU-{:05}", fk.i(10000, 99999)), "name": format!("{} {}", fk.pick(&["Pro", "Basic", "Ultra", "Eco"]), q),
            "price_usd": round(fk.f(0.05, 1.0) * cap, 2), "rating": fk.f(2.5, 5.0)}));
    }
    Ok(append(json!({"query": q, "sort_by": sort}), "results", items))
}

fn t_product_details(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let id = a.str("product_id")?;
    check_sku("product_id", id)?;
    Ok(json!({"product_id": id, "name": fk.pick(w::PRODUCTS), "price_usd": fk.f(5.0, 400.0), "in_stock": fk.i(0, 200), "rating": fk.f(2.5, 5.0)}))
}

fn t_add_to_cart(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let id = a.str("product_id")?;
    check_sku("product_id", id)?;
    let q = a.int_in("quantity", 1, 99)?;
    Ok(json!({"product_id": id, "quantity": q, "cart_items": q + fk.i(0, 5), "status": "added"}))
}

fn t_track_order(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let id = a.str("order_id")?;
    let ok = id.len() == 10 && id.starts_with("ORD-") && id[4..].bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Err(ExecError::NotFound(format!("no order {id:?} (ids look like ORD-123456)")));
    }
    Ok(json!({"order_id": id, "status": fk.pick(&["processing", "shipped", "in transit", "out for delivery", "delivered"]),
        "carrier": fk.pick(&["UPS", "DHL", "FedEx"]), "eta_days": fk.i(0, 7)}))
}

fn t_create_order(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let items = a.list("items")?;
    b.tick(items.len() as u64)?;
    let mut total = 0.0;
    for it in items {
        let o = it.as_object().ok_or_else(|| bad("items", "each item must be an object"))?;
        let ia = Args { m: o };
        let id = ia.str("product_id").map_err(|_| bad("items", "each item needs a product_id"))?;
        check_sku("items", id)?;
        let q = ia.int_in("quantity", 1, 99).map_err(|_| bad("items", "each item needs a quantity between 1 and 99"))?;
        total += q as f64 * fk.f(5.0, 200.0);
    }
    let c = a.city("shipping_city")?;
    let express = a.opt_bool("express", false)?;
    Ok(json!({"order_id": format!("ORD-{:06}", fk.i(100000, 999999)), "items": items.len(), "shipping_city": c.name,
        "express": express, "total_usd": round(total + if express { 19.99 } else { 4.99 }, 2)}))
}

fn t_reviews(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let id = a.str("product_id")?;
    check_sku("product_id", id)?;
    let min = a.opt_int_in("min_rating", 1, 5, 1)?;
    let mut rs = Vec::new();
    for _ in 0..3 {
        b.tick(1)?;
        rs.push(json!({"rating": fk.i(min, 5), "text": fk.pick(&["Great value", "Works as described", "Could be better", "Love it"])}));
    }
    Ok(append(json!({"product_id": id}), "reviews", rs))
}

// ---------------- sports ----------------

fn t_standings(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let l = check_league(a.str("league")?)?;
    let s = check_season(a)?;
    let mut rows = Vec::new();
    for pos in 1..=4 {
        b.tick(1)?;
        rows.push(json!({"position": pos, "team": fk.pick(w::TEAMS), "points": fk.i(40, 95) - pos * 5}));
    }
    Ok(append(json!({"league": l, "season": s}), "table", rows))
}

fn team(a: &Args) -> R<&'static str> {
    known(w::TEAMS, "team", a.str("team")?)
}

fn t_match_results(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let t = team(a)?;
    let d = a.date("date")?;
    Ok(json!({"team": t, "date": w::format_date(d), "opponent": fk.pick(w::TEAMS), "score": format!("{}-{}", fk.i(0, 4), fk.i(0, 4))}))
}

fn t_player_stats(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let p = known(w::PLAYERS, "player", a.str("player")?)?;
    let s = check_season(a)?;
    Ok(json!({"player": p, "season": s, "games": fk.i(10, 82), "goals_or_points": fk.i(0, 60), "assists": fk.i(0, 40)}))
}

fn t_fixtures(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let t = team(a)?;
    let n = a.opt_int_in("limit", 1, 20, 5)?;
    let mut f = Vec::new();
    let mut day = w::days_from_civil(2025, 9, 1);
    for _ in 0..n.min(PAGE) {
        b.tick(1)?;
        day += fk.i(3, 8);
        f.push(json!({"date": w::format_date(day), "opponent": fk.pick(w::TEAMS), "home": fk.i(0, 1) == 1}));
    }
    Ok(append(json!({"team": t}), "fixtures", f))
}

fn t_live_score(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let t = team(a)?;
    Ok(json!({"team": t, "opponent": fk.pick(w::TEAMS), "score": format!("{}-{}", fk.i(0, 3), fk.i(0, 3)), "minute": fk.i(1, 90)}))
}

fn t_top_scorers(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let l = check_league(a.str("league")?)?;
    let s = check_season(a)?;
    let n = a.opt_int_in("limit", 1, 50, 10)?;
    let mut rows = Vec::new();
    let mut goals = fk.i(25, 40);
    for i in 0..n.min(PAGE) {
        b.tick(1)?;
        rows.push(json!({"rank": i + 1, "player": fk.pick(w::PLAYERS), "goals": goals}));
        goals = (goals - fk.i(0, 3)).max(0);
    }
    Ok(append(json!({"league": l, "season": s}), "scorers", rows))
}

// ---------------- music ----------------

fn t_search_songs(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let q = a.str("query")?;
    let artist = a.opt_str("artist")?;
    let n = a.opt_int_in("limit", 1, 50, 10)?;
    let mut out = Vec::new();
    for _ in 0..n.min(5) {
        b.tick(1)?;
        out.push(json!({"title": fk.pick(w::SONGS), "artist": artist.map(str::to_string).unwrap_or_else(|| fk.pick(w::ARTISTS).to_string())}));
    }
    let mut v = append(json!({"query": q}), "results", out);
    v["total"] = json!(n);
    Ok(v)
}

fn t_artist(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let ar = known(w::ARTISTS, "artist", a.str("artist")?)?;
    Ok(json!({"artist": ar, "genre": fk.pick(&["pop", "rock", "jazz", "electronic", "latin", "k-pop"]), "monthly_listeners_millions": fk.f(1.0, 100.0),
        "top_track": fk.pick(w::SONGS)}))
}

fn t_album(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let al = known(w::ALBUMS, "album", a.str("album")?)?;
    let dur = a.opt_bool("include_duration", false)?;
    let n = fk.i(8, 14);
    let mut tracks = Vec::new();
    for i in 1..=n {
        b.tick(1)?;
        let mut t = json!({"track": i, "title": format!("Track {i}")});
        if dur {
            t["duration"] = json!(format!("{}:{:02}", fk.i(2, 6), fk.i(0, 59)));
        }
        tracks.push(t);
    }
    Ok(append(json!({"album": al}), "tracks", tracks))
}

fn t_playlist(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let name = a.str("name")?;
    let songs = a.strs("songs", b)?;
    if songs.len() > 500 {
        return Err(bad("songs", "at most 500 songs"));
    }
    let public = a.opt_bool("public", false)?;
    Ok(json!({"playlist_id": format!("pl_{:08x}", fk.i(0, u32::MAX as i64)), "name": name, "songs": songs.len(), "public": public}))
}

fn t_lyrics(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let t = known(w::SONGS, "song", a.str("title")?)?;
    let artist = a.opt_str("artist")?;
    Ok(json!({"title": t, "artist": artist, "lyrics": format!("[{} lines of lyrics]", fk.i(20, 60))}))
}

fn t_charts(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let cc = a.str("country_code")?;
    if cc.len() != 2 || !cc.bytes().all(|c| c.is_ascii_alphabetic()) {
        return Err(bad("country_code", "must be a 2-letter ISO country code"));
    }
    let n = a.opt_int_in("limit", 1, 100, 10)?;
    let mut out = Vec::new();
    for i in 0..n.min(PAGE) {
        b.tick(1)?;
        out.push(json!({"rank": i + 1, "title": fk.pick(w::SONGS), "artist": fk.pick(w::ARTISTS)}));
    }
    Ok(append(json!({"country_code": cc.to_ascii_uppercase()}), "chart", out))
}

// ---------------- maps ----------------

fn t_directions(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let (o, d) = two_cities(a, "origin", "destination")?;
    let mode = a.opt_one_of("mode", &["driving", "walking", "transit", "cycling"], "driving")?;
    let km = haversine_km(o, d) * 1.25;
    let kmh = match mode {
        "driving" => 80.0,
        "walking" => 5.0,
        "cycling" => 18.0,
        _ => 60.0,
    };
    Ok(json!({"origin": o.name, "destination": d.name, "mode": mode, "distance_km": round(km, 1), "duration_hours": round(km / kmh, 1),
        "steps": fk.i(5, 40)}))
}

fn t_distance(a: &Args, _: &mut Fake, _: &mut Budget) -> R<Value> {
    let (x, y) = two_cities(a, "city_a", "city_b")?;
    let unit = a.opt_one_of("unit", &["km", "mi"], "km")?;
    let km = haversine_km(x, y);
    let d = if unit == "mi" { km / 1.609_344 } else { km };
    Ok(json!({"city_a": x.name, "city_b": y.name, "distance": round(d, 1), "unit": unit}))
}

fn t_nearby(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let c = a.city("city")?;
    let t = a.one_of("place_type", &["restaurant", "cafe", "museum", "pharmacy", "park", "hotel"])?;
    let r = a.opt_int_in("radius_m", 1, 50_000, 1000)?;
    let mut out = Vec::new();
    for i in 0..3 {
        b.tick(1)?;
        out.push(json!({"name": format!("{} {} {}", c.name, t, i + 1), "distance_m": fk.i(10, r), "rating": fk.f(3.0, 5.0)}));
    }
    Ok(append(json!({"city": c.name, "place_type": t}), "places", out))
}

fn t_geocode(a: &Args, _: &mut Fake, _: &mut Budget) -> R<Value> {
    let c = a.city("city")?;
    Ok(json!({"city": c.name, "country": c.country, "latitude": c.lat, "longitude": c.lon}))
}

fn t_timezone(a: &Args, _: &mut Fake, _: &mut Budget) -> R<Value> {
    let c = a.city("city")?;
    let off = c.utc_offset_min;
    Ok(json!({"city": c.name, "timezone": c.tz, "utc_offset": format!("{}{:02}:{:02}", if off < 0 { '-' } else { '+' }, off.abs() / 60, off.abs() % 60)}))
}

fn t_travel_time(a: &Args, _: &mut Fake, _: &mut Budget) -> R<Value> {
    let (o, d) = two_cities(a, "origin", "destination")?;
    let mode = a.one_of("mode", &["car", "plane", "train"])?;
    let km = haversine_km(o, d);
    let hours = match mode {
        "car" => km * 1.25 / 80.0,
        "train" => km * 1.2 / 120.0,
        _ => km / 800.0 + 2.0,
    };
    Ok(json!({"origin": o.name, "destination": d.name, "mode": mode, "hours": round(hours, 1)}))
}

// ---------------- search ----------------

fn t_web_search(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let q = a.str("query")?;
    let n = a.opt_int_in("num_results", 1, 50, 10)?;
    let mut out = Vec::new();
    for i in 0..n.min(PAGE) {
        b.tick(1)?;
        out.push(json!({"title": format!("{q} - result {}", i + 1), "url": format!("https://example.com/{:x}", fk.i(0, 1 << 40))}));
    }
    Ok(append(json!({"query": q}), "results", out))
}

fn t_news(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let t = a.str("topic")?;
    let from = a.opt_date("from_date")?;
    let lang = a.opt_one_of("language", &["en", "es", "de", "fr"], "en")?;
    let mut out = Vec::new();
    for _ in 0..3 {
        b.tick(1)?;
        out.push(json!({"headline": format!("{} {}", fk.pick(&["Breaking:", "Analysis:", "Update:"]), t), "source": fk.pick(&["Reuters", "AP", "BBC"])}));
    }
    Ok(append(json!({"topic": t, "from_date": from.map(w::format_date), "language": lang}), "articles", out))
}

fn t_images(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let q = a.str("query")?;
    let safe = a.opt_bool("safe_search", true)?;
    let mut out = Vec::new();
    for _ in 0..3 {
        b.tick(1)?;
        out.push(json!({"url": format!("https://images.example.com/{:x}.jpg", fk.i(0, 1 << 40)), "width": fk.i(400, 4000)}));
    }
    Ok(append(json!({"query": q, "safe_search": safe}), "images", out))
}

fn t_wiki(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let t = a.str("title")?;
    let lang = a.opt_one_of("lang", &["en", "es", "de", "fr"], "en")?;
    Ok(json!({"title": t, "lang": lang, "summary": format!("{t} is a subject with {} sections.", fk.i(3, 30))}))
}

fn t_recipes(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let ing = a.strs("ingredients", b)?;
    let max = a.opt_int_in("max_minutes", 1, 600, 60)?;
    Ok(json!({"recipes": [
        {"name": format!("{} stir-fry", ing[0]), "minutes": fk.i(5, max.max(5))},
        {"name": format!("Baked {} with {}", ing[0], ing[ing.len() - 1]), "minutes": fk.i(5, max.max(5))}]}))
}

fn t_jobs(a: &Args, fk: &mut Fake, b: &mut Budget) -> R<Value> {
    let t = a.str("title")?;
    let c = a.city("city")?;
    let remote = a.opt_bool("remote", false)?;
    let mut out = Vec::new();
    for _ in 0..3 {
        b.tick(1)?;
        out.push(json!({"company": fk.pick(&["Acme", "Globex", "Initech", "Umbrella"]), "title": t, "salary_k_usd": fk.i(40, 200)}));
    }
    Ok(append(json!({"city": c.name, "remote": remote}), "jobs", out))
}

// ---------------- messaging ----------------

fn t_email(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let to = a.str("to")?;
    check_email("to", to)?;
    let _ = a.str("subject")?;
    let _ = a.str("body")?;
    if let Some(cc) = a.opt_str("cc")? {
        check_email("cc", cc)?;
    }
    Ok(json!({"status": "sent", "message_id": format!("msg_{:010x}", fk.i(0, 1 << 40)), "to": to}))
}

fn t_sms(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let p = a.str("phone_number")?;
    let digits = p.bytes().filter(|b| b.is_ascii_digit()).count();
    let valid_chars = p.bytes().all(|b| b.is_ascii_digit() || b == b'+' || b == b'-' || b == b' ' || b == b'(' || b == b')');
    if !(7..=15).contains(&digits) || !valid_chars {
        return Err(bad("phone_number", format!("{p:?} is not a valid phone number")));
    }
    let m = a.str("message")?;
    if m.chars().count() > 1600 {
        return Err(bad("message", "longer than 1600 characters"));
    }
    Ok(json!({"status": "sent", "segments": m.chars().count().div_ceil(160), "sid": format!("SM{:012x}", fk.i(0, 1 << 46))}))
}

fn t_slack(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let ch = a.str("channel")?;
    if !ch.starts_with('#') || ch.len() < 2 {
        return Err(bad("channel", "must look like #channel"));
    }
    let _ = a.str("text")?;
    Ok(json!({"ok": true, "channel": ch, "ts": format!("{}.{:06}", 1_700_000_000 + fk.i(0, 99_999_999), fk.i(0, 999_999))}))
}

fn t_translate(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let text = a.str("text")?;
    let lang = a.str("target_language")?;
    let code = w::LANGUAGES
        .iter()
        .find(|(n, c)| n.eq_ignore_ascii_case(lang) || c.eq_ignore_ascii_case(lang))
        .map(|(_, c)| *c)
        .ok_or_else(|| ExecError::NotFound(format!("unsupported language {lang:?}")))?;
    Ok(json!({"source_text": text, "target_language": code, "translation": format!("[{code}] {text}"), "confidence": fk.f(0.8, 1.0)}))
}

fn t_reminder(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let t = a.str("text")?;
    let d = a.date("date")?;
    let tm = a.opt_time("time", 9 * 60)?;
    Ok(json!({"reminder_id": format!("rem_{:08x}", fk.i(0, u32::MAX as i64)), "text": t, "when": format!("{} {}", w::format_date(d), fmt_minutes(tm as i64))}))
}

fn t_schedule_message(a: &Args, fk: &mut Fake, _: &mut Budget) -> R<Value> {
    let to = a.str("to")?;
    check_email("to", to)?;
    let _ = a.str("message")?;
    let d = a.date("send_date")?;
    let t = a.time("send_time")?;
    Ok(json!({"status": "scheduled", "id": format!("sch_{:08x}", fk.i(0, u32::MAX as i64)), "send_at": format!("{} {}", w::format_date(d), fmt_minutes(t as i64))}))
}
